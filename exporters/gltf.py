"""glTF 2.0 (``.glb`` binary, or ``.gltf`` JSON + ``.bin`` beside it) with morph targets, via pygltflib.

One node "Head" with one triangle mesh whose ``POSITION`` is the base shape and whose K morph targets are
the principal offset shapes, scaled so that every weight stays in [0, 1] (:mod:`exporters.basis`; Blender's
importer clamps shape keys to 0..1); one animation drives the node's morph ``weights``
with LINEAR interpolation, one keyframe per frame at ``i / fps`` seconds (glTF time starts at 0). Any glTF
viewer plays it; Blender imports the targets as shape keys.

``point(frame i) = POSITION + sum_k weights[i, k] * target_k.POSITION``. The largest reconstruction error
(output units) is returned in ``ExportResult.extras["max_reconstruction_error"]`` and stored in
``asset.extras`` together with fps and start_frame. ``morph_targets >= N - 1`` is exact up to float32.

glTF is Y-up, right-handed, metres, counter-clockwise front faces, matching this package's conventions;
head transforms are baked into the positions (so they also enter the basis). This writer holds every frame
in memory (``N x V x 3`` float32) because the basis needs all of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pygltflib as gl

from model.errors import InputError
from exporters.base import AnimationWriter
from exporters.basis import pca_basis, reconstruction_error

FLOAT, UINT = gl.FLOAT, gl.UNSIGNED_INT


class GLTFWriter(AnimationWriter):
    """Write ``.glb``/``.gltf`` with a morph-target basis and a weight animation (module docstring).

    Extra args:
        morph_targets: number of morph targets K (default 32; capped at the rank of the offsets).
    """

    name = "glTF morph targets"
    extensions = (".glb", ".gltf")
    streaming = False

    def __init__(self, path: Any, *args: Any, morph_targets: int = 32, **kwargs: Any) -> None:
        if int(morph_targets) < 1:
            raise InputError(f"{path}: morph_targets must be >= 1, got {morph_targets}")
        self.morph_targets = int(morph_targets)
        super().__init__(path, *args, **kwargs)

    def _open(self) -> None:
        self._frames: list[np.ndarray] = []
        if self.tmp.suffix.lower() == ".gltf":
            self._bin_name = self.path.with_suffix(".bin").name
            self._bin_tmp = self._companion(self.path.with_suffix(".bin"))

    def _write(self, points: np.ndarray, transform: np.ndarray | None) -> None:
        self._frames.append(points.copy())

    def _finish(self) -> dict[str, Any]:
        frames = np.stack(self._frames)  # [N, V, 3]
        self._frames = []
        base, offsets, weights = pca_basis(frames, self.morph_targets)  # [V,3], [K,V,3], [N,K]
        err = reconstruction_error(frames, base, offsets, weights)
        del frames
        times = (np.arange(len(weights)) / self.fps).astype(np.float32)  # [N]
        blob = bytearray()
        views: list[gl.BufferView] = []
        accessors: list[gl.Accessor] = []

        def add(arr: np.ndarray, ctype: int, atype: str, target: int | None, minmax: bool) -> int:
            data = np.ascontiguousarray(arr).tobytes()
            views.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
            blob.extend(data)
            blob.extend(b"\0" * (-len(blob) % 4))
            count = int(arr.size) if atype == gl.SCALAR else int(arr.shape[0])
            acc = gl.Accessor(bufferView=len(views) - 1, componentType=ctype, type=atype, count=count)
            if minmax:
                flat = arr.reshape(len(arr), -1) if arr.ndim > 1 else arr.reshape(-1, 1)
                acc.min = flat.min(axis=0).astype(float).tolist()
                acc.max = flat.max(axis=0).astype(float).tolist()
            accessors.append(acc)
            return len(accessors) - 1

        pos = add(base, FLOAT, gl.VEC3, gl.ARRAY_BUFFER, True)
        idx = add(self.faces.astype(np.uint32).reshape(-1), UINT, gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER, False)
        attrs = gl.Attributes(POSITION=pos)
        if self.vertex_colors is not None:
            attrs.COLOR_0 = add(self.vertex_colors, FLOAT, gl.VEC3, gl.ARRAY_BUFFER, False)
        targets = [{"POSITION": add(off, FLOAT, gl.VEC3, gl.ARRAY_BUFFER, True)} for off in offsets]
        t_in = add(times, FLOAT, gl.SCALAR, None, True)
        w_out = add(weights.reshape(-1), FLOAT, gl.SCALAR, None, False)
        k = len(offsets)
        prim = gl.Primitive(attributes=attrs, indices=idx, targets=targets, mode=gl.TRIANGLES)
        mesh = gl.Mesh(name="Head", primitives=[prim], weights=[0.0] * k,
                       extras={"targetNames": [f"shape_{i:03d}" for i in range(k)]})
        anim = gl.Animation(name="expression",
                            samplers=[gl.AnimationSampler(input=t_in, output=w_out, interpolation="LINEAR")],
                            channels=[gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(
                                node=0, path="weights"))])
        extras = {"morph_targets": k, "max_reconstruction_error": err}
        doc = gl.GLTF2(
            asset=gl.Asset(version="2.0", generator="nphm-track exporters.gltf",
                           extras={"fps": self.fps, "start_frame": self.start_frame, **extras}),
            scene=0, scenes=[gl.Scene(nodes=[0])], nodes=[gl.Node(name="Head", mesh=0)], meshes=[mesh],
            accessors=accessors, bufferViews=views, animations=[anim],
            buffers=[gl.Buffer(byteLength=len(blob))])
        if self.tmp.suffix.lower() == ".gltf":
            doc.buffers[0].uri = self._bin_name
            self._bin_tmp.write_bytes(bytes(blob))
            doc.save_json(str(self.tmp))
        else:
            doc.set_binary_blob(bytes(blob))
            doc.save_binary(str(self.tmp))
        return extras
