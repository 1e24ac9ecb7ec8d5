"""The autopilot emulator over real UDP: stream rates, the GNSS cut, the true pose in
SIM_STATE, and GPS_INPUT recorded and written back as a decodable tlog."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.warp import transform as crs_transform

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.io.clock import timesync_request
from skyfix.runtime.io.telemetry import open_link
from skyfix.sim.autopilot import AutopilotEmulator, AutopilotSpec
from skyfix.sim.camera import sim_state_pose
from skyfix.sim.closed_loop import free_udp_port

DURATION_S = 2.5
GNSS_OFF_S = 1.2


@pytest.fixture(scope="module")
def flown(ortho_path):
    port = free_udp_port()
    companion = open_link(f"udpin:127.0.0.1:{port}", 1, 191)
    emulator = AutopilotEmulator(ortho_path, AutopilotSpec(DURATION_S, GNSS_OFF_S),
                                 link=f"udpout:127.0.0.1:{port}")
    runner = threading.Thread(target=emulator.run, args=(threading.Event(),))
    runner.start()
    got, sent = [], []
    while runner.is_alive():
        m = companion.recv_match(blocking=True, timeout=0.05)
        if m is not None:
            got.append((time.time_ns(), m))
        if got and len(sent) < 5 and (not sent or time.time_ns() - sent[-1][0] > 200e6):
            msg = mav2.MAVLink_gps_input_message(
                time.time_ns() // 1000, 1, 0, 0, 0, 3, 482000000 + len(sent), 163000000,
                120.5, 0.8, 0.0, 1.0, 2.0, 0.0, 0.3, 1.5, 0.0, 10, 0)
            companion.mav.send(msg)
            sent.append((time.time_ns(), msg))
            companion.mav.send(timesync_request(time.time_ns(), 191))
    runner.join()
    companion.close()
    return emulator, got, sent


def _of(got, kind):
    return [(t, m) for t, m in got if m.get_type() == kind]


def test_streams_come_at_autopilot_rates(flown):
    _, got, _ = flown
    n = {k: len(_of(got, k)) for k in ("ATTITUDE", "SCALED_IMU", "GLOBAL_POSITION_INT",
                                       "SIM_STATE", "GPS_RAW_INT", "HEARTBEAT", "SYSTEM_TIME")}
    assert 25 * DURATION_S * 0.8 <= n["ATTITUDE"] <= 25 * DURATION_S + 2
    assert 100 * DURATION_S * 0.8 <= n["SCALED_IMU"] <= 100 * DURATION_S + 2  # imu_hz
    assert 10 * DURATION_S * 0.8 <= n["GLOBAL_POSITION_INT"] <= 10 * DURATION_S + 2
    assert n["SIM_STATE"] == n["GLOBAL_POSITION_INT"]
    assert 5 * DURATION_S * 0.8 <= n["GPS_RAW_INT"] <= 5 * DURATION_S + 2
    assert n["HEARTBEAT"] >= 2 and n["SYSTEM_TIME"] >= 2
    hb = _of(got, "HEARTBEAT")[0][1]
    assert hb.type == mav2.MAV_TYPE_QUADROTOR and hb.get_srcSystem() == 1


def test_timesync_is_answered_with_the_boot_clock_like_ardupilot(flown):
    emulator, got, _ = flown
    replies = _of(got, "TIMESYNC")
    assert len(replies) >= 3
    boot_ms = [m.time_boot_ms for _, m in _of(got, "ATTITUDE")]
    for t4, m in replies:
        assert m.ts1 % 1000 == 191  # our request's ts1, echoed
        assert 0 <= t4 - m.ts1 < 0.5e9  # a round trip on this machine
        # tc1: its boot clock in ns (the clock of time_boot_ms) when it read the request
        assert m.ts1 - 2e6 <= emulator.start_ns + m.tc1 <= t4 + 2e6
        assert boot_ms[0] * 1e6 <= m.tc1 <= boot_ms[-1] * 1e6 + 0.5e9


def test_gnss_is_cut_at_the_chosen_time(flown):
    emulator, got, _ = flown
    t0 = emulator.start_ns
    raw = [((t - t0) * 1e-9, m) for t, m in _of(got, "GPS_RAW_INT")]
    before = [m for t, m in raw if t < GNSS_OFF_S - 0.1]
    after = [m for t, m in raw if t > GNSS_OFF_S + 0.1]
    assert before and after
    assert all(m.fix_type == 3 and m.satellites_visible > 6 for m in before)
    assert all(m.fix_type <= 1 and m.satellites_visible == 0 for m in after)


def test_sim_state_carries_the_true_pose(flown):
    emulator, got, _ = flown
    for t, m in _of(got, "SIM_STATE")[::5]:
        truth = emulator.true_state(t)
        pose = sim_state_pose(m, t)
        x, y = crs_transform(WGS84, emulator.crs, [pose.lon_deg], [pose.lat_deg])
        assert pose.alt_amsl_m == pytest.approx(float(truth.alt_amsl_m[0]), abs=0.5)
        # sent shortly before it was received (at 10 m/s: 1 m is 100 ms on a busy machine)
        assert np.hypot(x[0] - truth.en_m[0, 0], y[0] - truth.en_m[0, 1]) < 1.0
        assert m.yaw == pytest.approx(float(truth.rpy_rad[0, 2]), abs=0.05)
    pos = _of(got, "GLOBAL_POSITION_INT")[-1][1]
    assert pos.relative_alt == pytest.approx(120_000, abs=1)


def test_gps_input_is_recorded_and_decodes_field_by_field(flown, tmp_path):
    emulator, _, sent = flown
    received = emulator.gps_inputs()
    assert len(received) == len(sent) >= 3
    path = emulator.write_received(tmp_path / "received.tlog")
    conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega")
    decoded = []
    while (m := conn.recv_match(type="GPS_INPUT")) is not None:
        decoded.append(m)
    assert len(decoded) == len(sent)
    for m, (t_sent, s) in zip(decoded, sent, strict=True):
        assert abs(m._timestamp - t_sent * 1e-9) < 0.5
        for field in ("time_usec", "gps_id", "fix_type", "lat", "lon", "satellites_visible"):
            assert getattr(m, field) == getattr(s, field)
        for field in ("alt", "hdop", "vn", "ve", "speed_accuracy", "horiz_accuracy"):
            assert getattr(m, field) == pytest.approx(getattr(s, field), rel=1e-6)


def test_bad_duration_is_one_clear_error(ortho_path):
    with pytest.raises(SkyfixError, match="duration"):
        AutopilotEmulator(ortho_path, AutopilotSpec(duration_s=0.0))
