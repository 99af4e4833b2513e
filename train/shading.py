"""RGB appearance of the synthetic renders: albedo, spherical-harmonics lighting, backgrounds, degradations.

Everything here turns a :class:`train.render.GeometryRender` into an 8-bit sRGB image. The look is random
per sample (drawn by :func:`sample_appearance` from a numpy generator) so that networks trained on the
renders do not overfit to one look:

- **albedo** (linear RGB): a per-identity skin tone with low-frequency variation (a few random sinusoids
  of the canonical point, so the pattern sticks to the skin under expression and pose), redder lips,
  darker brows, optional hair on the scalp, whitish sclera, a coloured iris with a dark pupil, off-white
  teeth, pink gums/tongue and dark mouth/eye sockets. Regions are found in canonical space
  (``GeometryRender.canonical``) from the canonical landmarks and eyeball centres passed in.
- **lighting**: order-2 real spherical harmonics (9 coefficients per colour channel) evaluated on the
  camera-space normals, with a dominant ambient (constant) term; Lambertian only.
- **background**: solid colour, linear gradient, or multi-octave value noise, in sRGB.
- **degradations**: Gaussian blur, Gaussian sensor noise, JPEG re-encoding (Pillow).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from train.frame import UNITS_PER_CM
from train.render import GeometryRender


# Linear-RGB skin tones from very light to very dark (rough values of measured skin reflectance).
SKIN_TONES = np.array([
    [0.78, 0.57, 0.47], [0.70, 0.48, 0.38], [0.60, 0.40, 0.30], [0.47, 0.30, 0.20],
    [0.33, 0.20, 0.13], [0.20, 0.12, 0.08], [0.11, 0.07, 0.05],
])
HAIR_TONES = np.array([[0.02, 0.015, 0.01], [0.08, 0.05, 0.03], [0.25, 0.15, 0.07], [0.45, 0.35, 0.20],
                       [0.30, 0.10, 0.04], [0.35, 0.35, 0.35]])
IRIS_TONES = np.array([[0.10, 0.05, 0.02], [0.20, 0.12, 0.05], [0.10, 0.18, 0.30], [0.12, 0.20, 0.10],
                       [0.18, 0.18, 0.20]])


@dataclass
class AppearanceConfig:
    """Ranges of the random look (uniform in each range unless said otherwise)."""

    albedo_variation: float = 0.12
    """Amplitude of the low-frequency relative albedo variation of the skin."""
    hair_probability: float = 0.6
    """Chance that the scalp is painted with a hair colour."""
    ambient: tuple[float, float] = (0.65, 1.05)
    """SH band-0 (constant) coefficient, the dominant term."""
    band1_std: float = 0.35
    """Std of the 3 band-1 (directional) SH coefficients."""
    band2_std: float = 0.12
    """Std of the 5 band-2 SH coefficients."""
    light_tint: float = 0.08
    """Per-channel relative jitter of the light colour."""
    exposure: tuple[float, float] = (0.8, 1.25)
    """Overall gain before gamma."""
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    """Gaussian blur sigma in pixels (applied with probability ``blur_probability``)."""
    blur_probability: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.03)
    """Gaussian sensor noise std, in [0, 1] intensity units."""
    jpeg_quality: tuple[int, int] = (30, 95)
    """JPEG quality range (applied with probability ``jpeg_probability``)."""
    jpeg_probability: float = 0.7


@dataclass
class Appearance:
    """One drawn look. Colours are linear RGB in [0, 1] unless said otherwise."""

    skin: np.ndarray  # [3]
    variation_freq: np.ndarray  # [4, 3] spatial frequencies (radians per model unit)
    variation_phase: np.ndarray  # [4]
    variation_amp: np.ndarray  # [4, 3] relative amplitude per channel
    lip: np.ndarray  # [3]
    brow: np.ndarray  # [3]
    brow_strength: float
    hair: np.ndarray | None  # [3] or None for no hair
    hairline_cm: float  # hair starts this far above the brows
    sclera: np.ndarray  # [3]
    iris: np.ndarray  # [3]
    iris_cm: float
    pupil_cm: float
    teeth: np.ndarray  # [3]
    gums: np.ndarray  # [3]
    socket: np.ndarray  # [3]
    sh: np.ndarray  # [9, 3] SH lighting coefficients
    exposure: float
    background_kind: str  # "solid" | "gradient" | "noise"
    background_colors: np.ndarray  # [2, 3] sRGB
    background_seed: int
    blur_sigma: float
    noise_std: float
    jpeg_quality: int | None


def sample_appearance(rng: np.random.Generator, cfg: AppearanceConfig | None = None) -> Appearance:
    """Draw a random look (skin, eyes, mouth, lighting, background, degradations)."""
    cfg = cfg or AppearanceConfig()
    k = rng.uniform(0, len(SKIN_TONES) - 1)
    i0 = int(np.floor(k))
    i1 = min(i0 + 1, len(SKIN_TONES) - 1)
    skin = (SKIN_TONES[i0] * (1 - (k - i0)) + SKIN_TONES[i1] * (k - i0)) * rng.uniform(0.9, 1.1, 3)
    freq = rng.normal(0, 1, (4, 3))
    freq *= (rng.uniform(2.0, 9.0, 4) / np.linalg.norm(freq, axis=1))[:, None]  # 2..9 rad per unit
    amp = rng.uniform(-1, 1, (4, 3)) * cfg.albedo_variation / 2
    lip = skin * np.array([1.1, 0.7, 0.72]) * rng.uniform(0.75, 1.0)
    hair = HAIR_TONES[rng.integers(len(HAIR_TONES))] * rng.uniform(0.7, 1.3, 3)
    sh = np.zeros((9, 3))
    tint = 1.0 + rng.uniform(-cfg.light_tint, cfg.light_tint, 3)
    sh[0] = rng.uniform(*cfg.ambient) * tint
    sh[1:4] = rng.normal(0, cfg.band1_std, (3, 1)) * tint
    sh[4:] = rng.normal(0, cfg.band2_std, (5, 1)) * tint
    kind = ("solid", "gradient", "noise")[rng.integers(3)]
    return Appearance(
        skin=np.clip(skin, 0.02, 0.95), variation_freq=freq, variation_phase=rng.uniform(0, 2 * np.pi, 4),
        variation_amp=amp, lip=np.clip(lip, 0.01, 1.0), brow=np.minimum(hair, skin),
        brow_strength=rng.uniform(0.3, 0.9),
        hair=np.clip(hair, 0, 1) if rng.uniform() < cfg.hair_probability else None,
        hairline_cm=rng.uniform(4.5, 7.5),
        sclera=np.array([0.78, 0.74, 0.70]) * rng.uniform(0.8, 1.05),
        iris=IRIS_TONES[rng.integers(len(IRIS_TONES))] * rng.uniform(0.7, 1.3),
        iris_cm=rng.uniform(0.55, 0.65), pupil_cm=rng.uniform(0.15, 0.3), teeth=np.array([0.75, 0.70, 0.58]) * rng.uniform(0.7, 1.0),
        gums=np.array([0.55, 0.18, 0.18]) * rng.uniform(0.7, 1.1), socket=np.array([0.12, 0.03, 0.03]),
        sh=sh, exposure=rng.uniform(*cfg.exposure), background_kind=kind,
        background_colors=rng.uniform(0, 1, (2, 3)), background_seed=int(rng.integers(2**31)),
        blur_sigma=rng.uniform(*cfg.blur_sigma) if rng.uniform() < cfg.blur_probability else 0.0,
        noise_std=rng.uniform(*cfg.noise_std),
        jpeg_quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        if rng.uniform() < cfg.jpeg_probability else None,
    )


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """Order-2 real SH basis (up to constant factors folded into the coefficients): ``[..., 3] -> [..., 9]``.

    Order: 1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2 (camera-space unit normals).
    """
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    return np.stack([np.ones_like(x), y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y], -1)


def sh_shading(normals: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """Irradiance ``[..., 3]`` (per colour channel, clamped >= 0) from normals ``[..., 3]`` and SH ``[9, 3]``."""
    if sh.shape != (9, 3):
        raise ValueError(f"sh_shading: expected coefficients [9, 3], got {sh.shape}")
    return np.maximum(sh_basis(normals) @ sh, 0.0)


def _segment_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """``[M]`` distance of each point ``[M, 3]`` to the open polyline ``[S + 1, 3]``."""
    a, b = polyline[:-1], polyline[1:]  # [S, 3]
    ab = b - a
    t = np.einsum("msc,sc->ms", points[:, None, :] - a[None], ab) / np.maximum((ab * ab).sum(-1), 1e-20)
    closest = a[None] + np.clip(t, 0, 1)[..., None] * ab[None]  # [M, S, 3]
    return np.sqrt(((points[:, None, :] - closest) ** 2).sum(-1).min(1))


def _inside_polygon_xy(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """``[M]`` bool: point inside the closed polygon ``[P, 3]``, both projected on the xy plane (even-odd)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0][None], polygon[:, 1][None]
    x1, y1 = np.roll(polygon[:, 0], -1)[None], np.roll(polygon[:, 1], -1)[None]
    crosses = ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-20, y1 - y0))
    return crosses.sum(1) % 2 == 1


