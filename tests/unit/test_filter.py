"""PositionFilter: statistical consistency (NEES/NIS), gating, late measurements."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from rasterio.crs import CRS

from skyfix.runtime.core.config import FilterConfig
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.nav.filter import PositionFilter, estimate_at, fix_noise, transition

CFG = FilterConfig()
RUNS = 50
STEPS = 40
DT_S = 0.5


def chi2_quantile(dof: int, z: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at normal score `z`."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * np.sqrt(c)) ** 3


def random_cov(rng: np.random.Generator) -> np.ndarray:
    """A [2, 2] anisotropic fix covariance: 1-sigma 2..6 m along a random direction."""
    sig = rng.uniform(2.0, 6.0, 2)
    th = rng.uniform(0.0, np.pi)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return rot @ np.diag(sig**2) @ rot.T


def simulate(kind: str, seed: int, process_noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One run: (NEES [STEPS], NIS [STEPS]) of the filter against the true state.

    "straight": constant velocity; "turn": coordinated turn at 0.05 rad/s (0.56 m/s^2
    centripetal). With `process_noise` the truth also takes white acceleration drawn
    from Q; in the turn its power is lowered by the centripetal part (a_c^2 + w^2 =
    sigma_a^2), so in both cases a consistent filter has NEES ~ chi2(4), NIS ~ chi2(2).
    The gate is off: at 99.9 % it would cut a few true tails out of 2000 updates.
    """
    rng = np.random.default_rng(seed)
    F, Q = transition(DT_S, CFG.accel_sigma_mps2)
    L = np.linalg.cholesky(Q)
    x = np.array([0.0, 0.0, 10.0, 5.0])
    omega = 0.05
    if kind == "turn":
        L = L * np.sqrt(1.0 - (omega * np.linalg.norm(x[2:]) / CFG.accel_sigma_mps2) ** 2)
    R0 = 9.0 * np.eye(2)
    V0 = CFG.init_vel_sigma_mps**2 * np.eye(2)
    filt = PositionFilter(replace(CFG, nis_gate=1e6))  # the largest gate allowed: none gated
    filt.initialize(0, x[:2] + rng.multivariate_normal(np.zeros(2), R0), R0,
                    x[2:] + rng.multivariate_normal(np.zeros(2), V0), V0)
    nees, nis = np.empty(STEPS), np.empty(STEPS)
    for k in range(STEPS):
        if kind == "straight":
            x = F @ x
        else:
            c, s = np.cos(omega * DT_S), np.sin(omega * DT_S)
            v = x[2:]
            pos = x[:2] + np.array([[s, -(1 - c)], [1 - c, s]]) @ v / omega
            x = np.concatenate([pos, [c * v[0] - s * v[1], s * v[0] + c * v[1]]])
        if process_noise:
            x = x + L @ rng.standard_normal(4)
        R = random_cov(rng)
        z = x[:2] + np.linalg.cholesky(R) @ rng.standard_normal(2)
        innovation = filt.update_position(int((k + 1) * DT_S * 1e9), z, R)
        e = x - filt.x
        nees[k] = e @ np.linalg.solve(filt.P, e)
        nis[k] = innovation.nis
    return nees, nis


@pytest.mark.parametrize("kind", ["straight", "turn"])
def test_nees_and_nis_are_consistent(kind: str) -> None:
    runs = [simulate(kind, seed) for seed in range(RUNS)]
    nees = np.array([r[0] for r in runs])  # [RUNS, STEPS]
    nis = np.array([r[1] for r in runs])
    # The run-average of NEES at one step is chi2(4 RUNS) / RUNS: 95 % two-sided band.
    lo, hi = chi2_quantile(4 * RUNS, -1.96) / RUNS, chi2_quantile(4 * RUNS, 1.96) / RUNS
    avg = nees.mean(0)
    assert np.mean((avg > lo) & (avg < hi)) >= 0.85
    assert 3.5 < nees.mean() < 4.5
    lo2, hi2 = chi2_quantile(2 * RUNS, -1.96) / RUNS, chi2_quantile(2 * RUNS, 1.96) / RUNS
    avg2 = nis.mean(0)
    assert np.mean((avg2 > lo2) & (avg2 < hi2)) >= 0.85
    assert 1.75 < nis.mean() < 2.25


