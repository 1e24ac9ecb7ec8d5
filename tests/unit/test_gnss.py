"""GnssMonitor: loss/recovery hysteresis, degradation, jamming/spoofing flags and slow
spoofing drift, fed with real pymavlink-encoded GPS_RAW_INT / GPS2_RAW / GNSS_INTEGRITY."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mavlink2
from pymavlink.dialects.v20 import development
from pyproj import Geod

from skyfix.runtime.core.config import GnssConfig, OutputConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.flight.gnss import GnssMonitor
from skyfix.runtime.io.mavlink import set_ekf_source_set
from skyfix.sim.trajectory import gauss_markov

CFG = GnssConfig()
LAT0, LON0 = 48.2081743, 16.3738189
S_NS = 1_000_000_000
GNSS_DT_S = 0.2  # GPS_RAW_INT at 5 Hz
DECIDE_DT_S = 0.1  # decisions at the 10 Hz output rate


def wire(msg, dialect=mavlink2):
    """`msg` packed by an autopilot (system 1, component 1) and parsed back by pymavlink."""
    tx = dialect.MAVLink(None, srcSystem=1, srcComponent=1)
    rx = dialect.MAVLink(None)
    (back,) = rx.parse_buffer(msg.pack(tx))
    assert back.get_type() == msg.get_type()
    return back


def offset_lla(north_m: float, east_m: float) -> tuple[float, float]:
    """The point `north_m`, `east_m` from (LAT0, LON0) along the WGS84 geodesic."""
    lon, lat, _ = Geod(ellps="WGS84").fwd(LON0, LAT0, np.degrees(np.arctan2(east_m, north_m)),
                                          np.hypot(north_m, east_m))
    return float(lat), float(lon)


def raw(t_s: float, fix: int = 3, sats: int = 14, hdop: float = 0.8, h_acc_m: float = 1.5,
        north_m: float = 0.0, east_m: float = 0.0, second: bool = False):
    """GPS_RAW_INT (or GPS2_RAW) at a local offset from (LAT0, LON0), through the wire."""
    lat, lon = offset_lla(north_m, east_m)
    common = dict(time_usec=int(t_s * 1e6), fix_type=fix, lat=int(round(lat * 1e7)),
                  lon=int(round(lon * 1e7)), alt=300_000, eph=int(round(hdop * 100)),
                  epv=120, vel=1200, cog=9000, satellites_visible=sats, alt_ellipsoid=0,
                  h_acc=int(round(h_acc_m * 1000)), v_acc=0, vel_acc=0, hdg_acc=0, yaw=0)
    if second:
        msg = mavlink2.MAVLink_gps2_raw_message(dgps_numch=0, dgps_age=0, **common)
    else:
        msg = mavlink2.MAVLink_gps_raw_int_message(**common)
    return wire(msg)


def integrity(jamming: int, spoofing: int, instance: int = 0):
    """GNSS_INTEGRITY (development dialect in pymavlink 2.4.50), through the wire."""
    return wire(development.MAVLink_gnss_integrity_message(
        id=instance, system_errors=0, authentication_state=0, jamming_state=jamming,
        spoofing_state=spoofing, raim_state=0, raim_hfom=0, raim_vfom=0,
        corrections_quality=255, system_status_summary=255, gnss_signal_quality=255,
        post_processing_quality=255), development)


def estimate_at(north_m: float, east_m: float, vn: float, ve: float, sigma_m: float = 3.0):
    from skyfix.runtime.core.types import Estimate
    lat, lon = offset_lla(north_m, east_m)
    return Estimate(t_ns=0, north_m=north_m, east_m=east_m, vn_mps=vn, ve_mps=ve,
                    cov_ne_m2=sigma_m**2 * np.eye(2), vel_cov_ne_m2s2=0.25 * np.eye(2),
                    lat_deg=lat, lon_deg=lon, alt_amsl_m=300.0, valid=True, last_fix_age_s=0.2)


def fly(mon: GnssMonitor, duration_s: float, gnss_at, visual_ok=lambda t: True):
    """Run the monitor: GNSS messages from `gnss_at(t_s)` (None: nothing sent) at 5 Hz,
    decisions at 10 Hz. Returns [(t_s, Handover)]."""
    out = []
    n = int(round(duration_s / DECIDE_DT_S))
    every = int(round(GNSS_DT_S / DECIDE_DT_S))
    for k in range(n + 1):
        t_s = k * DECIDE_DT_S
        if k % every == 0:
            for msg in gnss_at(t_s) or []:
                mon.observe(msg, int(t_s * S_NS))
        out.append((t_s, mon.decide(int(t_s * S_NS), visual_ok(t_s))))
    return out


def first(decisions, pred) -> float:
    return next(t for t, h in decisions if pred(h))


def test_loss_and_recovery_with_hysteresis_on_loss_mode() -> None:
    """No fix from 10 s to 30 s, with a 3 s glimpse at 20 s; back for good at 30 s."""
    def gnss(t):
        bad = 10.0 <= t < 30.0 and not 20.0 <= t < 23.0
        return [raw(t, fix=1 if bad else 3, sats=3 if bad else 14)]

    mon = GnssMonitor(replace(CFG, mode="on-loss"))
    d = fly(mon, 50.0, gnss)
    lost_at = first(d, lambda h: h.state == "lost")
    # the last good report was at 9.8 s; lost once more than lost_after_s has passed
    assert lost_at == pytest.approx(10.0 - GNSS_DT_S + CFG.lost_after_s + DECIDE_DT_S)
    assert all(h.state == "healthy" and not h.send_gps_input for t, h in d if t < 10.0)
    # no fix yet not lost for long: degraded (few satellites), still not handed over
    assert all(h.state == "degraded" and not h.send_gps_input
               for t, h in d if 10.0 <= t < lost_at)
    assert "fix type 1" in dict(d)[lost_at].reason
    # sending from the loss until recover_after_s after GNSS is back for good: the glimpse
    # at 20-23 s does not interrupt it
    back = 30.0 + CFG.recover_after_s
    sending = [t for t, h in d if h.send_gps_input]
    assert sending[0] == lost_at and sending[-1] == pytest.approx(back - DECIDE_DT_S, abs=0.11)
    assert len(sending) == pytest.approx((back - lost_at) / DECIDE_DT_S, abs=1.5)
    assert dict(d)[22.0].reason == "GNSS fix type 1; healthy 2/10 s"  # says why it holds
    assert all(h.state == "healthy" and not h.send_gps_input for t, h in d if t >= back + 0.1)
    assert all(h.ekf_source_set is None for _, h in d)


def test_silent_link_is_lost_and_always_mode_always_sends() -> None:
    mon = GnssMonitor(CFG)  # mode always
    d = fly(mon, 20.0, lambda t: [raw(t)] if t < 5.0 else None)
    assert all(h.send_gps_input for _, h in d)
    lost_at = first(d, lambda h: h.state == "lost")
    assert lost_at == pytest.approx(5.0 + CFG.lost_after_s, abs=0.21)
    assert dict(d)[lost_at].reason == "no GNSS report"
    fresh = GnssMonitor(CFG)
    assert fresh.decide(0, True).reason == "waiting for GNSS"
    assert fresh.decide(int((CFG.lost_after_s + 0.1) * S_NS), True).state == "lost"


@pytest.mark.parametrize("kwargs, why", [
    (dict(hdop=4.0, h_acc_m=0.0), "HDOP 4.0"),
    (dict(sats=4), "4 satellites"),
    (dict(h_acc_m=25.0), "h_acc 25.0 m"),
])
def test_degraded_gnss_is_reported_but_not_handed_over(kwargs, why) -> None:
    mon = GnssMonitor(replace(CFG, mode="on-loss"))
    d = fly(mon, 20.0, lambda t: [raw(t, **(kwargs if t >= 5.0 else {}))])
    assert dict(d)[4.9].state == "healthy"
    h = dict(d)[5.0]
    assert h.state == "degraded" and why in h.reason and not h.send_gps_input
    assert all(h.state == "degraded" and not h.send_gps_input for t, h in d if t >= 5.0)


def test_jamming_and_spoofing_flags() -> None:
    mon = GnssMonitor(replace(CFG, mode="on-loss"))

    def gnss(t):
        msgs = [raw(t)]
        if 5.0 <= t < 10.0:
            msgs.append(integrity(jamming=3, spoofing=1))  # jammed, position still fine
        elif t >= 10.0:
            msgs.append(integrity(jamming=1, spoofing=3))  # receiver says: spoofed
        return msgs

    d = fly(mon, 15.0, gnss)
    assert dict(d)[4.9].state == "healthy"
    assert dict(d)[5.0].state == "degraded" and "jamming" in dict(d)[5.0].reason
    assert not dict(d)[9.9].send_gps_input
    h = dict(d)[10.0]
    assert h.state == "spoofed" and h.send_gps_input and "spoofing" in h.reason


def test_our_own_gps_instance_is_ignored() -> None:
    """ArduPilot reports our GPS_INPUT fix as GPS2_RAW when we are GPS2: it must not count
    as a healthy receiver while the real one (GPS_RAW_INT) has no fix."""
    own = OutputConfig().gps_id
    assert own == 1
    mon = GnssMonitor(replace(CFG, mode="on-loss"), own_instance=own)
    d = fly(mon, 10.0, lambda t: [raw(t, fix=0, sats=0), raw(t, second=True)])
    assert dict(d)[10.0].state == "lost" and dict(d)[10.0].send_gps_input
    naive = GnssMonitor(replace(CFG, mode="on-loss"))
    assert fly(naive, 10.0, lambda t: [raw(t, fix=0, sats=0), raw(t, second=True)])[-1][1].state \
        == "healthy"


SPEED = np.array([9.6, 7.2])  # 12 m/s
SIG_EST_M, SIG_GNSS_M = 3.0, 1.5


def spoof_flight(seed: int, drift_mps: float, duration_s: float, onset_s: float = 20.0,
                 mode: str = "always", tau_est_s: float = 3.0, sig_est_m: float = SIG_EST_M,
                 sig_gnss_m: float = SIG_GNSS_M, max_age_s: float = 0.0):
    """A straight 12 m/s flight. Our estimate: truth + Gauss-Markov error (sigma 3 m, its
    covariance says 3 m); GNSS: truth + Gauss-Markov error (sigma 1.5 m, tau 30 s, h_acc
    says 1.5 m) + a drift of `drift_mps` from `onset_s`, across track; each report's
    position is a uniform [0, max_age_s] older than its arrival. Returns
    ([(t_s, Handover)], drift_m at each decision)."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s / DECIDE_DT_S)) + 1
    e_est = gauss_markov(rng, n, DECIDE_DT_S, tau_est_s, sig_est_m, 2)
    e_gnss = gauss_markov(rng, n, DECIDE_DT_S, 30.0, sig_gnss_m, 2)
    across = np.array([-SPEED[1], SPEED[0]]) / np.linalg.norm(SPEED)
    mon = GnssMonitor(replace(CFG, mode=mode))
    out, drift = [], []
    for k in range(n):
        t_s = k * DECIDE_DT_S
        truth = SPEED * t_s
        d_m = drift_mps * max(0.0, t_s - onset_s)
        est = estimate_at(*(truth + e_est[k]), *SPEED, sigma_m=sig_est_m)
        mon.observe_estimate(est, int(t_s * S_NS))
        if k % 2 == 0:
            g = SPEED * (t_s - rng.uniform(0.0, max_age_s)) + e_gnss[k] + d_m * across
            mon.observe(raw(t_s, north_m=g[0], east_m=g[1], h_acc_m=sig_gnss_m),
                        int(t_s * S_NS))
        out.append((t_s, mon.decide(int(t_s * S_NS), True)))
        drift.append(d_m)
    return out, np.array(drift)


