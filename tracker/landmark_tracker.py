"""The video tracker on landmarks (the default): identity once over keyframes, then pose and expression per frame.

Evidence per frame: the detector's 478 Face Mesh landmarks in frame pixels (:mod:`tracker.detect`, carried by
:class:`tracker.crop.CropResult`). The head model's landmarks come from :mod:`model.landmarks`; the fit is
:mod:`tracker.landmark_fit` (Levenberg-Marquardt).

1. **Identity and camera, once**: the first ``identity_frames`` face frames are buffered; the learned
   identity prior reads them all; ``identity_poses`` of them, evenly spaced, get a pose by PnP against the
   prior's identity's neutral landmarks; ``keyframes`` of those are chosen for pose diversity;
   one joint fit over the keyframes estimates the identity (whitened coordinates of the landmark map), the
   focal length (relative to the start ``focal_factor * max(W, H)``, kept within ``focal_bounds``) and
   each keyframe's pose and expression. Identity and focal length are then held for the whole video.
2. **Per frame**: pose and expression, warm-started from the previous frame and pulled towards it (the
   temporal terms of :func:`tracker.landmark_fit.frame_stages`); a first frame, or a face back after more
   than ``reinit_after`` frames without one, starts from PnP instead. A frame whose cost exceeds
   ``retry_ratio`` times the keyframes' mean is re-run from PnP and the better fit kept.

Poses are model -> camera in the *frame's* camera (``FrameSolution.K`` are frame intrinsics and
``crop_to_frame`` the identity), model units.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import torch

from model.errors import InputError
from model.forward_deformation import POSINGS
from model.landmarks import REGIONS, LandmarkAssets
from tracker.landmark_fit import (FrameState, LandmarkRig, LandmarkStage, Observation, Shared, fit,
                                  frame_stages, identity_stages, newton_refine, project, select_keyframes,
                                  start_stages, start_state)
from tracker.strategy import FixedLagSmoother, FrameSolution, repeat_as_gap

FRAME_AFFINE = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
"""``crop_to_frame`` of a landmark-tracked frame: its camera is the frame's own."""

DEFAULT_REGION_WEIGHTS = {"other": 1.0, "contour": 0.3, "brows": 1.0, "eyes": 2.0, "lips": 2.0, "iris": 0.5,
                          "nose": 1.0}
"""Per-region landmark weights (eyes, lids and lips high, the jaw contour low: it slides with the view)."""

IDENTITY_PRIORS = ("regressed", "centre", "none")


def identity_centre(prior: Any, which: str, landmarks: np.ndarray) -> Optional[torch.Tensor]:
    """``[r]`` the landmark-map coordinates the identity starts from and shrinks to (``which``, one of
    :data:`IDENTITY_PRIORS`), with a learned prior ``prior`` (:class:`model.identity_prior.IdentityPrior`, or
    ``None``) and the detections ``[T, 478, 2]`` of the frames the identity is fitted to; ``None``: the map's
    own origin."""
    if prior is None or which == "none":
        return None
    if which == "centre":
        return prior.centre.clone()
    return prior.pooled(torch.as_tensor(np.asarray(landmarks), dtype=torch.float32))