def test_deterministic_turn_is_not_overconfident() -> None:
    """A noise-free turn is gentler than the white-acceleration model: NEES may be low,
    never above the band."""
    nees = np.array([simulate("turn", seed, process_noise=False)[0] for seed in range(RUNS)])
    hi = chi2_quantile(4 * RUNS, 1.96) / RUNS
    assert np.all(nees.mean(0) < hi)


def converged_filter() -> PositionFilter:
    filt = PositionFilter(CFG)
    filt.initialize(0, np.zeros(2), 4.0 * np.eye(2), np.array([10.0, 0.0]), np.eye(2))
    for k in range(1, 11):
        filt.update_position(k * 500_000_000, np.array([5.0 * k, 0.0]), 4.0 * np.eye(2))
    return filt


def test_gate_rejects_outlier_and_leaves_state() -> None:
    filt = converged_filter()
    x, P = filt.x.copy(), filt.P.copy()
    t = filt.t_ns
    inn = filt.update_position(t, x[:2] + np.array([100.0, 0.0]), 4.0 * np.eye(2))
    assert not inn.accepted and inn.nis > CFG.nis_gate
    np.testing.assert_allclose(inn.y, [100.0, 0.0], atol=1e-9)
    np.testing.assert_array_equal(filt.x, x)
    np.testing.assert_array_equal(filt.P, P)
    good = filt.update_position(t + 500_000_000, x[:2] + [5.0, 0.5], 4.0 * np.eye(2))
    assert good.accepted and good.nis < CFG.nis_gate
    np.testing.assert_allclose(good.S, good.S.T)


def test_velocity_update_is_gated_too() -> None:
    filt = converged_filter()
    assert filt.update_velocity(filt.t_ns, np.array([10.2, 0.1]), 0.25 * np.eye(2)).accepted
    assert not filt.update_velocity(filt.t_ns, np.array([40.0, 0.0]), 0.25 * np.eye(2)).accepted


def measurement_stream() -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for k in range(1, 13):
        t = k * 300_000_000 + int(rng.integers(0, 50_000_000))
        out.append(("pos", t, np.array([3.0 * k, -1.0 * k]) + rng.normal(0, 2, 2), random_cov(rng)))
        if k % 3 == 0:
            out.append(("vel", t + 10_000_000, np.array([10.0, -3.3]), 0.5 * np.eye(2)))
    return out


def run_stream(order: list[int], predict_ahead_ns: int = 0) -> PositionFilter:
    stream = measurement_stream()
    filt = PositionFilter(CFG)
    filt.initialize(0, np.zeros(2), 9.0 * np.eye(2))
    for i in order:
        kind, t, z, R = stream[i]
        if predict_ahead_ns:
            filt.predict(max(filt.t_ns, t) + predict_ahead_ns)  # state runs ahead of fixes
        update = filt.update_position if kind == "pos" else filt.update_velocity
        assert update(t, z, R).accepted
    return filt


def test_out_of_order_equals_in_order() -> None:
    n = len(measurement_stream())
    in_order = run_stream(list(range(n)))
    shuffled = list(range(n))
    shuffled[3], shuffled[5] = shuffled[5], shuffled[3]  # two arrive late
    shuffled[9], shuffled[10] = shuffled[10], shuffled[9]
    t_end = 5_000_000_000
    x_ref, P_ref = in_order.state_at(t_end)
    for filt in (run_stream(shuffled), run_stream(shuffled, predict_ahead_ns=120_000_000)):
        x, P = filt.state_at(t_end)
        np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-9)
        np.testing.assert_allclose(P, P_ref, rtol=0, atol=1e-9)


def test_late_measurement_reports_innovation_at_its_time() -> None:
    filt = converged_filter()  # state at 5.0 s, moving north at ~10 m/s
    inn = filt.update_position(4_750_000_000, np.array([47.5, 0.0]), 4.0 * np.eye(2))
    assert inn.accepted and inn.t_ns == 4_750_000_000
    assert np.linalg.norm(inn.y) < 2.0  # compared with the state at 4.75 s, not at 5.0 s
    assert filt.t_ns == 5_000_000_000


