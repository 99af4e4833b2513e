"""SDF training data for the head model: random ICT-FaceKit heads, one npz per (identity, expression).

Layout of ``out_dir``::

    manifest.json               config, seed, ICT source, frame, counts, splits, the list of files
    id0000_ex000.npz ...        one head each (identity i, expression slot j)

Each npz holds (model units, :mod:`train.frame`; float32 unless said)::

    w_id [K_id], w_ex [K_ex]         the ICT weights of the head (rebuild it with IctFaceKit.vertices)
    identity [], expression []       int64 indices (identity i, expression slot j)
    surface_points [Ns, 3]           uniform by area on the outer surface (train.geometry)
    surface_normals [Ns, 3]          outward unit normals there
    surface_is_face [Ns] bool        the point lies on the ICT face area (vertices [0, 9409))
    near_points [Nn, 3], near_sdf [Nn], near_sigma [Nn]
                                     surface points + N(0, sigma^2), sigma from config.near_sigmas
    space_points [Nv, 3], space_sdf [Nv]
                                     uniform in the box frame.BOX_MIN .. BOX_MAX
    landmarks [68, 3]                the Multi-PIE 68 landmark vertices

Expressions per identity: slot 0 is neutral, the others are drawn by :func:`train.sampler.sample_expression`.
Held-out split (recorded per file in the manifest): the last ``heldout_identities`` identities are
``test_identity`` (all their slots); on the other identities the last ``heldout_expressions`` slots
are ``test_expression``; everything else is ``train``. With ``extreme_eval`` every held-out identity also
gets one head per extreme blendshape at full weight (``test_extreme``: jawOpen, mouthFunnel, eyeBlink_L,
eyeBlink_R) after its random slots. Training must read only ``train`` files.

Determinism and resuming: every random number of head (i, j) comes from
``SeedSequence(seed, spawn_key=...)`` of the global seed and the indices, so a file does not depend on
which other files were made, nor in what order. Files are written under a temporary name and renamed;
existing complete files are skipped, so an interrupted run continues where it stopped. An ``out_dir``
whose manifest holds a different configuration is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.errors import InputError
from train import frame
from train.geometry import (SurfaceConfig, SurfaceTopology, landmark_positions, outer_surface, sample_surface,
                            sample_volume, signed_distance, surface_topology)
from train.ict import IctFaceKit, default_ict_path, load_ict
from train.sampler import EXTREME_NAMES, ExpressionPrior, extreme_expression, sample_expression, sample_identity

FORMAT = "nphm-track/heads-sdf/1"
_KEYS = ("w_id", "w_ex", "identity", "expression", "surface_points", "surface_normals", "surface_is_face",
         "near_points", "near_sdf", "near_sigma", "space_points", "space_sdf", "landmarks")
_ID_STREAM, _EX_STREAM, _POINT_STREAM = 0, 1, 2  # spawn-key heads of the three random streams


@dataclass(frozen=True)
class HeadsDataConfig:
    """Everything but the counts and the seed that decides the data."""

    n_surface: int = 16384                     # surface points (with normals) per head
    n_near: int = 16384                        # near-surface SDF points per head, split over near_sigmas
    near_sigmas: tuple[float, ...] = (0.01, 0.002)  # std of the perturbations, model units (2.5 mm, 0.5 mm)
    n_space: int = 8192                        # uniform SDF points in the box per head
    identity_scale: float = 1.0                # w_id ~ N(0, identity_scale^2)
    heldout_identities: int | None = None      # None: max(1, n_identities // 10) when n_identities >= 2, else 0
    heldout_expressions: int | None = None     # None: 1 when n_expressions_per_identity >= 3, else 0
    extreme_eval: bool = True                  # add the extreme blendshapes for held-out identities
    surface: SurfaceConfig = field(default_factory=SurfaceConfig)
    expression_prior: ExpressionPrior = field(default_factory=ExpressionPrior)


@dataclass(frozen=True)
class HeadItem:
    """One planned head of the dataset."""

    identity: int
    expression: int
    split: str      # train | test_identity | test_expression | test_extreme
    kind: str       # neutral | random | extreme:<blendshape>

    @property
    def filename(self) -> str:
        return f"id{self.identity:04d}_ex{self.expression:03d}.npz"


@dataclass(frozen=True)
class HeadsDataset:
    """What a call of :func:`generate_heads_dataset` did."""

    out_dir: Path
    manifest_path: Path
    items: tuple[HeadItem, ...]
    n_written: int
    n_skipped: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class HeadSdfSample:
    """One head's training data as stored (module docstring; model units, float32)."""

    w_id: np.ndarray             # [K_id]
    w_ex: np.ndarray             # [K_ex]
    identity: int
    expression: int
    surface_points: np.ndarray   # [Ns, 3]
    surface_normals: np.ndarray  # [Ns, 3] outward unit normals
    surface_is_face: np.ndarray  # [Ns] bool
    near_points: np.ndarray      # [Nn, 3]
    near_sdf: np.ndarray         # [Nn] negative inside
    near_sigma: np.ndarray       # [Nn] std of the perturbation each point came from
    space_points: np.ndarray     # [Nv, 3]
    space_sdf: np.ndarray        # [Nv]
    landmarks: np.ndarray        # [68, 3]


