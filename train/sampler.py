"""Random ICT-FaceKit heads: identity weights and structured expression weights.

Identity: ``w_id ~ N(0, scale^2)`` independently over the identity modes (ICT's modes are unit variance,
so ``scale = 1`` draws from the model's prior; ``scale < 1`` keeps heads closer to the mean).

Expression: ``w_ex`` in [0, 1] over the ARKit-style blendshapes, drawn by the process below
(:class:`ExpressionPrior` holds every number). Real faces are sparse and coupled, so:

1. *Controls.* Each ``X_L`` / ``X_R`` pair is one control, every other blendshape (``jawOpen``,
   ``mouthFunnel``, ...) is a control of its own. The eye-gaze shapes (``eyeLook*``) are not controls:
   gaze is drawn separately (step 5).
2. *Sparsity.* ``k ~ Poisson(mean_active)`` controls (at most all of them) are picked uniformly without
   replacement; each gets an intensity ``a ~ Beta(alpha, beta)`` (mean about 0.4, up to 1).
3. *Left/right correlation.* A picked pair gets ``a`` on both sides plus independent ``N(0, lr_jitter^2)``;
   with probability ``p_asymmetric`` one side (chosen at random) is scaled by ``U(0, 1)`` instead
   (a wink, a one-sided smile).
4. *Jaw and lips together.* The jaw opens with probability ``p_jaw`` (``jawOpen ~ Beta``), and an open jaw
   pulls the lips: ``mouthLowerDown_L/R += jawOpen * U(lower_lip)``, ``mouthUpperUp_L/R += jawOpen *
   U(upper_lip)``; with probability ``p_lips_sealed`` the lips stay together (``mouthClose =
   jawOpen * U(0.5, 1)``, ARKit's convention that mouthClose only acts with an open jaw). Rounded lips
   (``mouthFunnel``, ``mouthPucker``) bring ``jawOpen >= funnel_jaw * max(funnel, pucker)``.
   Opposite pairs are exclusive: only one of ``jawLeft``/``jawRight`` and of ``mouthLeft``/``mouthRight``.
5. *Gaze.* Both eyes look the same way: with probability ``p_gaze`` a direction ``(h, v)`` with
   ``h, v ~ U(-gaze_max, gaze_max)`` sets ``eyeLookOut_L``/``eyeLookIn_R`` for ``h > 0`` (toward the
   head's left, +X) or ``eyeLookIn_L``/``eyeLookOut_R`` for ``h < 0``, and ``eyeLookUp_*`` or
   ``eyeLookDown_*`` from ``v``.
6. *Background.* Every weight not set above gets ``|N(0, background^2)|`` (most weights near zero),
   ``eyeWide_*`` is zeroed where the same eye blinks (``eyeBlink > 0.3``), and all weights are clipped
   to [0, 1].

A fraction ``neutral_fraction`` of rows is exactly neutral (all zeros) and ``extreme_fraction`` are a
single extreme blendshape at full weight (``extreme_names``: ``jawOpen``, ``mouthFunnel``, ``eyeBlink_L``,
``eyeBlink_R``), see also :func:`extreme_expression`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

EXTREME_NAMES: tuple[str, ...] = ("jawOpen", "mouthFunnel", "eyeBlink_L", "eyeBlink_R")
_GAZE_PREFIX = "eyeLook"


@dataclass(frozen=True)
class ExpressionPrior:
    """Numbers of the expression generative process (module docstring, steps 1-6)."""

    mean_active: float = 2.5          # mean number of active controls per expression (Poisson)
    alpha: float = 1.3                # intensity ~ Beta(alpha, beta) of an active control
    beta: float = 1.9
    lr_jitter: float = 0.08           # std of the independent left/right deviation of a symmetric pair
    p_asymmetric: float = 0.25        # probability that an active pair is one-sided
    p_jaw: float = 0.35               # probability that the jaw opens (on top of being picked as a control)
    lower_lip: tuple[float, float] = (0.1, 0.6)   # mouthLowerDown per unit jawOpen, uniform range
    upper_lip: tuple[float, float] = (0.0, 0.3)   # mouthUpperUp per unit jawOpen, uniform range
    p_lips_sealed: float = 0.15       # probability that an open jaw keeps the lips together (mouthClose)
    funnel_jaw: float = 0.3           # jawOpen >= funnel_jaw * max(mouthFunnel, mouthPucker)
    p_gaze: float = 0.5               # probability of a non-central gaze
    gaze_max: float = 0.7             # largest eyeLook weight of a random gaze
    background: float = 0.02          # std of the small activity on every other blendshape
    neutral_fraction: float = 0.0     # fraction of rows that are exactly neutral (all zeros)
    extreme_fraction: float = 0.0     # fraction of rows that are one extreme blendshape at weight 1
    extreme_names: tuple[str, ...] = EXTREME_NAMES


@dataclass(frozen=True)
class HeadSample:
    """The weights of one ICT-FaceKit head."""

    w_id: np.ndarray  # [K_id] identity weights (100 in the release)
    w_ex: np.ndarray  # [K_ex] expression weights in [0, 1] (53 in the release)


def sample_identity(rng: np.random.Generator, n: int, scale: float = 1.0, n_modes: int = 100) -> np.ndarray:
    """``[n, n_modes]`` float32 identity weights ``~ N(0, scale^2)`` (ICT modes are unit variance)."""
    if n < 0 or scale < 0:
        raise ValueError(f"need n >= 0 and scale >= 0, got n={n}, scale={scale}")
    return (rng.standard_normal((n, n_modes)) * scale).astype(np.float32)


def extreme_expression(names: Sequence[str], which: str, intensity: float = 1.0) -> np.ndarray:
    """``[K_ex]`` weights with only blendshape ``which`` set to ``intensity`` (e.g. ``jawOpen`` at 1)."""
    names = list(names)
    if which not in names:
        raise ValueError(f"unknown ICT expression {which!r}")
    w = np.zeros(len(names), np.float32)
    w[names.index(which)] = intensity
    return w


def _controls(names: Sequence[str]) -> list[tuple[int, ...]]:
    """Step 1: blendshape indices grouped into controls (``_L``/``_R`` pairs together), gaze excluded."""
    index = {n: i for i, n in enumerate(names)}
    controls, seen = [], set()
    for i, name in enumerate(names):
        if name in seen or name.startswith(_GAZE_PREFIX):
            continue
        if name.endswith("_L") and name[:-2] + "_R" in index:
            controls.append((i, index[name[:-2] + "_R"]))
            seen.add(name[:-2] + "_R")
        elif name.endswith("_R") and name[:-2] + "_L" in index:
            controls.append((index[name[:-2] + "_L"], i))
            seen.add(name[:-2] + "_L")
        else:
            controls.append((i,))
        seen.add(name)
    return controls


def _one_expression(rng: np.random.Generator, names: Sequence[str], controls: list[tuple[int, ...]],
                    prior: ExpressionPrior) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    w = np.full(len(names), np.nan)  # NaN = not set yet (gets background activity in step 6)

    def put(name: str, value: float) -> None:
        if name in index:
            w[index[name]] = value

    def get(name: str) -> float:
        return float(np.nan_to_num(w[index[name]])) if name in index else 0.0

    # 2-3: sparse controls with left/right correlation
    k = min(int(rng.poisson(prior.mean_active)), len(controls))
    for c in (rng.choice(len(controls), size=k, replace=False) if k else []):
        a = rng.beta(prior.alpha, prior.beta)
        members = controls[int(c)]
        if len(members) == 1:
            w[members[0]] = a
            continue
        sides = a + rng.normal(0.0, prior.lr_jitter, size=2)
        if rng.random() < prior.p_asymmetric:
            sides[rng.integers(2)] = a * rng.random()
        w[list(members)] = sides
    # 4: jaw and lips
    for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")):
        if a in index and b in index and not np.isnan(w[index[a]]) and not np.isnan(w[index[b]]):
            w[index[a] if rng.random() < 0.5 else index[b]] = 0.0
    rounded = max(get("mouthFunnel"), get("mouthPucker"))
    jaw = get("jawOpen")
    if rng.random() < prior.p_jaw:
        jaw = max(jaw, rng.beta(prior.alpha, prior.beta))
    jaw = max(jaw, prior.funnel_jaw * rounded)
    if jaw > 0.0:
        put("jawOpen", jaw)
        for side in ("_L", "_R"):
            put("mouthLowerDown" + side, get("mouthLowerDown" + side) + jaw * rng.uniform(*prior.lower_lip))
            put("mouthUpperUp" + side, get("mouthUpperUp" + side) + jaw * rng.uniform(*prior.upper_lip))
        put("mouthClose", jaw * rng.uniform(0.5, 1.0) if rng.random() < prior.p_lips_sealed else 0.0)
    elif "mouthClose" in index:
        put("mouthClose", 0.0)  # mouthClose only acts together with an open jaw
    # 5: gaze, both eyes the same way
    if rng.random() < prior.p_gaze:
        h, v = rng.uniform(-prior.gaze_max, prior.gaze_max, size=2)
        left_eye, right_eye = ("eyeLookOut", "eyeLookIn") if h > 0 else ("eyeLookIn", "eyeLookOut")
        put(left_eye + "_L", abs(h))
        put(right_eye + "_R", abs(h))
        for side in ("_L", "_R"):
            put(("eyeLookUp" if v > 0 else "eyeLookDown") + side, abs(v))
    # 6: background activity, blink excludes wide eyes, clip
    unset = np.isnan(w)
    w[unset] = np.abs(rng.normal(0.0, prior.background, size=int(unset.sum())))
    for side in ("_L", "_R"):
        if get("eyeBlink" + side) > 0.3:
            put("eyeWide" + side, 0.0)
    if "jawOpen" in index:
        put("jawOpen", max(get("jawOpen"), prior.funnel_jaw * max(get("mouthFunnel"), get("mouthPucker"))))
    if "mouthClose" in index and get("mouthClose") > get("jawOpen"):
        put("mouthClose", get("jawOpen"))
    return np.clip(w, 0.0, 1.0)


def sample_expression(rng: np.random.Generator, n: int, names: Sequence[str],
                      prior: ExpressionPrior = ExpressionPrior(), neutral: bool = False) -> np.ndarray:
    """``[n, K_ex]`` float32 expression weights in [0, 1] from the process in the module docstring.

    Args:
        rng: the random generator (all randomness comes from it).
        n: number of expressions.
        names: the blendshape names, in the order of the weights (``IctFaceKit.expression_names``).
        prior: the numbers of the process, including the neutral and extreme fractions.
        neutral: if true, every row is exactly neutral (all zeros).
    """
    names = list(names)
    if n < 0:
        raise ValueError(f"need n >= 0, got {n}")
    out = np.zeros((n, len(names)), np.float32)
    if neutral:
        return out
    missing = [e for e in prior.extreme_names if e not in names]
    if prior.extreme_fraction > 0 and missing:
        raise ValueError(f"extreme blendshape(s) {missing} not among the expression names")
    controls = _controls(names)
    for r in range(n):
        u = rng.random()
        if u < prior.neutral_fraction:
            continue
        if u < prior.neutral_fraction + prior.extreme_fraction:
            out[r] = extreme_expression(names, prior.extreme_names[rng.integers(len(prior.extreme_names))])
            continue
        out[r] = _one_expression(rng, names, controls, prior)
    return out


def sample_heads(rng: np.random.Generator, n: int, names: Sequence[str], n_identity_modes: int = 100,
                 identity_scale: float = 1.0, prior: ExpressionPrior = ExpressionPrior()) -> list[HeadSample]:
    """``n`` random heads, each an identity from :func:`sample_identity` and an expression from
    :func:`sample_expression`."""
    w_id = sample_identity(rng, n, identity_scale, n_identity_modes)
    w_ex = sample_expression(rng, n, names, prior)
    return [HeadSample(w_id=w_id[i], w_ex=w_ex[i]) for i in range(n)]
