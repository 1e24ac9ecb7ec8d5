"""mavlink_out: GPS_INPUT fields, fix_type policy, the recorder's tlog read back by pymavlink."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.config import OutputConfig
from skyfix.runtime.mavlink_out import (
    UERE_M,
    GpsInputRecorder,
    fix_type_for,
    gps_input,
    gps_week_ms,
    heartbeat,
    named_value,
    statustext,
)
from skyfix.runtime.types import Estimate

CFG = OutputConfig(system_id=7, component_id=191, gps_id=1, satellites=12,
                   lock_budget_s=1.0, max_sigma_m=20.0)
T0 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
STEP_NS = 100_000_000  # 10 Hz
NOT_PROVIDED = 4 | 16 | 128  # vdop, vd, vert_accuracy


def independent_gps_time(t_unix_ns: int) -> tuple[int, int]:
    """GPS week and ms of week from the definition: GPS = UTC + 18 s since 1980-01-06."""
    utc = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=t_unix_ns // 1000)
    d = utc + timedelta(seconds=18) - datetime(1980, 1, 6, tzinfo=timezone.utc)
    return d.days // 7, ((d.days % 7) * 86400 + d.seconds) * 1000 + d.microseconds // 1000


def make_estimate(k: int, age_s: float, sigma_e_m: float = 3.0, valid: bool = True,
                  alt: float = 412.25) -> Estimate:
    cov = np.array([[4.0, 1.5], [1.5, sigma_e_m**2]])
    return Estimate(
        t_ns=T0 + k * STEP_NS, north_m=1.5 * k, east_m=-0.7 * k, vn_mps=15.0, ve_mps=-7.0,
        cov_ne_m2=cov, vel_cov_ne_m2s2=np.array([[0.3, 0.05], [0.05, 0.2]]),
        lat_deg=48.2081743 + 1.35e-5 * k, lon_deg=16.3738189 - 0.9e-5 * k,
        alt_amsl_m=alt, valid=valid, last_fix_age_s=age_s,
    )


def stream() -> list[Estimate]:
    """3 s at 10 Hz: fixes, then 1.5 s without one (over the 1 s budget), then fixes again."""
    out = []
    for k in range(30):
        age = 0.05 if k < 10 or k >= 25 else (k - 9) * 0.1
        out.append(make_estimate(k, age))
    return out


def read_tlog(path: Path) -> list:
    """Every message in a tlog, as MAVExplorer would read it (bad CRCs -> BAD_DATA)."""
    saved = os.environ.get("MAVLINK20")  # mavutil sets it when it meets MAVLink 2: undo that
    try:
        conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega",
                                          robust_parsing=True)
        msgs = []
        while (m := conn.recv_msg()) is not None:
            msgs.append(m)
        conn.close()
    finally:
        if saved is None:
            os.environ.pop("MAVLINK20", None)
        else:
            os.environ["MAVLINK20"] = saved
    return msgs


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    path = tmp_path_factory.mktemp("mav") / "gps_input.tlog"
    sent = []
    with GpsInputRecorder(path, CFG) as rec:
        for est in stream():
            sent.append(rec.send(est, est.t_ns))
    return sent, read_tlog(path)


def test_tlog_is_clean_and_from_our_ids(recorded) -> None:
    sent, msgs = recorded
    assert [m.get_type() for m in msgs if m.get_type() == "BAD_DATA"] == []
    types = [m.get_type() for m in msgs]
    assert set(types) == {"HEARTBEAT", "STATUSTEXT", "GPS_INPUT"}
    assert types.count("GPS_INPUT") == len(sent) == 30
    for m in msgs:
        assert (m.get_srcSystem(), m.get_srcComponent()) == (7, 191)
        assert m.get_msgbuf()[0] == 0xFD  # MAVLink 2
    seqs = [m.get_seq() for m in msgs]
    assert seqs == [i % 256 for i in range(len(msgs))]


def test_gps_input_fields(recorded) -> None:
    _, msgs = recorded
    got = [m for m in msgs if m.get_type() == "GPS_INPUT"]
    for est, m in zip(stream(), got, strict=True):
        assert m.time_usec == est.t_ns // 1000
        assert m._timestamp == pytest.approx(est.t_ns * 1e-9, abs=1e-6)
        assert m.gps_id == 1
        assert m.lat == int(round(est.lat_deg * 1e7))
        assert m.lon == int(round(est.lon_deg * 1e7))
        assert m.alt == pytest.approx(412.25)
        assert (m.vn, m.ve, m.vd) == pytest.approx((15.0, -7.0, 0.0))
        ev = np.linalg.eigvalsh(est.cov_ne_m2)
        assert m.horiz_accuracy == pytest.approx(np.sqrt(ev.max()), rel=1e-6)
        assert m.speed_accuracy == pytest.approx(np.sqrt(np.linalg.eigvalsh(
            est.vel_cov_ne_m2s2).max()), rel=1e-6)
        assert m.hdop == pytest.approx(np.sqrt(ev.sum()) / UERE_M, rel=1e-6)
        assert m.ignore_flags == NOT_PROVIDED
        assert m.yaw == 0
        week, week_ms = independent_gps_time(est.t_ns)
        assert (m.time_week, m.time_week_ms) == (week, week_ms)


def test_fix_type_transitions_and_statustext(recorded) -> None:
    _, msgs = recorded
    fixes = [(m.fix_type, m.satellites_visible) for m in msgs if m.get_type() == "GPS_INPUT"]
    ages = [e.last_fix_age_s for e in stream()]
    expected = [3 if a <= CFG.lock_budget_s else 0 for a in ages]
    assert [f for f, _ in fixes] == expected
    assert expected[:10] == [3] * 10 and 0 in expected and expected[-1] == 3
    assert all(s == (12 if f == 3 else 0) for f, s in fixes)
    texts = [(m._timestamp, m.text, m.severity) for m in msgs if m.get_type() == "STATUSTEXT"]
    changes = [i for i in range(30) if i == 0 or expected[i] != expected[i - 1]]
    assert len(texts) == len(changes) == 3
    for (ts, text, sev), i in zip(texts, changes, strict=True):
        assert ts == pytest.approx((T0 + i * STEP_NS) * 1e-9, abs=1e-6)
        if expected[i] == 3:
            assert "3D fix" in text and sev == mavlink2.MAV_SEVERITY_INFO
        else:
            assert "no fix" in text and sev == mavlink2.MAV_SEVERITY_WARNING
    # each STATUSTEXT comes right before the first GPS_INPUT that carries the new fix_type
    for k, m in enumerate(msgs):
        if m.get_type() == "STATUSTEXT":
            assert msgs[k + 1].get_type() == "GPS_INPUT"


def test_heartbeat_at_1hz(recorded) -> None:
    _, msgs = recorded
    beats = [m for m in msgs if m.get_type() == "HEARTBEAT"]
    assert len(beats) == 3
    assert np.diff([b._timestamp for b in beats]) == pytest.approx([1.0, 1.0])
    b = beats[0]
    assert b.type == mavlink2.MAV_TYPE_ONBOARD_CONTROLLER
    assert b.autopilot == mavlink2.MAV_AUTOPILOT_INVALID
    assert b.system_status == mavlink2.MAV_STATE_ACTIVE


def test_gps_week_known_dates() -> None:
    assert gps_week_ms(T0) == independent_gps_time(T0)
    assert gps_week_ms(T0)[0] == 2399
    assert gps_week_ms(315964800 * 10**9) == (0, 18_000)  # GPS epoch in Unix time + leap
    t = T0 + 123_456_789_012
    assert gps_week_ms(t) == independent_gps_time(t)


def test_never_claims_a_fix_it_does_not_have() -> None:
    assert fix_type_for(make_estimate(0, 0.1), CFG) == 3
    assert fix_type_for(make_estimate(0, 1.0), CFG) == 3  # at the budget
    assert fix_type_for(make_estimate(0, 1.01), CFG) == 0
    assert fix_type_for(make_estimate(0, float("inf")), CFG) == 0
    assert fix_type_for(make_estimate(0, 0.1, sigma_e_m=25.0), CFG) == 0
    assert fix_type_for(make_estimate(0, 0.1, valid=False), CFG) == 0
    nan_cov = replace(make_estimate(0, 0.1), cov_ne_m2=np.full((2, 2), np.nan))
    assert fix_type_for(nan_cov, CFG) == 0
    msg = gps_input(nan_cov, CFG, T0)
    assert msg.fix_type == 0 and msg.satellites_visible == 0
    assert msg.ignore_flags & (64 | 2) == 64 | 2


def test_unknown_altitude_is_flagged() -> None:
    msg = gps_input(make_estimate(0, 0.1, alt=float("nan")), CFG, T0)
    assert msg.ignore_flags == NOT_PROVIDED | 1 and msg.alt == 0.0
    assert msg.fix_type == 3


def test_small_messages_roundtrip() -> None:
    mav = mavlink2.MAVLink(None, srcSystem=7, srcComponent=191)
    for msg in (heartbeat(), statustext("x" * 80, mavlink2.MAV_SEVERITY_NOTICE),
                named_value("skyfix_nis_long", 2.5, 1234)):
        buf = msg.pack(mav)
        back = mav.parse_buffer(buf)[0]
        assert back.get_type() == msg.get_type()
    assert back.name == "skyfix_nis" and back.value == 2.5 and back.time_boot_ms == 1234
    assert len(statustext("x" * 80, 6).text) == 50
    with pytest.raises(ValueError):
        statustext("bad", 9)
