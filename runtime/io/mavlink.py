"""What the autopilot sees: ArduPilot GPS_INPUT, HEARTBEAT, STATUSTEXT, NAMED_VALUE_FLOAT.

ArduPilot takes GPS_INPUT with GPSn_TYPE=14 and drops it unless `gps_id` equals the GPS
instance index; it wants a message at least every ~200 ms, and EKF3 uses
`horiz_accuracy` as the position noise. We only ever claim a 3D fix that we have:
`fix_type_for` drops to 0 (no fix) when the estimate is invalid, too old, or too
uncertain. The dialect is pinned here (ardupilotmega, MAVLink 2), never chosen through
environment variables.

PX4 does not take GPS_INPUT: `global_position_sensor` builds GLOBAL_POSITION_SENSOR (EKF2
auxiliary global position; see the README for the parameters and the uXRCE-DDS route).
MAVLink 2 signing: `load_signing_key` + `setup_signing` on a connection pinned to MAVLink 2
with `pin_mavlink2`; then everything sent is signed, and what arrives is checked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.config import OutputConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Estimate, sigma_max
from skyfix.runtime.io import signature

GPS_EPOCH_UNIX_S = 315964800  # 1980-01-06T00:00:00Z, the start of GPS week 0
GPS_LEAP_S = 18  # GPS - UTC since 2017-01-01
_WEEK_MS = 7 * 86400 * 1000

# Nominal user-equivalent range error of a single-frequency GNSS receiver. DOPs relate
# the position error to it (horizontal DRMS = HDOP * UERE), so HDOP = DRMS / UERE makes
# the reported HDOP say what an equally accurate GNSS fix would have shown.
UERE_M = 5.0
MAX_DOP = 99.99

FIX_NONE = 0  # GPS_FIX_TYPE_NO_FIX
FIX_3D = 3  # GPS_FIX_TYPE_3D_FIX

# GPS_INPUT ignore_flags: a set bit tells ArduPilot to ignore that field.
IGNORE_ALT = mavlink2.GPS_INPUT_IGNORE_FLAG_ALT  # 1: alt
IGNORE_HDOP = mavlink2.GPS_INPUT_IGNORE_FLAG_HDOP  # 2: hdop
IGNORE_VDOP = mavlink2.GPS_INPUT_IGNORE_FLAG_VDOP  # 4: vdop
IGNORE_VEL_HORIZ = mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ  # 8: vn, ve
IGNORE_VEL_VERT = mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_VERT  # 16: vd
IGNORE_SPEED_ACC = mavlink2.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY  # 32: speed_accuracy
IGNORE_HORIZ_ACC = mavlink2.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY  # 64: horiz_accuracy
IGNORE_VERT_ACC = mavlink2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY  # 128: vert_accuracy

# Always ignored, because skyfix does not estimate them: a vertical velocity and a VDOP.
# `alt` is skyfix's own altitude with its vert_accuracy where it measured one
# (flight/aids.py), else the autopilot's own altitude passed through with vert_accuracy
# ignored; alt is ignored too when unknown.
IGNORE_ALWAYS = IGNORE_VDOP | IGNORE_VEL_VERT


def gps_week_ms(t_unix_ns: int) -> tuple[int, int]:
    """(GPS week, milliseconds into the week) of a Unix time.

    GPS time = Unix time - GPS_EPOCH_UNIX_S + GPS_LEAP_S (no leap seconds after 2017).
    """
    gps_ms = (int(t_unix_ns) // 1_000_000) - (GPS_EPOCH_UNIX_S - GPS_LEAP_S) * 1000
    return gps_ms // _WEEK_MS, gps_ms % _WEEK_MS


def fix_type_for(est: Estimate, cfg: OutputConfig) -> int:
    """3 (3D fix) only while the estimate is valid, its last fix is at most
    cfg.lock_budget_s old and its horizontal 1-sigma is at most cfg.max_sigma_m; else 0."""
    if not est.valid or not (np.isfinite(est.lat_deg) and np.isfinite(est.lon_deg)):
        return FIX_NONE
    if not est.last_fix_age_s <= cfg.lock_budget_s:
        return FIX_NONE
    if not sigma_max(est.cov_ne_m2) <= cfg.max_sigma_m:
        return FIX_NONE
    return FIX_3D


def _finite(v: float) -> float:
    return float(v) if np.isfinite(v) else 0.0


def gps_input(est: Estimate, cfg: OutputConfig, t_unix_ns: int,
              gps_time_unix_ns: int | None = None, satellites: int | None = None,
              yaw_deg: float | None = None) -> mavlink2.MAVLink_gps_input_message:
    """The GPS_INPUT message for `est`, stamped `t_unix_ns` (Unix time, ns).

    With a fix claimed, satellites_visible = `satellites` (runtime/flight/aids.py) capped
    at cfg.satellites (cfg.satellites if None), yaw = `yaw_deg` in cdeg (north 36000, 0 =
    none); without a fix both are 0.

    time_week/_ms are 0 ("not provided") unless `gps_time_unix_ns`, known GPS time, is given:
    ArduPilot (AP_GPS_MAV) takes a nonzero week as the sample time and sets its clock from
    it; with 0 it stamps on arrival minus GPSn_DELAY_MS (0: `est` is predicted to send time).

    Accuracies are 1-sigma: horiz_accuracy is the root of the larger eigenvalue of the
    position covariance (the worst direction: conservative), speed_accuracy the same of
    the velocity covariance, vert_accuracy `est.alt_sigma_m` (ignored when NaN: `alt` is
    then the autopilot's own). hdop = sqrt(trace P_ne) / UERE_M, capped at MAX_DOP.
    With no fix the message still carries the estimate, with 0 satellites.
    """
    fix = fix_type_for(est, cfg)
    week, week_ms = (0, 0) if gps_time_unix_ns is None else gps_week_ms(gps_time_unix_ns)
    flags = IGNORE_ALWAYS
    alt, vert_acc = est.alt_amsl_m, est.alt_sigma_m
    if not np.isfinite(alt):
        flags |= IGNORE_ALT
        alt = 0.0
    if flags & IGNORE_ALT or not np.isfinite(vert_acc):
        flags |= IGNORE_VERT_ACC
        vert_acc = 0.0
    vel = np.array([est.vn_mps, est.ve_mps], dtype=np.float64)
    if not np.all(np.isfinite(vel)):
        flags |= IGNORE_VEL_HORIZ
        vel = np.zeros(2)
    speed_acc = sigma_max(est.vel_cov_ne_m2s2)
    if not np.isfinite(speed_acc):
        flags |= IGNORE_SPEED_ACC
        speed_acc = 0.0
    horiz_acc = sigma_max(est.cov_ne_m2)
    if np.isfinite(horiz_acc):
        hdop = min(float(np.sqrt(max(np.trace(est.cov_ne_m2), 0.0))) / UERE_M, MAX_DOP)
    else:
        flags |= IGNORE_HORIZ_ACC | IGNORE_HDOP
        horiz_acc = hdop = 0.0
    return mavlink2.MAVLink_gps_input_message(
        time_usec=int(t_unix_ns) // 1000,
        gps_id=cfg.gps_id,
        ignore_flags=flags,
        time_week_ms=week_ms,
        time_week=week,
        fix_type=fix,
        lat=int(round(_finite(est.lat_deg) * 1e7)),
        lon=int(round(_finite(est.lon_deg) * 1e7)),
        alt=float(alt),
        hdop=float(hdop),
        vdop=0.0,  # ignored (IGNORE_VDOP)
        vn=float(vel[0]),
        ve=float(vel[1]),
        vd=_finite(est.vd_mps),  # ignored (IGNORE_VEL_VERT)
        speed_accuracy=float(speed_acc),
        horiz_accuracy=float(horiz_acc),
        vert_accuracy=float(vert_acc),
        satellites_visible=(min(cfg.satellites, cfg.satellites if satellites is None
                                else max(int(satellites), 0)) if fix >= FIX_3D else 0),
        yaw=_yaw_cdeg(yaw_deg) if fix >= FIX_3D else 0,
    )


def _yaw_cdeg(yaw_deg: float | None) -> int:
    """GPS_INPUT yaw: centidegrees 1..36000 (north = 36000); 0 = not provided."""
    if yaw_deg is None or not np.isfinite(yaw_deg):
        return 0
    cdeg = int(round((yaw_deg % 360.0) * 100.0)) % 36000
    return cdeg or 36000


def global_position_sensor(est: Estimate, cfg: OutputConfig, t_unix_ns: int,
                           processing_time_ns: int = 0
                           ) -> mavlink2.MAVLink_global_position_sensor_message:
    """GLOBAL_POSITION_SENSOR (PX4 EKF2 auxiliary global position) for `est`.

    source VISION, id = cfg.gps_id, time_usec = `t_unix_ns` (Unix time); processing_time is
    the age of the measurement the position stands for (0 when `est` is predicted to the
    send time). eph is the same conservative 1-sigma as GPS_INPUT's horiz_accuracy;
    alt_ellipsoid is NaN (not estimated); alt AMSL and epv as GPS_INPUT's alt and
    vert_accuracy (epv NaN when alt is the autopilot's own, or unknown). Whenever
    `fix_type_for` would not claim a fix the message carries GLOBAL_POSITION_UNHEALTHY,
    and invalid coordinates are INT32_MAX (the field's "invalid" value). PX4 (main,
    2026-03) ignores both and hands EKF2 the coordinates as they are, so the send policy
    sends PX4 only messages that claim a fix.
    """
    healthy = fix_type_for(est, cfg) >= FIX_3D
    coords_ok = bool(est.valid and np.isfinite(est.lat_deg) and np.isfinite(est.lon_deg))
    int32_max = 2**31 - 1
    return mavlink2.MAVLink_global_position_sensor_message(
        target_system=0,  # broadcast
        target_component=0,
        id=cfg.gps_id,
        time_usec=int(t_unix_ns) // 1000,
        processing_time=max(0, int(processing_time_ns) // 1000) & 0xFFFFFFFF,
        source=mavlink2.GLOBAL_POSITION_SRC_VISION,
        flags=0 if healthy else mavlink2.GLOBAL_POSITION_UNHEALTHY,
        lat=int(round(est.lat_deg * 1e7)) if coords_ok else int32_max,
        lon=int(round(est.lon_deg * 1e7)) if coords_ok else int32_max,
        alt_ellipsoid=float("nan"),
        alt=float(est.alt_amsl_m),
        eph=sigma_max(est.cov_ne_m2) if coords_ok else float("nan"),
        epv=float(est.alt_sigma_m),
    )


def set_ekf_source_set(source_set: int, target_system: int, target_component: int = 1
                       ) -> mavlink2.MAVLink_command_long_message:
    """COMMAND_LONG MAV_CMD_SET_EKF_SOURCE_SET (ArduPilot): switch EKF3 to source set
    `source_set` (1..3, the EK3_SRCn_* parameter groups)."""
    if source_set not in (1, 2, 3):
        raise ValueError(f"EKF source set must be 1, 2 or 3, got {source_set}")
    return mavlink2.MAVLink_command_long_message(
        target_system=target_system, target_component=target_component,
        command=mavlink2.MAV_CMD_SET_EKF_SOURCE_SET, confirmation=0,
        param1=float(source_set), param2=0.0, param3=0.0, param4=0.0, param5=0.0,
        param6=0.0, param7=0.0)


def set_message_interval(message_id: int, rate_hz: float, target_system: int,
                         target_component: int = 1) -> mavlink2.MAVLink_command_long_message:
    """COMMAND_LONG MAV_CMD_SET_MESSAGE_INTERVAL: ask the autopilot to stream message
    `message_id` (e.g. mavlink2.MAVLINK_MSG_ID_SCALED_IMU) at `rate_hz` (> 0) to us."""
    if not (np.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"message rate must be a positive number of Hz, got {rate_hz}")
    return mavlink2.MAVLink_command_long_message(
        target_system=target_system, target_component=target_component,
        command=mavlink2.MAV_CMD_SET_MESSAGE_INTERVAL, confirmation=0,
        param1=float(message_id), param2=float(round(1e6 / rate_hz)),  # interval, us
        param3=0.0, param4=0.0, param5=0.0, param6=0.0,
        param7=0.0)  # response target 0: the flight stack's default (the requester)


# -- MAVLink 2 signing --------------------------------------------------------------------

SIGNING_EPOCH_UNIX_S = 1420070400  # 2015-01-01T00:00:00Z; signing timestamps count 10 us
SIGNING_KEY_BYTES = 32


def load_signing_key(path: Path) -> bytes:
    """The 32-byte signing secret in `path`: 32 raw bytes, or 64 hex digits on one line.

    Refused (SkyfixError) when the file is missing, has the wrong size, or group or
    others have any access to it: a key others can read signs nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"signing key file not found: {path}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SkyfixError(f"signing key {path} is open to group/others (mode {mode:03o}); "
                          f"run: chmod 600 {path}")
    data = path.read_bytes()
    if len(data) == SIGNING_KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * SIGNING_KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise SkyfixError(f"signing key {path} must hold {SIGNING_KEY_BYTES} bytes "
                      f"(raw, or as {2 * SIGNING_KEY_BYTES} hex digits), got {len(data)} bytes")


def signing_timestamp(t_unix_ns: int) -> int:
    """MAVLink 2 signing timestamp of a Unix time: 10 us units since 2015-01-01."""
    return max(0, int(t_unix_ns) - SIGNING_EPOCH_UNIX_S * 1_000_000_000) // 10_000


def pin_mavlink2(conn: Any) -> Any:
    """Make a pymavlink `mavutil` connection speak MAVLink 2 with the pinned dialect.

    mavutil picks MAVLink 1 or 2 from the MAVLINK20 environment variable and swaps its
    parser (dropping any signing set up on it) when the first MAVLink 2 byte arrives;
    this installs the ardupilotmega v2 parser at once, keeping the ids, callbacks and
    robust_parsing, so signing set up afterwards stays. Returns `conn`.
    """
    old = conn.mav
    mav = mavlink2.MAVLink(conn, srcSystem=old.srcSystem, srcComponent=old.srcComponent)
    mav.robust_parsing = old.robust_parsing
    for name in ("callback", "callback_args", "callback_kwargs", "send_callback",
                 "send_callback_args", "send_callback_kwargs"):
        setattr(mav, name, getattr(old, name))
    conn.mav = mav
    conn.WIRE_PROTOCOL_VERSION = "2.0"
    conn.first_byte = False
    return conn


class _UnsignedPolicy:
    """pymavlink's allow_unsigned_callback. pymavlink also asks it about messages whose
    signature failed; those always stay refused. A failed signature raises badsig_count
    just before the call, so a changed count tells the two cases apart."""

    def __init__(self, allow_unsigned: bool, badsig_count: int) -> None:
        self.allow_unsigned = allow_unsigned
        self._badsig_seen = badsig_count

    def __call__(self, mav: mavlink2.MAVLink, msg_id: int) -> bool:
        if mav.signing.badsig_count != self._badsig_seen:
            self._badsig_seen = mav.signing.badsig_count
            return False
        return self.allow_unsigned


def _mavlink2_of(link: Any) -> mavlink2.MAVLink:
    mav = getattr(link, "mav", link)
    if not isinstance(mav, mavlink2.MAVLink):
        raise SkyfixError("MAVLink signing needs a MAVLink 2 connection in the pinned dialect "
                          "(call pin_mavlink2 on the connection first)")
    return mav


def setup_signing(link: Any, key: bytes, refuse_unsigned: bool, link_id: int = 0,
                  t_unix_ns: int | None = None) -> None:
    """Sign everything `link` sends with `key`, and check what it receives.

    `link`: a pymavlink MAVLink object or a mavutil connection pinned with `pin_mavlink2`.
    Incoming messages with a bad signature (wrong key, replayed or old timestamp) are
    refused; unsigned ones too when `refuse_unsigned`. Refused messages raise in
    pymavlink's parser, or come back as BAD_DATA with robust_parsing. The signing clock
    starts at `t_unix_ns` (default: now) and never goes backwards: see
    `advance_signing_clock`.
    """
    if len(key) != SIGNING_KEY_BYTES:
        raise SkyfixError(f"signing key must be {SIGNING_KEY_BYTES} bytes, got {len(key)}")
    if not 0 <= link_id <= 255:
        raise SkyfixError(f"signing link id must be 0..255, got {link_id}")
    mav = _mavlink2_of(link)
    signing = mav.signing
    signing.secret_key = bytes(key)
    signing.link_id = int(link_id)
    signing.sign_outgoing = True
    signing.allow_unsigned_callback = _UnsignedPolicy(not refuse_unsigned, signing.badsig_count)
    signature.install(mav)  # the signature is checked before its timestamp is trusted
    advance_signing_clock(mav, time.time_ns() if t_unix_ns is None else t_unix_ns)


def advance_signing_clock(link: Any, t_unix_ns: int) -> None:
    """Move the signing timestamp up to the wall clock `t_unix_ns` (never back).

    pymavlink adds 1 (10 us) per signed message; call this before sending so the stamps
    also follow real time and stay ahead of anything sent before a restart (receivers
    refuse timestamps that go backwards and new streams more than a minute old).
    """
    signing = _mavlink2_of(link).signing
    signing.timestamp = max(signing.timestamp, signing_timestamp(t_unix_ns))


def heartbeat() -> mavlink2.MAVLink_heartbeat_message:
    """HEARTBEAT of an onboard controller (not an autopilot), active."""
    return mavlink2.MAVLink_heartbeat_message(
        type=mavlink2.MAV_TYPE_ONBOARD_CONTROLLER,
        autopilot=mavlink2.MAV_AUTOPILOT_INVALID,
        base_mode=0,
        custom_mode=0,
        system_status=mavlink2.MAV_STATE_ACTIVE,
        mavlink_version=3,
    )


def statustext(text: str, severity: int) -> mavlink2.MAVLink_statustext_message:
    """STATUSTEXT of `text` (ASCII, cut to the 50 characters the message holds);
    `severity` is a MAV_SEVERITY value (0 emergency .. 7 debug)."""
    if not 0 <= severity <= 7:
        raise ValueError(f"MAVLink severity must be 0..7, got {severity}")
    data = text.encode("ascii", "replace")[:50]
    return mavlink2.MAVLink_statustext_message(severity=severity, text=data)


def named_value(name: str, value: float, time_boot_ms: int
                ) -> mavlink2.MAVLink_named_value_float_message:
    """NAMED_VALUE_FLOAT `name` (ASCII, cut to 10 characters) = `value`."""
    data = name.encode("ascii", "replace")[:10]
    return mavlink2.MAVLink_named_value_float_message(
        time_boot_ms=int(time_boot_ms) & 0xFFFFFFFF, name=data, value=float(value))