@pytest.mark.parametrize("drift_mps, bound_m", [(0.3, 18.0), (1.0, 22.0)])
def test_slow_spoofing_drift_is_caught_before_the_bound(drift_mps, bound_m) -> None:
    """A spoofer walking the GNSS away slowly passes every per-sample gate at first; the
    accumulated divergence must flag it before the drift reaches `bound_m` (combined
    1-sigma of the two errors: 3.4 m)."""
    for seed in range(6):
        d, drift = spoof_flight(seed, drift_mps, duration_s=20.0 + 30.0 / drift_mps)
        states = [h.state for _, h in d]
        k = states.index("spoofed")
        assert 0.0 < drift[k] < bound_m, (seed, drift[k])
        assert "from visual" in d[k][1].reason  # CUSUM, or the gate once far enough
        assert all(s == "spoofed" for s in states[k:])  # held, never flickers back


def test_honest_gnss_is_not_called_spoofed() -> None:
    """Five minutes of honest, time-correlated errors on both sides: no alarm."""
    for seed in range(3):
        d, _ = spoof_flight(100 + seed, 0.0, duration_s=300.0)
        assert {(h.state, h.disputed) for _, h in d} == {("healthy", "")}, seed


def test_late_gnss_reports_beside_a_tight_estimate_are_not_called_spoofed() -> None:
    """An IMU-aided estimate claims 0.3 m; the receiver claims 0.5 m, but each report's
    position is up to 0.45 s old when it arrives (receiver latency, stream period): 5 m
    along track at 12 m/s. That age is the GNSS's, not a spoof."""
    for seed in range(3):
        d, _ = spoof_flight(200 + seed, 0.0, duration_s=300.0, sig_est_m=0.3,
                            sig_gnss_m=0.5, max_age_s=0.45)
        assert {(h.state, h.disputed) for _, h in d} == {("healthy", "")}, seed


