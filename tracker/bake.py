"""Baking codes into fixed-topology vertices, and a track file into an animation.

:class:`Baker` owns one identity's fixed-topology mesh (:class:`model.topology.FixedTopology`: marching cubes
once at the neutral expression, carried into canonical space) and turns one expression code per frame into
``[V, 3]`` vertices by inverting the backward deformation, warm-started from the previous frame. Every frame
has the same vertices and faces, so any point-cache format can hold the result.

:func:`export_track` bakes every frame of a track file (:mod:`tracker.trackfile`) and streams it to an
exporter (format from the extension), optionally with the tracked rigid head motion as a per-frame transform.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from exporters.base import ExportResult
from exporters.gltf import GLTFWriter
from exporters.mdd import MDDWriter
from exporters.usd import USDWriter
from exporters.registry import open_writer, writer_class
from model.checkpoint import default_weights, load_checkpoint
from model.errors import InputError
from model.arkit import rig_for_head
from model.arkit_regressor import default_arkit_regressor
from model.forward_deformation import forward_for_head, head_condition, posed_start, resolve_posing
from model.head import HeadLayer
from model.topology import FixedTopology
from tracker.trackfile import Track, hold_over_gaps, load_track
from tracker.tto import axis_angle_to_matrix

#: Marching-cubes box (model units) when a head checkpoint records none (MonoNPHM's box).
DEFAULT_BBOX = ((-0.55, -0.5, -0.95), (0.55, 0.75, 0.4))
#: OpenCV camera (x right, y down, z forward) -> the exporters' Y-up frame (x right, y up, camera looking
#: down -Z, as OpenGL): a rotation by 180 degrees about x.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def neutral_expression(codes: dict[str, Tensor], expr_dim: int) -> Tensor:
    """``[D_ex]``: mean expression code of the neutral training heads of a head checkpoint's code tables
    (``z_ex [N, D_ex]``, ``is_neutral [N]``); zeros when the tables are absent or hold no neutral head."""
    z_ex, neutral = codes.get("z_ex"), codes.get("is_neutral")
    if z_ex is None or neutral is None or not bool(neutral.bool().any()):
        return torch.zeros(expr_dim)
    if z_ex.dim() != 2 or z_ex.shape[1] != expr_dim or neutral.shape != z_ex.shape[:1]:
        raise InputError(f"head code tables: z_ex must be [N, {expr_dim}] and is_neutral [N], got "
                         f"{list(z_ex.shape)} and {list(neutral.shape)}")
    return z_ex[neutral.bool()].mean(0)


def head_bbox(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """``(lo, hi)`` marching-cubes box corners (model units) recorded in a head checkpoint's meta, else
    :data:`DEFAULT_BBOX`."""
    return list(meta.get("bbox_min", DEFAULT_BBOX[0])), list(meta.get("bbox_max", DEFAULT_BBOX[1]))


MESH_BAND = 0.5
"""Narrow-band margin of the marching cubes (:func:`model.mesh.extract_mesh`, in cell diagonals): 0.5 is exact
for a 1-Lipschitz SDF. On the shipped head at 128^3 it gave the same vertices as 1.0 for the code of ICT's mean
head and three training identities, with a third fewer SDF evaluations (3.6 -> 2.5 s on two threads)."""


class Baker:
    """One identity's fixed-topology mesh, posed per frame by an expression code.

    Args:
        layer: the head model (:class:`model.head.HeadLayer`), used without gradients.
        z_id: ``[1, D_id]`` identity code.
        z_neutral: ``[1, D_ex]`` expression at which the mesh is extracted (:func:`neutral_expression`).
        bbox_min, bbox_max: marching-cubes box corners, model units (:func:`head_bbox`).
        resolution: marching-cubes resolution (grid points per box side).
        max_iter: most inversion iterations per frame (warm-started, 20 is plenty at video frame rates).
        tol: inversion tolerance, model units (1e-4 = 0.025 mm; against 1e-5, 30 % faster on the example
            track with vertices at most 0.14 mm apart).
        forward: the head's forward deformation (:mod:`model.forward_deformation`).
        posing: ``"forward"`` (default with a forward model): the vertices are posed by one pass of it, no
            inversion; ``"inverse"``: the backward field is inverted per frame, started from the forward
            prediction when there is one (else warm-started from the previous frame, which keeps an open
            mouth's lips nearly together: see :mod:`model.forward_deformation`).
        topology: the mesh, when it was extracted already (:func:`export_topology` of the same arguments:
            :mod:`tracker.background` extracts it in another process); ``None``: extracted here.

    :meth:`vertices` is stateful: each call starts from the previous call's solution and its inverse
    Jacobians (Broyden), so call it in frame order (or :meth:`reset` after a jump). Vertices are in model
    units (1 unit = 0.25 m), head frame.
    """

    def __init__(self, layer: HeadLayer, z_id: Tensor, z_neutral: Tensor, bbox_min: Sequence[float],
                 bbox_max: Sequence[float], resolution: int = 128, max_iter: int = 20, tol: float = 1e-4,
                 forward: Any = None, posing: str | None = None, topology: FixedTopology | None = None) -> None:
        if z_id.dim() != 2 or len(z_id) != 1:
            raise InputError(f"z_id must be [1, D_id], got {list(z_id.shape)}")
        if z_neutral.dim() != 2 or len(z_neutral) != 1:
            raise InputError(f"z_neutral must be [1, D_ex], got {list(z_neutral.shape)}")
        self.layer = layer
        self.forward = forward
        self.posing = resolve_posing(posing, forward)
        self.z_id = z_id.detach().float()  # [1, D_id]
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.topology = topology if topology is not None else export_topology(layer, self.z_id, z_neutral, bbox_min,
                                                                              bbox_max, resolution)
        self._features: Tensor | None = None  # [V, hidden] the forward network's per-vertex part (forward posing)
        if self.posing == "forward":
            with torch.no_grad():
                self._features = forward.point_features(self.topology.canonical_vertices.float())
        self._x_prev: Tensor | None = None  # [1, V, 3] last solution (warm start)
        self._inv_prev: Tensor | None = None  # [1, V, 3, 3] its inverse Jacobians (Broyden warm start)
        self.frames = 0  # frames baked
        self.unconverged = 0  # vertex-frames that did not reach the inversion tolerance

    @property
    def faces(self) -> np.ndarray:
        """``[F, 3]`` int64 vertex indices, counter-clockwise seen from outside."""
        return self.topology.faces.cpu().numpy()

    @property
    def n_vertices(self) -> int:
        """``V``."""
        return len(self.topology.canonical_vertices)

    def reset(self) -> None:
        """Forget the warm start (the next frame starts from the neutral vertices)."""
        self._x_prev = None
        self._inv_prev = None

    def vertices(self, z_ex: Tensor) -> np.ndarray:
        """Posed vertices ``[V, 3]`` float32 (model units) for one expression code ``z_ex [1, D_ex]``."""
        if z_ex.dim() != 2 or len(z_ex) != 1:
            raise InputError(f"z_ex must be [1, D_ex], got {list(z_ex.shape)}")
        with torch.no_grad():
            if self.posing == "forward":  # forward_posed, with the vertices' part of the network computed once
                cond = head_condition(self.layer, self.z_id, z_ex.detach().float())
                x = self.topology.canonical_vertices.float() + self.forward.offsets_at(self._features, cond)[0]
                self.frames += 1
                return x.cpu().numpy().astype(np.float32)
            x_init = self._x_prev
            if self.forward is not None:
                x_init = posed_start(self.forward, self.layer, self.topology.canonical_vertices[None].float(),
                                     self.z_id, z_ex.detach().float())
            res = self.topology.posed_vertices(self.layer, self.z_id, z_ex.detach().float(), x_init=x_init,
                                               max_iter=self.max_iter, tol=self.tol,
                                               inv_jacobian_init=self._inv_prev)
        self._x_prev, self._inv_prev = res.x, res.inv_jacobian  # [1, V, 3], [1, V, 3, 3]
        self.frames += 1
        self.unconverged += int((~res.converged).sum())
        return res.x[0].cpu().numpy().astype(np.float32)

    def note(self) -> str | None:
        """A one-line note when some vertices did not reach the inversion tolerance, else ``None``."""
        if not self.unconverged:
            return None
        total = self.frames * self.n_vertices
        return (f"note: {self.unconverged} of {total} vertex-frames ({100 * self.unconverged / total:.3f} %) did "
                "not reach the inversion tolerance (kept at their best iterate)")

    @staticmethod
    def transform(pose: np.ndarray | Tensor, y_up: bool = True) -> np.ndarray:
        """``[4, 4]`` float64 head transform (column vectors, model units) of a pose ``[6]``.

        The pose is model -> camera in OpenCV convention (rotvec in radians, translation in model units):
        ``x_cam = R(rotvec) @ x + t``. With ``y_up`` (default) the camera frame is turned to the exporters'
        convention (Y up; the camera at the origin looking down -Z, as in OpenGL), i.e. ``diag(1, -1, -1)``
        is applied after the pose, so a head facing the camera faces +Z as the exporters expect; without it
        the matrix is the raw OpenCV model -> camera transform.
        """
        p = torch.as_tensor(np.asarray(pose, dtype=np.float64))
        if p.shape != (6,) or not bool(torch.isfinite(p).all()):
            raise InputError(f"pose must be a finite [6] (rotvec, t), got shape {list(p.shape)}")
        m = np.eye(4)
        m[:3, :3] = axis_angle_to_matrix(p[:3]).numpy()
        m[:3, 3] = p[3:].numpy()
        return CV_TO_GL @ m if y_up else m


def export_topology(layer: HeadLayer, z_id: Tensor, z_neutral: Tensor, bbox_min: Sequence[float],
                    bbox_max: Sequence[float], resolution: int = 128) -> FixedTopology:
    """The export mesh of identity ``z_id [1, D_id]``: marching cubes of its neutral head (``z_neutral
    [1, D_ex]``) at ``resolution`` in the head's box, band :data:`MESH_BAND`, carried into canonical space."""
    with torch.no_grad():
        return FixedTopology.extract(layer, z_id.detach().float(), z_neutral.detach().float(), bbox_min, bbox_max,
                                     resolution, band=MESH_BAND)


def resolve_head(head: str | os.PathLike | None, recorded: str = "default") -> Path:
    """The head checkpoint to use: ``head`` when given, else the one a track records (``"default"`` = the
    shipped ``model/weights/head_default.pt``). A recorded path that is gone is an :class:`InputError`."""
    if head is not None:
        return Path(head)
    if recorded in ("", "default"):
        return default_weights("head_default")
    path = Path(recorded)
    if not path.is_file():
        raise InputError(f"{path}: the head checkpoint the track was made with is missing; give the head")
    return path


def export_track(track_or_path: Track | str | os.PathLike, out: str | os.PathLike,
                 head: str | os.PathLike | None = None, resolution: int = 128, with_pose: bool = False,
                 progress: bool = True, *, max_iter: int = 20, fps: float | None = None, units: str = "m",
                 rig: str | None = None, **options: Any) -> ExportResult:
    """Bake every frame of a track into a fixed-topology animation written to ``out``.

    Args:
        track_or_path: a :class:`~tracker.trackfile.Track` or a track file.
        out: output path; the format follows the extension (every format of :mod:`exporters`). An unknown
            extension fails before anything is loaded.
        head: head checkpoint; default: the one the track records (see :func:`resolve_head`). Codes belong
            to the head they were tracked with: a head of other code sizes is refused.
        resolution: marching-cubes resolution of the mesh (extracted once, at the neutral expression of
            the head's training codes).
        with_pose: carry the tracked rigid head motion as a per-frame transform (:meth:`Baker.transform`,
            Y-up camera frame); formats with a transform hierarchy store it apart from the points, the
            others bake it in. Without it the head stays still in its own frame (expression only).
        fps: output frame rate; default the track's. One output frame per track row (frame ``i`` at
            ``i / fps``; the true times stay in the track's ``time_s``).
        units, **options: passed to :func:`exporters.open_writer` (``blendshapes``, ``morph_targets``).
        rig: ``"arkit"``: write the identity's personalised ARKit rig animated by the track's ARKit curves
            (:mod:`tracker.arkit`; ``.glb``, ``.gltf``, ``.usd*`` only); ``None`` or ``"pca"``: the baked mesh
            animation (with a PCA basis where ``blendshapes``/``morph_targets`` ask for one). A ``.csv`` ``out``
            is a Live Link Face take of the curves. Curves a track lacks are solved here.

    Gap frames (no face seen) hold the last usable frame's expression (and pose); gaps at the start take
    the first usable frame's. ``result.extras`` gets ``gap_frames`` and ``unconverged_vertex_frames``.
    """
    arkit_out = check_arkit_target(out, rig)
    cls = None if arkit_out else writer_class(out)  # unknown extension: fail before any work
    if not arkit_out:
        for k, v in pca_options(out, rig).items():
            options.setdefault(k, v)
    track = track_or_path if isinstance(track_or_path, Track) else load_track(track_or_path)
    head_path = resolve_head(head, track.head)
    baker = identity_baker(head_path, track.z_id, resolution, max_iter, expr_dim=track.z_ex.shape[1],
                           source=f"the track ({track.source})")
    z_ex = torch.from_numpy(hold_over_gaps(track.z_ex, track.usable))  # [T, D_ex]
    poses = hold_over_gaps(track.pose, track.usable) if with_pose else None  # [T, 6]
    fps = track.fps if fps is None else fps
    if arkit_out:
        if options:
            raise InputError(f"{out}: {', '.join(options)}: not with an ARKit rig or take")
        return export_arkit(track, out, baker, head_path, with_pose=with_pose, fps=fps, units=units)
    if cls is MDDWriter:
        options.setdefault("n_frames", track.n_frames)
    with open_writer(out, baker.faces, baker.n_vertices, fps, units=units, **options) as writer:
        for i in tqdm(range(track.n_frames), desc="frames", unit="frame", disable=not progress):
            writer.append(baker.vertices(z_ex[i:i + 1]), None if poses is None else baker.transform(poses[i]))
    result = writer.result
    result.extras.update(gap_frames=int((~track.usable).sum()), unconverged_vertex_frames=baker.unconverged)
    note = baker.note()
    if note and progress:
        print(note)
    return result


RIGS = ("pca", "arkit")
"""``--rig``: what a blend-shape export holds: a PCA basis of the baked frames, or the personalised ARKit rig."""


def check_arkit_target(out: str | os.PathLike, rig: str | None) -> bool:
    """Whether ``out`` takes ARKit curves (a ``.csv`` take, or ``rig="arkit"``); :class:`InputError` (one
    line) for a rig the format cannot hold or an unknown rig."""
    from exporters.rig import check_rig_target

    if rig is not None and rig not in RIGS:
        raise InputError(f"--rig: unknown rig {rig!r}; known: {', '.join(RIGS)}")
    csv = Path(out).suffix.lower() == ".csv"
    if csv and rig == "pca":
        raise InputError(f"{out}: a .csv take holds ARKit curves; --rig pca needs a mesh format")
    if rig == "arkit" and not csv:
        check_rig_target(out)
    return csv or rig == "arkit"


def pca_options(out: str | os.PathLike, rig: str | None) -> dict[str, Any]:
    """Writer options of a mesh export (:class:`InputError` for an unknown extension): ``rig="pca"`` asks
    USD for 32 PCA blend shapes (glTF always writes PCA morph targets) and is refused by other formats."""
    cls = writer_class(out)
    if rig != "pca":
        return {}
    if cls is USDWriter:
        return {"blendshapes": 32}
    if cls is GLTFWriter:
        return {}
    raise InputError(f"{out}: --rig pca needs a format with blend shapes (.usd .usdc .usda .glb .gltf)")


def identity_baker(head_path: str | os.PathLike, z_id: np.ndarray, resolution: int = 128, max_iter: int = 20, *,
                   expr_dim: int | None = None, source: str = "the codes") -> Baker:
    """The head checkpoint at ``head_path`` loaded as a :class:`Baker` of identity ``z_id [D_id]`` (its mesh,
    its forward deformation); :class:`InputError` when the codes (``expr_dim``: their expression size, if
    known) are not this head's."""
    layer, codes, meta = load_checkpoint(head_path)
    cfg = layer.cfg
    z = torch.as_tensor(np.asarray(z_id, np.float32)).reshape(1, -1)
    if z.shape[1] != cfg.id_dim or (expr_dim is not None and expr_dim != cfg.expr_dim):
        raise InputError(f"{head_path}: takes z_id [{cfg.id_dim}] and z_ex [{cfg.expr_dim}] but {source} has "
                         f"[{z.shape[1]}]" + (f" and [{expr_dim}]" if expr_dim is not None else "")
                         + ": made with another head model")
    return Baker(layer, z, neutral_expression(codes, cfg.expr_dim)[None], *head_bbox(meta), resolution=resolution,
                 max_iter=max_iter, forward=forward_for_head(head_path))


def arkit_rig_of(head_path: str | os.PathLike) -> Any:
    """The ARKit rig asset of a head (:func:`model.arkit.rig_for_head`); :class:`InputError` when it has none."""
    arkit_rig = rig_for_head(head_path)
    if arkit_rig is None:
        raise InputError(f"{head_path}: this head model has no ARKit rig asset (make one with `nphm-train arkit-rig`)")
    return arkit_rig


def export_arkit(track: Track, out: str | os.PathLike, baker: Baker, head_path: str | os.PathLike, *,
                 with_pose: bool, fps: float, units: str = "m") -> ExportResult:
    """Write ``track``'s ARKit curves as a Live Link Face take (``.csv``) or its identity's personalised ARKit
    rig (:func:`tracker.arkit.write_arkit`), giving the track its curves first when it lacks them (the shipped
    landmark regressor)."""
    from tracker.arkit import CurveSolver, PersonalRig, track_curves, write_arkit

    arkit_rig = arkit_rig_of(head_path)
    canonical = baker.topology.canonical_vertices
    solver = None
    if track.arkit is None:
        solver = track_curves(track, CurveSolver(baker.layer, baker.forward, baker.z_id, arkit_rig, canonical),
                              default_arkit_regressor())
    personal = None
    if Path(out).suffix.lower() != ".csv":
        personal = (solver.personal if solver is not None
                    else PersonalRig.build(baker.layer, baker.forward, baker.z_id, arkit_rig, canonical))
    return write_arkit(out, track, personal, baker.faces, with_pose=with_pose, fps=fps, units=units)


def add_arkit_curves(track: Track, regressor: Any = None, head: str | os.PathLike | None = None,
                     resolution: int = 128, **solver_options: Any) -> Any:
    """Give a track new ARKit curves (tracked before they existed, or to compare ways of making them): the
    readings of ``regressor`` (e.g. :func:`model.arkit_regressor.default_arkit_regressor`), or with ``None``
    the solve of the tracked expression, whose :class:`~tracker.arkit.CurveSolver` takes ``solver_options``
    (:func:`tracker.arkit.track_curves`); returns the solver."""
    from tracker.arkit import CurveSolver, track_curves

    head_path = resolve_head(head, track.head)
    baker = identity_baker(head_path, track.z_id, resolution, expr_dim=track.z_ex.shape[1],
                           source=f"the track ({track.source})")
    solver = CurveSolver(baker.layer, baker.forward, baker.z_id, arkit_rig_of(head_path),
                         baker.topology.canonical_vertices, **solver_options)
    return track_curves(track, solver, regressor)


def export_personal_rig(z_id: np.ndarray, out: str | os.PathLike, head: str | os.PathLike | None = None,
                        resolution: int = 128, fps: float = 30.0, units: str = "m") -> ExportResult:
    """The personalised ARKit rig of identity ``z_id [D_id]`` alone (neutral mesh + 52 named targets, every
    weight 0 on its one frame), for driving one's own likeness with any ARKit source (``.glb``, ``.gltf``,
    ``.usd*``)."""
    from exporters.rig import BlendShapeRig, check_rig_target, write_rig
    from model.arkit import ARKIT_NAMES
    from tracker.arkit import PersonalRig

    check_rig_target(out)
    head_path = resolve_head(head)
    baker = identity_baker(head_path, z_id, resolution)
    personal = PersonalRig.build(baker.layer, baker.forward, baker.z_id, arkit_rig_of(head_path),
                                 baker.topology.canonical_vertices)
    return write_rig(out, baker.faces, BlendShapeRig(personal.neutral, personal.offsets, list(ARKIT_NAMES)),
                     np.zeros((1, len(ARKIT_NAMES)), np.float32), fps, units=units)
