"""A dataset of random ICT head renders with per-pixel ground truth, for the encoders and the regressor.

``generate_renders(out_dir, n, resolution, seed)`` writes ``out_dir/renders/r_<index>.npz`` (one file per
sample, see :data:`SAMPLE_KEYS`) and ``out_dir/manifest.json``. Sample ``i`` depends only on ``(seed, i)``
(its own ``numpy`` generator from ``SeedSequence([seed, i])``), so generation is deterministic, can resume
(finished files are skipped; each file is written under a temporary name and renamed) and any subset can be
regenerated alone. A fraction of the samples is held out (``split == "heldout"`` in the manifest), drawn
from ``SeedSequence([seed, i, 1])``.

Each sample: a random identity (``w_id ~ N(0, identity_scale^2)``), a structured random expression
(:func:`train.sampler.sample_expression`), a random camera and head pose with the head in frame
(:func:`train.camera.sample_view`), ray-cast ground truth (:func:`train.render.render_head`) and a random
look (:mod:`train.shading`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.errors import InputError
from train.camera import Camera, HeadPose, ViewSamplerConfig, model_to_camera, sample_view
from train.render import RenderMesh, eye_centres, framing_points, head_vertices, ict_render_mesh, render_head
from train.shading import AppearanceConfig, sample_appearance, shade

SAMPLE_KEYS = {
    "rgb": "[H, W, 3] uint8 sRGB image",
    "mask": "[H, W] bool, the head is seen",
    "face_mask": "[H, W] bool, the face region (ICT vertices 0..9408) is seen",
    "part": "[H, W] uint8, part id (train.render.PART_NAMES)",
    "depth": "[H, W] float32, camera-space z in model units, 0 off the head",
    "normals": "[H, W, 3] float16, camera-space unit normals facing the camera (OpenCV axes)",
    "canonical": "[H, W, 3] float16, canonical point map: same identity, neutral expression, no pose (model units)",
    "K": "[3, 3] float64 intrinsics in pixels",
    "camera_R": "[3, 3] float64 world-to-camera rotation (OpenCV)",
    "camera_t": "[3] float64 world-to-camera translation (model units)",
    "pose_angles": "[3] float64 head yaw, pitch, roll in degrees (R = R_y(yaw) R_x(pitch) R_z(roll))",
    "pose_R": "[3, 3] float64 head rotation, canonical -> world",
    "pose_t": "[3] float64 head translation, canonical -> world (model units)",
    "model_to_camera_R": "[3, 3] float64, x_cam = R x_canonical + t",
    "model_to_camera_t": "[3] float64",
    "w_id": "[K_id] float32 ICT identity weights",
    "w_ex": "[K_ex] float32 ICT expression weights",
    "landmarks2d": "[68, 2] float32 projected Multi-PIE landmarks (u, v) in pixels, pixel centres at integers",
    "landmarks_visible": "[68] bool, in the image and not occluded",
}


@dataclass
class RendersConfig:
    """Everything that decides a renders dataset (saved in its manifest)."""

    n: int = 1000
    """Number of samples."""
    resolution: int = 256
    """Image width and height in pixels."""
    seed: int = 0
    """Base seed; sample i uses SeedSequence([seed, i])."""
    heldout_fraction: float = 0.05
    """Share of samples marked held out (for validation; never trained on)."""
    identity_scale: float = 1.0
    """Std of the identity weights (1 = the ICT prior)."""
    view: ViewSamplerConfig = field(default_factory=ViewSamplerConfig)
    """Camera and head-pose ranges."""
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    """Look ranges (albedo, lighting, background, degradations)."""

    def __post_init__(self) -> None:
        if self.n < 0:
            raise InputError(f"-n: need a non-negative number of samples, got {self.n}")
        if self.resolution < 8:
            raise InputError(f"--res: need at least 8 pixels, got {self.resolution}")
        if not 0.0 <= self.heldout_fraction <= 1.0:
            raise InputError(f"heldout_fraction must be in [0, 1], got {self.heldout_fraction}")


@dataclass
class RenderSample:
    """One generated sample: the arrays of :data:`SAMPLE_KEYS` plus its split."""

    arrays: dict
    heldout: bool


def sample_path(out_dir: Path, index: int) -> Path:
    """Where sample ``index`` lives."""
    return Path(out_dir) / "renders" / f"r_{index:07d}.npz"


def is_heldout(seed: int, index: int, fraction: float) -> bool:
    """Whether sample ``index`` is held out (independent of everything else about the sample)."""
    return bool(np.random.default_rng(np.random.SeedSequence([seed, index, 1])).uniform() < fraction)


def render_sample(kit, mesh: RenderMesh, cfg: RendersConfig, index: int) -> RenderSample:
    """Generate sample ``index`` of the dataset described by ``cfg`` (deterministic)."""
    from train.sampler import sample_expression, sample_identity

    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index]))
    w_id = sample_identity(rng, 1, cfg.identity_scale, kit.n_identity)[0].astype(np.float32)
    w_ex = sample_expression(rng, 1, kit.expression_names)[0].astype(np.float32)
    head = head_vertices(kit, w_id, w_ex)
    res = cfg.resolution
    view = sample_view(rng, cfg.view, framing_points(head.canonical), res, res)
    camera, pose = view.camera, view.pose
    geom = render_head(head, mesh, camera, pose)
    app = sample_appearance(rng, cfg.appearance)
    rgb = shade(geom, app, head.canonical[mesh.landmarks], eye_centres(head.canonical, mesh), rng)
    R_mc, t_mc = model_to_camera(camera, pose)
    arrays = dict(
        rgb=rgb, mask=geom.mask, face_mask=geom.face_mask, part=geom.part,
        depth=geom.depth.astype(np.float32), normals=geom.normals.astype(np.float16),
        canonical=geom.canonical.astype(np.float16), K=camera.K, camera_R=camera.R, camera_t=camera.t,
        pose_angles=pose.angles, pose_R=pose.R, pose_t=pose.translation, model_to_camera_R=R_mc,
        model_to_camera_t=t_mc, w_id=w_id, w_ex=w_ex, landmarks2d=geom.landmarks2d.astype(np.float32),
        landmarks_visible=geom.landmarks_visible)
    return RenderSample(arrays=arrays, heldout=is_heldout(cfg.seed, index, cfg.heldout_fraction))


def write_npz_atomic(path: Path, arrays: dict) -> None:
    """``np.savez_compressed`` to ``path`` through a temporary name and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_manifest(data_dir: str | Path, split: str = "train", max_items: int | None = None
                  ) -> tuple[dict, list[tuple[int, str]]]:
    """The manifest of a complete renders folder and its ``(index, file)`` entries of ``split``
    (``train``, ``heldout`` or ``all``), the first ``max_items`` in manifest order; clear errors otherwise."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{data_dir}: no manifest.json (make it with `nphm-train data renders`)")
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete", False):
        raise InputError(f"{manifest_path}: the renders dataset is incomplete; finish `nphm-train data renders`")
    if split not in ("train", "heldout", "all"):
        raise InputError(f"split: expected 'train', 'heldout' or 'all', got {split!r}")
    entries = [(i, s["file"]) for i, s in enumerate(manifest["samples"]) if split == "all" or s["split"] == split]
    entries = entries[:max_items] if max_items is not None else entries
    if not entries:
        raise InputError(f"{manifest_path}: no samples in split {split!r}")
    return manifest, entries


def load_sample(path: str | Path) -> dict:
    """Read one sample file back as a dict of arrays (keys: :data:`SAMPLE_KEYS`)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def camera_and_pose(sample: dict) -> tuple[Camera, HeadPose]:
    """Rebuild the :class:`Camera` and :class:`HeadPose` stored in a sample dict."""
    h, w = sample["mask"].shape
    yaw, pitch, roll = (float(a) for a in sample["pose_angles"])
    return (Camera(K=sample["K"], R=sample["camera_R"], t=sample["camera_t"], width=w, height=h),
            HeadPose(yaw=yaw, pitch=pitch, roll=roll, translation=sample["pose_t"]))