def test_ekf_source_mode_switches_once_each_way() -> None:
    """Spoofing drift from 20 s: one switch to the visual set when it is caught; GNSS that
    goes lost while our visual lock is bad gets no switch (nothing better to offer)."""
    d, _ = spoof_flight(3, 1.0, duration_s=60.0, mode="ekf-source")
    cmds = [(t, h.ekf_source_set) for t, h in d if h.ekf_source_set is not None]
    assert len(cmds) == 1 and cmds[0][1] == CFG.ekf_source_visual
    assert dict(d)[cmds[0][0]].state == "spoofed"
    assert all(h.send_gps_input for _, h in d)

    mon = GnssMonitor(replace(CFG, mode="ekf-source", recover_after_s=5.0))
    d = fly(mon, 40.0, lambda t: [raw(t, fix=3 if t < 5.0 or t >= 25.0 else 0)],
            visual_ok=lambda t: t >= 12.0)
    cmds = [(t, h.ekf_source_set) for t, h in d if h.ekf_source_set is not None]
    assert [c[1] for c in cmds] == [CFG.ekf_source_visual, CFG.ekf_source_gnss]
    assert cmds[0][0] == pytest.approx(12.0)  # lost at ~7 s, but visual only good at 12 s
    assert cmds[1][0] == pytest.approx(25.0 + 5.0, abs=0.21)
    # the command the daemon sends for it, as the autopilot parses it
    cmd = wire(set_ekf_source_set(cmds[0][1], target_system=1))
    assert cmd.command == mavlink2.MAV_CMD_SET_EKF_SOURCE_SET == 42007
    assert (cmd.param1, cmd.target_system, cmd.target_component) == (2.0, 1, 1)
    with pytest.raises(ValueError):
        set_ekf_source_set(4, 1)