def test_measurement_older_than_history_is_rejected() -> None:
    filt = PositionFilter(CFG, history_s=2.0)
    filt.initialize(0, np.zeros(2), 4.0 * np.eye(2))
    filt.predict(10_000_000_000)
    inn = filt.update_position(7_000_000_000, np.zeros(2), np.eye(2))
    assert not inn.accepted and inn.nis == float("inf")
    before_start = PositionFilter(CFG)
    before_start.initialize(1_000_000_000, np.zeros(2), np.eye(2))
    assert not before_start.update_position(500_000_000, np.zeros(2), np.eye(2)).accepted


def test_prediction_grows_covariance_between_fixes() -> None:
    filt = converged_filter()
    prev = filt.P.copy()
    for _ in range(5):
        filt.predict(filt.t_ns + 200_000_000)
        # the position block grows in every direction (P as a whole is also sheared by F)
        assert np.all(np.linalg.eigvalsh(filt.P[:2, :2] - prev[:2, :2]) > 0)
        assert np.all(np.linalg.eigvalsh(filt.P[2:, 2:] - prev[2:, 2:]) > 0)
        prev = filt.P.copy()
    t = filt.t_ns
    filt.predict(t - 1_000_000_000)  # earlier than the state: no-op
    assert filt.t_ns == t
    np.testing.assert_array_equal(filt.P, prev)


def test_state_at_does_not_mutate() -> None:
    a, b = converged_filter(), converged_filter()
    x, P, t = a.x.copy(), a.P.copy(), a.t_ns
    xf, Pf = a.state_at(t + 700_000_000)
    a.state_at(t - 2_000_000_000)
    np.testing.assert_array_equal(a.x, x)
    np.testing.assert_array_equal(a.P, P)
    assert a.t_ns == t
    np.testing.assert_allclose(xf[:2], x[:2] + 0.7 * x[2:])
    assert np.trace(Pf) > np.trace(P)
    # ... and leaves the history alone: a late fix then does the same on both.
    for f in (a, b):
        f.update_position(t - 300_000_000, np.array([47.0, 1.0]), 4.0 * np.eye(2))
    np.testing.assert_array_equal(a.x, b.x)


def test_bad_input_and_use_before_initialize() -> None:
    filt = PositionFilter(CFG)
    assert not filt.initialized
    with pytest.raises(RuntimeError):
        filt.update_position(0, np.zeros(2), np.eye(2))
    filt.initialize(0, np.zeros(2), np.eye(2))
    assert filt.initialized
    with pytest.raises(ValueError):
        filt.update_position(1, np.zeros(3), np.eye(2))
    with pytest.raises(ValueError):
        filt.update_position(1, np.array([np.nan, 0.0]), np.eye(2))
    with pytest.raises(ValueError):
        filt.update_position(1, np.zeros(2), -np.eye(2))
    filt.reset()
    assert not filt.initialized and filt.t_ns is None


def test_estimate_at_fills_estimate() -> None:
    crs = CRS.from_epsg(32633)
    frame = LocalFrame.at(crs, 600_000.0, 5_340_000.0)
    filt = converged_filter()
    t = filt.t_ns + 200_000_000
    est = estimate_at(filt, t, frame, 312.5, last_fix_t_ns=filt.t_ns)
    x, P = filt.state_at(t)
    assert est.t_ns == t and est.valid
    assert (est.north_m, est.east_m, est.vn_mps, est.ve_mps) == tuple(x)
    np.testing.assert_array_equal(est.cov_ne_m2, P[:2, :2])
    np.testing.assert_array_equal(est.vel_cov_ne_m2s2, P[2:, 2:])
    lat, lon = frame.ned_to_lla(x[0], x[1])
    assert est.lat_deg == pytest.approx(lat[0], abs=1e-12)
    assert est.lon_deg == pytest.approx(lon[0], abs=1e-12)
    assert est.alt_amsl_m == 312.5
    assert est.last_fix_age_s == pytest.approx(0.2)
    assert estimate_at(filt, t, frame, 0.0, None).last_fix_age_s == float("inf")
    # the map's own error (its manifest's georef_sigma_m) is claimed on top, nothing else
    stated = estimate_at(filt, t, frame, 312.5, filt.t_ns, map_sigma_m=3.0)
    np.testing.assert_allclose(stated.cov_ne_m2, P[:2, :2] + 9.0 * np.eye(2))
    assert stated.horiz_sigma_m == pytest.approx(np.hypot(est.horiz_sigma_m, 3.0))
    assert (stated.north_m, stated.east_m, stated.vn_mps, stated.ve_mps) == tuple(x)
    np.testing.assert_array_equal(stated.vel_cov_ne_m2s2, P[2:, 2:])


