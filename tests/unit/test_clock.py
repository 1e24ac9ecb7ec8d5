"""The autopilot clock model (runtime/io/clock.py): telemetry stamped at its autopilot time
mapped to our clock, through link jitter, clock drift, reboots, steps and wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.config import Config, TelemetryConfig
from skyfix.runtime.io.clock import AutopilotClock, timesync_request

OFFSET_NS = 1_767_225_600_123_456_789  # our clock (Unix ns) at the autopilot's boot
MS = 1_000_000


def _wire(msg, component: int = 1):
    """`msg` as received: packed by system 1 / `component` and parsed again."""
    buf = msg.pack(mav2.MAVLink(None, srcSystem=1, srcComponent=component))
    return mav2.MAVLink(None).decode(bytearray(buf))


def _attitude(boot_ms: int, component: int = 1):
    return _wire(mav2.MAVLink_attitude_message(boot_ms % 2**32, 0.1, 0.2, 0.3, 0, 0, 0),
                 component)


def _fly(clock, tau_ns, local_ns, delay_ns):
    """Feed ATTITUDEs measured at autopilot times `tau_ns` [N] (whole ms), i.e. at
    `local_ns` [N] on our clock, arriving `delay_ns` [N] later; their stamps [N]."""
    return np.array([clock.stamp(_attitude(int(t) // MS), int(t_loc + d))
                     for t, t_loc, d in zip(tau_ns, local_ns, delay_ns, strict=True)], np.int64)


def _delays(rng, n, d_min_ns, jitter_ns):
    """One-way delays: at least `d_min_ns`, exponential jitter, 1 in 20 held 200 ms more
    (a serial buffer)."""
    return (d_min_ns + rng.exponential(jitter_ns, n)
            + 200 * MS * (rng.random(n) < 0.05)).astype(np.int64)


def test_jittery_link_stamps_within_the_minimum_delay():
    rng = np.random.default_rng(1)
    tau = np.arange(1500, dtype=np.int64) * 20 * MS + 7 * 1000 * MS  # 50 Hz for 30 s
    local = tau + OFFSET_NS
    d_min = 2 * MS
    delay = _delays(rng, len(tau), d_min, 10 * MS)
    clock = AutopilotClock()
    stamps = _fly(clock, tau, local, delay)
    err = (stamps - local)[100:]  # locked within 2 s
    assert clock.state().source == "autopilot"
    assert err.min() >= 0 and err.max() <= d_min + MS  # late by the minimum delay at most
    assert (delay[100:] - d_min).mean() > 10 * (err.max() - d_min + 1)  # arrival was worse
    # before the lock: the arrival time
    assert stamps[0] == local[0] + delay[0]


def test_drift_of_50_ppm_is_tracked():
    rng = np.random.default_rng(2)
    tau = np.arange(7500, dtype=np.int64) * 40 * MS  # 25 Hz for 300 s
    local = OFFSET_NS + tau + (tau * 50e-6).astype(np.int64)  # our clock runs 50 ppm fast
    d_min = MS
    stamps = _fly(clock := AutopilotClock(window_s=60.0), tau, local,
                  _delays(rng, len(tau), d_min, 3 * MS))
    err = (stamps - local)[25 * 15:]  # after the rate is fitted
    # a windowed minimum alone would be up to 50 ppm x 60 s = 3 ms early
    assert err.min() >= -0.2 * MS and err.max() <= d_min + MS
    assert clock.state().drift_ppm == pytest.approx(50.0, abs=10.0)


def test_reboot_starts_over_on_the_new_boot_clock():
    rng = np.random.default_rng(3)
    n = 1000  # 20 s at 50 Hz, then a reboot: time_boot_ms from 0 again, 3 s later
    tau = np.concatenate([np.arange(n) * 20 * MS + 60_000 * MS, np.arange(n) * 20 * MS])
    local = np.concatenate([OFFSET_NS + tau[:n], OFFSET_NS + 80_000 * MS + tau[n:]])
    d_min = 2 * MS
    delay = _delays(rng, len(tau), d_min, 5 * MS)
    clock = AutopilotClock()
    stamps = _fly(clock, tau, local, delay)
    assert clock.state().epochs == 1 and clock.state().source == "autopilot"
    assert stamps[n] == local[n] + delay[n]  # the first message after it: arrival time
    err = (stamps - local)[n + 100:]
    assert err.min() >= 0 and err.max() <= d_min + MS


def test_timesync_round_trip_removes_the_one_way_delay():
    rng = np.random.default_rng(4)
    d_min = 20 * MS  # a telemetry radio: 20 ms each way at best
    clock = AutopilotClock()
    stamps, truth = [], []
    for k in range(1500):  # 50 Hz for 30 s, a TIMESYNC round trip each second
        tau = 5000 * MS + k * 20 * MS
        if k % 50 == 0:  # we ask at t1; it answers with its boot time when it hears us
            t1 = timesync_request(OFFSET_NS + tau, 191).ts1
            up, down = d_min + rng.exponential(3 * MS, 2).astype(np.int64)
            tc1 = OFFSET_NS + tau + up - OFFSET_NS
            reply = _wire(mav2.MAVLink_timesync_message(int(tc1), int(t1)))
            assert clock.stamp(reply, int(t1 + up + down)) == t1 + up + down
            # its answer to another requester (a ground station whose clock is 30 ms ahead
            # of ours) would be a wrong lower bound: not used
            other = _wire(mav2.MAVLink_timesync_message(int(tc1), int(t1) + 30 * MS + 1))
            clock.stamp(other, int(t1 + 60 * MS))
        local = OFFSET_NS + tau
        stamps.append(clock.stamp(_attitude(tau // MS), local + d_min
                                  + int(rng.exponential(5 * MS))))
        truth.append(local)
    err = (np.array(stamps) - np.array(truth))[100:]
    state = clock.state()
    assert state.source == "autopilot" and state.bound_ns is not None
    assert np.abs(err).max() <= 3 * MS  # the envelope alone is 20 ms late
    assert np.abs(err).max() <= state.bound_ns


def test_time_boot_ms_wrap_is_not_a_reboot():
    rng = np.random.default_rng(5)
    tau = (2**32 - 4000) * MS + np.arange(500, dtype=np.int64) * 20 * MS  # across the wrap
    local = OFFSET_NS + tau
    clock = AutopilotClock()
    stamps = _fly(clock, tau, local, _delays(rng, len(tau), MS, 5 * MS))
    assert clock.state().epochs == 0
    err = (stamps - local)[100:]
    assert err.min() >= 0 and err.max() <= 2 * MS


def test_autopilot_clock_step_forward_keeps_the_stamps_on_our_clock():
    rng = np.random.default_rng(6)
    tau = np.arange(1000, dtype=np.int64) * 20 * MS
    local = OFFSET_NS + tau
    tau = tau + (np.arange(1000) >= 500) * 5000 * MS  # its time fields jump 5 s at 10 s
    clock = AutopilotClock()
    stamps = _fly(clock, tau, local, _delays(rng, len(tau), MS, 5 * MS))
    err = (stamps - local)[600:]
    assert clock.state().epochs == 1
    assert err.min() >= 0 and err.max() <= 2 * MS


def test_what_is_not_a_clock_keeps_the_arrival_time():
    clock = AutopilotClock()
    hb = _wire(mav2.MAVLink_heartbeat_message(2, 3, 0, 0, 4, 3))
    assert clock.stamp(hb, 123) == 123
    gps = _wire(mav2.MAVLink_gps_raw_int_message(1_767_225_600_000_000, 3, 0, 0, 0, 1, 1, 0,
                                                 0, 10))  # a Unix time_usec
    assert clock.stamp(gps, 456) == 456
    # a time field that does not advance with time, or a simulator at twice real time
    for rate in (0.0, 2.0):
        c = AutopilotClock()
        for k in range(1000):
            t = OFFSET_NS + k * 20 * MS
            assert c.stamp(_attitude(int(5000 + rate * k * 20)), t + MS) == t + MS
        assert c.state().source == "arrival"
    # another component's clock (a gimbal) is not followed; the autopilot's then is
    c = AutopilotClock()
    for k in range(200):
        t = OFFSET_NS + k * 20 * MS
        assert c.stamp(_attitude(k * 20 + 99_000, component=154), t + 5 * MS) == t + 5 * MS
        c.stamp(_attitude(k * 20), t + MS)
    assert c.state().source == "autopilot" and c.state().epochs == 0
    # telemetry.clock: arrival
    off = AutopilotClock.from_config(Config(telemetry=TelemetryConfig(clock="arrival")))
    for k in range(200):
        t = OFFSET_NS + k * 20 * MS
        assert off.stamp(_attitude(k * 20), t + 7 * MS) == t + 7 * MS
    assert off.state().source == "arrival" and "arrival" in off.state().summary()


def test_stamps_lie_between_the_truth_and_the_arrival_through_steps_and_stalls():
    """The emulator's stale flight (its clock 5 s back at 12..15 s, 5 s ahead at 17..20 s),
    TIMESYNC answered on the stepped clock, and a receiver starved now and then for up to
    1.5 s (messages queue, then arrive in a burst): no stamp is ever earlier than the
    message's true time, none later than its arrival."""
    rng = np.random.default_rng(8)
    stalls = sorted(zip(rng.uniform(0, 24e9, 15).astype(np.int64),
                        rng.uniform(0, 1.5e9, 15).astype(np.int64), strict=True))

    def skew(t_ns: int) -> int:
        return -5000 * MS if 12e9 <= t_ns < 15e9 else 5000 * MS if 17e9 <= t_ns < 20e9 else 0

    def arrival(t_ns: int) -> int:
        a = t_ns + int(rng.uniform(0.2, 2.0) * MS)
        for w, s in stalls:
            a = w + s if w <= a < w + s else a
        return a

    clock, pending, early, late = AutopilotClock(), [], 0, 0
    for k in range(24 * 100):  # 100 Hz for 24 s (local times from the autopilot's boot)
        t = k * 10 * MS
        if k % 100 == 0:  # a TIMESYNC round trip each second
            t_ap = t + int(rng.uniform(0.2, 2.0) * MS)
            ts1 = timesync_request(OFFSET_NS + t, 191).ts1
            pending.append((OFFSET_NS + arrival(t_ap),
                            _wire(mav2.MAVLink_timesync_message(t_ap + skew(t_ap), ts1))))
        a = OFFSET_NS + arrival(t)
        for p in [p for p in pending if p[0] <= a]:
            clock.stamp(p[1], p[0])
        pending = [p for p in pending if p[0] > a]
        s = clock.stamp(_attitude((t + skew(t)) // MS), a)
        early += s < OFFSET_NS + t - MS  # (time_boot_ms truncates to whole ms)
        late += s > a
    assert early == 0 and late == 0
    assert clock.state().source == "autopilot" and clock.state().epochs >= 4
