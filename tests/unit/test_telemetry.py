"""Telemetry from real tlog bytes: written with pymavlink, read back, interpolated."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import shared_file
from pymavlink.dialects.v20 import ardupilotmega as mav

from skyfix.runtime.core.config import Config, TelemetryConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.clock import AutopilotClock
from skyfix.runtime.io.mavlink import UERE_M
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.io.tlog import TlogWriter

T0 = 1_767_225_600_000_000_000


def write_log(path, seconds=4.0, attitude=True):
    with TlogWriter(path, 1, 1) as w:
        for k in range(int(seconds * 20)):
            t = T0 + k * 50_000_000
            s = k * 0.05
            if attitude:
                w.write(mav.MAVLink_attitude_message(int(s * 1e3), 0.1 * s, -0.05, 3.0 + 0.1 * s,
                                                     0, 0, 0), t)
            if k % 2 == 0:
                w.write(mav.MAVLink_global_position_int_message(
                    int(s * 1e3), 481858700, 163131600, int((200 + s) * 1e3), int((100 + s) * 1e3),
                    500, -200, 0, 9000), t)
            if k % 4 == 0:
                w.write(mav.MAVLink_gps_raw_int_message(
                    int(s * 1e6), 3, 481858700, 163131600, 200000, 80, 120, 500, 9000, 14), t)


def test_interpolates_attitude_and_height(tmp_path):
    p = tmp_path / "t.tlog"
    write_log(p)
    log = TelemetryLog.from_tlog(p)
    tel = log.at(T0 + 1_025_000_000)
    assert tel.roll_rad == pytest.approx(0.1 * 1.025, abs=1e-6)
    assert tel.agl_m == pytest.approx(101.025, abs=1e-3)
    assert tel.alt_amsl_m == pytest.approx(201.025, abs=1e-3)
    assert tel.vel_ned_mps == pytest.approx((5.0, -2.0, 0.0))
    g = log.gnss_at(T0 + 1_025_000_000)
    assert g.lat_deg == pytest.approx(48.18587) and g.fix_type == 3
    assert g.eph_m == pytest.approx(0.8 * UERE_M)  # HDOP 0.8, no h_acc: HDOP x UERE
    assert log.at(T0 + 60 * 10**9) is None  # outside the log


def test_yaw_interpolates_across_the_wrap(tmp_path):
    p = tmp_path / "t.tlog"
    write_log(p, seconds=6.0)  # yaw runs from 3.0 past pi
    log = TelemetryLog.from_tlog(p)
    yaw = log.at(T0 + 1_450_000_000).yaw_rad  # 3.145 rad wraps to about -3.138
    assert yaw == pytest.approx(3.145 - 2 * np.pi, abs=1e-3)


def test_truncated_and_garbled_logs_still_read(tmp_path):
    p = tmp_path / "t.tlog"
    write_log(p)
    data = p.read_bytes()
    cut = tmp_path / "cut.tlog"
    cut.write_bytes(data[: len(data) // 2 + 7])  # ends mid-record
    assert len(TelemetryLog.from_tlog(cut).att) > 10
    rng = np.random.default_rng(1)
    noisy = bytearray(data)
    for i in rng.integers(0, len(data), 40):
        noisy[i] ^= 0xFF  # corrupt bytes: those records fail their CRC and are dropped
    garbled = tmp_path / "garbled.tlog"
    garbled.write_bytes(bytes(noisy))
    log = TelemetryLog.from_tlog(garbled)
    assert 10 < len(log.att) <= 80
    assert np.all(np.abs(log.att[:, 1]) < 1.0)  # nothing corrupt got through as a value


def test_log_without_attitude_is_refused(tmp_path):
    p = tmp_path / "t.tlog"
    write_log(p, attitude=False)
    with pytest.raises(SkyfixError, match="no ATTITUDE"):
        TelemetryLog.from_tlog(p)
    with pytest.raises(SkyfixError, match="not found"):
        TelemetryLog.from_tlog(tmp_path / "missing.tlog")


def test_real_arduplane_tlog():
    log = TelemetryLog.from_tlog(shared_file("cuav_cmac_2018-08-05/flight.tlog"))
    assert len(log.att) > 500 and len(log.gnss) > 500
    tel = log.at(int(log.att[len(log.att) // 2, 0]))
    assert 30 < tel.agl_m < 300  # the CMAC flight flew ~80 m above home
    assert 149.1 < log.gnss_at(int(log.gnss[10, 0])).lon_deg < 149.2  # Canberra model flying field


def test_downward_rangefinder_gives_height_above_ground(tmp_path):
    """DISTANCE_SENSOR looking down (and in its span) is read; the pipeline then takes
    range x cos(tilt) over the above-home altitude, and the terrain over neither."""
    from skyfix.runtime.nav.navigator import with_height_above_ground

    p = tmp_path / "r.tlog"
    with TlogWriter(p, 1, 1) as w:
        mav = w.mav
        for k in range(20):
            s = k * 0.1
            t = T0 + int(s * 1e9)
            w.write(mav.attitude_encode(int(s * 1000), 0.1, 0.2, 0.0, 0, 0, 0), t)
            w.write(mav.global_position_int_encode(int(s * 1000), 481858700, 163131600,
                                                   250000, 100000, 0, 0, 0, 0), t)
            w.write(mav.distance_sensor_encode(int(s * 1000), 20, 10000, 8300, 0, 0, 25, 0), t)
            w.write(mav.distance_sensor_encode(int(s * 1000), 20, 10000, 555, 0, 1, 0, 0), t)
    log = TelemetryLog.from_tlog(p)
    tel = log.at(T0 + 1_000_000_000)
    assert tel.range_m == pytest.approx(83.0)  # the forward-looking sensor is ignored
    assert tel.agl_m == pytest.approx(100.0)  # above home, as the autopilot says
    best = with_height_above_ground(tel, ground_m=120.0)
    assert best.agl_m == pytest.approx(83.0 * np.cos(0.1) * np.cos(0.2))
    no_rangefinder = with_height_above_ground(replace(tel, range_m=None), ground_m=120.0)
    assert no_rangefinder.agl_m == pytest.approx(250.0 - 120.0)
    assert log.at(T0 + 2_400_000_000).range_m is None  # 0.5 s old: stale, no range


def test_a_tlog_is_stamped_at_autopilot_time_as_the_daemon_stamped_it(tmp_path):
    """Replay runs the daemon's clock over the log's receive stamps: a radio link that held
    every 10th ATTITUDE 400 ms does not move it in time; telemetry.clock: arrival does."""
    p = tmp_path / "jitter.tlog"
    rng = np.random.default_rng(7)
    with TlogWriter(p, 1, 1) as w:
        for k in range(200):  # 20 Hz for 10 s, 5..25 ms on the link, every 10th +400 ms
            delay = 5_000_000 + int(rng.integers(20_000_000)) + 400_000_000 * (k % 10 == 5)
            w.write(mav.MAVLink_attitude_message(50 * k, 0.01 * k, 0, 0, 0, 0, 0),
                    T0 + k * 50_000_000 + delay)
            w.write(mav.MAVLink_global_position_int_message(
                50 * k, 481858700, 163131600, 200_000, 100_000, 0, 0, 0, 0),
                T0 + k * 50_000_000 + delay)
    log = TelemetryLog.from_tlog(p)
    late = log.att[np.isclose(log.att[:, 1], 0.01 * 155)][0]  # held 400 ms
    assert 5e6 <= late[0] - (T0 + 155 * 50_000_000) <= 6e6  # the smallest delay: 5 ms
    arrival = AutopilotClock.from_config(Config(telemetry=TelemetryConfig(clock="arrival")))
    raw = TelemetryLog.from_tlog(p, arrival)
    late = raw.att[np.isclose(raw.att[:, 1], 0.01 * 155)][0]
    assert late[0] - (T0 + 155 * 50_000_000) >= 405e6