def sim_flight_nees(seed: int, speed_mps: float, cfg: FilterConfig,
                    duration_s: float = 40.0) -> np.ndarray:
    """Position NEES [T] of the estimates sent at 10 Hz on a simulated lawn-mower flight
    (sim.trajectory: straight rows, U-turns) with 2 Hz fixes of random anisotropic
    covariance that reach the filter 150 ms after capture, each estimate predicted to its
    send time as the daemon does."""
    from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower

    rng = np.random.default_rng(seed)
    # rows ~200 m long, 70 m apart: a U-turn of 35 m radius every 17-25 s
    plan = plan_lawnmower((0.0, 0.0, 300.0, 200.0), 30.0, 100.0, speed_mps,
                          speed_mps * duration_s + 50.0, rng)
    traj = Trajectory(plan, Wobble.random(3.0, rng), speed_mps, 300.0)
    t_fix = np.arange(0.5, duration_s, 0.5)
    fix_ne = traj.sample(t_fix).en_m[:, ::-1]  # map (E, N) -> (north, east)
    t_out = np.arange(0.1, duration_s, 0.1)
    out_ne = traj.sample(t_out).en_m[:, ::-1]
    filt = PositionFilter(cfg)
    filt.initialize(0, traj.sample(np.zeros(1)).en_m[0, ::-1] + rng.normal(0, 3, 2),
                    9.0 * np.eye(2))
    nees, j = np.empty(len(t_out)), 0
    for i, t in enumerate(t_out):
        while j < len(t_fix) and t_fix[j] + 0.15 <= t + 1e-9:
            R = random_cov(rng)
            z = fix_ne[j] + np.linalg.cholesky(R) @ rng.standard_normal(2)
            filt.update_position(int(round(t_fix[j] * 1e9)), z, R)
            j += 1
        x, P = filt.state_at(int(round(t * 1e9)))
        e = out_ne[i] - x[:2]
        nees[i] = e @ np.linalg.solve(P[:2, :2], e)
    return nees


@pytest.mark.parametrize("speed_mps, accel_sigma", [(8.0, 2.0), (12.0, 4.5)])
def test_sim_flight_estimates_at_send_time_are_not_overconfident(speed_mps, accel_sigma):
    """With accel_sigma_mps2 covering the turns' acceleration v^2 / r (8 m/s: 1.8 m/s^2;
    12 m/s: 4.1 m/s^2) the 10 Hz output, latency and all, is not overconfident: the
    run-averaged position NEES stays under chi2(2)'s 95 % band."""
    runs = 20
    nees = np.array([sim_flight_nees(s, speed_mps, replace(CFG, accel_sigma_mps2=accel_sigma))
                     for s in range(runs)])
    hi = chi2_quantile(2 * runs, 1.96) / runs
    assert np.mean(nees.mean(0) < hi) >= 0.97
    assert 1.0 < nees.mean() < 2.2  # consistent to mildly conservative, not useless


def test_sim_flight_turns_beyond_accel_sigma_are_flagged() -> None:
    """The same check catches a mis-set model: 4.1 m/s^2 turns with the default
    accel_sigma 1.5 make the estimate overconfident in the U-turns (why accel_sigma_mps2
    must cover the vehicle's horizontal acceleration, and why its default is 5)."""
    runs = 20
    low = replace(CFG, accel_sigma_mps2=1.5)
    nees = np.array([sim_flight_nees(s, 12.0, low) for s in range(runs)])
    hi = chi2_quantile(2 * runs, 1.96) / runs
    assert nees.mean(0).max() > 2 * hi


