import numpy as np
import pytest

from train.render import GeometryRender
from train.shading import (AppearanceConfig, background, degrade, linear_to_srgb, sample_appearance,
                           sh_basis, sh_shading, shade)


def _flat_geometry(size=16, part=1):
    """A disc of skin facing the camera in the middle of the image."""
    u, v = np.meshgrid(np.arange(size), np.arange(size))
    mask = (u - size / 2) ** 2 + (v - size / 2) ** 2 < (size / 3) ** 2
    normals = np.zeros((size, size, 3))
    normals[mask] = [0, 0, -1]
    canonical = np.zeros((size, size, 3))
    canonical[mask, 0] = (u[mask] - size / 2) * 0.01
    canonical[mask, 1] = (v[mask] - size / 2) * 0.01
    canonical[mask, 2] = -0.5  # the back of a head: no lips or brows
    return GeometryRender(mask=mask, depth=mask * 3.0, normals=normals, canonical=canonical, face_mask=mask,
                          part=np.where(mask, part, 0).astype(np.uint8), triangle=np.where(mask, 0, -1),
                          bary=np.zeros((size, size, 3)), landmarks2d=np.zeros((68, 2)),
                          landmarks_depth=np.ones(68), landmarks_visible=np.zeros(68, bool))


def _landmarks():
    lm = np.zeros((68, 3))
    lm[:, 2] = 0.3
    lm[48:60, 0] = np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)) * 0.08
    lm[48:60, 1] = -0.1 + np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False)) * 0.02
    lm[17:27, 0] = np.linspace(-0.2, 0.2, 10)
    lm[17:27, 1] = 0.15
    return lm


def test_sh_ambient_only_is_constant_and_band1_is_directional():
    n = np.random.default_rng(0).normal(size=(100, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    sh = np.zeros((9, 3))
    sh[0] = [0.8, 0.7, 0.6]
    np.testing.assert_allclose(sh_shading(n, sh), np.broadcast_to([0.8, 0.7, 0.6], (100, 3)))
    sh[2] = -0.5  # light from the camera side (normals facing the camera have z < 0)
    e = sh_shading(n, sh)[:, 0]
    assert e[n[:, 2] < -0.5].min() > e[n[:, 2] > 0.5].max()
    assert sh_basis(n).shape == (100, 9)
    with pytest.raises(ValueError, match=r"\[9, 3\]"):
        sh_shading(n, np.zeros((4, 3)))


def test_sample_appearance_is_deterministic_and_varied():
    a = [sample_appearance(np.random.default_rng(s)) for s in range(40)]
    b = sample_appearance(np.random.default_rng(3))
    np.testing.assert_array_equal(a[3].sh, b.sh)
    assert {x.background_kind for x in a} == {"solid", "gradient", "noise"}
    tones = np.array([x.skin.mean() for x in a])
    assert tones.max() > 3 * tones.min()  # light and dark skin
    assert np.mean([abs(x.sh[0, 0]) > np.abs(x.sh[1:4, 0]).max() for x in a]) > 0.8  # ambient dominates


@pytest.mark.parametrize("kind", ["solid", "gradient", "noise"])
def test_backgrounds(kind):
    app = sample_appearance(np.random.default_rng(0))
    app.background_kind = kind
    bg = background(app, 24, 16)
    assert bg.shape == (16, 24, 3) and bg.min() >= 0 and bg.max() <= 1
    spread = np.ptp(bg.reshape(-1, 3), axis=0).max()
    assert (spread == 0) if kind == "solid" else (spread > 0.01)


def test_shade_paints_skin_over_background_and_is_deterministic():
    g = _flat_geometry()
    app = sample_appearance(np.random.default_rng(1), AppearanceConfig(jpeg_probability=0, blur_probability=0,
                                                                       noise_std=(0, 0)))
    app.background_kind, app.background_colors = "solid", np.array([[0.0, 0.0, 1.0], [0, 0, 1.0]])
    eyes = np.zeros((2, 3))
    img = shade(g, app, _landmarks(), eyes, np.random.default_rng(0))
    assert img.dtype == np.uint8 and img.shape == (16, 16, 3)
    assert (img[~g.mask] == [0, 0, 255]).all()
    skin = img[g.mask].astype(float)
    assert (skin[:, 0] > skin[:, 2]).mean() > 0.9  # skin is red-dominant, not the blue background
    np.testing.assert_array_equal(img, shade(g, app, _landmarks(), eyes, np.random.default_rng(0)))


def test_iris_and_pupil_are_darker_than_sclera():
    g = _flat_geometry(size=32, part=5)
    g.canonical[..., 2] = 0.1  # in front of the eye centre at the origin
    app = sample_appearance(np.random.default_rng(2))
    app.sh = np.zeros((9, 3))
    app.sh[0] = 1.0
    img = shade(g, app, _landmarks(), np.zeros((1, 3)), np.random.default_rng(0), degrade_image=False)
    r = np.linalg.norm(g.canonical[..., :2], axis=-1)
    centre = img[g.mask & (r < 0.002)].mean()
    rim = img[g.mask & (r > 0.04)].mean()
    assert centre < 40 and rim > centre + 80


def test_degrade_changes_image_within_bounds():
    rgb = np.random.default_rng(0).uniform(0.2, 0.8, (32, 32, 3))
    app = sample_appearance(np.random.default_rng(0))
    app.blur_sigma, app.noise_std, app.jpeg_quality = 1.0, 0.02, 40
    out = degrade(rgb, app, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert np.abs(out.astype(float) / 255 - rgb).mean() > 0.01
    assert np.abs(out.astype(float).mean() / 255 - rgb.mean()) < 0.05


def test_linear_to_srgb_endpoints():
    np.testing.assert_allclose(linear_to_srgb(np.array([0.0, 1.0, 2.0])), [0.0, 1.0, 1.0], atol=1e-12)
    assert linear_to_srgb(np.array([0.18]))[0] == pytest.approx(0.4614, abs=1e-3)
