"""Shared fixtures of the train/ tests: the ICT-FaceKit model and its path (skipped with a reason when absent)."""

from pathlib import Path

import pytest

from train.ict import IctFaceKit, default_ict_path, load_ict


@pytest.fixture(scope="session")
def ict_path() -> Path:
    path = default_ict_path()
    if not path.exists():
        pytest.skip(f"ICT-FaceKit not found at {path} (set NPHM_SHARED or NPHM_ICT)")
    return path


@pytest.fixture(scope="session")
def kit(ict_path) -> IctFaceKit:
    return load_ict(ict_path)