@dataclass
class LandmarkStrategy:
    """The varying policy of the landmark tracker (module docstring); defaults are what ``nphm-track`` runs.

    Attributes:
        identity_frames: face frames buffered for the identity (the animation starts after them; none is
            lost). A longer window was measured and not taken (``tests/benchmarks/bench_identity.py
            --identity-frames 12,25,50``, with 12 poses): 50 frames gave the identity 0.997 x the mean head's
            error against 1.033 on the seed-9500 videos, but 1.045 against 1.042 on the seed-9600 ones (worst
            video 1.201 vs 1.221), and the strong-expression videos' expression error rose from 0.91 to 0.93 (a
            scratch run of ``bench_landmark_tracker.py`` with this default at 50).
        identity_wait: at most this many frames (from the first face) are buffered.
        identity_poses: frames of the identity window, evenly spaced, that get a PnP pose; the keyframes are
            chosen among them (the learned prior reads every frame of the window). With the default window
            every frame is posed; for a 50-frame window, posing all of them cost 0.5 s more on the 75-frame
            example.
        keyframes: frames of that window fitted jointly for the identity and the focal length.
        focal_bounds: the focal length stays within these multiples of the start value.
        expression_dims: principal directions of the training expression codes the fit moves in.
        region_weights: landmark weight per region (:data:`model.landmarks.REGIONS`).
        identity_stages, start_stages, frame_stages: the LM stages (data).
        reinit_after: gap frames after which a returning face starts from PnP.
        retry_ratio: a warm-started frame whose cost exceeds this multiple of the keyframes' mean cost is
            re-fitted from PnP; the better fit is kept.
        lag, sigma: the fixed-lag smoother (frames).
        posing: ``"forward"`` or ``"inverse"`` (:class:`tracker.landmark_fit.LandmarkRig`); ``None``: forward
            when the head has a forward deformation.
        identity_prior: where the identity starts and what its prior pulls it towards (one of
            :data:`IDENTITY_PRIORS`): ``"regressed"``, the learned prior's prediction pooled over the identity
            window's detections (:meth:`model.identity_prior.IdentityPrior.pooled`); ``"centre"``, the head
            model's code for ICT-FaceKit's mean head; ``"none"``, the landmark map's origin (the mean of the
            codes it was fitted to). Without a learned prior for the head, ``"none"``.
        regressed_prior_gain: with the ``"regressed"`` centre the identity stages' prior weight is multiplied
            by this: that centre is closer to the person than the others, so the fit may stray less from it
            (held-out synthetic videos: 10 x, i.e. 0.5, beat 1 x on average and on the worst video; 10 x
            at the map's origin was worse; ``tests/benchmarks/bench_identity.py --id-weights``).
    """

    identity_frames: int = 12
    identity_wait: int = 50
    identity_poses: int = 12
    keyframes: int = 5
    focal_bounds: tuple[float, float] = (0.5, 2.5)
    expression_dims: int = 32
    region_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REGION_WEIGHTS))
    identity_stages: list[LandmarkStage] = field(default_factory=identity_stages)
    start_stages: list[LandmarkStage] = field(default_factory=start_stages)
    frame_stages: list[LandmarkStage] = field(default_factory=frame_stages)
    reinit_after: int = 5
    retry_ratio: float = 4.0
    lag: int = 1
    sigma: float = 0.6
    posing: Optional[str] = None
    identity_prior: str = "regressed"
    regressed_prior_gain: float = 10.0

    def __post_init__(self) -> None:
        if self.identity_frames < 1 or self.keyframes < 1 or self.identity_wait < 1 or self.identity_poses < 1:
            raise InputError("LandmarkStrategy needs identity_frames, identity_wait, identity_poses and keyframes >= 1")
        unknown = set(self.region_weights) - set(REGIONS)
        if unknown:
            raise InputError(f"LandmarkStrategy.region_weights: unknown regions {sorted(unknown)}; known: {REGIONS}")
        if self.posing not in (None, *POSINGS):
            raise InputError(f"LandmarkStrategy.posing must be 'forward' or 'inverse', got {self.posing!r}")
        if not self.regressed_prior_gain > 0:
            raise InputError(f"LandmarkStrategy.regressed_prior_gain must be > 0, got {self.regressed_prior_gain}")
        if self.identity_prior not in IDENTITY_PRIORS:
            raise InputError(f"LandmarkStrategy.identity_prior must be one of {IDENTITY_PRIORS}, got "
                             f"{self.identity_prior!r}")

    def identity_fit_stages(self, centre: Optional[torch.Tensor]) -> list[LandmarkStage]:
        """The identity stages for a fit centred on ``centre`` (``None``: the landmark map's origin)."""
        if centre is None or self.identity_prior != "regressed":
            return list(self.identity_stages)
        return [replace(s, w_id_prior=s.w_id_prior * self.regressed_prior_gain) for s in self.identity_stages]

    def smoother(self) -> FixedLagSmoother:
        return FixedLagSmoother(self.lag, self.sigma)

    def landmark_weights(self, assets: LandmarkAssets) -> np.ndarray:
        """``[478]`` region weight x the embedding's spread weight."""
        region = np.array([self.region_weights.get(name, 1.0) for name in REGIONS])
        return region[assets.region] * assets.mediapipe.weight


def build_rig(layer: Any, codes: dict, assets: LandmarkAssets, strategy: LandmarkStrategy, forward: Any = None
              ) -> LandmarkRig:
    """The fit's view of a head: ``forward`` is its forward deformation (``Models.forward``), or ``None``."""
    return LandmarkRig.build(layer, codes, assets.landmark_map, strategy.landmark_weights(assets),
                             assets.lid_pairs, assets.lid_corners, strategy.expression_dims, forward=forward,
                             posing=strategy.posing)


@dataclass
class FittedLandmarks:
    """One frame's fitted landmarks in frame pixels."""

    mediapipe: np.ndarray  # [478, 2]
    ibug68: np.ndarray  # [68, 2]


