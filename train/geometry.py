"""Ground-truth geometry of an ICT-FaceKit head in the canonical frame: outer surface, SDF, samples.

All positions are canonical model units (:mod:`train.frame`: 1 cm = 0.04, +Y up, +Z out of the face).

**The outer surface.** ICT-FaceKit is many overlapping shells, open at the neck, not watertight. The
surface whose signed distance the head model learns is built per head as follows:

- *Skin*: the face [0, 9409) and the back of the head and neck [9409, 11248), open at the neck, the
  mouth and the two eyes.
- *Caps*: every boundary loop is closed by a fan of triangles around one new vertex at the loop's
  centroid, oriented with the surface. The neck's cap lies below the cut (it only makes the sign sure
  there); the eye openings are capped at the eyelid rims and the mouth at the ring where ICT's face part
  meets its mouth socket (about 1 cm behind the lip front), so an open mouth is a shallow recess and
  closed eyes and lips leave no hidden pockets.
- *Eyes*: the four closed eyeball shells (sclera and iris/cornea, left and right). The surface is the
  boundary of the union of the skin solid and the eyeballs: a triangle is kept when its centroid lies
  outside every other shell (generalised winding number < 0.5), so the covered backs of the eyeballs
  and the caps behind the corneas are dropped and the visible cornea stays.
- *Options* (:class:`SurfaceConfig`): ``eye_sockets=True`` keeps ICT's eye-socket pockets instead of the
  eye caps (open eyes then show the eyeball recessed behind the lids, but closed eyes leave an air pocket
  inside the head); ``mouth_depth_cm > 0`` keeps that much of ICT's mouth socket (the whole socket is the
  oral cavity, about 10 cm deep) and caps it there (a deeper open mouth, but closed lips then enclose
  a hidden recess). On the neutral head (1,500 cm^2 above the cut), the defaults leave 12 cm^2 hidden
  from all of 48 ray directions (closed-lip slit, nostrils, ears), against 16 with the eye pockets and
  57 with 1 cm of mouth socket.
- *Not part of it*: teeth, gums, tongue, eyelashes, lacrimal fluid and the eye blend/occlusion meshes.
- *Neck*: the solid is cut by the plane ``y = NECK_CUT_Y`` (-0.4 units, about 4 cm below the chin) and
  the head surface ends there with a flat cap. The signed distance is ``max(d_mesh(p), cut_y - p_y)``:
  exact inside and away from the cap's rim, a lower bound just outside the rim.

**Sign.** Negative inside, positive outside. The sign comes from the generalised winding number
(libigl's fast winding number) of the surface, inside where it exceeds 0.5, which is robust to the
small cracks where kept shells meet; the magnitude is the exact distance to the nearest triangle
(libigl AABB tree).
"""

from __future__ import annotations

from dataclasses import dataclass

import igl
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from train.frame import BOX_MAX, BOX_MIN, NECK_CUT_Y, UNITS_PER_CM
from train.ict import PARTS


@dataclass(frozen=True)
class SurfaceConfig:
    """How the outer surface is built (module docstring)."""

    include_eyeballs: bool = True     # add the visible parts of the eyeball shells
    mouth_depth_cm: float = 0.0       # depth of the mouth recess kept behind the lips, ICT cm; 0 = flat
    eye_sockets: bool = False         # keep the eye-socket pockets instead of capping the eye openings
    neck_cut_y: float = NECK_CUT_Y    # model units: the solid ends below this plane


@dataclass(frozen=True)
class SurfaceTopology:
    """The parts of a (fixed) ICT topology the outer surface is made of; compute once per kit."""

    skin: np.ndarray                  # [Ts, 3] int64 face and head/neck triangles
    eye_sockets: np.ndarray           # [Tp, 3] int64 triangles touching the eye sockets (no mouth socket)
    mouth_socket: np.ndarray          # [Tm, 3] int64 triangles touching the mouth socket (no other part)
    lip_vertices: np.ndarray          # [Vl] int64 skin vertices the mouth socket attaches to
    eye_shells: tuple[np.ndarray, ...]  # closed eyeball components, each [Te, 3] int64
    n_vertices: int


@dataclass(frozen=True)
class HeadSurface:
    """The outer surface of one head (model units); the solid is cut at ``y = neck_cut_y``."""

    vertices: np.ndarray     # [V + C, 3] float64: the ICT vertices, then one centre vertex per cap
    triangles: np.ndarray    # [T, 3] int64
    is_face: np.ndarray      # [T] bool: triangle of the ICT face area (all vertices in [0, 9409))
    neck_cut_y: float


@dataclass(frozen=True)
class SurfaceSamples:
    """Points on the outer surface with outward unit normals."""

    points: np.ndarray       # [N, 3] float64 model units
    normals: np.ndarray      # [N, 3] float64 unit, outward (the neck cap: (0, -1, 0))
    is_face: np.ndarray      # [N] bool: on the ICT face area


