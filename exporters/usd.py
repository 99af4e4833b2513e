"""USD export with usd-core: a ``UsdGeom.Mesh`` with time-sampled points, or a UsdSkel blend-shape basis.

Stage layout (plain mode)::

    /Head            Xform (defaultPrim); time-sampled ``xformOp:transform`` when head transforms are given
    /Head/Mesh       Mesh: topology authored once (faceVertexCounts, faceVertexIndices, orientation
                     rightHanded = counter-clockwise from outside, subdivisionScheme none); ``points`` and
                     ``extent`` time-sampled, one sample per frame; optional ``primvars:displayColor``
                     (vertex interpolation)

Stage metadata: ``upAxis = "Y"``, ``metersPerUnit`` from the output units (1.0 for metres),
``timeCodesPerSecond = framesPerSecond = fps``, ``startTimeCode``/``endTimeCode`` = first/last frame
number (time code = frame number, first frame ``start_frame``), ``defaultPrim = Head``.

Crate (``.usd``, ``.usdc``) streams: the layer is saved every ~32 MB of points, which writes the new
samples to the file and lets USD drop them from memory, so peak memory does not grow with the frame count.
Text (``.usda``) holds every frame in memory until close (USD's text writer rewrites the whole file).

Blend-shape mode (``blendshapes=K``): the writer holds all frames in memory (``N x V x 3`` float32) and at
close encodes them with PCA of the offsets from the mean shape (:mod:`exporters.basis`)::

    /Head            SkelRoot (defaultPrim), static ``extent`` = bounds of all frames
    /Head/Skeleton   Skeleton with one identity joint "root" (skel:animationSource -> /Head/Anim)
    /Head/Anim       SkelAnimation: blendShapes = shape_000.., time-sampled blendShapeWeights [K]
    /Head/Mesh       Mesh with SkelBindingAPI: points = base shape (all weights 0), rigidly bound to "root"
    /Head/Mesh/shape_000 ...  BlendShape prims with ``offsets`` [V, 3] (principal components scaled so
                     that each weight spans exactly [0, 1] over the clip: DCC sliders do not clamp them)

``point(frame i) = base + sum_k weights[i, k] * offsets[k]``. The largest reconstruction error over all
frames and vertices (output units) is returned in ``ExportResult.extras["max_reconstruction_error"]`` and
stored in the layer's ``customLayerData``. K >= N - 1 is exact up to float32 rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.errors import InputError
from exporters.base import AnimationWriter, bounds
from exporters.basis import pca_basis, reconstruction_error

SAVE_EVERY_BYTES = 32 << 20


def _usd():
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt

    return Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt


def _matrix(t: np.ndarray):
    """Column-vector numpy 4x4 -> Gf.Matrix4d (USD uses row vectors: the transpose)."""
    from pxr import Gf

    return Gf.Matrix4d(t.T.tolist())


class USDWriter(AnimationWriter):
    """Write ``.usd``/``.usdc`` (crate) or ``.usda`` (text); see the module docstring for the layout.

    Extra args:
        blendshapes: None for time-sampled points (default), or K >= 1 for a UsdSkel blend-shape basis of
            K principal components (holds all frames in memory).
    """

    name = "USD"
    extensions = (".usd", ".usdc", ".usda")
    streaming = True  # crate only; .usda and blend-shape mode hold all frames
    stores_transform = True

    def __init__(self, path: Any, *args: Any, blendshapes: int | None = None, **kwargs: Any) -> None:
        if blendshapes is not None and int(blendshapes) < 1:
            raise InputError(f"{path}: blendshapes must be >= 1 or None, got {blendshapes}")
        self.blendshapes = None if blendshapes is None else int(blendshapes)
        super().__init__(path, *args, **kwargs)

    # ---------------------------------------------------------------------------------------------- open
    def _open(self) -> None:
        Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt = _usd()
        self._stage = new_stage(self.tmp, self.metres_per_unit, self.fps, self.start_frame)
        st = self._stage
        root_type = UsdSkel.Root if self.blendshapes else UsdGeom.Xform
        self._root = root_type.Define(st, "/Head")
        st.SetDefaultPrim(self._root.GetPrim())
        mesh = define_mesh(st, "/Head/Mesh", self.faces, self.vertex_colors)
        self._mesh = mesh
        self._points = mesh.CreatePointsAttr()
        self._extent = mesh.CreateExtentAttr()
        self._layer = st.GetRootLayer()
        self._points_path, self._extent_path = self._points.GetPath(), self._extent.GetPath()
        self._xform_op = None
        self._crate = self.tmp.suffix.lower() != ".usda"
        self._save_every = max(1, SAVE_EVERY_BYTES // (12 * self.n_vertices))
        self._frames: list[np.ndarray] = []  # blend-shape mode only
        self._bounds = [np.full(3, np.inf, np.float32), np.full(3, -np.inf, np.float32)]

    # --------------------------------------------------------------------------------------------- write
    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt = _usd()
        time = Usd.TimeCode(self.start_frame + self.n_frames)
        if transform is not None:
            if self._xform_op is None:
                self._xform_op = self._root.AddTransformOp()
            self._xform_op.Set(_matrix(transform), time)
        box = bounds(points)  # [2, 3]
        if self.blendshapes:
            self._frames.append(points.copy())
            np.minimum(self._bounds[0], box[0], out=self._bounds[0])
            np.maximum(self._bounds[1], box[1], out=self._bounds[1])
            return
        # Author on the layer directly (Sdf): no stage change processing per sample.
        self._layer.SetTimeSample(self._points_path, time.GetValue(), Vt.Vec3fArray.FromNumpy(points))
        self._layer.SetTimeSample(self._extent_path, time.GetValue(), Vt.Vec3fArray.FromNumpy(box))
        if self._crate and (self.n_frames + 1) % self._save_every == 0:
            self._stage.SetEndTimeCode(self.start_frame + self.n_frames)
            self._stage.GetRootLayer().Save()

    # -------------------------------------------------------------------------------------------- finish
    def _finish(self) -> dict[str, Any]:
        extras: dict[str, Any] = {}
        st = self._stage
        st.SetEndTimeCode(self.start_frame + self.n_frames - 1)
        if self.blendshapes:
            extras = self._write_blendshapes()
        data = dict(st.GetRootLayer().customLayerData)
        data.update({"generator": "nphm-track exporters.usd", "inputUnitsPerMetre": self.units_per_metre,
                     **extras})
        st.GetRootLayer().customLayerData = data
        st.GetRootLayer().Save()
        self._release()
        return extras

    def _write_blendshapes(self) -> dict[str, Any]:
        Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt = _usd()
        st = self._stage
        frames = np.stack(self._frames)  # [N, V, 3]
        self._frames = []
        base, offsets, weights = pca_basis(frames, self.blendshapes)  # [V,3], [K,V,3], [N,K]
        err = reconstruction_error(frames, base, offsets, weights)
        del frames
        k = len(offsets)
        self._root.GetPrim().CreateAttribute("extent", Sdf.ValueTypeNames.Float3Array).Set(
            Vt.Vec3fArray.FromNumpy(np.stack(self._bounds)))
        author_blendshapes(st, self._mesh, base, offsets, [f"shape_{i:03d}" for i in range(k)], weights,
                           self.start_frame)
        return {"blendshapes": k, "max_reconstruction_error": err}

    def _release(self) -> None:
        for attr in ("_points", "_extent", "_xform_op", "_mesh", "_root", "_layer", "_stage"):
            if hasattr(self, attr):
                delattr(self, attr)

    def _discard(self) -> None:
        self._release()


def new_stage(path, metres_per_unit: float, fps: float, start_frame: int):
    """A new USD stage at ``path``: Y up, ``metersPerUnit``, time codes = frame numbers at ``fps``."""
    Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt = _usd()
    st = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(st, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(st, metres_per_unit)
    st.SetTimeCodesPerSecond(fps)
    st.SetFramesPerSecond(fps)
    st.SetStartTimeCode(start_frame)
    st.SetEndTimeCode(start_frame)
    return st


def define_mesh(stage, path: str, faces: np.ndarray, vertex_colors: np.ndarray | None):
    """A triangle ``UsdGeom.Mesh`` at ``path`` with its topology (``faces [F, 3]``, counter-clockwise from
    outside) and optional per-vertex display colours ``[V, 3]``; points are left to the caller."""
    Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt = _usd()
    mesh = UsdGeom.Mesh.Define(stage, path)
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, np.int32)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.ascontiguousarray(faces, np.int32).reshape(-1)))
    mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    mesh.CreateDoubleSidedAttr(False)
    if vertex_colors is not None:
        pv = mesh.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex)
        pv.Set(Vt.Vec3fArray.FromNumpy(vertex_colors))
    return mesh


def author_blendshapes(stage, mesh, base: np.ndarray, offsets: np.ndarray, names: list[str], weights: np.ndarray,
                       start_frame: int) -> None:
    """Turn ``mesh`` (a child of a ``SkelRoot``) into UsdSkel blend shapes (module docstring's layout).

    ``base [V, 3]`` becomes the mesh's points, each ``offsets [K, V, 3]`` a ``BlendShape`` child named
    ``names[k]``; a ``Skeleton`` with one identity joint ``root`` beside the mesh has a ``SkelAnimation``
    ``Anim`` as its ``skel:animationSource``, with time-sampled ``blendShapeWeights`` (``weights [N, K]``, frame
    ``i`` at time code ``start_frame + i``), which is how Blender (4.0 and later) imports blend-shape animation.
    """
    Gf, Sdf, Usd, UsdGeom, UsdSkel, Vt = _usd()
    parent = mesh.GetPath().GetParentPath()
    mesh.GetPointsAttr().Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(base, np.float32)))
    mesh.GetExtentAttr().Set(Vt.Vec3fArray.FromNumpy(bounds(base)))
    skel = UsdSkel.Skeleton.Define(stage, parent.AppendChild("Skeleton"))
    identity = Vt.Matrix4dArray([Gf.Matrix4d(1.0)])
    skel.CreateJointsAttr(["root"])
    skel.CreateBindTransformsAttr(identity)
    skel.CreateRestTransformsAttr(identity)
    anim = UsdSkel.Animation.Define(stage, parent.AppendChild("Anim"))
    anim.CreateJointsAttr(["root"])
    anim.CreateTranslationsAttr(Vt.Vec3fArray([Gf.Vec3f(0.0)]))
    anim.CreateRotationsAttr(Vt.QuatfArray([Gf.Quatf(1.0)]))
    anim.CreateScalesAttr(Vt.Vec3hArray([Gf.Vec3h(1.0)]))
    anim.CreateBlendShapesAttr(list(names))
    w_attr = anim.CreateBlendShapeWeightsAttr()
    for i in range(len(weights)):
        w_attr.Set(Vt.FloatArray.FromNumpy(np.ascontiguousarray(weights[i], np.float32)), Usd.TimeCode(start_frame + i))
    UsdSkel.BindingAPI.Apply(skel.GetPrim()).CreateAnimationSourceRel().SetTargets([anim.GetPath()])
    binding = UsdSkel.BindingAPI.Apply(mesh.GetPrim())
    binding.CreateSkeletonRel().SetTargets([skel.GetPath()])
    binding.CreateJointIndicesPrimvar(constant=True, elementSize=1).Set(Vt.IntArray([0]))
    binding.CreateJointWeightsPrimvar(constant=True, elementSize=1).Set(Vt.FloatArray([1.0]))
    binding.CreateGeomBindTransformAttr(Gf.Matrix4d(1.0))
    binding.CreateBlendShapesAttr(list(names))
    targets = []
    for name, off in zip(names, offsets):
        shape = UsdSkel.BlendShape.Define(stage, mesh.GetPath().AppendChild(name))
        shape.CreateOffsetsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(off, np.float32)))
        targets.append(shape.GetPath())
    binding.CreateBlendShapeTargetsRel().SetTargets(targets)


def validate_usd(path) -> list[str]:
    """Run every registered ``UsdValidation`` validator on the stage at ``path``.

    Returns one line per error (``"<name>: <message>"``); warnings are ignored. Empty means valid.
    """
    from pxr import Usd, UsdValidation

    stage = Usd.Stage.Open(str(path))
    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    errors = UsdValidation.ValidationContext(validators).Validate(stage)
    return [f"{e.GetName()}: {e.GetMessage()}" for e in errors
            if e.GetType() == UsdValidation.ValidationErrorType.Error]
