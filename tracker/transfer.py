"""Expression transfer: one track's expressions (and head motion) on another person's identity.

NPHM separates an identity code ``z_id`` from an expression code ``z_ex``, and expression codes are meant to
be identity-independent, so the expression sequence of one video can drive another identity by swapping
``z_id``. The swap is only approximate: the backward deformation is conditioned on *both* codes (and on the
identity's anchors), so the same ``z_ex`` moves different faces in similar, not identical, ways.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from model.checkpoint import default_weights
from model.errors import InputError
from tracker.decode import IMAGE_SUFFIXES
from tracker.trackfile import Track, load_track, save_track


def same_head(a: str, b: str) -> bool:
    """Whether two recorded head names (``"default"`` or a checkpoint path) name the same checkpoint."""
    def key(head: str) -> str:
        if head in ("", "default"):
            return str(default_weights("head_default").resolve())
        return str(Path(head).resolve())
    return key(a) == key(b)


def transfer_expressions(source_track: Track | str | os.PathLike, target: Track | str | os.PathLike,
                         out_track_path: str | os.PathLike | None = None, *, models: Any = None, tto: bool = True,
                         crop_config: Any = None, detector: Any = None) -> Track:
    """The expressions, pose and timing of ``source_track`` on the identity of ``target``.

    Args:
        source_track: the track (or track file) whose expression sequence, pose, cameras, timing, status
            and confidence are kept.
        target: whose identity ``z_id`` is used: a :class:`~tracker.trackfile.Track`, a track file, or an
            image (``.jpg .jpeg .png .bmp .webp .tif .tiff``) of a face: its landmarks are fitted by
            :func:`tracker.landmark_tracker.fit_photo` when the models have landmark assets and no
            ``crop_config``/``detector`` is given; otherwise it is cropped by the tracker's front end
            (:class:`tracker.crop.CropConfig`) and fitted by :func:`tracker.predict.fit_image` (the encoder
            path; camera unknown: the default crop intrinsics).
        out_track_path: when given, the result is also written there (:func:`~tracker.trackfile.save_track`).
        models: image target only: a loaded :class:`tracker.predict.Models`; default ``Models.load`` with
            the source track's head.
        tto: image target only: refine the feed-forward identity by test-time optimisation.
        crop_config, detector: image target only: the cropper's :class:`~tracker.crop.CropConfig` and face
            detector (default ``CropConfig()`` and its default detector).

    Returns:
        A new :class:`~tracker.trackfile.Track`; ``meta["transfer"]`` records where the expressions and the
        identity came from. Both tracks must come from the same head model (codes of different heads mean
        different things): otherwise :class:`InputError`.
    """
    source = source_track if isinstance(source_track, Track) else load_track(source_track)
    if isinstance(target, Track) or Path(target).suffix.lower() not in IMAGE_SUFFIXES:
        other = target if isinstance(target, Track) else load_track(target)
        if not same_head(source.head, other.head):
            raise InputError(f"{_name(target)}: tracked with head {other.head!r} but the source with "
                             f"{source.head!r}: codes of different head models cannot be mixed")
        z_id, identity_from = other.z_id, other.source if isinstance(target, Track) else str(target)
    else:
        z_id, identity_from = identity_from_image(Path(target), source.head, models, tto, crop_config, detector)
    if len(z_id) != len(source.z_id):
        raise InputError(f"{_name(target)}: identity code has {len(z_id)} values, the source track's "
                         f"{len(source.z_id)}")
    meta = dict(source.meta)
    meta["transfer"] = {"expressions_from": source.source, "identity_from": identity_from}
    result = dataclasses.replace(source, z_id=np.array(z_id, np.float32), meta=meta)
    if out_track_path is not None:
        save_track(out_track_path, result)
    return result


def _name(target: Track | str | os.PathLike) -> str:
    return f"target track ({target.source})" if isinstance(target, Track) else str(target)


def identity_from_image(path: Path, head: str, models: Any, tto: bool, crop_config: Any,
                         detector: Any) -> tuple[np.ndarray, str]:
    """``z_id [D_id]`` fitted to the face in one image, and a description of where it came from."""
    from tracker import predict

    if models is None:
        models = predict.Models.load(head=None if head in ("", "default") else head)
    elif not same_head(models.head_path, head):
        raise InputError(f"{path}: the models use head {models.head_path!r} but the source track was made with "
                         f"{head!r}: codes of different head models cannot be mixed")
    if detector is None and crop_config is None and getattr(models, "landmarks", None) is not None:
        from tracker.decode import open_video
        from tracker.landmark_tracker import fit_photo
        from tracker.pipeline import TrackConfig, frame_intrinsics

        with open_video(path) as stream:  # the landmark fit, as `nphm-track face.jpg`
            frame = next(iter(stream))
            K_frame = frame_intrinsics(stream.info.width, stream.info.height, TrackConfig())
        fit = fit_photo(models.layer, models.codes, models.landmarks, frame.image, K_frame, source=str(path),
                        forward=models.forward, identity_prior=models.identity_prior)
        return fit.z_id[0].detach().cpu().numpy().astype(np.float32), str(path)
    from tracker.single_image import crop_image

    crop, K = crop_image(path, crop_config, detector)
    fit = predict.fit_image(models, crop, K, tto=tto)
    z_id = fit.z_id.detach().cpu().numpy().astype(np.float32)  # [1, D_id]
    if z_id.shape[:1] != (1,):
        raise InputError(f"{path}: the fit returned z_id of shape {list(z_id.shape)}, expected [1, D_id]")
    return z_id[0], str(path)
