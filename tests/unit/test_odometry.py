"""Frame-to-frame visual odometry (runtime/nav/odometry.py): exact displacement between two
crops of the real orthophoto, and velocity against the truth on a sim flight."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from skyfix.models.features import RootSiftEncoder
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config, OdometryConfig
from skyfix.runtime.core.geo import R_BODY_CAM_NADIR
from skyfix.runtime.core.types import View
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.nav.filter import PositionFilter
from skyfix.runtime.nav.odometry import (
    MIN_ATTITUDE_STEPS,
    AttitudeSteps,
    VisualOdometry,
    velocity_between,
)
from skyfix.runtime.nav.rectify import rectify
from skyfix.sim.flight import FlightSpec, simulate_flight

ENC = RootSiftEncoder()
GSD = 0.6


def crop_view(ortho, col: int, row: int, t_ns: int, size: int = 400) -> View:
    """A north-up view cut from the ortho, halved to 0.6 m/px, nadir at its centre."""
    img, _ = ortho
    gray = cv2.cvtColor(img[row:row + 2 * size, col:col + 2 * size], cv2.COLOR_BGR2GRAY)
    gray = cv2.pyrDown(gray)
    return View(t_ns, gray, np.ones(gray.shape, bool), GSD, (size / 2, size / 2),
                np.zeros((4, 2)), 120.0, 0.0, R_BODY_CAM_NADIR)


def test_displacement_of_shifted_crops_is_exact(ortho):
    a = crop_view(ortho, 300, 300, 0)
    b = crop_view(ortho, 340, 280, 500_000_000)  # 40 px east, 20 px north at 0.3 m/px
    obs = velocity_between(a, ENC.extract(a.image), b, ENC.extract(b.image), OdometryConfig())
    assert not isinstance(obs, str), obs
    # moved 12 m east, 6 m north in 0.5 s
    assert np.allclose(obs.v_en_mps, [24.0, 12.0], atol=0.1)
    assert obs.t_ns == 250_000_000 and obs.inliers > 50
    assert abs(obs.scale - 1) < 0.01 and abs(obs.rotation_deg) < 0.5
    sigma = np.sqrt(np.linalg.eigvalsh(obs.cov_en_m2s2))
    assert sigma.max() < 1.0


def test_gap_and_first_view_give_no_velocity(ortho):
    vo = VisualOdometry(OdometryConfig(max_gap_s=1.0))
    a, b = crop_view(ortho, 300, 300, 0), crop_view(ortho, 310, 300, 3_000_000_000)
    assert vo.update(a, ENC.extract(a.image)) is None and vo.last_reason == "first view"
    assert vo.update(b, ENC.extract(b.image)) is None and "apart" in vo.last_reason


def test_attitude_steps_are_what_consecutive_fixes_measure():
    """The pose's tilt against the reported attitude swinging between (0.3, 0.4) and
    (-0.3, -0.4) deg from fix to fix, 0.5 s apart: changes of (0.6, 0.8), 0.707 deg RMS
    per axis; pairs further apart than max_gap_s, and a tilt that is not finite, measure
    nothing."""
    steps = AttitudeSteps(max_gap_s=1.0)
    sign = 1.0
    for k in range(MIN_ATTITUDE_STEPS):
        steps.add(k * 500_000_000, (0.3 * sign, 0.4 * sign))
        sign = -sign
        assert np.isnan(steps.sigma_deg)  # MIN_ATTITUDE_STEPS - 1 changes so far
    steps.add(10_000_000_000, (5.0, 5.0))  # 7.5 s after the last: not a change
    steps.add(10_100_000_000, (float("nan"), 0.0))  # no pose tilt: skipped
    assert np.isnan(steps.sigma_deg)
    steps.add(10_500_000_000, (5.6, 5.8))
    assert steps.sigma_deg == pytest.approx(np.sqrt((0.6**2 + 0.8**2) / 2), rel=1e-6)


def test_odometry_claims_the_attitude_change_the_fixes_measured(ortho):
    """Until the fixes have measured it, odometry claims the configured change of the
    attitude's error; once they measure a larger one, that (the velocity's covariance
    grows by what it moves the view at the height); a smaller one never lowers it."""
    cfg = OdometryConfig()
    a = crop_view(ortho, 300, 300, 0)
    b = crop_view(ortho, 340, 280, 500_000_000)
    fa, fb = ENC.extract(a.image), ENC.extract(b.image)

    def sigma_after(tilts_deg: list[float]) -> tuple[float, float]:
        vo = VisualOdometry(cfg)
        for k, tilt in enumerate(tilts_deg):
            vo.attitude.add(k * 500_000_000, (tilt, 0.0))
        vo.update(a, fa)
        obs = vo.update(b, fb)
        assert obs is not None, vo.last_reason
        return vo.step_sigma_deg, float(np.sqrt(np.linalg.eigvalsh(obs.cov_en_m2s2).max()))

    quiet = [0.01 * (k % 2) for k in range(12)]  # changes of 0.01 deg
    rough = [0.8 * (k % 2) for k in range(12)]  # changes of 0.8 deg: 0.57 deg per axis
    step0, sigma0 = sigma_after([])
    step1, sigma1 = sigma_after(quiet)
    step2, sigma2 = sigma_after(rough)
    assert step0 == step1 == cfg.attitude_step_sigma_deg and sigma1 == sigma0
    assert step2 == pytest.approx(0.8 / np.sqrt(2))
    # 120 m up, two frames of 0.57 deg in 0.5 s: about 3.3 m/s
    moved = np.sqrt(2) * 120.0 * np.tan(np.radians(step2)) / 0.5
    assert sigma2 == pytest.approx(moved, rel=0.1) and sigma2 > 4 * sigma0


@pytest.mark.parametrize("keyframes, fraction, max_gap_s, renewed_at", [
    (False, 0.11, 2.0, list(range(1, 11))),  # the frame before, always
    (True, 0.11, 2.0, [9]),  # 27 m >= 0.11 x 240 m: frame 9 is the next reference
    (True, 0.5, 0.45, [4, 8]),  # the frame after 4 would be 0.5 s from the reference
])
def test_reference_view_is_kept_while_it_can_serve(ortho, keyframes, fraction, max_gap_s,
                                                    renewed_at):
    """Views 3 m apart at 10 Hz (240 m across): each displacement is measured from the
    reference view, exactly, and the reference moves on as odometry.keyframe_fraction and
    max_gap_s say."""
    vo = VisualOdometry(OdometryConfig(keyframe_fraction=fraction, max_gap_s=max_gap_s))
    ref = 0
    for k in range(11):
        v = crop_view(ortho, 300 + 10 * k, 300, k * 100_000_000)
        obs = vo.update(v, ENC.extract(v.image), keyframes=keyframes)
        if k == 0:
            assert obs is None and vo.reference_t_ns == 0
            continue
        assert obs is not None, vo.last_reason
        assert obs.t0_ns == ref * 100_000_000 and obs.dt_s == pytest.approx(0.1 * (k - ref))
        assert np.allclose(obs.d_en_m, [3.0 * (k - ref), 0.0], atol=0.1)
        ref = k if k in renewed_at else ref
        assert vo.reference_t_ns == ref * 100_000_000
    vo.rebase()  # the latest view becomes the reference on demand
    assert vo.reference_t_ns == 1_000_000_000


def test_unrelated_views_are_refused(ortho):
    a, b = crop_view(ortho, 0, 0, 0), crop_view(ortho, 850, 850, 500_000_000)
    out = velocity_between(a, ENC.extract(a.image), b, ENC.extract(b.image), OdometryConfig())
    assert isinstance(out, str)


@pytest.fixture(scope="module")
def flight(tmp_path_factory, ortho_path) -> RecordedFlight:
    cam = CameraModel.from_fov(320, 240, 70.0, dist=(-0.08, 0.02, 0.0, 0.0, 0.0))
    out = tmp_path_factory.mktemp("odo") / "flight"
    simulate_flight(ortho_path, out, FlightSpec(duration_s=12.0, fps=2.0, camera=cam, seed=4),
                    progress=False)
    return RecordedFlight.open(out)


def test_velocity_on_a_sim_flight_matches_truth_and_its_covariance(flight):
    log = TelemetryLog.from_tlog(flight.telemetry_path)
    cfg = Config()
    vo = VisualOdometry(cfg.odometry)
    pf = PositionFilter(cfg.filter)
    t0 = int(flight.frame_times_ns[0])
    start = flight.truth.at(np.array([t0]))[0]
    pf.initialize(t0, start[::-1], 0.01 * np.eye(2), np.zeros(2), 100 * np.eye(2))
    errs, nis = [], []
    for frame in flight.frames():
        view = rectify(frame, log.at(frame.t_ns), flight.camera, GSD, cfg.rectify)
        obs = vo.update(view, ENC.extract(view.image, view.mask))
        if obs is None:
            continue
        half = obs.dt_s * 0.5e9
        p = flight.truth.at(np.array([obs.t_ns - half, obs.t_ns + half]))
        e = obs.v_en_mps - (p[1] - p[0]) / obs.dt_s
        errs.append(e)
        nis.append(e @ np.linalg.solve(obs.cov_en_m2s2, e))
        # the filter here runs in the map grid's (north, east): the grid is the frame
        pf.update_velocity(obs.t_ns, obs.v_en_mps[::-1], obs.cov_en_m2s2[::-1, ::-1])
    errs = np.array(errs)
    assert len(errs) >= 20  # every pair of consecutive frames but the first
    # The attitude's frame-to-frame error (0.3 deg, 5 s correlation in the sim) dominates.
    assert np.sqrt((errs**2).mean()) < 1.0
    assert np.abs(errs.mean(0)).max() < 0.4
    assert 0.3 < np.mean(nis) < 6.0  # the covariance is of the right size
    t_end = int(flight.frame_times_ns[-1])
    x, _ = pf.state_at(t_end)
    drift = np.hypot(*(x[:2] - flight.truth.at(np.array([t_end]))[0][::-1]))
    assert drift < 5.0  # 11.5 s on odometry alone at 10 m/s
