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

from pathlib import Path
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
        k = len(offsets)
        extras = {"morph_targets": k, "max_reconstruction_error": err}
        doc, blob = morph_document(self.faces, base, offsets, [f"shape_{i:03d}" for i in range(k)], weights, self.fps,
                                   vertex_colors=self.vertex_colors,
                                   extras={"fps": self.fps, "start_frame": self.start_frame, **extras})
        gltf = self.tmp.suffix.lower() == ".gltf"
        save_document(doc, blob, self.tmp, *((self._bin_name, self._bin_tmp) if gltf else ()))
        return extras


def morph_document(faces: np.ndarray, base: np.ndarray, offsets: np.ndarray, names: list[str], weights: np.ndarray,
                   fps: float, *, vertex_colors: np.ndarray | None = None, extras: dict | None = None,
                   node_motion: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[gl.GLTF2, bytes]:
    """A glTF document (and its binary buffer) of one node "Head" with one mesh: ``POSITION`` = ``base
    [V, 3]``, morph targets ``offsets [K, V, 3]`` named ``names`` in ``mesh.extras.targetNames`` (Blender's
    importer makes them shape keys), and an animation "expression" of the morph ``weights [N, K]``, one
    LINEAR keyframe per frame at ``i / fps`` seconds. ``node_motion = (translations [N, 3], rotations [N, 4]
    xyzw quaternions)`` animates the node too (the head pose). ``extras`` go into ``asset.extras``."""
    times = (np.arange(len(weights)) / fps).astype(np.float32)  # [N]
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

    f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
    pos = add(f32(base), FLOAT, gl.VEC3, gl.ARRAY_BUFFER, True)
    idx = add(np.asarray(faces).astype(np.uint32).reshape(-1), UINT, gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER, False)
    attrs = gl.Attributes(POSITION=pos)
    if vertex_colors is not None:
        attrs.COLOR_0 = add(f32(vertex_colors), FLOAT, gl.VEC3, gl.ARRAY_BUFFER, False)
    targets = [{"POSITION": add(f32(off), FLOAT, gl.VEC3, gl.ARRAY_BUFFER, True)} for off in offsets]
    t_in = add(times, FLOAT, gl.SCALAR, None, True)
    samplers = [gl.AnimationSampler(input=t_in, output=add(f32(weights).reshape(-1), FLOAT, gl.SCALAR, None, False),
                                    interpolation="LINEAR")]
    channels = [gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(node=0, path="weights"))]
    if node_motion is not None:
        for path, arr, atype in (("translation", node_motion[0], gl.VEC3), ("rotation", node_motion[1], gl.VEC4)):
            samplers.append(gl.AnimationSampler(input=t_in, output=add(f32(arr), FLOAT, atype, None, False),
                                                interpolation="LINEAR"))
            channels.append(gl.AnimationChannel(sampler=len(samplers) - 1,
                                                target=gl.AnimationChannelTarget(node=0, path=path)))
    prim = gl.Primitive(attributes=attrs, indices=idx, targets=targets, mode=gl.TRIANGLES)
    mesh = gl.Mesh(name="Head", primitives=[prim], weights=[0.0] * len(offsets), extras={"targetNames": list(names)})
    anim = gl.Animation(name="expression", samplers=samplers, channels=channels)
    doc = gl.GLTF2(
        asset=gl.Asset(version="2.0", generator="nphm-track exporters.gltf", extras=dict(extras or {})),
        scene=0, scenes=[gl.Scene(nodes=[0])], nodes=[gl.Node(name="Head", mesh=0)], meshes=[mesh],
        accessors=accessors, bufferViews=views, animations=[anim], buffers=[gl.Buffer(byteLength=len(blob))])
    return doc, bytes(blob)


def save_document(doc: gl.GLTF2, blob: bytes, tmp, bin_name: str | None = None, bin_tmp=None) -> None:
    """Write ``doc`` to ``tmp``: binary ``.glb`` with the buffer inside, or ``.gltf`` JSON whose buffer is the
    file ``bin_name`` (written to ``bin_tmp``)."""
    if str(tmp).lower().endswith(".gltf"):
        doc.buffers[0].uri = bin_name
        Path(bin_tmp).write_bytes(blob)
        doc.save_json(str(tmp))
    else:
        doc.set_binary_blob(blob)
        doc.save_binary(str(tmp))
