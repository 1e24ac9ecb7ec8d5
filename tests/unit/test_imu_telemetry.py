"""IMU telemetry: each message scaled to SI, one source kept, attitude interpolated per
sample, the stream request built as a valid COMMAND_LONG, and IMU rows read from a tlog."""

from __future__ import annotations

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav

from skyfix.runtime.io.mavlink import set_message_interval
from skyfix.runtime.io.telemetry import (
    TelemetryBuffer,
    TelemetryLog,
    attitude_at,
    imu_rows,
    parse_message,
)
from skyfix.runtime.io.tlog import TlogWriter

T0 = 1_767_225_600_000_000_000
G = 9.80665


def test_scaled_and_raw_imu_are_milli_g_and_mrad_per_s():
    for msg in (mav.MAVLink_scaled_imu_message(10, 100, -50, -1000, 20, -30, 400, 0, 0, 0, 0),
                mav.MAVLink_raw_imu_message(10_000, 100, -50, -1000, 20, -30, 400, 0, 0, 0, 0, 0)):
        kind, row = parse_message(msg, T0)
        assert kind == "imu" and row[0] == T0
        np.testing.assert_allclose(row[1:4], np.array([0.1, -0.05, -1.0]) * G)
        np.testing.assert_allclose(row[4:7], [0.02, -0.03, 0.4])


def test_highres_imu_is_si_and_needs_fresh_fields():
    def msg(updated):
        return mav.MAVLink_highres_imu_message(10_000, 0.5, -0.2, -9.7, 0.01, 0.02, -0.03,
                                               0, 0, 0, 1000, 0, 0, 20, updated)
    kind, row = parse_message(msg(0x3F), T0)
    np.testing.assert_allclose(row[1:7], [0.5, -0.2, -9.7, 0.01, 0.02, -0.03], rtol=1e-6)
    assert row[7] == 0  # HIGHRES_IMU is the preferred source
    assert parse_message(msg(0x07), T0) is None  # gyro fields not updated: no row


def test_one_source_is_kept():
    rows = np.array([[1, 0, 0, -G, 0, 0, 0, 2], [2, 0, 0, -G, 0, 0, 0, 1],
                     [3, 0, 0, -G, 0, 0, 0, 2], [4, 0, 0, -G, 0, 0, 0, 1]], float)
    np.testing.assert_array_equal(imu_rows(rows)[:, 0], [2, 4])
    assert imu_rows(np.zeros((0, 8))).shape == (0, 8)


def test_attitude_interpolates_across_the_yaw_wrap():
    att = np.array([[0, 0.1, 0.0, np.pi - 0.1], [100, 0.3, 0.2, -np.pi + 0.1]], float)
    out = attitude_at(att, np.array([50.0, 25.0, 5e9]))
    np.testing.assert_allclose(out[0], [0.2, 0.1, -np.pi], atol=1e-12)
    np.testing.assert_allclose(out[1, 2], np.pi - 0.05, atol=1e-12)
    assert np.isnan(out[2]).all()  # beyond the attitude's span by more than 2 s


def test_buffer_hands_out_new_samples_with_attitude():
    buf = TelemetryBuffer()
    for k in range(10):
        t = T0 + k * 10_000_000
        if k % 2 == 0:
            buf.add(mav.MAVLink_attitude_message(k * 10, 0.01 * k, 0.0, 1.0, 0, 0, 0), t)
        buf.add(mav.MAVLink_scaled_imu_message(k * 10, 0, 0, -1000, 0, 0, 0, 0, 0, 0, 0), t)
    imu, rpy = buf.imu_after(T0 + 45_000_000)
    np.testing.assert_array_equal(imu[:, 0], [T0 + k * 10_000_000 for k in range(5, 10)])
    np.testing.assert_allclose(rpy[:4, 0], [0.05, 0.06, 0.07, 0.08], atol=1e-6)  # float32


def test_set_message_interval_packs():
    msg = set_message_interval(mav.MAVLINK_MSG_ID_SCALED_IMU, 100.0, target_system=1)
    assert msg.command == mav.MAV_CMD_SET_MESSAGE_INTERVAL
    assert msg.param1 == 26 and msg.param2 == 10_000  # us between messages
    back = mav.MAVLink(None).decode(bytearray(msg.pack(mav.MAVLink(None, 255, 191))))
    assert back.param2 == 10_000 and back.target_system == 1
    with pytest.raises(ValueError):
        set_message_interval(26, 0.0, 1)


def test_tlog_imu_rows(tmp_path):
    p = tmp_path / "imu.tlog"
    with TlogWriter(p, 1, 1) as w:
        for k in range(20):
            t = T0 + k * 20_000_000
            w.write(mav.MAVLink_attitude_message(k * 20, 0.0, 0.0, 0.5, 0, 0, 0), t)
            w.write(mav.MAVLink_global_position_int_message(k * 20, 0, 0, 0, 0, 0, 0, 0, 0), t)
            w.write(mav.MAVLink_scaled_imu_message(k * 20, 10, 0, -1000, 0, 0, 5, 0, 0, 0, 0), t)
    log = TelemetryLog.from_tlog(p)
    assert log.imu.shape == (20, 8)
    np.testing.assert_allclose(log.imu[0, 1:7], [0.01 * G, 0, -G, 0, 0, 0.005])
