"""Ray-cast renders of a triangle mesh with per-pixel ground truth (Embree through trimesh).

A render casts one ray through every pixel centre (OpenCV camera, see ``train.camera``) against the mesh
given in **camera space** and reports, per pixel:

- ``mask``: the ray hits the mesh;
- ``depth``: z of the hit point in camera space (model units; 0 where nothing is hit);
- ``normals``: camera-space unit normals, interpolated from area-weighted vertex normals of the posed mesh
  and flipped to face the camera (``dot(n, ray) < 0``);
- ``canonical``: the canonical-space coordinate of the surface point seen: the hit's barycentric weights
  applied to the ``canonical_vertices`` given by the caller. For the ICT head these are the SAME identity's
  neutral-expression vertices in model units (``ict_to_model(kit.vertices(w_id, 0))``): expression and head
  pose are removed, identity is kept;
- ``face_mask``: the hit triangle belongs to the face region (ICT vertices 0..9408);
- ``part``: which part was hit (see ``PART_NAMES``; 0 = background);
- the hit triangle and barycentric weights, for anything else a caller wants to interpolate.

Landmarks (vertex ids) are projected with the camera and flagged visible when they lie in the image and
nothing is hit in front of them along the ray from the camera (a ray grazing the silhouette may slip past
the landmark vertex; it still counts as visible).

Which parts of ICT-FaceKit are rendered (:func:`ict_render_mesh`): skin (face, head and neck), mouth and
eye sockets (the inside of the mouth and around the eyes), gums and tongue, teeth, and the eyeballs
(sclera and iris). Lacrimal fluid, eye blend/occlusion shells and eyelashes are left out. The skin is open
at the neck: rays through the cut can see the inside of the neck, which is rendered like skin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import MissingDependencyError
from train.camera import model_to_camera, pixel_rays, project
from train.frame import NECK_CUT_Y, ict_to_model

PART_NAMES = ("background", "skin", "socket", "gums_tongue", "teeth", "sclera", "iris")
"""Part ids of :attr:`GeometryRender.part` (index = id)."""

# Inclusive ICT-FaceKit vertex ranges -> part id (from the ICT README and the material table).
ICT_PART_RANGES = (
    (0, 11247, 1),  # face + head and neck
    (11248, 14061, 2),  # mouth socket + eye sockets
    (14062, 17038, 3),  # gums and tongue
    (17039, 21450, 4),  # teeth
    (21451, 22220, 5),  # sclera left
    (22221, 23020, 6),  # iris left
    (23021, 23790, 5),  # sclera right
    (23791, 24590, 6),  # iris right
)
ICT_FACE_LAST = 9408  # face region = vertices 0..9408
ICT_EYE_RANGES = ((21451, 23020), (23021, 24590))  # eyeballs (sclera + iris): left, right


@dataclass
class RenderMesh:
    """The fixed topology a render uses (the vertices change per render, the triangles do not).

    Attributes:
        triangles: ``[T, 3]`` int64 vertex ids of the rendered triangles.
        part: ``[T]`` uint8 part id per triangle (see ``PART_NAMES``).
        face: ``[T]`` bool, triangle in the face region.
        landmarks: ``[L]`` int64 landmark vertex ids (68 Multi-PIE points for ICT).
        eye_vertices: per eye, the vertex ids of its eyeball (for iris and pupil when shading); may be empty.
    """

    triangles: np.ndarray
    part: np.ndarray
    face: np.ndarray
    landmarks: np.ndarray
    eye_vertices: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        self.triangles = np.asarray(self.triangles, dtype=np.int64)
        T = len(self.triangles)
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"RenderMesh: expected triangles [T, 3], got {self.triangles.shape}")
        self.part = np.asarray(self.part, dtype=np.uint8)
        self.face = np.asarray(self.face, dtype=bool)
        if self.part.shape != (T,) or self.face.shape != (T,):
            raise ValueError(f"RenderMesh: expected part and face [{T}], got {self.part.shape}, {self.face.shape}")
        self.landmarks = np.asarray(self.landmarks, dtype=np.int64).reshape(-1)


def ict_render_mesh(triangles: np.ndarray, landmarks: np.ndarray) -> RenderMesh:
    """Select and label the rendered ICT-FaceKit triangles (skin, sockets, mouth, teeth, eyeballs).

    Args:
        triangles: ``[T, 3]`` all ICT triangles (``IctFaceKit.triangles``).
        landmarks: ``[68]`` landmark vertex ids (``IctFaceKit.landmarks68``).
    A triangle's part is the part of its median vertex id (316 triangles join skin and mouth socket at the
    lips); it is in the face region when at least two of its vertices are.
    """
    tri = np.asarray(triangles, dtype=np.int64)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"ict_render_mesh: expected triangles [T, 3], got {tri.shape}")
    last = ICT_PART_RANGES[-1][1]
    tri = tri[tri.max(1) <= last]
    starts = np.array([r[0] for r in ICT_PART_RANGES])
    ids = np.array([r[2] for r in ICT_PART_RANGES], dtype=np.uint8)
    part = ids[np.searchsorted(starts, np.median(tri, axis=1), side="right") - 1]
    face = (tri <= ICT_FACE_LAST).sum(1) >= 2
    eyes = tuple(np.arange(a, b + 1) for a, b in ICT_EYE_RANGES)
    return RenderMesh(triangles=tri, part=part, face=face, landmarks=landmarks, eye_vertices=eyes)


@dataclass
class RayHits:
    """First hits of rays from the camera centre. All ``[H, W, ...]``; unhit pixels hold 0 / -1."""

    mask: np.ndarray  # [H, W] bool
    triangle: np.ndarray  # [H, W] int64, -1 where unhit
    bary: np.ndarray  # [H, W, 3] float64 weights of the triangle's 3 vertices
    points: np.ndarray  # [H, W, 3] float64 camera-space hit points
    rays: np.ndarray  # [H, W, 3] float64 unit ray directions


@dataclass
class GeometryRender:
    """Per-pixel ground truth of one render (``H x W``) plus projected landmarks.

    Units: model units for depth and canonical points; normals are unit vectors in camera space
    (OpenCV: x right, y down, z forward), facing the camera.
    """

    mask: np.ndarray  # [H, W] bool
    depth: np.ndarray  # [H, W] float64, camera z, 0 where unhit
    normals: np.ndarray  # [H, W, 3] float64, 0 where unhit
    canonical: np.ndarray  # [H, W, 3] float64, 0 where unhit
    face_mask: np.ndarray  # [H, W] bool
    part: np.ndarray  # [H, W] uint8, PART_NAMES ids
    triangle: np.ndarray  # [H, W] int64, index into RenderMesh.triangles, -1 where unhit
    bary: np.ndarray  # [H, W, 3] float64
    landmarks2d: np.ndarray  # [L, 2] float64 pixels (u, v)
    landmarks_depth: np.ndarray  # [L] float64 camera z
    landmarks_visible: np.ndarray  # [L] bool, not occluded and inside the image


def build_intersector(vertices: np.ndarray, triangles: np.ndarray):
    """An Embree ray intersector over the mesh (raises if embreex is missing: no slow fallback)."""
    import trimesh

    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except ImportError as exc:  # pragma: no cover - embreex is a declared dependency
        raise MissingDependencyError(f"Embree ray casting needs embreex: pip install embreex ({exc})") from exc
    mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, process=False, validate=False)
    return RayMeshIntersector(mesh)


def _ray_triangle(origins: np.ndarray, dirs: np.ndarray, tri_vertices: np.ndarray):
    """Exact (float64) Moller-Trumbore along given rays and their known triangles.

    ``origins``/``dirs`` [N, 3], ``tri_vertices`` [N, 3, 3] -> distance [N], barycentrics [N, 3].
    Used to refine Embree's float32 hits.
    """
    a, b, c = tri_vertices[:, 0], tri_vertices[:, 1], tri_vertices[:, 2]
    e1, e2 = b - a, c - a
    p = np.cross(dirs, e2)
    det = np.einsum("ij,ij->i", e1, p)
    det = np.where(np.abs(det) < 1e-300, 1e-300, det)
    s = origins - a
    u = np.einsum("ij,ij->i", s, p) / det
    q = np.cross(s, e1)
    v = np.einsum("ij,ij->i", dirs, q) / det
    dist = np.einsum("ij,ij->i", e2, q) / det
    return dist, np.stack([1.0 - u - v, u, v], -1)


def raycast(vertices_cam: np.ndarray, triangles: np.ndarray, K: np.ndarray, width: int,
            height: int, intersector=None) -> RayHits:
    """Cast one ray per pixel centre from the camera centre against a camera-space mesh (Embree).

    Args:
        vertices_cam: ``[V, 3]`` vertices in camera space (OpenCV, model units).
        triangles: ``[T, 3]`` vertex ids.
        K: ``[3, 3]`` intrinsics in pixels.
        intersector: a prebuilt ``build_intersector(vertices_cam, triangles)`` to reuse (built here if None).
    """
    V = np.asarray(vertices_cam, dtype=np.float64)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"raycast: expected vertices_cam [V, 3], got {V.shape}")
    rays = pixel_rays(K, width, height)  # [H, W, 3]
    dirs = rays.reshape(-1, 3)
    origins = np.zeros_like(dirs)
    if intersector is None:
        intersector = build_intersector(V, triangles)
    tri_idx = np.full(len(dirs), -1, dtype=np.int64)  # [H*W], -1 = miss
    # Only pixels inside the mesh's projected bounding box can hit (when the mesh is in front of the camera).
    used = V[np.unique(np.asarray(triangles))]
    if (used[:, 2] > 0).all():
        uv, _ = project(used, np.asarray(K, dtype=np.float64), np.eye(3), np.zeros(3))
        lo = np.clip(np.floor(uv.min(0)).astype(int) - 1, 0, [width, height])
        hi = np.clip(np.ceil(uv.max(0)).astype(int) + 2, 0, [width, height])
        box = np.zeros((height, width), bool)
        box[lo[1]:hi[1], lo[0]:hi[0]] = True
        box = box.reshape(-1)
    else:
        box = np.ones(len(dirs), bool)
    if box.any():
        tri_idx[box] = intersector.intersects_first(origins[box], dirs[box])
    hit = tri_idx >= 0
    bary = np.zeros((len(dirs), 3))
    points = np.zeros((len(dirs), 3))
    if hit.any():
        tv = V[np.asarray(triangles)[tri_idx[hit]]]  # [M, 3, 3]
        dist, b = _ray_triangle(origins[hit], dirs[hit], tv)
        bary[hit] = b
        points[hit] = dirs[hit] * dist[:, None]
    shape = (height, width)
    return RayHits(mask=hit.reshape(shape), triangle=tri_idx.reshape(shape).astype(np.int64),
                   bary=bary.reshape(*shape, 3), points=points.reshape(*shape, 3), rays=rays)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[V, 3]`` (zero for vertices no triangle uses)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(triangles)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # [T, 3], length = 2 * area
    idx = f.reshape(-1)  # [3T] every corner
    n = np.stack([np.bincount(idx, np.repeat(fn[:, c], 3), minlength=len(v)) for c in range(3)], -1)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(length > 0, length, 1.0)


def interpolate(values: np.ndarray, triangles: np.ndarray, hits: RayHits) -> np.ndarray:
    """Barycentric interpolation of per-vertex ``values`` [V, C] at every hit pixel -> ``[H, W, C]``."""
    out = np.zeros((*hits.mask.shape, values.shape[-1]))
    m = hits.mask
    tri = np.asarray(triangles)[hits.triangle[m]]  # [M, 3]
    out[m] = np.einsum("mk,mkc->mc", hits.bary[m], np.asarray(values, dtype=np.float64)[tri])
    return out


def landmark_visibility(vertices_cam: np.ndarray, triangles: np.ndarray, landmarks: np.ndarray,
                        uv: np.ndarray, width: int, height: int, rel_tol: float = 1e-3,
                        intersector=None) -> np.ndarray:
    """``[L]`` bool: landmark in the image, in front of the camera, and nothing hit before it along its ray.

    Args:
        vertices_cam: ``[V, 3]`` camera-space vertices; landmarks: ``[L]`` vertex ids; uv: ``[L, 2]`` their
            projections; rel_tol: hits closer than ``dist * (1 - rel_tol)`` count as occluders.
    """
    p = np.asarray(vertices_cam, dtype=np.float64)[landmarks]  # [L, 3]
    dist = np.linalg.norm(p, axis=1)
    dirs = p / dist[:, None]
    if intersector is None:
        intersector = build_intersector(vertices_cam, triangles)
    locs, ray_idx, _ = intersector.intersects_location(
        np.zeros_like(dirs), dirs, multiple_hits=False)
    first = np.full(len(p), np.inf)
    first[ray_idx] = np.linalg.norm(locs, axis=1)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= height - 0.5)
    return inside & (p[:, 2] > 0) & (first >= dist * (1.0 - rel_tol))


def render_geometry(vertices_cam: np.ndarray, canonical_vertices: np.ndarray, mesh: RenderMesh,
                    K: np.ndarray, width: int, height: int) -> GeometryRender:
    """Render the per-pixel ground truth of a mesh already in camera space.

    Args:
        vertices_cam: ``[V, 3]`` posed vertices in camera space (model units).
        canonical_vertices: ``[V, 3]`` the canonical coordinate of every vertex (for ICT: the same identity,
            neutral expression, no pose, model units); interpolated into ``canonical``.
        mesh: topology, parts and landmarks.
        K: ``[3, 3]`` intrinsics; ``width``, ``height`` in pixels.
    """
    V = np.asarray(vertices_cam, dtype=np.float64)
    C = np.asarray(canonical_vertices, dtype=np.float64)
    if V.shape != C.shape or V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"render_geometry: expected vertices_cam and canonical_vertices [V, 3] alike, got "
                         f"{V.shape} and {C.shape}")
    intersector = build_intersector(V, mesh.triangles)
    hits = raycast(V, mesh.triangles, K, width, height, intersector)
    m = hits.mask
    n = interpolate(vertex_normals(V, mesh.triangles), mesh.triangles, hits)
    flip = np.einsum("hwc,hwc->hw", n, hits.rays) > 0
    n[flip] *= -1.0
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(length > 0, n / np.where(length > 0, length, 1.0), 0.0)
    tri = np.where(m, hits.triangle, 0)
    uv, z = project(V[mesh.landmarks], np.asarray(K, dtype=np.float64), np.eye(3), np.zeros(3))
    visible = (landmark_visibility(V, mesh.triangles, mesh.landmarks, uv, width, height,
                                   intersector=intersector)
               if len(mesh.landmarks) else np.zeros(0, dtype=bool))
    return GeometryRender(
        mask=m, depth=np.where(m, hits.points[..., 2], 0.0), normals=n,
        canonical=interpolate(C, mesh.triangles, hits), face_mask=m & mesh.face[tri],
        part=np.where(m, mesh.part[tri], 0).astype(np.uint8), triangle=hits.triangle, bary=hits.bary,
        landmarks2d=uv, landmarks_depth=z, landmarks_visible=visible)


# ----------------------------------------------------------------------------- the ICT head, posed


@dataclass
class HeadVertices:
    """One ICT head in model units: ``posed`` (identity + expression, canonical pose) and ``canonical``
    (same identity, neutral expression). Both ``[V, 3]`` float64."""

    posed: np.ndarray
    canonical: np.ndarray


def head_vertices(kit, w_id: np.ndarray, w_ex: np.ndarray, canonical: np.ndarray | None = None) -> HeadVertices:
    """Vertices of an ICT head (``kit``: :class:`train.ict.IctFaceKit`) in model units.

    ``canonical`` (the identity's neutral vertices in model units) may be given to skip recomputing it,
    e.g. for every frame of a video of one identity. The posed vertices are the canonical ones plus the
    expression offsets (the ICT model is linear and ``ict_to_model`` affine).
    """
    w_ex = np.asarray(w_ex, dtype=np.float32)
    if w_ex.shape != (kit.n_expression,):
        raise ValueError(f"head_vertices: expected w_ex [{kit.n_expression}], got {w_ex.shape}")
    if canonical is None:
        w_id = np.asarray(w_id, dtype=np.float32)
        canonical = ict_to_model(kit.vertices(w_id, np.zeros(kit.n_expression, np.float32)).astype(np.float64))
    canonical = np.asarray(canonical, dtype=np.float64)
    offset_cm = (w_ex @ kit.expression_modes.reshape(kit.n_expression, -1)).reshape(-1, 3)  # [V, 3] float32
    offset = ict_to_model(offset_cm.astype(np.float64)) - ict_to_model(np.zeros(3))
    return HeadVertices(posed=canonical + offset, canonical=canonical)


def framing_points(canonical: np.ndarray) -> np.ndarray:
    """Skin vertices (model units) a camera must keep in frame: face, head and the neck above the cut
    plane ``train.frame.NECK_CUT_Y``. ``[V, 3] -> [N, 3]``."""
    skin = np.asarray(canonical)[: ICT_PART_RANGES[0][1] + 1]
    return skin[skin[:, 1] > NECK_CUT_Y]


def eye_centres(canonical: np.ndarray, mesh: RenderMesh) -> np.ndarray:
    """``[E, 3]`` mean canonical position of each eyeball's vertices (model units)."""
    return np.stack([np.asarray(canonical)[v].mean(0) for v in mesh.eye_vertices]) if mesh.eye_vertices \
        else np.zeros((0, 3))


def render_head(head: HeadVertices, mesh: RenderMesh, camera, pose) -> GeometryRender:
    """Render the per-pixel ground truth of a posed ICT head.

    Args:
        head: posed and canonical vertices (model units), from :func:`head_vertices`.
        mesh: from :func:`ict_render_mesh`.
        camera: :class:`train.camera.Camera`; pose: :class:`train.camera.HeadPose` (canonical -> world).
    """
    R, t = model_to_camera(camera, pose)
    return render_geometry(head.posed @ R.T + t, head.canonical, mesh, camera.K, camera.width, camera.height)