class LandmarkTracker:
    """Per-video state of the landmark tracker (identity, camera, previous frame); see the module docstring.

    It offers what :func:`tracker.pipeline.track_video` calls: ``estimate_identity(window)``,
    ``solve(item) -> FrameSolution``, ``z_id`` and ``reference_loss``.
    """

    def __init__(self, layer: Any, codes: dict, assets: LandmarkAssets, strategy: LandmarkStrategy,
                 K_frame: np.ndarray, clock: Any, forward: Any = None, identity_prior: Any = None):
        self.assets, self.strategy, self.clock, self.identity_prior = assets, strategy, clock, identity_prior
        self.rig = build_rig(layer, codes, assets, strategy, forward)
        self.K0 = torch.as_tensor(K_frame, dtype=torch.float32)
        self.shared: Optional[Shared] = None
        self.z_id: Optional[torch.Tensor] = None
        self.reference_loss = math.nan
        self.previous: Optional[FrameState] = None
        self.previous_solution: Optional[FrameSolution] = None
        self.gap_frames = 0
        self.keyframes: list[int] = []
        self._canonical_all: Optional[torch.Tensor] = None
        self._x_out: Optional[torch.Tensor] = None

    @property
    def n_fit(self) -> int:
        return self.rig.n_fit

    def observation(self, landmarks: np.ndarray) -> Observation:
        return Observation(torch.as_tensor(np.asarray(landmarks)[:self.n_fit], dtype=torch.float32))

    # --- identity ---------------------------------------------------------------------------------------
    def estimate_identity(self, window: list) -> None:
        """Identity and focal length from the buffered frames (``window``: items with ``.crop``)."""
        t = time.perf_counter()
        faces = [p for p in window if p.crop.landmarks is not None]
        if not faces:
            raise InputError("no face landmarks in the identity window")
        centre = identity_centre(self.identity_prior, self.strategy.identity_prior,
                                 np.stack([p.crop.landmarks for p in faces]))
        if centre is not None:
            self.rig = replace(self.rig, landmark_map=self.rig.landmark_map.recentred(centre))
        posed = np.unique(np.linspace(0, len(faces) - 1, min(self.strategy.identity_poses, len(faces))).round()
                          .astype(int))  # evenly spaced over the window
        faces = [faces[i] for i in posed]
        obs = [self.observation(p.crop.landmarks) for p in faces]
        shared = Shared(alpha=torch.zeros(self.rig.landmark_map.rank), phi=torch.tensor(0.0), K0=self.K0)
        states = [start_state(self.rig, shared, o) for o in obs]
        keys = select_keyframes([s.R.numpy() for s in states], self.strategy.keyframes)
        shared, _, report = fit(self.rig, [obs[k] for k in keys], shared, [states[k] for k in keys],
                                self.strategy.identity_fit_stages(centre))
        lo, hi = self.strategy.focal_bounds
        shared.phi = shared.phi.clamp(math.log(lo), math.log(hi))
        self.shared = shared
        self.keyframes = [faces[k].crop.index for k in keys]
        self.z_id = self.rig.z_id(shared.alpha)[None]
        self.reference_loss = report.cost / len(keys)
        self._canonical_all = self.rig.landmark_map.from_coordinates(shared.alpha)
        self.clock.add("identity", t)

    @property
    def K(self) -> np.ndarray:
        """``[3, 3]`` the frame intrinsics in use (the fitted focal length)."""
        if self.shared is None:
            raise InputError("the identity (and camera) is not estimated yet")
        return self.shared.K().numpy().astype(np.float64)

    # --- one frame --------------------------------------------------------------------------------------
    def hold(self, item: Any) -> FrameSolution:
        """No landmarks: the previous solution repeated as a gap (confidence 0)."""
        self.gap_frames += 1
        if self.previous_solution is None:
            raise InputError("a gap before the first tracked frame")
        return repeat_as_gap(self.previous_solution, item.crop.index, item.crop.time_s, item.frame)

    def solve(self, item: Any) -> FrameSolution:
        crop = item.crop
        if crop.landmarks is None:
            return self.hold(item)
        t = time.perf_counter()
        obs = self.observation(crop.landmarks)
        rig, shared, strategy = self.rig, self.shared, self.strategy
        cold = self.previous is None or self.gap_frames > strategy.reinit_after
        if cold:
            _, (state,), report = fit(rig, [obs], shared, [start_state(rig, shared, obs)], strategy.start_stages)
        else:
            _, (state,), report = fit(rig, [obs], shared, [self.previous], strategy.frame_stages,
                                      previous=self.previous)
            if math.isfinite(self.reference_loss) and report.cost > strategy.retry_ratio * self.reference_loss:
                _, (again,), second = fit(rig, [obs], shared, [start_state(rig, shared, obs)], strategy.start_stages)
                if second.cost < report.cost:
                    state, report = again, second
        self.clock.add("tto", t)
        self.gap_frames = 0
        conf = min(1.0, self.reference_loss / max(report.cost, 1e-12)) if math.isfinite(self.reference_loss) else 1.0
        sol = FrameSolution(crop.index, crop.time_s, "tracked", rig.z_ex(state.beta), state.pose, self.K,
                            FRAME_AFFINE.copy(), conf, report.cost, report.iterations, item.frame,
                            detections=np.asarray(crop.landmarks, dtype=np.float32))
        self.previous, self.previous_solution = state, sol
        return sol

    # --- outputs ----------------------------------------------------------------------------------------
    def fitted_landmarks(self, sol: FrameSolution) -> FittedLandmarks:
        """The head's 478 + 68 landmarks for a (smoothed) solution, in frame pixels."""
        z_ex = sol.z_ex.to(torch.float32)
        x, _ = newton_refine(self.rig, self._canonical_all, self.z_id[0], z_ex, self._x_out,
                             steps=2 if self._x_out is not None else 3)
        self._x_out = x
        R = _rotation(sol.pose)
        uv = project(x @ R.T + sol.pose[3:].float(), torch.as_tensor(sol.K, dtype=torch.float32)).numpy()
        n = len(self.assets.mediapipe)
        return FittedLandmarks(mediapipe=uv[:n], ibug68=uv[n:])


