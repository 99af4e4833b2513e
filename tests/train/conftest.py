"""Shared fixtures of the train/ tests: the ICT-FaceKit model (skipped with a reason when absent)."""

import pytest

from train.ict import IctFaceKit, default_ict_path, load_ict


@pytest.fixture(scope="session")
def ict_kit() -> IctFaceKit:
    path = default_ict_path()
    if not path.exists():
        pytest.skip(f"ICT-FaceKit npz not found at {path} (set NPHM_SHARED or NPHM_ICT)")
    return load_ict(path)