def test_snapshot_predicts_as_the_filter_did_and_keeps_no_history() -> None:
    filt = converged_filter()
    t_send = filt.t_ns + 300_000_000
    before = filt.horizontal_at(t_send)
    snap = filt.snapshot()
    filt.update_position(filt.t_ns + 100_000_000, filt.x[:2] + 1.0, np.eye(2))
    for got, want in zip(snap.horizontal_at(t_send), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(snap._states) == 1
    assert not np.allclose(filt.horizontal_at(t_send)[0], before[0])


def test_an_error_that_fixes_share_is_claimed_however_many_are_fused() -> None:
    """Fixes from a tilted camera share its error: the attitude's error and the map's warp
    change slowly, so consecutive fixes are off the same way. The filter takes each with
    its own part (Navigator._own_ned) and shrinks its covariance by fusing 40 of them; the
    estimate claims the shared part on top (Fix.shared_cov_en_m2), so its error stays
    within 3 sigma."""
    crs = CRS.from_epsg(32633)
    frame = LocalFrame.at(crs, 600_000.0, 5_340_000.0)
    rng = np.random.default_rng(5)
    shared_sigma, own_sigma = 10.0, 3.0
    beyond = {False: 0, True: 0}
    for _ in range(50):
        bias = rng.normal(0, shared_sigma, 2)  # one per flight: the fixes' common error
        R = own_sigma**2 * np.eye(2)  # each fix's own part
        filt = PositionFilter(CFG)
        filt.initialize(0, bias + rng.normal(0, own_sigma, 2), R, np.array([10.0, 0.0]),
                        np.eye(2))
        for k in range(1, 41):
            truth = np.array([5.0 * k, 0.0])
            filt.update_position(k * 500_000_000, truth + bias + rng.normal(0, own_sigma, 2), R)
        for claim_shared in beyond:
            est = estimate_at(filt, filt.t_ns, frame, 0.0, filt.t_ns, 0.0,
                              shared_sigma**2 * np.eye(2) if claim_shared else None)
            err = np.hypot(est.north_m - 200.0, est.east_m)
            beyond[claim_shared] += err > 3 * est.horiz_sigma_m
    assert beyond[False] > 25  # alone, the filter claims far less than the common error
    assert beyond[True] <= 1


def test_a_shared_error_that_drifts_is_fed_as_far_as_it_changed() -> None:
    """The error fixes share (a tilt-driven error: the attitude's and the map's) is not a
    constant bias but drifts, with the attitude error's correlation time. Fed to the
    filter as a bias (each fix with its own part alone), its change from fix to fix
    looks like an outlier and the fixes are gated; fed as far as it has changed since the
    last fused fix (fix_noise), the fixes are taken and the estimate, claiming the shared
    part on top, stays within 3 sigma."""
    crs = CRS.from_epsg(32633)
    frame = LocalFrame.at(crs, 600_000.0, 5_340_000.0)
    rng = np.random.default_rng(6)
    tau, shared_sigma, own_sigma, dt = 5.0, 10.0, 3.0, 1.0
    S = shared_sigma**2 * np.eye(2)
    cov = own_sigma**2 * np.eye(2) + S
    np.testing.assert_array_equal(fix_noise(cov, S, None, tau), cov)  # no fix before
    np.testing.assert_allclose(fix_noise(cov, S, 0.0, tau), cov - S)  # the same instant
    rho = np.exp(-dt / tau)
    gated = {True: 0, False: 0}
    beyond = {True: 0, False: 0}
    for _ in range(30):
        start = rng.normal(0, shared_sigma, 2)
        seed = rng.integers(1 << 30)
        for drifts in gated:
            noise = np.random.default_rng(seed)  # the same errors for both
            bias = start.copy()
            filt = PositionFilter(CFG)
            filt.initialize(0, bias + noise.normal(0, own_sigma, 2), cov,
                            np.array([10.0, 0.0]), np.eye(2))
            for k in range(1, 61):
                bias = rho * bias + noise.normal(0, shared_sigma * np.sqrt(1 - rho**2), 2)
                truth = np.array([10.0 * k, 0.0])
                R = fix_noise(cov, S, dt if drifts else 0.0, tau)
                z = truth + bias + noise.normal(0, own_sigma, 2)
                gated[drifts] += not filt.update_position(k * 1_000_000_000, z, R).accepted
                est = estimate_at(filt, filt.t_ns, frame, 0.0, filt.t_ns, 0.0, S)
                err = np.hypot(est.north_m - truth[0], est.east_m - truth[1])
                beyond[drifts] += err > 3 * est.horiz_sigma_m
    assert gated[False] >= 10 and gated[True] <= 1  # of 1800 fixes
    assert beyond[True] <= 5 < beyond[False]