def _near_box(points: np.ndarray, anchors: np.ndarray, margin: float) -> np.ndarray:
    """``[M]`` bool: point inside the axis-aligned box of ``anchors`` grown by ``margin``."""
    lo, hi = anchors.min(0) - margin, anchors.max(0) + margin
    return ((points >= lo) & (points <= hi)).all(1)


def _band(d: np.ndarray, half_width: float, sigma: float) -> np.ndarray:
    """Soft band weight: 1 within ``half_width`` of a curve, Gaussian fall-off of ``sigma`` outside."""
    return np.exp(-np.maximum(d - half_width, 0.0) ** 2 / (2 * sigma * sigma))


def albedo_map(geom: GeometryRender, app: Appearance, landmarks_canonical: np.ndarray,
               eye_centres: np.ndarray) -> np.ndarray:
    """Linear-RGB albedo ``[H, W, 3]`` of the hit pixels (zero elsewhere).

    Args:
        landmarks_canonical: ``[68, 3]`` canonical Multi-PIE landmarks (model units): the lips (outer
            contour 48..59) and brows (17..21, 22..26) are painted from them.
        eye_centres: ``[E, 3]`` canonical eyeball centres (model units). The ICT eyeball's outer shell
            (sclera material) also covers the iris as a transparent cornea, so iris and pupil are painted
            on any eyeball point within ``iris_cm`` / ``pupil_cm`` of the eye's forward (+Z) axis.
    """
    cm = UNITS_PER_CM
    out = np.zeros(geom.mask.shape + (3,))
    part = geom.part
    skin = part == 1
    lm = landmarks_canonical
    if skin.any():
        p = geom.canonical[skin]  # [M, 3]
        phase = p @ app.variation_freq.T + app.variation_phase  # [M, 4]
        col = app.skin * (1.0 + np.sin(phase) @ app.variation_amp)  # [M, 3]
        front = p[:, 2] > lm[27:36, 2].min() - 2.5 * cm  # [M] the front of the face, not the back of the head
        outer = lm[48:60]
        near = front & _near_box(p, outer, 1.0 * cm)  # only points that can be coloured are evaluated
        q = p[near]
        d_lip = _segment_distance(q, np.concatenate([outer, outer[:1]]))
        lips = np.where(_inside_polygon_xy(q, outer), 1.0, _band(d_lip, 0.0, 0.12 * cm))[:, None]
        col[near] = col[near] * (1 - lips) + app.lip * lips
        near = front & _near_box(p, lm[17:27], 2.0 * cm)
        q = p[near]
        d_brow = np.minimum(_segment_distance(q, lm[17:22]), _segment_distance(q, lm[22:27]))
        brows = _band(d_brow, 0.3 * cm, 0.2 * cm)[:, None] * app.brow_strength
        col[near] = col[near] * (1 - brows) + app.brow * brows
        if app.hair is not None:
            brow_y = lm[17:27, 1].mean()
            front_z = lm[27:36, 2].mean()
            # Hairline rises toward the face's front; the back of the scalp is covered down to the ears.
            level = brow_y + app.hairline_cm * cm - 0.35 * np.maximum(0.0, front_z - p[:, 2] - 4 * cm)
            hair = 1.0 / (1.0 + np.exp(-(p[:, 1] - level) / (0.4 * cm)))
            col = col * (1 - hair[:, None]) + app.hair * hair[:, None]
        out[skin] = col
    out[part == 2] = app.socket
    out[part == 3] = app.gums
    out[part == 4] = app.teeth
    eye = (part == 5) | (part == 6)
    if eye.any():
        p = geom.canonical[eye]
        off = p[:, None, :] - eye_centres[None]  # [M, E, 3]
        k = np.argmin((off ** 2).sum(-1), axis=1)
        off = off[np.arange(len(p)), k]  # [M, 3] offset from the nearest eye's centre
        r = np.linalg.norm(off[:, :2], axis=1)
        ahead = off[:, 2] > 0
        iris = (1.0 / (1.0 + np.exp((r - app.iris_cm * cm) / (0.04 * cm)))) * ahead
        pupil = (1.0 / (1.0 + np.exp((r - app.pupil_cm * cm) / (0.03 * cm)))) * ahead
        col = app.sclera * (1 - iris[:, None]) + app.iris * iris[:, None]
        out[eye] = col * (1 - pupil[:, None]) + 0.01 * pupil[:, None]
    return out