def test_bad_mode_is_a_config_error() -> None:
    with pytest.raises(SkyfixError, match="gnss.mode"):
        GnssConfig(mode="sometimes")


def shifted_camera_flight(fixed_at_s: float = float("inf"), cut_at_s: float = 30.0):
    """A straight 12 m/s flight whose camera clock is 4 s off until `fixed_at_s`: our
    estimate is where the aircraft is 4 s later (48 m along track, confident at 3 m).
    GNSS is honest until `cut_at_s`, then has no fix. Returns [(t_s, Handover)]."""
    mon = GnssMonitor(CFG)
    out = []
    for k in range(int(60.0 / DECIDE_DT_S) + 1):
        t_s = k * DECIDE_DT_S
        truth = SPEED * t_s
        lead_s = 4.0 if t_s < fixed_at_s else 0.0
        mon.observe_estimate(estimate_at(*(truth + SPEED * lead_s), *SPEED), int(t_s * S_NS))
        if k % 2 == 0:
            mon.observe(raw(t_s, fix=3 if t_s < cut_at_s else 1, north_m=truth[0],
                            east_m=truth[1]), int(t_s * S_NS))
        out.append((t_s, mon.decide(int(t_s * S_NS), True)))
    return out


def test_visual_off_before_it_was_verified_is_blamed_not_the_gnss() -> None:
    """A confident visual track that never agreed with the healthy GNSS is the suspect
    (a camera clock 4 s off, a wrong mount or map): GNSS is not called spoofed, nothing
    is sent, and that holds after the GNSS is lost."""
    d = shifted_camera_flight()
    assert "spoofed" not in {h.state for _, h in d}
    t_blamed = first(d, lambda h: h.disputed)
    why = d[int(round(t_blamed / DECIDE_DT_S))][1].disputed
    off_m = float(re.fullmatch(r"unverified visual (\d+) m off GNSS", why).group(1))
    # 48 m, less the 12 m/s x max_fix_age_s / 2 that a report's age may explain
    assert t_blamed <= 0.5 and abs(off_m - (48 - 12 * CFG.max_fix_age_s / 2)) <= 1
    after = [h for t, h in d if t >= t_blamed]
    assert not any(h.send_gps_input for h in after)
    assert {h.state for t, h in d if t > 35.0} == {"lost"}  # GNSS gone: still held


def test_visual_is_sent_again_after_agreeing_for_verify_s() -> None:
    """Once the camera clock is put right, the estimate must agree for verify_s before
    it is sent again."""
    d = shifted_camera_flight(fixed_at_s=15.0, cut_at_s=90.0)
    t_sent = first([(t, h) for t, h in d if t > 15.0], lambda h: h.send_gps_input)
    assert 15.0 + CFG.verify_s - 0.5 <= t_sent <= 15.0 + CFG.verify_s + 1.0
    assert all(h.send_gps_input and not h.disputed for t, h in d if t >= t_sent)