def generate_renders(out_dir: str | Path, n: int, resolution: int = 256, seed: int = 0,
                     ict_path: str | Path | None = None, cfg: RendersConfig | None = None,
                     progress: bool = True) -> Path:
    """Generate (or finish) a renders dataset; returns the manifest path.

    Args:
        out_dir: output folder (created). Re-running with the same settings skips finished samples;
            a manifest with different settings is an :class:`InputError`.
        n, resolution, seed: size, image side in pixels and base seed (override ``cfg``'s).
        ict_path: ICT-FaceKit npz or FaceXModel folder (default: :func:`train.ict.default_ict_path`).
        cfg: the other settings (defaults of :class:`RendersConfig`).
    """
    from tqdm import tqdm

    from train.ict import default_ict_path, load_ict

    cfg = dataclasses.replace(cfg or RendersConfig(), n=n, resolution=resolution, seed=seed)
    ict_path = Path(ict_path) if ict_path is not None else default_ict_path()
    kit = load_ict(ict_path)
    mesh = ict_render_mesh(kit.triangles, kit.landmarks68)
    out_dir = Path(out_dir)
    (out_dir / "renders").mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    settings = dataclasses.asdict(cfg)
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text()).get("config")
        if old is not None and json.loads(json.dumps(settings)) != old:
            raise InputError(f"{manifest_path}: the folder holds a dataset made with other settings; "
                             "use a new --out folder")
    manifest = {"kind": "nphm-track renders", "complete": False, "config": settings,
                "ict": str(ict_path), "keys": SAMPLE_KEYS, "samples": []}
    write_json_atomic(manifest_path, manifest)
    samples = []
    for i in tqdm(range(cfg.n), desc="renders", disable=not progress, unit="img"):
        path = sample_path(out_dir, i)
        heldout = is_heldout(cfg.seed, i, cfg.heldout_fraction)
        if not path.exists():
            sample = render_sample(kit, mesh, cfg, i)
            write_npz_atomic(path, sample.arrays)
        samples.append({"file": str(path.relative_to(out_dir)), "split": "heldout" if heldout else "train"})
    manifest.update(complete=True, samples=samples,
                    heldout=[i for i, s in enumerate(samples) if s["split"] == "heldout"])
    write_json_atomic(manifest_path, manifest)
    return manifest_path