def background(app: Appearance, width: int, height: int) -> np.ndarray:
    """sRGB background ``[H, W, 3]`` in [0, 1]: solid, linear gradient or multi-octave value noise."""
    c0, c1 = app.background_colors
    if app.background_kind == "solid":
        return np.broadcast_to(c0, (height, width, 3)).copy()
    rng = np.random.default_rng(app.background_seed)
    if app.background_kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        u, v = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
        s = np.clip(0.5 + 0.5 * (np.cos(a) * u + np.sin(a) * v), 0, 1)[..., None]
        return c0 * (1 - s) + c1 * s
    if app.background_kind != "noise":
        raise ValueError(f"background: unknown kind {app.background_kind!r}")
    s = np.zeros((height, width))
    amp, total = 1.0, 0.0
    for cells in (3, 6, 12, 24):
        grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        s += amp * np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC))
        total += amp
        amp *= 0.5
    s = np.clip(s / total, 0, 1)[..., None]
    return c0 * (1 - s) + c1 * s


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer function (input clipped to [0, 1])."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def degrade(rgb: np.ndarray, app: Appearance, rng: np.random.Generator) -> np.ndarray:
    """Blur, sensor noise and JPEG: ``[H, W, 3]`` float sRGB in [0, 1] -> uint8 ``[H, W, 3]``."""
    img = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    if app.blur_sigma > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(radius=app.blur_sigma))
    x = np.asarray(img, dtype=np.float32) / 255.0
    if app.noise_std > 0:
        x = x + rng.normal(0, app.noise_std, x.shape).astype(np.float32)
    out = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    if app.jpeg_quality is not None:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=app.jpeg_quality)
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("RGB"))
    return out


def shade(geom: GeometryRender, app: Appearance, landmarks_canonical: np.ndarray, eye_centres: np.ndarray,
          rng: np.random.Generator, degrade_image: bool = True) -> np.ndarray:
    """Final image ``[H, W, 3]`` uint8 sRGB: albedo x SH irradiance over the background, then degradations.

    ``rng`` draws the per-image sensor noise only (everything else is in ``app``).
    """
    H, W = geom.mask.shape
    lit = albedo_map(geom, app, landmarks_canonical, eye_centres) * sh_shading(geom.normals, app.sh)
    fg = linear_to_srgb(lit * app.exposure)
    rgb = np.where(geom.mask[..., None], fg, background(app, W, H))
    if not degrade_image:
        return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return degrade(rgb, app, rng)