def load_head_sample(path: str | Path) -> HeadSdfSample:
    """Read one npz written by :func:`generate_heads_dataset` (InputError if it is not one)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in _KEYS if k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: cannot read head SDF sample ({type(exc).__name__})") from None
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise InputError(f"{path}: not a head SDF sample, missing {', '.join(missing)}")
    arrays["identity"], arrays["expression"] = int(arrays["identity"]), int(arrays["expression"])
    return HeadSdfSample(**arrays)


def dataset_files(out_dir: str | Path, split: str = "train") -> list[Path]:
    """The files of one split (``train``, ``test_identity``, ...) listed in ``out_dir/manifest.json``."""
    manifest_path = Path(out_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{manifest_path}: not a heads dataset manifest ({type(exc).__name__})") from None
    return [Path(out_dir) / f["file"] for f in files if f["split"] == split]


def plan_items(n_identities: int, n_expressions_per_identity: int, config: HeadsDataConfig) -> list[HeadItem]:
    """The heads of the dataset and their splits (module docstring)."""
    if n_identities < 1 or n_expressions_per_identity < 1:
        raise InputError(f"need at least 1 identity and 1 expression per identity, got "
                         f"{n_identities} and {n_expressions_per_identity}")
    h_id = config.heldout_identities
    h_id = (max(1, n_identities // 10) if n_identities >= 2 else 0) if h_id is None else h_id
    h_ex = config.heldout_expressions
    h_ex = (1 if n_expressions_per_identity >= 3 else 0) if h_ex is None else h_ex
    if not 0 <= h_id < n_identities or not 0 <= h_ex < n_expressions_per_identity:
        raise InputError(f"held-out counts must leave training data: heldout_identities={h_id} of "
                         f"{n_identities}, heldout_expressions={h_ex} of {n_expressions_per_identity}")
    items = []
    for i in range(n_identities):
        test_id = i >= n_identities - h_id
        for j in range(n_expressions_per_identity):
            split = ("test_identity" if test_id
                     else "test_expression" if j >= n_expressions_per_identity - h_ex else "train")
            items.append(HeadItem(i, j, split, "neutral" if j == 0 else "random"))
        if test_id and config.extreme_eval:
            for e, name in enumerate(EXTREME_NAMES):
                items.append(HeadItem(i, n_expressions_per_identity + e, "test_extreme", f"extreme:{name}"))
    return items


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def head_weights(kit: IctFaceKit, item: HeadItem, seed: int, config: HeadsDataConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(w_id [K_id], w_ex [K_ex])`` of a planned head, from the seed and its indices only."""
    w_id = sample_identity(_rng(seed, _ID_STREAM, item.identity), 1, config.identity_scale, kit.n_identity)[0]
    if item.kind == "neutral":
        w_ex = np.zeros(kit.n_expression, np.float32)
    elif item.kind.startswith("extreme:"):
        w_ex = extreme_expression(kit.expression_names, item.kind.split(":", 1)[1])
    else:
        w_ex = sample_expression(_rng(seed, _EX_STREAM, item.identity, item.expression), 1,
                                 kit.expression_names, config.expression_prior)[0]
    return w_id, w_ex


