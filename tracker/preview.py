"""The ``--preview out.mp4`` video: the tracked mesh drawn over the input frames, to judge tracking at a glance.

Three pieces, used per frame by the tracker:

- :func:`render_overlay`: rasterise a camera-space mesh with a z-buffer, shade it as grey-beige clay lit by
  a headlight, alpha-blend it over the frame.
- :func:`overlay_text`: a small status label (frame index, ``tracked`` / ``held`` / ``gap``).
- :class:`PreviewWriter`: an atomic H.264 mp4 writer (optionally input | overlay side by side).

:func:`frame_intrinsics` maps the intrinsics of a crop camera to the full frame through the crop affine
of :mod:`tracker.crop`.

Conventions: OpenCV camera, camera space x right, y down, z forward (any length unit: only ratios are
used); intrinsics ``K [3, 3]`` in pixels of the image drawn on, last row ``[0, 0, 1]``; pixel centres at
integer coordinates (pixel row ``i``, column ``j`` has ``(u, v) = (j, i)``), as :mod:`model.render` and
:mod:`tracker.crop`. Images are RGB uint8 ``[H, W, 3]``.

Renderer, chosen by measurement (``tests/benchmarks/bench_preview.py --embree``; 2-core CPU shared with other
jobs, 512x512 frame, a head-sized closed ellipsoid filling 60 % of the frame height): a vectorised numpy
z-buffer rasteriser (:func:`rasterize`: each face's pixel box, grouped by size class and tested densely
with broadcasting; nearest face per pixel by one ``np.minimum.at`` over a 64-bit key of quantised inverse
depth and face index), Gouraud shading (:func:`shade_headlight`) and blending on the covered pixels only.
It costs ~15 ms CPU per frame for 10k vertices and ~25-30 ms for 40k. Embree ray casting through
``trimesh.ray.ray_pyembree`` (scene rebuilt every frame because the mesh moves, one ray per pixel of the
mesh's screen box) took 145-200 ms for the first hits alone, so it was not used; rendering at reduced
resolution was not needed. Faces with a vertex at or behind ``z = near`` are dropped (no clipping: a
head in front of the camera never needs it); back faces are culled by default in :func:`render_overlay`
(meshes wound counter-clockwise seen from outside, as everywhere in the project); no anti-aliasing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from exporters.base import remove_path, temp_name
from model.errors import InputError, MissingDependencyError

#: Neutral clay colour of the overlay (RGB in [0, 1]).
CLAY = (0.80, 0.74, 0.66)
#: Label colours by tracking status (RGB uint8).
STATUS_COLORS = {"tracked": (90, 220, 90), "detected": (90, 220, 90), "held": (240, 200, 60),
                 "gap": (240, 80, 70)}

# Size classes (pixels per axis) of face bounding boxes; larger boxes are cut into tiles of the last size.
_SIZES = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64])
# Candidate pixels tested per chunk (bounds the memory of the scan).
_CHUNK = 1 << 19
# Tolerance of the inside test on barycentrics (pixel centres on an edge count as inside).
_EPS = 1e-6


# ------------------------------------------------------------------------------------------------- camera

def frame_intrinsics(K_crop: Any, crop_to_frame: Any) -> np.ndarray:
    """Intrinsics of the full frame from those of a crop and the crop affine; float64 ``[3, 3]``.

    Args:
        K_crop: ``[3, 3]`` intrinsics in crop pixels (last row ``[0, 0, 1]``).
        crop_to_frame: ``[2, 3]`` affine ``A`` from crop pixels to frame pixels,
            ``xy_frame = A[:, :2] @ uv_crop + A[:, 2]`` (:func:`tracker.crop.crop_affine`; both with pixel
            centres at integers).

    Returns ``[[A], [0, 0, 1]] @ K_crop``: a camera-space point projects to the same place in the frame as
    its crop projection mapped by ``A``. For the crops of :mod:`tracker.crop` (scale ``a`` and translation
    ``t``) this is ``[[a, 0, tx], [0, a, ty], [0, 0, 1]] @ K_crop``; a general (e.g. rotated) affine is
    composed the same way and the result is still a valid projection matrix for :func:`render_overlay`.
    """
    K = _check_K(K_crop, "K_crop")
    A = np.asarray(crop_to_frame, dtype=np.float64)
    if A.shape != (2, 3) or not np.isfinite(A).all():
        raise InputError(f"crop_to_frame: expected a finite affine [2, 3], got shape {list(A.shape)}")
    if abs(np.linalg.det(A[:, :2])) < 1e-12:
        raise InputError("crop_to_frame: the affine's 2x2 part is singular")
    H = np.vstack([A, [0.0, 0.0, 1.0]])  # [3, 3]
    return H @ K


def _check_K(K: Any, name: str) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise InputError(f"{name}: expected finite intrinsics [3, 3], got shape {list(K.shape)}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise InputError(f"{name}: last row must be [0, 0, 1], got {K[2].tolist()}")
    if abs(np.linalg.det(K)) < 1e-12:
        raise InputError(f"{name}: intrinsics are singular")
    return K


# ---------------------------------------------------------------------------------------------- rasteriser

@dataclass
class Raster:
    """What :func:`rasterize` found at each pixel.

    Attributes:
        face: int64 ``[H, W]`` index of the nearest face whose interior covers the pixel centre, -1 where
            none does.
        bary: float32 ``[H, W, 3]`` perspective-correct barycentric weights of the face's three vertices
            (0 where ``face`` is -1).
        depth: float32 ``[H, W]`` camera-space z of the surface (``inf`` where ``face`` is -1).
    """

    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """bool ``[H, W]``: pixels covered by the mesh."""
        return self.face >= 0


def rasterize(vertices_cam: Any, faces: Any, K: Any, height: int, width: int, near: float = 1e-6,
              cull_back_faces: bool = False) -> Raster:
    """Z-buffer rasterisation of a triangle mesh at pixel centres (vectorised numpy, no gradients).

    Args:
        vertices_cam: ``[V, 3]`` camera-space positions (OpenCV: x right, y down, z forward; any unit).
        faces: ``[F, 3]`` integer vertex indices.
        K: ``[3, 3]`` intrinsics in pixels of the ``height`` x ``width`` image, last row ``[0, 0, 1]``.
        height, width: image size in pixels.
        near: faces with a vertex at ``z <= near`` (same unit as the vertices) are dropped.
        cull_back_faces: drop faces whose normal by the right-hand rule over their vertex order points away
            from the camera (for meshes wound counter-clockwise seen from outside, as everywhere in this
            project, these are the back faces, hidden anyway on a closed mesh: about half the work).

    A pixel is covered by a face when its centre lies inside or on the edge of the projected triangle;
    the nearest (largest interpolated ``1/z``) covering face wins.

    Method: each face's pixel bounding box (boxes wider or taller than 64 px are cut into tiles) is put
    in a size class (``_SIZES`` per axis); each class is tested densely with broadcasting, so the per-face
    work is a few multiply-adds per candidate pixel and no gathers. The winner per pixel is found by one
    ``np.minimum.at`` over an int64 key: quantised inverse depth in the high bits, face index in the low.
    """
    v = np.asarray(vertices_cam, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"vertices_cam: expected [V, 3], got shape {list(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"faces: expected integer [F, 3], got shape {list(f.shape)} dtype {f.dtype}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise InputError(f"faces: indices out of range [0, {len(v)})")
    K = _check_K(K, "K")
    H, W = int(height), int(width)
    if f.size == 0 or H <= 0 or W <= 0:
        return _empty_raster(max(H, 0), max(W, 0))

    # Project. Faces with a vertex at/behind the near plane or a non-finite one are dropped. Per-face data
    # is kept as separate 1-D arrays (row gathers of 2-D arrays are ~10x slower in numpy).
    vt = np.ascontiguousarray(v.T)  # [3, V]
    z = vt[2]  # [V]
    ok_v = np.isfinite(vt).all(0) & (z > near)
    fi = [np.ascontiguousarray(f[:, j]) for j in range(3)]  # 3 x [F]
    ok_f = ok_v[fi[0]] & ok_v[fi[1]] & ok_v[fi[2]]
    if cull_back_faces:  # normal towards the camera: n . v0 = det[v0, v1, v2] < 0
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = [[c[fj] for c in vt] for fj in fi]
        ok_f &= x0 * (y1 * z2 - z1 * y2) + y0 * (z1 * x2 - x1 * z2) + z0 * (x1 * y2 - y1 * x2) < 0
    iz = np.where(ok_v, 1.0 / np.where(ok_v, z, 1.0), 0.0)  # [V]
    u = (K[0] @ vt) * iz  # [V] pixels
    w_ = (K[1] @ vt) * iz
    idx = np.flatnonzero(ok_f)  # [F'] original face indices
    fi = [fj[idx] for fj in fi]
    u0, u1, u2 = (u[fj] for fj in fi)  # [F'] each
    v0, v1, v2 = (w_[fj] for fj in fi)

    # Per face: pixel box [lo, hi] (pixel centres), barycentric planes b = a du + b dv + c over offsets
    # (du, dv) from the box corner lo, and the plane of 1/z.
    e1u, e1v, e2u, e2v = u1 - u0, v1 - v0, u2 - u0, v2 - v0  # [F']
    area = e1u * e2v - e1v * e2u  # [F'] twice the signed area
    lo_u = np.maximum(np.ceil(np.minimum(np.minimum(u0, u1), u2)), 0)  # [F'] first pixel centre inside
    lo_v = np.maximum(np.ceil(np.minimum(np.minimum(v0, v1), v2)), 0)
    hi_u = np.minimum(np.floor(np.maximum(np.maximum(u0, u1), u2)), W - 1)  # [F'] last one
    hi_v = np.minimum(np.floor(np.maximum(np.maximum(v0, v1), v2)), H - 1)
    keep = np.flatnonzero((np.abs(area) > 1e-12) & (hi_u >= lo_u) & (hi_v >= lo_v))
    if len(keep) == 0:
        return _empty_raster(H, W)
    idx, u0, v0, e1u, e1v, e2u, e2v, area, lo_u, lo_v, hi_u, hi_v = (
        x[keep] for x in (idx, u0, v0, e1u, e1v, e2u, e2v, area, lo_u, lo_v, hi_u, hi_v))
    fi = [fj[keep] for fj in fi]
    inv = 1.0 / area
    d0u, d0v = lo_u - u0, lo_v - v0  # [F'] box corner relative to vertex 0
    # b1 = (du' e2v - dv' e2u) / area, b2 = (dv' e1u - du' e1v) / area with (du', dv') relative to vertex 0
    b1a, b1b, b2a, b2b = e2v * inv, -e2u * inv, -e1v * inv, e1u * inv
    b1c = b1a * d0u + b1b * d0v
    b2c = b2a * d0u + b2b * d0v
    iz0, iz1, iz2 = (iz[fj] for fj in fi)  # [F']
    dz1, dz2 = iz1 - iz0, iz2 - iz0  # 1/z = iz0 + (iz1 - iz0) b1 + (iz2 - iz0) b2
    planes = np.stack([b1a, b1b, b1c, b2a, b2b, b2c,
                       dz1 * b1a + dz2 * b2a, dz1 * b1b + dz2 * b2b, iz0 + dz1 * b1c + dz2 * b2c])  # [9, F']

    # Depth quantisation: larger 1/z (nearer) -> smaller key; face index in the low bits.
    izmin = float(min(iz0.min(), iz1.min(), iz2.min()))
    izmax = float(max(iz0.max(), iz1.max(), iz2.max()))
    face_bits = max(1, int(len(idx) - 1).bit_length())
    levels = float((1 << (62 - face_bits)) - 1)
    dscale = levels / max(izmax - izmin, 1e-30)
    empty = np.iinfo(np.int64).max
    key_buf = np.full(H * W, empty, np.int64)

    lo_ui, lo_vi = lo_u.astype(np.int64), lo_v.astype(np.int64)
    size_u, size_v = hi_u.astype(np.int64) - lo_ui + 1, hi_v.astype(np.int64) - lo_vi + 1
    for t, corner, box_w, box_h, pl, (sw, sh) in _tiles(lo_vi * W + lo_ui, size_u, size_v, planes, W):
        ou = np.tile(np.arange(sw, dtype=np.int64), sh)  # [S] candidate offsets in the class's box
        ov = np.repeat(np.arange(sh, dtype=np.int64), sw)
        fu, fv = ou.astype(np.float32), ov.astype(np.float32)
        b1 = pl[0][:, None] * fu + pl[1][:, None] * fv + pl[2][:, None]  # [n, S]
        b2 = pl[3][:, None] * fu + pl[4][:, None] * fv + pl[5][:, None]
        inside = (b1 >= -_EPS) & (b2 >= -_EPS) & (b1 + b2 <= 1 + _EPS)
        if box_w.min() < sw:
            inside &= ou < box_w[:, None]
        if box_h.min() < sh:
            inside &= ov < box_h[:, None]
        r, c = np.nonzero(inside)  # candidate rows (tiles) and columns (offsets)
        izp = pl[6][r] * fu[c] + pl[7][r] * fv[c] + pl[8][r]
        q = np.clip((izmax - izp.astype(np.float64)) * dscale, 0, levels).astype(np.int64)
        np.minimum.at(key_buf, corner[r] + (ov * W + ou)[c], (q << face_bits) | t[r])

    pix = np.flatnonzero(key_buf != empty)  # [P] covered pixels
    t_hit = key_buf[pix] & ((1 << face_bits) - 1)  # [P] face (index into the kept faces)
    # Barycentrics at the covered pixels (screen-space from the planes, then perspective-corrected).
    du = (pix % W - lo_ui[t_hit]).astype(np.float64)
    dv = (pix // W - lo_vi[t_hit]).astype(np.float64)
    s1 = b1a[t_hit] * du + b1b[t_hit] * dv + b1c[t_hit]
    s2 = b2a[t_hit] * du + b2b[t_hit] * dv + b2c[t_hit]
    w0 = np.maximum((1 - s1 - s2) * iz0[t_hit], 0)  # [P] (clipped: edge tolerance)
    w1 = np.maximum(s1 * iz1[t_hit], 0)
    w2 = np.maximum(s2 * iz2[t_hit], 0)
    izp = np.maximum(w0 + w1 + w2, 1e-30)
    face_buf = np.full(H * W, -1, np.int64)
    face_buf[pix] = idx[t_hit]
    bary = np.zeros((H * W, 3), np.float32)
    flat = bary.reshape(-1)
    for j, wj in enumerate((w0, w1, w2)):
        flat[pix * 3 + j] = wj / izp
    depth = np.full(H * W, np.inf, np.float32)
    depth[pix] = 1.0 / izp
    return Raster(face_buf.reshape(H, W), bary.reshape(H, W, 3), depth.reshape(H, W))


def _empty_raster(H: int, W: int) -> Raster:
    return Raster(np.full((H, W), -1, np.int64), np.zeros((H, W, 3), np.float32),
                  np.full((H, W), np.inf, np.float32))


def _tiles(corner: np.ndarray, size_u: np.ndarray, size_v: np.ndarray, planes: np.ndarray, W: int):
    """Cut face boxes into tiles of at most ``_SIZES[-1]`` px a side and group them by size class.

    Args: ``corner`` int64 ``[F]`` flat pixel index (``v * W + u``) of each box's first pixel centre;
    ``size_u``, ``size_v`` int64 ``[F]`` box width and height (>= 1); ``planes`` float64 ``[9, F]`` over
    offsets from the corner; ``W`` image width. Yields per class (in chunks of at most ``_CHUNK``
    candidates): face index ``[n]``, flat pixel index of the tile corner ``[n]``, tile width and height
    ``[n]`` (<= the class size), float32 planes re-based on the tile corner ``[9, n]``, class size (w, h).
    """
    top = int(_SIZES[-1])
    if max(size_u.max(), size_v.max()) <= top:  # the usual case: one tile per face
        face, off_u, off_v, tile_u, tile_v = np.arange(len(corner)), None, None, size_u, size_v
    else:
        n_u, n_v = -(-size_u // top), -(-size_v // top)  # [F] tiles per axis
        count = n_u * n_v
        face = np.repeat(np.arange(len(corner)), count)  # [T]
        k = np.arange(len(face)) - np.repeat(np.cumsum(count) - count, count)  # tile index within its face
        off_u, off_v = k % n_u[face] * top, k // n_u[face] * top  # [T] tile corner relative to the box's
        tile_u, tile_v = np.minimum(size_u[face] - off_u, top), np.minimum(size_v[face] - off_v, top)
    planes32 = planes.astype(np.float32)
    lut = np.searchsorted(_SIZES, np.arange(top + 1)).astype(np.int16)  # size -> class
    cls_u, cls_v = lut[tile_u], lut[tile_v]
    key = cls_u * np.int16(len(_SIZES)) + cls_v  # [T] int16: the stable sort is a radix sort
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for group in np.split(order, bounds):
        sw, sh = int(_SIZES[cls_u[group[0]]]), int(_SIZES[cls_v[group[0]]])
        step = max(1, _CHUNK // (sw * sh))
        for s in range(0, len(group), step):
            g = group[s:s + step]
            fg = face[g]
            if off_u is None:
                yield fg, corner[fg], tile_u[g], tile_v[g], np.take(planes32, fg, axis=1), (sw, sh)
            else:  # re-base the constant terms on the tile corner (in float64)
                pl, ou, ov = np.take(planes, fg, axis=1), off_u[g], off_v[g]
                for j in (0, 3, 6):
                    pl[j + 2] += pl[j] * ou + pl[j + 1] * ov
                yield fg, corner[fg] + ov * W + ou, tile_u[g], tile_v[g], pl.astype(np.float32), (sw, sh)


# ------------------------------------------------------------------------------------------------- shading

def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[V, 3]`` (right-hand rule over each face's vertex order).

    Vertices on no face, or whose faces' normals cancel, get a zero normal.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    vt = np.ascontiguousarray(v.T)  # [3, V]
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = [[c[f[:, j]] for c in vt] for j in range(3)]  # [F] each
    ax, ay, az, bx, by, bz = x1 - x0, y1 - y0, z1 - z0, x2 - x0, y2 - y0, z2 - z0
    fn = (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)  # 3 x [F], length = 2 x area
    flat = f.T.reshape(-1)  # corners 0 of all faces, then 1, then 2
    n = np.stack([np.bincount(flat, np.tile(c, 3), minlength=len(v)) for c in fn], 1)  # [V, 3]
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 1e-30)


def shade_headlight(raster: Raster, vertices_cam: Any, faces: Any, ambient: float = 0.25) -> np.ndarray:
    """Lambert intensity in ``[0, 1]`` of each covered pixel, lit from the camera; float32 ``[H, W]``.

    Gouraud shading: per vertex ``ambient + (1 - ambient) * |n . d|`` with ``n`` the unit vertex normal and
    ``d`` the unit direction from the camera centre to the vertex, interpolated over the face with the
    raster's barycentrics; 0 where nothing is covered. (Per-pixel normals cost ~3x as much; for meshes of
    10k+ vertices Gouraud is smooth enough for a preview.) The absolute value ignores the winding.
    """
    v = np.asarray(vertices_cam, dtype=np.float64)
    f = np.asarray(faces)
    H, W = raster.face.shape
    out = np.zeros(H * W, np.float32)
    face = raster.face.reshape(-1)
    pix = np.flatnonzero(face >= 0)  # [P]
    if len(pix) == 0:
        return out.reshape(H, W)
    d = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)  # [V, 3]
    lit = (ambient + (1.0 - ambient) * np.abs((vertex_normals(v, f) * d).sum(1))).astype(np.float32)  # [V]
    fp = face[pix]  # [P]
    bary = raster.bary.reshape(-1)
    out[pix] = sum(lit[f[:, j]][fp] * bary[pix * 3 + j] for j in range(3))
    return out.reshape(H, W)


def render_overlay(frame_rgb: Any, vertices_cam: Any, faces: Any, K: Any, alpha: float = 0.6,
                   color: tuple[float, float, float] = CLAY, ambient: float = 0.25,
                   cull_back_faces: bool = True) -> np.ndarray:
    """The mesh drawn over a frame as shaded clay; uint8 ``[H, W, 3]`` (a new image).

    Args:
        frame_rgb: uint8 ``[H, W, 3]`` RGB frame.
        vertices_cam: ``[V, 3]`` camera-space positions (OpenCV: x right, y down, z forward; any unit).
        faces: ``[F, 3]`` integer vertex indices, counter-clockwise seen from outside (else give
            ``cull_back_faces=False``).
        K: ``[3, 3]`` intrinsics in pixels of this frame (see :func:`frame_intrinsics` for a crop camera).
        alpha: opacity of the mesh in ``[0, 1]``; pixels the mesh does not cover are unchanged.
        color: RGB in ``[0, 1]`` of the clay (default a neutral beige-grey).
        ambient: light reaching surfaces seen edge-on, in ``[0, 1]`` (see :func:`shade_headlight`).
        cull_back_faces: skip faces turned away from the camera (see :func:`rasterize`); right for meshes
            wound counter-clockwise seen from outside (the project's convention). Give False for a mesh of
            unknown or mixed winding.
    """
    frame = _check_frame(frame_rgb, "frame_rgb")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha: must be in [0, 1], got {alpha}")
    rgb = np.asarray(color, dtype=np.float32)
    if rgb.shape != (3,) or rgb.min() < 0 or rgb.max() > 1:
        raise InputError(f"color: expected 3 values in [0, 1], got {color}")
    H, W = frame.shape[:2]
    raster = rasterize(vertices_cam, faces, K, H, W, cull_back_faces=cull_back_faces)
    shade = shade_headlight(raster, vertices_cam, faces, ambient)
    out = frame.copy()
    pix = np.flatnonzero(raster.face.reshape(-1) >= 0)  # [P] covered pixels
    if len(pix):
        lit = shade.reshape(-1)[pix] * np.float32(alpha * 255.0)  # [P] (flat per-channel indexing: fast)
        src, dst = frame.reshape(-1), out.reshape(-1)
        for c in range(3):
            at = pix * 3 + c
            dst[at] = np.clip((1.0 - alpha) * src[at] + lit * rgb[c] + 0.5, 0, 255).astype(np.uint8)
    return out


def _check_frame(frame: Any, name: str) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name}: expected uint8 RGB [H, W, 3], got shape {list(arr.shape)} dtype {arr.dtype}")
    return arr


# --------------------------------------------------------------------------------------------------- label

def overlay_text(frame_rgb: Any, text: str, color: tuple[int, int, int] = (255, 255, 255),
                 scale: float | None = None) -> np.ndarray:
    """``text`` in a small dark box at the top-left corner of a frame; uint8 ``[H, W, 3]`` (a new image).

    Args:
        frame_rgb: uint8 ``[H, W, 3]`` RGB frame.
        text: one line of ASCII (OpenCV's Hershey font has no other glyphs: others show as ``?``).
        color: RGB uint8 of the text (see ``STATUS_COLORS`` for the tracking states).
        scale: font scale; default grows with the frame height (0.5 at 512 px, at least 0.35).
    """
    import cv2

    frame = _check_frame(frame_rgb, "frame_rgb")
    out = np.ascontiguousarray(frame).copy()
    H = out.shape[0]
    scale = max(0.35, H / 1024) if scale is None else float(scale)
    thick = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, int(round(4 * scale)))
    x1, y1 = min(out.shape[1], tw + 2 * pad), min(H, th + base + 2 * pad)
    out[:y1, :x1] = (out[:y1, :x1].astype(np.uint16) * 3 // 10).astype(np.uint8)  # darken behind the text
    cv2.putText(out, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in color),
                thick, cv2.LINE_AA)
    return out


def draw_points(frame_rgb: Any, points: Any, color: tuple[int, int, int], radius: int = 1) -> np.ndarray:
    """Dots at pixels ``[N, 2]`` (centres at integers; NaN rows skipped) on a copy of a uint8 frame."""
    import cv2

    out = np.ascontiguousarray(_check_frame(frame_rgb, "frame_rgb")).copy()
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for x, y in np.round(pts[np.isfinite(pts).all(1)]).astype(int):
        cv2.circle(out, (int(x), int(y)), radius, tuple(int(c) for c in color), -1, cv2.LINE_AA)
    return out


def status_label(index: int, status: str) -> tuple[str, tuple[int, int, int]]:
    """Text and colour of the label of frame ``index`` (0-based) in tracking state ``status``.

    ``status``: ``"tracked"`` (or :mod:`tracker.crop`'s ``"detected"``), ``"held"`` or ``"gap"``; others are
    shown in white.
    """
    return f"{index:5d} {status}", STATUS_COLORS.get(status, (255, 255, 255))


# -------------------------------------------------------------------------------------------------- writer

@dataclass
class PreviewConfig:
    """Settings of the preview video."""

    alpha: float = 0.6
    """Opacity of the mesh over the frame, in [0, 1]."""
    color: tuple[float, float, float] = CLAY
    """RGB in [0, 1] of the mesh's clay."""
    side_by_side: bool = False
    """Write ``input | overlay`` side by side (twice the width) instead of the overlay alone."""
    labels: bool = True
    """Draw the frame index and tracking status in the top-left corner."""
    crf: int = 23
    """H.264 constant rate factor (0 lossless ... 51 worst; 18-28 is the usual range)."""
    preset: str = "veryfast"
    """x264 speed preset (``ultrafast`` ... ``veryslow``): a preview favours speed."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"preview alpha: must be in [0, 1], got {self.alpha}")
        if not 0 <= self.crf <= 51:
            raise InputError(f"preview crf: must be in [0, 51], got {self.crf}")


@dataclass
class PreviewResult:
    """A finished preview video.

    Attributes:
        path: the mp4 written.
        n_frames: frames written.
        width, height: encoded size in pixels (even; odd inputs are padded by one row/column).
    """

    path: Path
    n_frames: int
    width: int
    height: int


class PreviewWriter:
    """Atomic H.264 mp4 (yuv420p) writer of preview frames; use as a context manager.

    The video goes to a hidden temporary name beside ``path`` (:func:`exporters.base.temp_name`) and is
    renamed over ``path`` on :meth:`close`; on an exception inside the ``with`` block (or :meth:`abort`)
    the temporary file is deleted and ``path`` is untouched. The frame size is fixed by the first
    :meth:`write`; odd widths/heights are padded by repeating the last column/row (yuv420p needs even
    sizes).

    Args:
        path: target ``.mp4``; its folder must exist and be writable (else :class:`InputError`).
        fps: frames per second (> 0), usually the input video's.
        config: :class:`PreviewConfig` (side by side, labels, quality).
    """

    def __init__(self, path: str | os.PathLike, fps: float, config: PreviewConfig | None = None) -> None:
        try:
            import av
        except ImportError as exc:  # pragma: no cover - av is a declared dependency
            raise MissingDependencyError(f"writing the preview needs PyAV: pip install av ({exc})") from exc
        self._av = av
        self.path = Path(path)
        self.config = config or PreviewConfig()
        if not (np.isfinite(fps) and fps > 0):
            raise InputError(f"{self.path}: fps must be a positive number, got {fps}")
        self.fps = float(fps)
        parent = self.path.parent
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a folder; give a file name ending in .mp4")
        if not parent.is_dir():
            raise InputError(f"{self.path}: folder {parent} does not exist")
        self.tmp = temp_name(self.path)
        try:
            open(self.tmp, "xb").close()  # fails early, with the reason, where the folder is not writable
        except OSError as exc:
            raise InputError(f"{self.path}: cannot write in {parent}: {exc.strerror or exc}") from None
        self.n_frames = 0
        self.closed = False
        self.result: PreviewResult | None = None
        self._container = None
        self._stream = None
        self._in_size: tuple[int, int] | None = None  # (H, W) of composed frames before padding

    def write(self, frame_rgb: Any, overlay_rgb: Any = None, index: int | None = None,
              status: str | None = None) -> None:
        """Encode one frame.

        Args:
            frame_rgb: uint8 ``[H, W, 3]`` input frame.
            overlay_rgb: uint8 ``[H, W, 3]`` the same frame with the mesh drawn (:func:`render_overlay`),
                or None for a frame without a mesh (a gap: the input is shown in its place).
            index, status: frame index and tracking status for the label (``config.labels``); the label is
                drawn when either is given.
        """
        if self.closed:
            raise InputError(f"{self.path}: write after close")
        frame = _check_frame(frame_rgb, "frame_rgb")
        shown = frame if overlay_rgb is None else _check_frame(overlay_rgb, "overlay_rgb")
        if shown.shape != frame.shape:
            raise InputError(f"overlay_rgb: shape {list(shown.shape)} differs from frame_rgb {list(frame.shape)}")
        if self.config.labels and (index is not None or status is not None):
            text, color = status_label(self.n_frames if index is None else index, status or "")
            shown = overlay_text(shown, text.rstrip(), color)
        image = np.concatenate([frame, shown], 1) if self.config.side_by_side else shown  # [H, W', 3]
        if self._in_size is None:
            self._open(image.shape[0], image.shape[1])
        elif image.shape[:2] != self._in_size:
            raise InputError(f"{self.path}: frame {self.n_frames} has size {image.shape[1]}x{image.shape[0]}, "
                             f"expected {self._in_size[1]}x{self._in_size[0]} (the size of the first frame)")
        image = _pad_even(image)
        frame_av = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame_av):
            self._container.mux(packet)
        self.n_frames += 1

    def write_mesh(self, frame_rgb: Any, vertices_cam: Any, faces: Any, K: Any, index: int | None = None,
                   status: str | None = None, points: Sequence[tuple[Any, tuple[int, int, int]]] = ()) -> None:
        """Draw a mesh over the frame (:func:`render_overlay` with the config's alpha and colour) and write it.

        ``vertices_cam`` ``[V, 3]`` (camera space, OpenCV), ``faces`` ``[F, 3]`` (counter-clockwise seen from
        outside), ``K`` ``[3, 3]`` in this frame's pixels; ``vertices_cam=None`` writes the plain frame (a
        frame without a tracked mesh). ``points``: ``(pixels [N, 2], RGB colour)`` pairs drawn as dots on top
        (the tracker draws the detected and the fitted landmarks).
        """
        overlay = None
        if vertices_cam is not None:
            overlay = render_overlay(frame_rgb, vertices_cam, faces, K, self.config.alpha, self.config.color)
            for pts, color in points:
                overlay = draw_points(overlay, pts, color)
        self.write(frame_rgb, overlay, index, status)

    def _open(self, height: int, width: int) -> None:
        from fractions import Fraction

        self._in_size = (height, width)
        self._container = self._av.open(str(self.tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.config.crf), "preset": self.config.preset}

    def close(self) -> PreviewResult:
        """Flush the encoder and rename the video into place; returns a :class:`PreviewResult`."""
        if self.closed:
            raise InputError(f"{self.path}: already closed")
        if self.n_frames == 0:
            self.abort()
            raise InputError(f"{self.path}: no frames were written")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True
        os.replace(self.tmp, self.path)
        self.result = PreviewResult(self.path, self.n_frames, self._stream.width, self._stream.height)
        return self.result

    def abort(self) -> None:
        """Discard the temporary video; ``path`` (and any old file there) is left untouched."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._container is not None:
                self._container.close()
        except Exception:  # the file is being discarded: a failing close changes nothing
            pass
        finally:
            remove_path(self.tmp)

    def __enter__(self) -> PreviewWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()


def _pad_even(image: np.ndarray) -> np.ndarray:
    """Repeat the last row/column of ``image`` ``[H, W, 3]`` where H/W is odd (yuv420p needs even sizes)."""
    H, W = image.shape[:2]
    if H % 2 == 0 and W % 2 == 0:
        return image
    return np.pad(image, ((0, H % 2), (0, W % 2), (0, 0)), mode="edge")