def _rotation(pose: torch.Tensor) -> torch.Tensor:
    from tracker.tto import axis_angle_to_matrix

    return axis_angle_to_matrix(pose[:3].float())


# --- one photo -------------------------------------------------------------------------------------------

@dataclass
class PhotoFit:
    """Codes and pose of one photo fitted to its landmarks (:func:`fit_photo`)."""

    z_id: torch.Tensor  # [1, D_id]
    z_ex: torch.Tensor  # [1, D_ex]
    pose: torch.Tensor  # [6] model -> camera (rotvec radians, t model units), the photo's camera
    K: np.ndarray  # [3, 3] the assumed intrinsics (frame pixels)
    detections: np.ndarray  # [478, 2] the detector's landmarks, pixels
    cost: float
    iterations: int
    seconds: float


def fit_photo(layer: Any, codes: dict, assets: LandmarkAssets, image: np.ndarray, K: np.ndarray,
              strategy: Optional[LandmarkStrategy] = None, detector: Any = None, source: str = "image",
              forward: Any = None, identity_prior: Any = None) -> PhotoFit:
    """Identity, expression and pose of the face in one RGB image ``[H, W, 3]`` uint8 from its landmarks:
    PnP, then the identity stages of ``strategy`` without the focal length (one view cannot tell it from the
    distance), with intrinsics ``K [3, 3]``. :class:`InputError` naming ``source`` when no face is found."""
    from tracker.detect import FaceMeshConfig

    start = time.perf_counter()
    strategy = strategy or LandmarkStrategy()
    detector = detector or FaceMeshConfig(static_image_mode=True).setup()
    found = detector.detect(image)
    if found is None:
        raise InputError(f"{source}: no face found")
    rig = build_rig(layer, codes, assets, strategy, forward)
    centre = identity_centre(identity_prior, strategy.identity_prior, found.points[None])
    if centre is not None:
        rig = replace(rig, landmark_map=rig.landmark_map.recentred(centre))
    obs = Observation(torch.as_tensor(found.points[:rig.n_fit], dtype=torch.float32))
    shared = Shared(alpha=torch.zeros(rig.landmark_map.rank), phi=torch.tensor(0.0),
                    K0=torch.as_tensor(K, dtype=torch.float32))
    stages = [replace(s, params=tuple(p for p in s.params if p != "focal"))
              for s in strategy.identity_fit_stages(centre)]
    shared, (state,), report = fit(rig, [obs], shared, [start_state(rig, shared, obs)], stages)
    return PhotoFit(z_id=rig.z_id(shared.alpha)[None], z_ex=rig.z_ex(state.beta)[None], pose=state.pose,
                    K=np.asarray(K, dtype=np.float64), detections=found.points, cost=report.cost,
                    iterations=report.iterations, seconds=time.perf_counter() - start)
