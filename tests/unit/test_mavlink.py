"""runtime/io/mavlink.py: GPS_INPUT fields, fix_type policy; the send policy's tlog read back
by pymavlink."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.config import Config, FilterConfig, OutputConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate
from skyfix.runtime.flight.aids import OutputAids
from skyfix.runtime.flight.gnss import GnssMonitor
from skyfix.runtime.flight.output import SendPolicy
from skyfix.runtime.io.mavlink import (
    SIGNING_EPOCH_UNIX_S,
    UERE_M,
    advance_signing_clock,
    fix_type_for,
    global_position_sensor,
    gps_input,
    gps_week_ms,
    heartbeat,
    load_signing_key,
    named_value,
    pin_mavlink2,
    setup_signing,
    signing_timestamp,
    statustext,
)
from skyfix.runtime.io.tlog import TlogWriter
from skyfix.runtime.nav.filter import PositionFilter, estimate_at
from skyfix.runtime.nav.heading import HeadingCorrection

CFG = OutputConfig(system_id=7, component_id=191, gps_id=1, satellites=12,
                   lock_budget_s=1.0, max_sigma_m=20.0)
T0 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
STEP_NS = 100_000_000  # 10 Hz
NOT_PROVIDED = 4 | 16 | 128  # vdop, vd, vert_accuracy


class _Recorder:
    """Replay's way of recording: the send policy's messages for each slot into a tlog."""

    def __init__(self, path: Path) -> None:
        cfg = Config(output=CFG)
        self.policy = SendPolicy(cfg, GnssMonitor(cfg.gnss, own_instance=CFG.gps_id),
                                 OutputAids(CFG.lock_budget_s, CFG.satellites,
                                            HeadingCorrection(CFG.lock_budget_s)))
        self.writer = TlogWriter(path, CFG.system_id, CFG.component_id)
        self._fixes: set[int] = set()

    def send(self, est: Estimate, t_ns: int):
        if np.isfinite(est.last_fix_age_s):  # the fixes behind the stream, as the chain feeds
            t_fix = t_ns - int(round(est.last_fix_age_s * 1e9))  # them (flight/aids.py)
            if t_fix not in self._fixes:
                self._fixes.add(t_fix)
                self.policy.aids.on_fix(t_fix)
        slot = self.policy.tick(t_ns, est)
        for msg in slot.messages:
            self.writer.write(msg, t_ns)
        return slot.position

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


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
    with _Recorder(path) as rec:
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
        assert (m.vdop, m.vert_accuracy, m.yaw) == (0.0, 0.0, 0)  # flagged as not provided
        assert (m.time_week, m.time_week_ms) == (0, 0)  # no synchronised GPS time given


def test_fix_type_transitions_and_statustext(recorded) -> None:
    _, msgs = recorded
    fixes = [(m.fix_type, m.satellites_visible) for m in msgs if m.get_type() == "GPS_INPUT"]
    ages = [e.last_fix_age_s for e in stream()]
    expected = [3 if a <= CFG.lock_budget_s else 0 for a in ages]
    assert [f for f, _ in fixes] == expected
    assert expected[:10] == [3] * 10 and 0 in expected and expected[-1] == 3
    # satellites_visible counts the fixes of the last lock budget (flight/aids.py), 0 unclaimed
    assert all((1 <= s <= 12) if f == 3 else s == 0 for f, s in fixes)
    texts = [(m._timestamp, m.text, m.severity) for m in msgs
             if m.get_type() == "STATUSTEXT" and "GNSS" not in m.text]  # fix type only
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
        if m.get_type() == "STATUSTEXT" and "GNSS" not in m.text:
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


def test_gps_input_carries_gps_time_only_when_given_one() -> None:
    """Without a synchronised GPS time the week is 0: ArduPilot then stamps the fix on
    arrival instead of trusting the companion's clock; given one, it is sent."""
    est = next(iter(stream()))
    assert (gps_input(est, CFG, T0).time_week, gps_input(est, CFG, T0).time_week_ms) == (0, 0)
    gps_t = T0 + 1_500_000_000
    m = gps_input(est, CFG, T0, gps_time_unix_ns=gps_t)
    assert (m.time_week, m.time_week_ms) == independent_gps_time(gps_t)
    assert m.time_usec == T0 // 1000


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


# -- a filter's 10 Hz stream, as the autopilot decodes it ---------------------------------


