"""Visual odometry: the aircraft's horizontal displacement between two rectified views,
as a velocity for `PositionFilter.update_velocity` or a displacement for
`ImuFilter.update_displacement`.

Each view is compared with a reference view. For the constant-velocity filter the
reference is the view before (`keyframes=False`): its velocity measurements must not
share an image. For the IMU filter, which clones its state at the reference's time and
so models a chain of displacements from one view, the reference is kept (a keyframe)
while the aircraft has moved less than `keyframe_fraction` of the view's ground
footprint and the next frame can still be compared with it (`max_gap_s`): a
displacement's fit error then enters the position once per keyframe, not once per
frame (measured with benchmarks/bench_filter.py, 30 s without fixes).

Both views are north-up and metric, with pixel offsets measured from the point below
the camera (skyfix.runtime.nav.rectify). A ground point G seen at offset o_k = G - p_k in
view k and o_{k-1} = G - p_{k-1} in the view before gives

    p_k - p_{k-1} = o_{k-1} - o_k

so the displacement is the translation t of the similarity o_{k-1} = s R o_k + t fitted
(skyfix.runtime.nav.match.robust_similarity: RANSAC inliers, least squares) of mutual
feature matches. s and R should be 1 and 0: a pair whose scale or rotation disagrees
is refused. The velocity is t / dt, stamped at the middle of the interval (the filter
accepts late measurements).

Covariance (m^2/s^2), the sum of
- the fit: the least-squares covariance of t, inflated for correlated feature errors;
- the change of the roll/pitch error between the frames: AGL tan(sigma_step) per
  frame, two frames, where sigma_step is the configured one or, once the fixes have
  measured it (AttitudeSteps), the larger of the two;
- the heading error: it turns the displacement, |v| sigma_yaw across the track;
- a floor;
all divided by dt^2.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from skyfix.models.features import LocalFeatures, match_mutual
from skyfix.runtime.core.config import OdometryConfig
from skyfix.runtime.core.types import View
from skyfix.runtime.nav.match import CORRELATION_INFLATION, fit_similarity, robust_similarity
from skyfix.runtime.nav.rectify import view_px_to_offset_m


@dataclass(frozen=True)
class VelocityObservation:
    """Mean horizontal velocity between two frames.

    In the views' own axes, the map grid's (easting, northing): `t_ns`: middle of the
    interval; `v_en_mps`: [2] m/s; `cov_en_m2s2`: [2, 2] its covariance; `scale`,
    `rotation_deg`: what the similarity between the two views found (1 and 0 ideally).
    The navigator turns them into the filter's NED with the local frame's J_ned_map.
    """

    t_ns: int
    v_en_mps: np.ndarray
    cov_en_m2s2: np.ndarray
    dt_s: float
    inliers: int
    scale: float
    rotation_deg: float
    # The displacement itself, for the IMU filter (which models the attitude errors):
    # `d_en_m` [2] (easting, northing) from the previous frame (at `t0_ns`) to this one,
    # and `fit_cov_en_m2` [2, 2] its covariance from the image fit alone (plus the floor).
    t0_ns: int = 0
    d_en_m: np.ndarray | None = None
    fit_cov_en_m2: np.ndarray | None = None


ATTITUDE_STEPS = 20  # AttitudeSteps: the last this many changes between fixes
MIN_ATTITUDE_STEPS = 5  # fewer: no measurement, the configured change alone


class AttitudeSteps:
    """How much the error of the reported roll/pitch changes between frames, as the fixes
    measure it. Each fix's pose finds the rotation from the reported camera attitude to
    the one the image shows (Fix.tilt_ne_deg); between two fixes at most `max_gap_s`
    apart, its change is the change of the reported attitude's error that odometry
    between such frames suffers, plus the poses' own noise (which only makes it larger).
    `sigma_deg`: the RMS change per axis over the last ATTITUDE_STEPS such pairs, NaN
    before MIN_ATTITUDE_STEPS. An autopilot's attitude can be far worse than configured:
    PX4 SIH's changes by 0.2-0.4 deg in half a second where ArduPilot SITL's changes by
    0.02, and odometry claiming the configured 0.1 was off by 3-9 sigma on PX4."""

    def __init__(self, max_gap_s: float) -> None:
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._steps: deque[np.ndarray] = deque(maxlen=ATTITUDE_STEPS)
        self._last: tuple[int, np.ndarray] | None = None

    def add(self, t_ns: int, tilt_ne_deg: tuple[float, float]) -> None:
        tilt = np.asarray(tilt_ne_deg, np.float64)
        if not np.isfinite(tilt).all():
            return
        if self._last is not None and 0 < t_ns - self._last[0] <= self.max_gap_ns:
            self._steps.append(tilt - self._last[1])
        self._last = (t_ns, tilt)

    @property
    def sigma_deg(self) -> float:
        if len(self._steps) < MIN_ATTITUDE_STEPS:
            return float("nan")
        return float(np.sqrt(np.mean(np.square(np.array(self._steps)))))


@dataclass(frozen=True)
class _Keyframe:
    t_ns: int
    offsets_m: np.ndarray  # [N, 2] (east, north) from nadir
    descriptors: np.ndarray  # [N, D]
    gsd_m: float
    extent_m: float  # square root of the view's valid ground area


def velocity_between(prev: View, prev_feats: LocalFeatures, view: View, feats: LocalFeatures,
                     cfg: OdometryConfig) -> VelocityObservation | str:
    """The velocity from `prev` to `view` (later), or the reason there is none (the
    configured change of the attitude's error)."""
    return _velocity(_keyframe(prev, prev_feats), _keyframe(view, feats), view.agl_m, cfg,
                     cfg.attitude_step_sigma_deg)


def _keyframe(view: View, feats: LocalFeatures) -> _Keyframe:
    offsets = view_px_to_offset_m(view, feats.keypoints.astype(np.float64))
    extent = float(np.sqrt(np.count_nonzero(view.mask))) * view.gsd_m
    return _Keyframe(view.t_ns, offsets, feats.descriptors, view.gsd_m, extent)


def _velocity(a: _Keyframe, b: _Keyframe, agl_m: float, cfg: OdometryConfig,
              step_sigma_deg: float) -> VelocityObservation | str:
    dt = (b.t_ns - a.t_ns) * 1e-9
    if not 0 < dt <= cfg.max_gap_s:
        return f"frames {dt:.2f} s apart"
    pairs = match_mutual(b.descriptors, a.descriptors, cfg.ratio)
    if len(pairs) < cfg.min_inliers:
        return f"{len(pairs)} matches"
    src, dst = b.offsets_m[pairs[:, 0]], a.offsets_m[pairs[:, 1]]
    fit = robust_similarity(src, dst, cfg.ransac_px * max(a.gsd_m, b.gsd_m), cfg.min_inliers)
    if fit is None:
        return "few inliers"
    src, dst = src[fit.keep], dst[fit.keep]
    # Centre the points so that t is the displacement of the centroid, decoupled from s, R.
    c = src.mean(0)
    params, _, cov = fit_similarity(src - c, dst - c)
    a_, b_, tx, ty = params
    scale = float(np.hypot(a_, b_))
    rot = float(np.degrees(np.arctan2(b_, a_)))
    if abs(scale - 1) > cfg.max_scale_err:
        return f"scale {scale:.3f} between the views"
    if abs(rot) > cfg.max_rotation_deg:
        return f"rotation {rot:.1f} deg between the views"
    # o_prev = sR (o - c) + t + c; the ground point below the camera now (o = 0) was at
    # o_prev = t + (I - sR) c in the previous view: that is the displacement.
    sr = np.array([[a_, -b_], [b_, a_]])
    disp_en = np.array([tx, ty]) + (np.eye(2) - sr) @ c
    cov_en = fit_en = CORRELATION_INFLATION * cov[2:, 2:]
    step = agl_m * np.tan(np.radians(step_sigma_deg))
    cov_en = cov_en + 2 * step**2 * np.eye(2)
    across = np.array([-disp_en[1], disp_en[0]])  # |disp| long, perpendicular to it
    cov_en = cov_en + np.radians(cfg.yaw_sigma_deg) ** 2 * np.outer(across, across)
    return VelocityObservation(
        t_ns=(a.t_ns + b.t_ns) // 2, v_en_mps=disp_en / dt,
        cov_en_m2s2=cov_en / dt**2 + cfg.sigma_floor_mps**2 * np.eye(2), dt_s=dt,
        inliers=len(fit.keep), scale=scale, rotation_deg=rot, t0_ns=a.t_ns,
        d_en_m=disp_en, fit_cov_en_m2=fit_en + (cfg.sigma_floor_mps * dt) ** 2 * np.eye(2),
    )


def keeps_reference(ref_t_ns: int, last_t_ns: int, t_ns: int, d_m: np.ndarray,
                    extent_m: float, cfg: OdometryConfig) -> bool:
    """Whether the reference view (at `ref_t_ns`) also serves the frame after the one at
    `t_ns` (whose displacement from it is `d_m` [2], the frame before at `last_t_ns`, the
    view `extent_m` across): moved less than cfg.keyframe_fraction of the extent, and the
    next frame, at this frame rate, within cfg.max_gap_s of it."""
    next_dt_s = (2 * t_ns - last_t_ns - ref_t_ns) * 1e-9
    return (next_dt_s <= cfg.max_gap_s
            and float(np.hypot(*d_m)) < cfg.keyframe_fraction * extent_m)


class VisualOdometry:
    """Keeps the reference view's features; `update` gives the motion since then."""

    def __init__(self, cfg: OdometryConfig) -> None:
        self.cfg = cfg
        self.attitude = AttitudeSteps(cfg.max_gap_s)  # the autopilot's, kept over resets
        self._ref: _Keyframe | None = None
        self._last: _Keyframe | None = None  # the latest view
        self.last_reason = ""  # why the last update gave no velocity ("" when it did)

    @property
    def reference_t_ns(self) -> int | None:
        """Time of the view the next `update` is compared with (None before the first)."""
        return None if self._ref is None else self._ref.t_ns

    @property
    def step_sigma_deg(self) -> float:
        """The change of the roll/pitch error between frames that odometry claims: the
        configured one, or what the fixes measured (AttitudeSteps) where that is larger."""
        return float(np.fmax(self.cfg.attitude_step_sigma_deg, self.attitude.sigma_deg))

    def reset(self) -> None:
        self._ref = self._last = None

    def rebase(self) -> None:
        """Make the latest view the reference."""
        self._ref = self._last

    def update(self, view: View, feats: LocalFeatures,
               keyframes: bool = False) -> VelocityObservation | None:
        """Motion from the reference view to `view` (None for the first view, after a
        gap, or when the pair does not match; `last_reason` says why). `view` becomes the
        reference unless `keyframes` and the reference can still serve the next frame."""
        cur = _keyframe(view, feats)
        ref, last, self._last = self._ref, self._last, cur
        if ref is None:
            self._ref, self.last_reason = cur, "first view"
            return None
        out = _velocity(ref, cur, view.agl_m, self.cfg, self.step_sigma_deg)
        if isinstance(out, str):
            self._ref, self.last_reason = cur, out
            return None
        if not (keyframes and keeps_reference(ref.t_ns, last.t_ns, cur.t_ns, out.d_en_m,
                                              cur.extent_m, self.cfg)):
            self._ref = cur
        self.last_reason = ""
        return out
