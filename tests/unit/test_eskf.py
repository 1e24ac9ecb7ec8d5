"""The IMU-aided error-state filter: propagation against analytic motion, covariance
growth against the closed form, late measurements replayed, and the gates."""

from dataclasses import replace

import numpy as np
import pytest

from skyfix.runtime.core.config import FilterConfig
from skyfix.runtime.nav.eskf import G_MPS2, ImuFilter

G = np.array([0.0, 0.0, G_MPS2])
Z = np.zeros(3)  # no rotation


def Rz(psi: float) -> np.ndarray:
    c, s = np.cos(psi), np.sin(psi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quiet_cfg(**kw) -> FilterConfig:
    """Noise-free sensors, so the nominal state must follow the motion exactly."""
    base = dict(accel_noise_mps2_rthz=0.0, accel_bias_sigma_mps2=0.0,
                accel_bias_rw_mps2_rths=0.0, gyro_noise_radps_rthz=0.0,
                gyro_bias_sigma_radps=0.0, gyro_bias_rw_radps_rths=0.0, tilt_sigma_deg=0.0,
                yaw_sigma_deg=0.0)
    return replace(FilterConfig(), **{**base, **kw})


def test_constant_acceleration_matches_closed_form():
    a = np.array([0.7, -0.4, 0.2])
    v0, R_ap = np.array([12.0, 3.0]), Rz(0.3)
    f_b = R_ap.T @ (a - G)  # what the accelerometer reads
    filt = ImuFilter(quiet_cfg())
    filt.on_imu(0, f_b, Z, R_ap)
    filt.initialize(0, np.zeros(2), np.eye(2), v0, np.eye(2), down_m=-100.0, down_var_m2=1.0)
    for k in range(1, 1001):  # 10 s at 100 Hz
        filt.on_imu(k * 10_000_000, f_b, Z, R_ap)
    t = 10.0
    p = np.array([0.0, 0.0, -100.0]) + np.r_[v0, 0.0] * t + 0.5 * a * t * t
    np.testing.assert_allclose(filt.x[:3], p, atol=1e-6)
    np.testing.assert_allclose(filt.x[3:6], np.r_[v0, 0.0] + a * t, atol=1e-9)


def test_constant_turn_rate_follows_the_circle():
    v, w, dt = 12.0, 0.4, 0.01  # 12 m/s, 23 deg/s: radius 30 m
    filt = ImuFilter(quiet_cfg())

    def sample(t: float) -> tuple[np.ndarray, np.ndarray]:
        psi = w * t
        acc = v * w * np.array([-np.sin(psi), np.cos(psi), 0.0])  # centripetal
        R = Rz(psi)
        return R.T @ (acc - G), np.array([0.0, 0.0, w]), R

    filt.on_imu(0, *sample(0.0))
    filt.initialize(0, np.zeros(2), np.eye(2), np.array([v, 0.0]), np.eye(2))
    n = 2000  # 20 s: more than one full circle
    for k in range(1, n + 1):
        filt.on_imu(round(k * dt * 1e9), *sample(k * dt))
    t, r = n * dt, v / w
    truth = r * np.array([np.sin(w * t), 1 - np.cos(w * t)])
    np.testing.assert_allclose(filt.x[:2], truth, atol=0.01)
    np.testing.assert_allclose(filt.x[3:5], v * np.array([np.cos(w * t), np.sin(w * t)]),
                               atol=1e-3)


def Rx(phi: float) -> np.ndarray:
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def test_the_autopilots_tilt_error_turns_with_the_vehicle():
    """The autopilot reports a roll 0.3 deg off, in body axes (as an accelerometer bias
    makes it), through a U-turn: its error in NED, modelled by u and known at the start,
    has changed sign at the end; the filter's attitude still follows the truth (no
    phantom acceleration), and u and e agree (the tie pulls nothing)."""
    v, w, dt, roll = 12.0, 0.4, 0.01, np.radians(0.3)
    filt = ImuFilter(quiet_cfg(tilt_sigma_deg=0.3, tilt_tau_s=86400.0, yaw_sigma_deg=1.0,
                               yaw_tau_s=86400.0))

    def sample(t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        psi = w * t
        acc = v * w * np.array([-np.sin(psi), np.cos(psi), 0.0])
        R = Rz(psi)
        return R.T @ (acc - G), np.array([0.0, 0.0, w]), R @ Rx(roll)

    filt.on_imu(0, *sample(0.0))
    filt.initialize(0, np.zeros(2), np.eye(2), np.array([v, 0.0]), np.eye(2))
    filt.x[6:9], filt.x[15:18] = [-roll, 0.0, 0.0], [roll, 0.0, 0.0]  # known at the start
    n = round(np.pi / w / dt)  # half a circle
    for k in range(1, n + 1):
        filt.on_imu(round(k * dt * 1e9), *sample(k * dt))
    psi = w * n * dt
    u = roll * np.array([np.cos(psi), np.sin(psi), 0.0])  # R_ap = Exp(u) R_true
    np.testing.assert_allclose(filt.x[15:18], u, atol=1e-6)
    np.testing.assert_allclose(filt.x[6:9], -u, atol=1e-6)
    np.testing.assert_allclose(filt.x[3:5], v * np.array([np.cos(psi), np.sin(psi)]),
                               atol=1e-3)


def test_gyro_carries_the_attitude_through_the_autopilots_steps():
    """The autopilot's heading jumps by 1 deg (a compass correction) while the gyro says
    nothing turned: the correction e takes the step, the attitude used stays put."""
    filt = ImuFilter(quiet_cfg())
    filt.on_imu(0, -G, Z, np.eye(3))
    filt.initialize(0, np.zeros(2), np.eye(2), np.array([10.0, 0.0]), np.eye(2))
    for k in range(1, 201):
        R_ap = Rz(np.radians(1.0)) if k > 100 else np.eye(3)
        filt.on_imu(k * 10_000_000, R_ap.T @ -G, Z, R_ap)
    np.testing.assert_allclose(filt.x[6:9], [0.0, 0.0, -np.radians(1.0)], atol=1e-12)
    np.testing.assert_allclose(filt.x[3:5], [10.0, 0.0], atol=1e-9)  # no phantom turn


def test_position_variance_grows_as_white_acceleration():
    q = 0.05**2
    filt = ImuFilter(quiet_cfg(accel_noise_mps2_rthz=0.05))
    R_ap, f_b = np.eye(3), -G
    filt.on_imu(0, f_b, Z, R_ap)
    filt.initialize(0, np.zeros(2), np.zeros((2, 2)), np.zeros(2), np.zeros((2, 2)),
                    down_var_m2=0.0)
    filt.P[5, 5] = 0.0
    for k in range(1, 501):
        filt.on_imu(k * 10_000_000, f_b, Z, R_ap)
    t = 5.0
    np.testing.assert_allclose(np.diag(filt.P)[:3], q * t**3 / 3, rtol=1e-9)
    np.testing.assert_allclose(np.diag(filt.P)[3:6], q * t, rtol=1e-9)


def _run(late: bool) -> ImuFilter:
    """Flying east at 10 m/s with noisy sensors; a fix captured at 2.005 s arrives either
    at once or 300 ms late, with frame marks, a displacement and an altitude in between."""
    rng = np.random.default_rng(3)
    filt = ImuFilter(FilterConfig())
    f = [(-G + rng.normal(0, 0.1, 3)) for _ in range(400)]
    filt.on_imu(0, f[0], Z, np.eye(3))
    filt.initialize(0, np.zeros(2), np.eye(2), np.array([0.0, 10.0]), np.eye(2))
    fix = (2_005_000_000, np.array([0.3, 20.2]), 0.5 * np.eye(2))
    for k in range(1, 400):
        t = k * 10_000_000
        filt.on_imu(t, f[k], Z, np.eye(3))
        if t == 2_000_000_000 and not late:
            filt.update_position(*fix)
        if t == 1_900_000_000:
            filt.mark(1_895_000_000)
        if t == 2_100_000_000:
            d = filt.update_displacement(1_895_000_000, 2_095_000_000, np.array([0.01, 2.02]),
                                         0.01 * np.eye(2), 120.0)
            assert d.accepted and d.y.shape == (2,)
            filt.mark(2_095_000_000)
            filt.update_altitude(2_095_000_000, 0.5, 1.0)
            # a displacement from a frame that was not the last mark cannot be used
            assert not filt.update_displacement(1_895_000_000, 2_095_000_000,
                                                np.zeros(2), np.eye(2), 120.0).accepted
        if t == 2_300_000_000 and late:
            assert filt.update_position(*fix).accepted
    return filt


def test_displacements_from_one_reference_are_read_in_its_axes():
    """Two displacements from one marked reference view share its clone, and each is
    turned by the heading error the reference view was rectified with (0.02 rad), not by
    the current one (-0.01 rad): flying east at 10 m/s, 1 m and 2 m east read as
    (0.02, 1) and (0.04, 2) m (north, east)."""
    filt = ImuFilter(FilterConfig())
    filt.on_imu(0, -G, Z, np.eye(3))
    filt.initialize(0, np.zeros(2), 0.01 * np.eye(2), np.array([0.0, 10.0]), 0.01 * np.eye(2))
    filt.x[8], filt.x[17] = 0.02, -0.02  # heading correction e_z and the autopilot's error
    filt.mark(0)
    filt.x[8], filt.x[17] = -0.01, 0.01
    for k in range(1, 21):
        filt.on_imu(k * 10_000_000, -G, Z, np.eye(3))
        if k % 10 == 0:
            east = k / 10
            inn = filt.update_displacement(0, k * 10_000_000, np.array([0.02 * east, east]),
                                           1e-4 * np.eye(2), 120.0)
            assert inn.accepted
            np.testing.assert_allclose(inn.y, 0.0, atol=1e-3)
    assert filt.clone_t_ns == 0


def test_late_fix_equals_in_order_processing():
    in_order, late = _run(late=False), _run(late=True)
    np.testing.assert_allclose(late.x, in_order.x, atol=1e-9)
    np.testing.assert_allclose(late.P, in_order.P, atol=1e-12)
    assert len(late._steps) <= 1 + FilterConfig().history_s * 100 + 1  # bounded


def test_fix_older_than_the_history_is_refused():
    filt = _run(late=False)
    for k in range(400, 700):  # on to 7 s: the first second falls out of the 5 s history
        filt.on_imu(k * 10_000_000, -G, Z, np.eye(3))
    out = filt.update_position(1_000, np.zeros(2), np.eye(2))
    assert not out.accepted and out.nis == float("inf")


def test_gates_per_measurement_type():
    filt = ImuFilter(FilterConfig())
    filt.on_imu(0, -G, Z, np.eye(3))
    filt.initialize(0, np.zeros(2), np.eye(2), np.zeros(2), 0.01 * np.eye(2),
                    down_m=-100.0, down_var_m2=1.0)
    x0 = filt.x.copy()
    far = filt.update_position(0, np.array([30.0, 0.0]), np.eye(2))  # NIS ~ 450
    assert not far.accepted and far.nis > FilterConfig().nis_gate
    np.testing.assert_array_equal(filt.x, x0)  # a gated fix leaves the state alone
    assert far.y.shape == (2,) and far.S.shape == (2, 2)
    near = filt.update_position(0, np.array([1.0, 0.0]), np.eye(2))
    assert near.accepted and near.nis == pytest.approx(0.5, rel=1e-6)  # 1 / (1 + 1)
    # altitude: 1 dof, its own gate (10.83): 4 sigma refused, 2 sigma taken
    s = np.sqrt(filt.P[2, 2] + 1.0)
    assert not filt.update_altitude(0, -100.0 + 4 * s, 1.0).accepted
    assert filt.update_altitude(0, -100.0 + 2 * s, 1.0).accepted


def test_a_measured_heading_corrects_the_heading_and_pins_the_gyro_bias():
    """The autopilot reports 1 deg too much heading, and the gyro reads 0.002 rad/s of
    z-bias: fixes' headings (true minus reported, -1 deg, 0.2 deg) pull the correction e_z
    to -1 deg and, as the reported heading does not drift with the integrated gyro, the
    bias out; a heading 4 sigma off is gated."""
    cfg = replace(FilterConfig(), accel_noise_mps2_rthz=0.0, accel_bias_sigma_mps2=0.0,
                  accel_bias_rw_mps2_rths=0.0, gyro_noise_radps_rthz=1e-4)
    filt = ImuFilter(cfg)
    R_ap = Rz(np.radians(1.0))
    filt.on_imu(0, R_ap.T @ -G, Z, R_ap)
    filt.initialize(0, np.zeros(2), np.eye(2), np.zeros(2), 0.01 * np.eye(2))
    var = np.radians(0.2) ** 2
    for k in range(1, 3001):  # 30 s at 100 Hz, a heading with each fix at 10 Hz
        t = k * 10_000_000
        filt.on_imu(t, R_ap.T @ -G, np.array([0.0, 0.0, 0.002]), R_ap)
        if k % 10 == 0:
            assert filt.update_heading(t, -np.radians(1.0), var).accepted
    assert np.degrees(filt.x[8]) == pytest.approx(-1.0, abs=0.05)
    assert filt.x[14] == pytest.approx(0.002, abs=2e-4)  # gyro z-bias, body = NED here
    s = np.sqrt(filt.P[8, 8] + var)
    x0 = filt.x.copy()
    far = filt.update_heading(30 * 10**9, filt.x[8] + 4 * s, var)
    assert not far.accepted and far.nis == pytest.approx(16.0, rel=1e-6)
    np.testing.assert_array_equal(filt.x, x0)


def test_non_finite_measurement_is_an_error():
    filt = ImuFilter(FilterConfig())
    filt.on_imu(0, -G, Z, np.eye(3))
    filt.initialize(0, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        filt.update_position(0, np.array([np.nan, 0.0]), np.eye(2))


def test_snapshot_predicts_as_the_filter_did_and_keeps_no_history():
    """The daemon's output thread predicts from a snapshot while the vision thread goes
    on: the snapshot must give what the filter gave at that moment, whatever follows."""
    filt = _run(late=False)
    t_send = 4_050_000_000
    before = filt.horizontal_at(t_send)
    snap = filt.snapshot()
    for k in range(400, 420):  # the filter goes on: more IMU, a fix
        filt.on_imu(k * 10_000_000, -G + 0.3, Z, np.eye(3))
    assert filt.update_position(4_150_000_000, np.array([0.4, 41.0]), np.eye(2)).accepted
    for got, want in zip(snap.horizontal_at(t_send), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(snap._steps) == 1 and not snap._applied
    assert not np.allclose(filt.horizontal_at(t_send)[0], before[0])


def test_an_imu_gap_is_bridged_at_constant_velocity():
    """No IMU for 3 s (a stalled stream) after samples of 3 m/s^2 north: the prediction,
    and a fix's step across the gap, go on at the last velocity instead of extrapolating
    that one sample's acceleration (13.5 m more) or its rate (the attitude correction)."""
    a, w_b = np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.3])  # accelerating, turning

    def sample(k: int) -> tuple:
        R_ap = Rz(0.3 * k * 0.02)
        return R_ap.T @ (a - G), w_b, R_ap

    filt = ImuFilter(quiet_cfg())
    filt.on_imu(0, *sample(0))
    filt.initialize(0, np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    for k in range(1, 51):  # 1 s at 50 Hz
        filt.on_imu(k * 20_000_000, *sample(k))
    e = filt.x[6:9].copy()
    x, P = filt.horizontal_at(4_000_000_000)
    np.testing.assert_allclose(x, [1.5 + 3.0 * 3.0, 0.0, 3.0, 0.0], atol=1e-6)
    assert P[0, 0] > 3.0 ** 2 * filt.P[0, 0]  # with the constant-velocity noise
    filt.update_altitude(4_000_000_000, 0.0, 1.0)  # a measurement after the gap
    assert filt.t_ns == 4_000_000_000
    np.testing.assert_allclose(filt.x[:2], [10.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(filt.x[6:9], e, atol=1e-9)


def test_noise_density_is_measured_on_the_stream():
    rng = np.random.default_rng(1)
    filt = ImuFilter(FilterConfig())
    assert np.isnan(filt.noise_density()[0])  # no samples yet
    for k in range(250):  # 5 s at 50 Hz, turning and accelerating: the motion is no noise
        t = k * 0.02
        filt.on_imu(k * 20_000_000, np.array([np.sin(t), 0.0, 0.0]) - G
                    + rng.normal(0.0, 0.5, 3), np.array([0.0, 0.0, 0.3 * t])
                    + rng.normal(0.0, 0.02, 3), np.eye(3))
    acc, gyro = filt.noise_density()
    assert acc == pytest.approx(0.5 * np.sqrt(0.02), rel=0.2)
    assert gyro == pytest.approx(0.02 * np.sqrt(0.02), rel=0.2)