def test_filter_stream_at_10hz_decodes_to_the_filter_state(tmp_path: Path) -> None:
    """2 Hz fixes arriving 150 ms late, estimates predicted to each 10 Hz send time:
    every GPS_INPUT field parsed back equals what the filter says at that instant."""
    from rasterio.crs import CRS

    frame = LocalFrame.at(CRS.from_epsg(32633), 601_000.0, 5_340_000.0)
    filt = PositionFilter(FilterConfig())
    filt.initialize(T0, np.zeros(2), 9.0 * np.eye(2))
    rng = np.random.default_rng(5)
    fixes = [(T0 + k * 500_000_000, np.array([6.0, 2.5]) * k * 0.5) for k in range(1, 12)]
    path = tmp_path / "stream.tlog"
    expected, last_fix = [], None
    with _Recorder(path) as rec:
        for i in range(1, 80):
            t_send = T0 + i * STEP_NS
            for t_fix, z in fixes:  # a fix is applied when it arrives, 150 ms after capture
                if t_send - STEP_NS < t_fix + 150_000_000 <= t_send:
                    assert filt.update_position(t_fix, z + rng.normal(0, 1.5, 2),
                                                2.25 * np.eye(2)).accepted
                    last_fix = t_fix
            est = estimate_at(filt, t_send, frame, 250.0, last_fix)
            x, P = filt.state_at(t_send)
            expected.append((t_send, x, P, est))
            rec.send(est, t_send)
    got = [m for m in read_tlog(path) if m.get_type() == "GPS_INPUT"]
    assert len(got) == len(expected)
    assert np.all(np.diff([m.time_usec for m in got]) == 100_000)  # 10 Hz, no jitter
    for (_t, x, P, est), m in zip(expected, got, strict=True):
        lat, lon = frame.ned_to_lla(x[0], x[1])
        assert (m.lat, m.lon) == (int(round(lat[0] * 1e7)), int(round(lon[0] * 1e7)))
        assert (m.vn, m.ve, m.vd, m.alt) == pytest.approx((x[2], x[3], 0.0, 250.0), abs=1e-5)
        assert m.horiz_accuracy == pytest.approx(np.sqrt(np.linalg.eigvalsh(P[:2, :2]).max()),
                                                 rel=1e-6)
        assert m.speed_accuracy == pytest.approx(np.sqrt(np.linalg.eigvalsh(P[2:, 2:]).max()),
                                                 rel=1e-6)
        assert m.hdop == pytest.approx(min(np.sqrt(np.trace(P[:2, :2])) / UERE_M, 99.99),
                                       rel=1e-6)
        claim = est.last_fix_age_s <= CFG.lock_budget_s and m.horiz_accuracy <= CFG.max_sigma_m
        assert m.fix_type == (3 if claim else 0)
        assert (1 <= m.satellites_visible <= CFG.satellites) if claim else \
            m.satellites_visible == 0  # recent fixes (flight/aids.py)
        assert (m.time_week, m.time_week_ms) == (0, 0)
        assert (m.gps_id, m.ignore_flags, m.vdop) == (CFG.gps_id, NOT_PROVIDED, 0.0)
    fixes_claimed = [m.fix_type for m in got]
    assert fixes_claimed[:4] == [0] * 4 and 3 in fixes_claimed  # no fix claimed before one
    assert fixes_claimed[-1] == 0  # the last fix is from 5.5 s; the 1 s budget ran out


# -- PX4: GLOBAL_POSITION_SENSOR -----------------------------------------------------------


def decode(msg, dialect=mavlink2):
    tx = dialect.MAVLink(None, srcSystem=CFG.system_id, srcComponent=CFG.component_id)
    (back,) = dialect.MAVLink(None).parse_buffer(msg.pack(tx))
    return back


def test_global_position_sensor_fields() -> None:
    est = make_estimate(3, 0.2)
    m = decode(global_position_sensor(est, CFG, T0 + 123_456_789, processing_time_ns=40_000_000))
    assert m.get_type() == "GLOBAL_POSITION_SENSOR" and m.get_msgId() == 296
    assert (m.target_system, m.target_component, m.id) == (0, 0, CFG.gps_id)
    assert m.time_usec == (T0 + 123_456_789) // 1000
    assert m.processing_time == 40_000
    assert m.source == mavlink2.GLOBAL_POSITION_SRC_VISION == 2
    assert m.flags == 0  # healthy, not claiming to be the primary estimator
    assert (m.lat, m.lon) == (int(round(est.lat_deg * 1e7)), int(round(est.lon_deg * 1e7)))
    assert m.alt == pytest.approx(412.25)
    assert np.isnan(m.alt_ellipsoid) and np.isnan(m.epv)
    assert m.eph == pytest.approx(np.sqrt(np.linalg.eigvalsh(est.cov_ne_m2).max()), rel=1e-6)

    stale = decode(global_position_sensor(make_estimate(3, 1.5), CFG, T0))
    assert stale.flags == mavlink2.GLOBAL_POSITION_UNHEALTHY and stale.lat == m.lat
    invalid = decode(global_position_sensor(make_estimate(3, 0.2, valid=False), CFG, T0))
    assert invalid.flags == mavlink2.GLOBAL_POSITION_UNHEALTHY
    assert (invalid.lat, invalid.lon) == (2**31 - 1, 2**31 - 1) and np.isnan(invalid.eph)