def _in_range(tri: np.ndarray, r: range) -> np.ndarray:
    return (tri >= r.start) & (tri < r.stop)


def surface_topology(triangles: np.ndarray, n_vertices: int) -> SurfaceTopology:
    """Split an ICT triangle list ``[T, 3]`` into the parts the outer surface uses."""
    triangles = np.asarray(triangles, dtype=np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must have shape [T, 3], got {triangles.shape}")
    skin_stop = PARTS["eye_sockets"].stop
    in_skin_parts = (triangles < skin_stop).all(1)
    touches_socket = _in_range(triangles, PARTS["mouth_socket"]).any(1)
    touches_eye_socket = _in_range(triangles, PARTS["eye_sockets"]).any(1)
    skin = triangles[in_skin_parts & ~touches_socket & ~touches_eye_socket]
    eye_sockets = triangles[in_skin_parts & ~touches_socket & touches_eye_socket]
    socket = triangles[in_skin_parts & touches_socket]
    lip_vertices = np.unique(socket[~_in_range(socket, PARTS["mouth_socket"])])
    eyes = triangles[_in_range(triangles, PARTS["eyeballs"]).all(1)]
    shells: list[np.ndarray] = []
    if len(eyes):
        adj = sp.coo_matrix((np.ones(eyes.size), (eyes.ravel(), eyes[:, [1, 2, 0]].ravel())),
                            shape=(n_vertices, n_vertices))
        _, label = csgraph.connected_components(adj, directed=False)
        tri_label = label[eyes[:, 0]]
        shells = [eyes[tri_label == c] for c in np.unique(tri_label)]
    return SurfaceTopology(skin=skin, eye_sockets=eye_sockets, mouth_socket=socket,
                           lip_vertices=lip_vertices, eye_shells=tuple(shells), n_vertices=int(n_vertices))


def _cap_loops(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close every boundary loop with a fan of triangles around the loop's centroid.

    Returns the vertices with the centres appended ``[V + C, 3]`` and the cap triangles ``[Tc, 3]``,
    oriented so that each boundary edge is used in the opposite direction to its mesh triangle.
    """
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])  # [3T, 2]
    centres, caps = [], []
    for loop in igl.boundary_loop_all(triangles):
        loop = np.asarray(loop, dtype=np.int64)
        if len(loop) < 3:
            continue
        c = len(vertices) + len(centres)
        a, b = loop, np.roll(loop, -1)
        if np.any((edges[:, 0] == a[0]) & (edges[:, 1] == b[0])):
            a, b = b, a  # the mesh uses a0 -> b0, so the cap uses b0 -> a0
        caps.append(np.stack([a, b, np.full_like(a, c)], axis=1))
        centres.append(vertices[loop].mean(0))
    if not centres:
        return vertices, np.zeros((0, 3), np.int64)
    return np.concatenate([vertices, np.array(centres)]), np.concatenate(caps)


def outer_surface(vertices: np.ndarray, topology: SurfaceTopology,
                  config: SurfaceConfig = SurfaceConfig()) -> HeadSurface:
    """The outer surface of one head.

    Args:
        vertices: ``[V, 3]`` ICT vertex positions of the head in model units (``ict_to_model``).
        topology: from :func:`surface_topology` of the same kit.
        config: what the surface is made of.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.shape != (topology.n_vertices, 3):
        raise ValueError(f"vertices must have shape [{topology.n_vertices}, 3], got {vertices.shape}")
    skin = topology.skin
    if config.eye_sockets:
        skin = np.concatenate([skin, topology.eye_sockets])
    if config.mouth_depth_cm > 0 and len(topology.mouth_socket):
        lip_z = vertices[topology.lip_vertices, 2].mean()
        depth_ok = vertices[:, 2] >= lip_z - config.mouth_depth_cm * UNITS_PER_CM
        keep = depth_ok[topology.mouth_socket].all(1)
        skin = np.concatenate([skin, topology.mouth_socket[keep]])
    verts, caps = _cap_loops(vertices, skin)
    shells = [np.concatenate([skin, caps])]
    if config.include_eyeballs:
        shells += list(topology.eye_shells)
    # winding numbers add over triangle sets: w_others(i) = sum_{j != i} w_j, one tree per shell
    centroids = [verts[shell].mean(1) for shell in shells]  # each [Ti, 3]
    w_others = [np.zeros(len(shell)) for shell in shells]
    for j, shell in enumerate(shells):
        idx = [i for i in range(len(shells)) if i != j]
        if not idx:
            continue
        w = igl.fast_winding_number(verts, shell, np.concatenate([centroids[i] for i in idx]))
        for i, part in zip(idx, np.split(w, np.cumsum([len(centroids[i]) for i in idx])[:-1])):
            w_others[i] += part
    kept = [shell[w < 0.5] for shell, w in zip(shells, w_others)]
    triangles = np.concatenate(kept)
    is_face = (triangles < PARTS["face"].stop).all(1)
    return HeadSurface(vertices=verts, triangles=triangles, is_face=is_face, neck_cut_y=float(config.neck_cut_y))


def winding_number(surface: HeadSurface, points: np.ndarray) -> np.ndarray:
    """``[N]`` generalised winding number of the surface mesh (no neck cut) at ``points [N, 3]``."""
    points = _check_points(points)
    return igl.fast_winding_number(surface.vertices, surface.triangles, points)


def signed_distance(surface: HeadSurface, points: np.ndarray) -> np.ndarray:
    """``[N]`` signed distance (model units; negative inside) of the neck-cut head at ``points [N, 3]``."""
    points = _check_points(points)
    if len(points) == 0:
        return np.zeros(0)
    unsigned, _, _, _ = igl.signed_distance(points, surface.vertices, surface.triangles,
                                            sign_type=igl.SignedDistanceType.SIGNED_DISTANCE_TYPE_UNSIGNED)
    inside = igl.fast_winding_number(surface.vertices, surface.triangles, points) > 0.5
    d_mesh = np.where(inside, -np.abs(unsigned), np.abs(unsigned))
    return np.maximum(d_mesh, surface.neck_cut_y - points[:, 1])


def face_normals(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals ``[T, 3]`` (right-hand rule, outward for the outer surface) and areas ``[T]``."""
    e1 = vertices[triangles[:, 1]] - vertices[triangles[:, 0]]
    e2 = vertices[triangles[:, 2]] - vertices[triangles[:, 0]]
    cross = np.cross(e1, e2)
    norm = np.linalg.norm(cross, axis=1)
    return cross / np.maximum(norm, 1e-20)[:, None], 0.5 * norm


def sample_surface(surface: HeadSurface, rng: np.random.Generator, n: int) -> SurfaceSamples:
    """``n`` points uniform by area on the neck-cut surface (mesh above the cut plus the flat neck cap)."""
    v, f = surface.vertices, surface.triangles
    normals, areas = face_normals(v, f)
    areas = np.where(v[f][:, :, 1].max(1) > surface.neck_cut_y, areas, 0.0)
    mesh_area = float(areas.sum())
    # the neck cap: the solid's cross-section at y = cut, by rejection in the bounding box of the mesh
    lo, hi = v[f[areas > 0]].reshape(-1, 3)[:, [0, 2]].min(0), v[f[areas > 0]].reshape(-1, 3)[:, [0, 2]].max(0)

    def cap_points(m: int) -> np.ndarray:  # uniform in the box, kept where inside: uniform on the cap
        q = rng.uniform(lo, hi, size=(m, 2))
        q = np.stack([q[:, 0], np.full(m, surface.neck_cut_y), q[:, 1]], axis=1)
        return q[igl.fast_winding_number(v, f, q) > 0.5]

    n_probe = max(4096, n // 4)
    cand = cap_points(n_probe)
    cap_area = len(cand) / n_probe * float(np.prod(hi - lo))
    n_cap = int(rng.binomial(n, cap_area / (cap_area + mesh_area)))
    while len(cand) < n_cap:
        cand = np.concatenate([cand, cap_points(n_probe)])
    pts, nrm, face = [cand[:n_cap]], [np.tile([0.0, -1.0, 0.0], (n_cap, 1))], [np.zeros(n_cap, bool)]
    need = n - n_cap
    while need > 0:  # rejection of the parts of straddling triangles below the cut
        tri = rng.choice(len(f), size=int(need * 1.05) + 16, p=areas / mesh_area)
        r1, r2 = rng.random(len(tri)), rng.random(len(tri))
        s = np.sqrt(r1)
        bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)  # uniform on the triangle
        p = np.einsum("nk,nkd->nd", bary, v[f[tri]])
        ok = p[:, 1] >= surface.neck_cut_y
        p, tri = p[ok][:need], tri[ok][:need]
        pts.append(p)
        nrm.append(normals[tri])
        face.append(surface.is_face[tri])
        need -= len(p)
    order = rng.permutation(n)  # cap points are not all first
    return SurfaceSamples(points=np.concatenate(pts)[order], normals=np.concatenate(nrm)[order],
                          is_face=np.concatenate(face)[order])


def sample_volume(rng: np.random.Generator, n: int, box_min: np.ndarray = BOX_MIN,
                  box_max: np.ndarray = BOX_MAX) -> np.ndarray:
    """``[n, 3]`` points uniform in the box (model units; default MonoNPHM's box)."""
    return rng.uniform(np.asarray(box_min, float), np.asarray(box_max, float), size=(n, 3))


def landmark_positions(vertices: np.ndarray, landmark_indices: np.ndarray) -> np.ndarray:
    """``[68, 3]`` positions of the Multi-PIE 68 landmark vertices (same units as ``vertices [V, 3]``)."""
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape [V, 3], got {vertices.shape}")
    return vertices[np.asarray(landmark_indices, dtype=np.int64)]


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.ascontiguousarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    return points
