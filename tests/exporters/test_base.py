"""The shared writer contract (exporters/base.py): units, validation, transforms, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from exporters import export_animation, open_writer, read_animation
from exporters.base import temp_name
from model.errors import InputError

from .conftest import apply_transforms

# One target per writer class (folder for the mesh sequence).
TARGETS = ["a.usd", "a.usda", "a.abc", "a.pc2", "a.mdd", "a.glb", "a.gltf", "a.npz", "seq/"]


def _target(folder: Path, name: str) -> str:
    """``folder/name`` keeping a trailing slash (which marks a sequence folder)."""
    return f"{folder}/{name}"


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_default_units_convert_model_units_to_metres(tmp_path, anim):
    res = export_animation(tmp_path / "a.npz", anim.faces, anim.frames, anim.fps)
    back = read_animation(res.path)
    # 1 model unit = 0.25 m: a sphere of radius 0.5 units is 0.125 m.
    assert np.allclose(np.linalg.norm(back.vertices[0], axis=1).mean(), 0.125, atol=0.01)
    np.testing.assert_allclose(back.vertices, anim.metres, rtol=0, atol=1e-7)
    assert back.metres_per_unit == 1.0


def test_units_and_scale_arguments(tmp_path, anim):
    cm = read_animation(export_animation(tmp_path / "cm.npz", anim.faces, anim.frames, anim.fps,
                                         units="cm").path)
    np.testing.assert_allclose(cm.vertices, anim.frames * 25.0, rtol=1e-6)
    assert cm.metres_per_unit == pytest.approx(0.01)
    raw = read_animation(export_animation(tmp_path / "m.npz", anim.faces, anim.frames, anim.fps,
                                          units_per_metre=1.0).path)
    np.testing.assert_array_equal(raw.vertices, anim.frames)
    with pytest.raises(InputError, match="unknown units 'ft'"):
        open_writer(tmp_path / "x.npz", anim.faces, 42, 25, units="ft")


def test_transform_is_baked_where_the_format_has_no_hierarchy(tmp_path, anim):
    res = export_animation(tmp_path / "a.pc2", anim.faces, anim.frames, anim.fps,
                           transforms=anim.transforms, units_per_metre=1.0)
    data = np.fromfile(res.path, dtype="<f4", offset=32).reshape(anim.frames.shape)
    np.testing.assert_allclose(data, apply_transforms(anim.frames, anim.transforms), atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (lambda a: a.frames[0][:-1], r"shape \[41, 3\], expected \[42, 3\]"),
    (lambda a: np.where(np.arange(42)[:, None] == 5, np.nan, a.frames[0]), "NaN or infinite"),
    (lambda a: np.full((42, 3), np.inf), "NaN or infinite"),
])
def test_bad_frames_raise_one_line_input_error(tmp_path, anim, bad, match):
    with pytest.raises(InputError, match=match) as info:
        with open_writer(tmp_path / "a.pc2", anim.faces, 42, anim.fps) as w:
            w.append(anim.frames[0])
            w.append(bad(anim))
    assert "\n" not in str(info.value) and str(tmp_path / "a.pc2") in str(info.value)
    assert _listing(tmp_path) == set()


@pytest.mark.parametrize("faces, match", [
    (np.array([[0, 1, 42]]), r"out of range \[0, 42\)"),
    (np.array([[0, -1, 2]]), "out of range"),
    (np.array([[0, 1, 2, 3]]), r"shape \[F, 3\]"),
    (np.array([[0.0, 1.0, 2.0]]), "integer"),
])
def test_bad_faces(tmp_path, faces, match):
    with pytest.raises(InputError, match=match):
        open_writer(tmp_path / "a.usd", faces, 42, 25)
    assert _listing(tmp_path) == set()


def test_bad_fps_colors_and_transforms(tmp_path, anim):
    with pytest.raises(InputError, match="fps"):
        open_writer(tmp_path / "a.npz", anim.faces, 42, 0)
    with pytest.raises(InputError, match=r"vertex_colors must have shape \[42, 3\]"):
        open_writer(tmp_path / "a.npz", anim.faces, 42, 25, vertex_colors=np.zeros((3, 3)))
    with pytest.raises(InputError, match="for all frames or none"):
        with open_writer(tmp_path / "a.npz", anim.faces, 42, 25) as w:
            w.append(anim.frames[0], anim.transforms[0])
            w.append(anim.frames[1])
    with pytest.raises(InputError, match="no frames"):
        open_writer(tmp_path / "a.npz", anim.faces, 42, 25).close()
    assert _listing(tmp_path) == set()


def test_missing_or_file_parent_folder(tmp_path, anim):
    with pytest.raises(InputError, match="does not exist"):
        open_writer(tmp_path / "nope" / "a.usd", anim.faces, 42, 25)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="does not exist"):
        open_writer(tmp_path / "file" / "a.abc", anim.faces, 42, 25)


def _unwritable_folder(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    for cand in (ro, Path("/sys")):
        try:
            open(cand / ".nphm_probe", "xb").close()
            os.remove(cand / ".nphm_probe")
        except OSError:
            return cand
    pytest.skip("no unwritable folder available (running as root without a read-only /sys)")


@pytest.mark.parametrize("name", TARGETS)
def test_unwritable_folder(tmp_path, anim, name):
    folder = _unwritable_folder(tmp_path)
    with pytest.raises(InputError, match="cannot write|not writable") as info:
        export_animation(_target(folder, name), anim.faces, anim.frames, anim.fps)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", TARGETS)
def test_exception_mid_stream_keeps_old_file_and_leaves_nothing(tmp_path, anim, name):
    target = _target(tmp_path, name)
    export_animation(target, anim.faces, anim.frames, anim.fps)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(RuntimeError, match="boom"):
        with open_writer(target, anim.faces, 42, anim.fps) as w:
            w.append(anim.frames[0] * 2)
            w.append(anim.frames[1] * 2)
            raise RuntimeError("boom")
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # old good output untouched, no temporary left behind


@pytest.mark.parametrize("name", TARGETS)
def test_exception_mid_stream_on_new_target_leaves_no_file(tmp_path, anim, name):
    with pytest.raises(RuntimeError):
        with open_writer(_target(tmp_path, name), anim.faces, 42, anim.fps) as w:
            w.append(anim.frames[0])
            raise RuntimeError("boom")
    assert _listing(tmp_path) == set()


def test_killed_process_leaves_no_partial_target(tmp_path):
    # A hard kill (no cleanup at all) after some frames, with four writers open in one process:
    # no target name may exist afterwards, only hidden temporaries.
    names = ["a.usd", "a.abc", "a.pc2", "a.npz"]
    code = textwrap.dedent(f"""
        import os, numpy as np
        from exporters import open_writer
        writers = [open_writer(os.path.join({str(tmp_path)!r}, n), [[0, 1, 2]], 3, 25.0) for n in {names!r}]
        for i in range(5):
            for w in writers:
                w.append(np.eye(3) * i)
        os._exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    assert proc.returncode == 3
    for name in names:
        assert not (tmp_path / name).exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(n.startswith(".") for n in left)


def test_temp_name_is_hidden_beside_target_and_keeps_extension(tmp_path):
    t = temp_name(tmp_path / "anim.usda")
    assert t.parent == tmp_path and t.name.startswith(".anim.") and t.suffix == ".usda"
    assert temp_name(tmp_path / "anim.usda") != t


def test_close_returns_result_and_append_after_close_fails(tmp_path, anim):
    with open_writer(tmp_path / "a.pc2", anim.faces, 42, anim.fps) as w:
        for f in anim.frames:
            w.append(f)
    res = w.result
    assert res.n_frames == len(anim.frames) and res.n_vertices == 42
    assert res.files == [tmp_path / "a.pc2", tmp_path / "a.obj"]
    assert res.bytes_written == sum(p.stat().st_size for p in res.files)
    with pytest.raises(InputError, match="after close"):
        w.append(anim.frames[0])