def test_px4_is_sent_only_claimed_fixes() -> None:
    """PX4 hands every GLOBAL_POSITION_SENSOR to EKF2 whatever its flags (seen in SIH):
    without a fix to claim, nothing goes to PX4."""
    cfg = Config(output=CFG)
    cfg = replace(cfg, daemon=replace(cfg.daemon, autopilot="px4"))
    policy = SendPolicy(cfg, GnssMonitor(cfg.gnss, own_instance=CFG.gps_id),
                        OutputAids(CFG.lock_budget_s, CFG.satellites,
                                            HeadingCorrection(CFG.lock_budget_s)))
    sent = policy._position(make_estimate(3, 0.2), T0, None)
    assert sent.get_type() == "GLOBAL_POSITION_SENSOR" and sent.flags == 0
    for est in (make_estimate(3, 1.5), make_estimate(3, 0.2, valid=False), Estimate.none(T0)):
        assert policy._position(est, T0, None) is None

# -- MAVLink 2 signing ---------------------------------------------------------------------

KEY = bytes(range(1, 33))


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_signing_key_file(tmp_path: Path) -> None:
    assert load_signing_key(write_key(tmp_path / "raw.key", KEY)) == KEY
    assert load_signing_key(write_key(tmp_path / "hex.key", KEY.hex().encode() + b"\n")) == KEY
    for mode in (0o640, 0o604, 0o660):
        with pytest.raises(SkyfixError, match="chmod 600") as exc:
            load_signing_key(write_key(tmp_path / f"open{mode:o}.key", KEY, mode))
        assert "\n" not in str(exc.value)
    with pytest.raises(SkyfixError, match="must hold 32 bytes"):
        load_signing_key(write_key(tmp_path / "short.key", KEY[:16]))
    with pytest.raises(SkyfixError, match="not found"):
        load_signing_key(tmp_path / "missing.key")


@pytest.fixture()
def udp_pair():
    """Two real pymavlink endpoints over UDP loopback: (autopilot side, our side)."""
    saved = os.environ.get("MAVLINK20")
    ap = pin_mavlink2(mavutil.mavlink_connection("udpin:127.0.0.1:0", source_system=1,
                                                 source_component=1, robust_parsing=True))
    port = ap.port.getsockname()[1]
    us = pin_mavlink2(mavutil.mavlink_connection(
        f"udpout:127.0.0.1:{port}", source_system=CFG.system_id,
        source_component=CFG.component_id, robust_parsing=True))
    yield ap, us
    ap.close()
    us.close()
    assert os.environ.get("MAVLINK20") == saved  # nothing switched through the environment


def receive(conn):
    msg = conn.recv_match(blocking=True, timeout=2.0)
    assert msg is not None, "nothing arrived over loopback"
    return msg


def test_signed_messages_verify_and_unsigned_are_refused(udp_pair) -> None:
    ap, us = udp_pair
    t = T0 + 5 * 10**9
    setup_signing(ap, KEY, refuse_unsigned=True, t_unix_ns=t)
    setup_signing(us, KEY, refuse_unsigned=True, link_id=3, t_unix_ns=t)
    est = make_estimate(0, 0.1)
    us.mav.send(gps_input(est, CFG, t))
    m = receive(ap)
    assert m.get_type() == "GPS_INPUT" and m.get_signed() and m.get_link_id() == 3
    assert m.lat == int(round(est.lat_deg * 1e7))
    replay = bytes(m.get_msgbuf())
    assert ap.mav.signing.goodsig_count == 1
    # what we sent was stamped with the clock we gave, 10 us units since 2015
    assert signing_timestamp(t) == (t // 10**9 - SIGNING_EPOCH_UNIX_S) * 100_000
    assert us.mav.signing.timestamp == signing_timestamp(t) + 1
    advance_signing_clock(us, t - 10**9)  # never backwards
    assert us.mav.signing.timestamp == signing_timestamp(t) + 1

    us.write(replay)  # the same signed packet again: its timestamp is not newer
    assert receive(ap).get_type() == "BAD_DATA"
    us.mav.signing.sign_outgoing = False
    us.mav.send(heartbeat())
    bad = receive(ap)
    assert bad.get_type() == "BAD_DATA" and "Invalid signature" in bad.reason
    assert ap.mav.signing.badsig_count == 1  # the replay
    assert ap.mav.signing.reject_count == 2  # the replay and the unsigned one


def test_wrong_key_is_refused_even_when_unsigned_is_allowed(udp_pair) -> None:
    ap, us = udp_pair
    setup_signing(ap, KEY, refuse_unsigned=False)
    setup_signing(us, bytes(32), refuse_unsigned=False)  # another key
    us.mav.send(heartbeat())
    assert receive(ap).get_type() == "BAD_DATA"
    us.mav.signing.sign_outgoing = False  # plain unsigned: allowed by this configuration
    us.mav.send(heartbeat())
    m = receive(ap)
    assert m.get_type() == "HEARTBEAT" and not m.get_signed()
    assert ap.mav.signing.unsigned_count == 1


def test_signing_needs_mavlink2_and_a_32_byte_key() -> None:
    from pymavlink.dialects.v10 import ardupilotmega as mavlink1

    with pytest.raises(SkyfixError, match="MAVLink 2"):
        setup_signing(mavlink1.MAVLink(None), KEY, refuse_unsigned=True)
    with pytest.raises(SkyfixError, match="32 bytes"):
        setup_signing(mavlink2.MAVLink(None), KEY[:31], refuse_unsigned=True)