def make_head_sample(kit: IctFaceKit, topology: SurfaceTopology, w_id: np.ndarray, w_ex: np.ndarray,
                     rng: np.random.Generator, config: HeadsDataConfig) -> dict[str, np.ndarray]:
    """The arrays of one head's npz (module docstring) for weights ``w_id [K_id]``, ``w_ex [K_ex]``."""
    vertices = frame.ict_to_model(kit.vertices(w_id, w_ex).astype(np.float64))  # [V, 3]
    surface = outer_surface(vertices, topology, config.surface)
    both = sample_surface(surface, rng, config.n_surface + config.n_near)  # one pass for both uses
    on_points, on_normals = both.points[: config.n_surface], both.normals[: config.n_surface]
    counts = np.full(len(config.near_sigmas), config.n_near // len(config.near_sigmas))
    counts[: config.n_near - counts.sum()] += 1
    base = both.points[config.n_surface:]
    sigma = np.repeat(np.asarray(config.near_sigmas, float), counts)  # [Nn]
    near = base + rng.normal(size=base.shape) * sigma[:, None]
    space = sample_volume(rng, config.n_space)
    sdf = signed_distance(surface, np.concatenate([near, space]))
    f32 = np.float32
    return {
        "w_id": np.asarray(w_id, f32), "w_ex": np.asarray(w_ex, f32),
        "surface_points": on_points.astype(f32), "surface_normals": on_normals.astype(f32),
        "surface_is_face": both.is_face[: config.n_surface],
        "near_points": near.astype(f32), "near_sdf": sdf[: len(near)].astype(f32), "near_sigma": sigma.astype(f32),
        "space_points": space.astype(f32), "space_sdf": sdf[len(near):].astype(f32),
        "landmarks": landmark_positions(vertices, kit.landmarks68).astype(f32),
    }


def _is_complete(path: Path) -> bool:
    try:
        with np.load(path) as data:
            return all(k in data.files for k in _KEYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _manifest(kit: IctFaceKit, n_identities: int, n_expressions: int, seed: int, config: HeadsDataConfig,
              items: list[HeadItem]) -> dict:
    splits: dict[str, int] = {}
    for it in items:
        splits[it.split] = splits.get(it.split, 0) + 1
    return {
        "format": FORMAT,
        "seed": seed,
        "n_identities": n_identities,
        "n_expressions_per_identity": n_expressions,
        "config": dataclasses.asdict(config),
        "ict": {"source": kit.source, "n_identity_modes": kit.n_identity,
                "expression_names": list(kit.expression_names), "n_vertices": kit.n_vertices},
        "frame": {"units_per_cm": frame.UNITS_PER_CM, "head_centre_cm": frame.HEAD_CENTRE_CM.tolist(),
                  "box_min": frame.BOX_MIN.tolist(), "box_max": frame.BOX_MAX.tolist(),
                  "axes": "+Y up, +Z out of the face, +X head's left",
                  "transform": "model = (ict_cm - head_centre_cm) * units_per_cm"},
        "counts": {"files": len(items), **splits},
        "files": [dataclasses.asdict(it) | {"file": it.filename} for it in items],
    }


def _same_dataset(old: dict, new: dict) -> bool:
    keys = ("format", "seed", "n_identities", "n_expressions_per_identity", "config")
    old_ict = {k: old.get("ict", {}).get(k) for k in ("n_identity_modes", "expression_names", "n_vertices")}
    new_ict = {k: new["ict"][k] for k in ("n_identity_modes", "expression_names", "n_vertices")}
    return all(json.dumps(old.get(k), sort_keys=True) == json.dumps(new[k], sort_keys=True) for k in keys) \
        and old_ict == new_ict


def generate_heads_dataset(out_dir: str | Path, n_identities: int, n_expressions_per_identity: int,
                           seed: int = 0, *, kit: IctFaceKit | None = None, ict_path: str | Path | None = None,
                           config: HeadsDataConfig = HeadsDataConfig(), progress: bool = True) -> HeadsDataset:
    """Write (or complete) the SDF dataset of ``n_identities x n_expressions_per_identity`` heads.

    Args:
        out_dir: output folder (created); see the module docstring for its layout.
        n_identities, n_expressions_per_identity: dataset size (expression slot 0 is neutral).
        seed: global seed; the same seed and config give identical files.
        kit: the ICT-FaceKit model; read from ``ict_path`` (default :func:`default_ict_path`) if None.
        config: sample sizes, splits, surface and expression settings.
        progress: show a tqdm bar.
    """
    if kit is None:
        kit = load_ict(ict_path if ict_path is not None else default_ict_path())
    out_dir = Path(out_dir)
    items = plan_items(n_identities, n_expressions_per_identity, config)
    manifest = _manifest(kit, n_identities, n_expressions_per_identity, seed, config, items)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            raise InputError(f"{manifest_path}: unreadable manifest; use an empty --out folder") from None
        if old.get("format") != FORMAT:
            raise InputError(f"{manifest_path}: belongs to another kind of dataset "
                             f"({old.get('format', 'no format')}); use another --out folder")
        if not _same_dataset(old, manifest):
            raise InputError(f"{out_dir}: holds a dataset with a different seed or configuration; "
                             f"use another --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest | {"complete": False}, indent=1))
    topology = surface_topology(kit.triangles, kit.n_vertices)
    written = skipped = 0
    start = time.perf_counter()
    for item in tqdm(items, desc="heads", unit="head", disable=not progress):
        path = out_dir / item.filename
        if path.exists() and _is_complete(path):
            skipped += 1
            continue
        w_id, w_ex = head_weights(kit, item, seed, config)
        arrays = make_head_sample(kit, topology, w_id, w_ex,
                                  _rng(seed, _POINT_STREAM, item.identity, item.expression), config)
        arrays["identity"] = np.int64(item.identity)
        arrays["expression"] = np.int64(item.expression)
        _write_npz(path, arrays)
        written += 1
    seconds = time.perf_counter() - start
    run = {"written": written, "skipped": skipped, "seconds": round(seconds, 3),
           "heads_per_second": round(written / seconds, 4) if written and seconds > 0 else None}
    manifest_path.write_text(json.dumps(manifest | {"complete": True, "last_run": run}, indent=1))
    return HeadsDataset(out_dir=out_dir, manifest_path=manifest_path, items=tuple(items), n_written=written,
                        n_skipped=skipped, seconds=seconds)
