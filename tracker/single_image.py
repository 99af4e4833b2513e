"""One photo -> one head mesh: ``nphm-track face.jpg --out face.obj``.

Default (``evidence="landmarks"``): MediaPipe Face Mesh in static-image mode, then the landmark fit of
identity, expression and pose (:func:`tracker.landmark_tracker.fit_photo`; the focal length is assumed as in
:mod:`tracker.pipeline`). With ``evidence="maps"``: crop (the same detector and cropper as the video
tracker, on a one-frame stream), feed-forward codes (:func:`tracker.predict.predict`), optionally test-time
optimisation (:func:`tracker.predict.fit_image`). Then the mesh of the fitted codes by marching cubes, written by :func:`exporters.static.write_mesh`
(``.obj .ply .stl`` or any animation format as one frame). The mesh is in the head's frame (model space,
Y up, metres by default), not posed in the photo's camera; the pose is reported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from exporters import ExportResult
from exporters.static import check_mesh_target, write_mesh
from model.errors import InputError
from model.mesh import extract_mesh
from tracker.crop import CropConfig, crop_frames
from tracker.decode import open_video
from tracker.detect import FaceDetector
from tracker.pipeline import TrackConfig, crop_intrinsics, frame_intrinsics
from tracker.predict import ImageFit, Models, fit_image


@dataclass
class ImageResult:
    """What :func:`reconstruct_image` did."""

    out: Path
    fit: Any  # ImageFit (evidence "maps") or tracker.landmark_tracker.PhotoFit (landmarks)
    export: ExportResult
    n_vertices: int
    n_faces: int
    seconds: float

    def describe(self) -> str:
        """One line on how the codes were found."""
        if isinstance(self.fit, ImageFit):
            return (f"feed-forward {self.fit.seconds_ff:.2f} s, TTO {self.fit.steps} steps "
                    f"{self.fit.seconds_tto:.1f} s")
        return f"landmark fit {self.fit.iterations} iterations {self.fit.seconds:.1f} s"


def crop_image(path: str | os.PathLike, crop: Optional[CropConfig] = None,
               detector: Optional[FaceDetector] = None) -> tuple[np.ndarray, np.ndarray]:
    """The face crop of an image ``[S, S, 3]`` uint8 and its intrinsics ``[3, 3]`` in crop pixels (the
    photo's focal length assumed as in :mod:`tracker.pipeline`). :class:`InputError` if no face is found."""
    stream = open_video(path)
    frames = list(crop_frames(stream, (crop or CropConfig()).setup(detector), source=str(path)))
    result = frames[0]
    if result.image is None:
        raise InputError(f"{path}: no face found")
    K_frame = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
    return result.image, crop_intrinsics(K_frame, result.crop_to_frame)


def codes_mesh(models: Models, z_id: torch.Tensor, z_ex: torch.Tensor, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The largest connected surface of the head of codes ``z_id [1, D_id]``, ``z_ex [1, D_ex]`` (model units)."""
    lo, hi = models.bbox
    with torch.no_grad():
        mesh = extract_mesh(lambda x: models.layer(x[None], z_id, z_ex).sdf[0], lo, hi, resolution,
                            largest_component=True)
    return mesh.vertices, mesh.faces


def reconstruct_image(image: str | os.PathLike, out: str | os.PathLike, tto: bool = True, steps: int = 100,
                      resolution: int = 128, models: Optional[Models] = None,
                      tto_resolution: int = 64, evidence: str = "landmarks") -> ImageResult:
    """Reconstruct the head in ``image`` and write its mesh to ``out`` (format from the extension).

    Args:
        evidence: ``"landmarks"`` (default; needs ``models.landmarks``) or ``"maps"`` (module docstring).
        tto: ``"maps"`` only: refine the feed-forward codes by test-time optimisation (``steps`` in all).
        resolution: marching-cubes resolution of the written mesh.
        tto_resolution: resolution of the canonical mesh the TTO optimises.
    """
    out = Path(out)
    check_mesh_target(out)  # before any work
    start = time.perf_counter()
    models = models or Models.load()
    if evidence not in ("landmarks", "maps"):
        raise InputError(f"evidence must be 'landmarks' or 'maps', got {evidence!r}")
    if evidence == "landmarks":
        if models.landmarks is None:
            raise InputError(f"{models.head_path}: this head model has no landmark assets (nphm-train landmarks); "
                             "use --evidence maps")
        from tracker.landmark_tracker import fit_photo

        with open_video(image) as stream:
            frame = next(iter(stream))
            K_frame = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
        fit = fit_photo(models.layer, models.codes, models.landmarks, frame.image, K_frame, source=str(image),
                        forward=models.forward, identity_prior=models.identity_prior)
    else:
        crop, K = crop_image(image)
        fit = fit_image(models, crop, K, tto=tto, steps=steps, mesh_resolution=tto_resolution)
    vertices, faces = codes_mesh(models, fit.z_id, fit.z_ex, resolution)
    export = write_mesh(out, vertices, faces)
    return ImageResult(out=out, fit=fit, export=export, n_vertices=len(vertices), n_faces=len(faces),
                       seconds=time.perf_counter() - start)
