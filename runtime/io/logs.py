"""Flight logs as they come off the aircraft, read into a `TelemetryLog`.

- MAVLink telemetry log (.tlog): `TelemetryLog.from_tlog`.
- ArduPilot DataFlash (.bin/.log): ATT for attitude; POS (or GPS when the log has no POS)
  for position; GPS for velocity and the aircraft's own GNSS. Times are DFReader's,
  which it ties to GPS time when the log has it (Unix seconds).
- PX4 ULog (.ulg, pyulog): vehicle_attitude (quaternion), vehicle_global_position (or
  the GPS when absent), vehicle_local_position (height above the EKF origin, velocity)
  and vehicle_gps_position / sensor_gps. Boot-relative times are moved to Unix time
  with the GPS's own UTC stamps when the log has any.
- A GPS track CSV (a `utc_usec` or `t_ns` column plus lat, lon, alt_msl): position only.
- Per-image EXIF GPS + DJI XMP (`telemetry_from_images`).

A source without attitude (track CSV, images without gimbal angles) gets a level
camera whose heading is the course over ground: right for a nadir gimbal that follows a
multirotor flying along its track, which is how survey flights are flown. It is marked
unmeasured (`attitude_measured`), and fixes made with it claim the tilt it may be off by
(`match.unmeasured_tilt_sigma_deg`). Height above
ground without a terrain model is height above the first position sample (take-off).
"""

from __future__ import annotations

import csv
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import numpy as np
from defusedxml import DefusedXmlException

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_ned_body, euler_from_R_ned_body, geodesic_ne_m
from skyfix.runtime.io.clock import AutopilotClock
from skyfix.runtime.io.telemetry import TelemetryLog

LOG_SUFFIXES = (".tlog", ".bin", ".log", ".ulg", ".csv")
_MIN_COURSE_SPEED_MPS = 0.5  # slower than this, the course keeps its previous value


def read_telemetry(path: Path, clock: AutopilotClock | None = None) -> TelemetryLog:
    """Any supported log, chosen by suffix; a .tlog's rows stamped by `clock` (see
    `TelemetryLog.from_tlog`)."""
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"telemetry log not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".tlog":
        try:
            return TelemetryLog.from_tlog(path, clock)
        except (AttributeError, IndexError, ValueError, struct.error) as exc:
            # pymavlink's memory-mapped reader fails on a record cut short
            raise SkyfixError(f"{path}: unreadable MAVLink log ({exc})") from None
    if suffix in (".bin", ".log"):
        return from_dataflash(path)
    if suffix == ".ulg":
        return from_ulog(path)
    if suffix == ".csv":
        return from_track_csv(path)
    raise SkyfixError(f"{path}: unknown log type (expected one of {', '.join(LOG_SUFFIXES)})")


def _sorted(rows: list | np.ndarray, width: int) -> np.ndarray:
    a = np.array(rows, np.float64).reshape(-1, width)
    return a[np.argsort(a[:, 0], kind="stable")]


def _track_velocity(t_ns: np.ndarray, lat: np.ndarray, lon: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(north, east) velocity [N] m/s of a track by differences of its geodesic offsets
    from the first point; zero for a single point."""
    if len(t_ns) < 2:
        return np.zeros(len(t_ns)), np.zeros(len(t_ns))
    ne = geodesic_ne_m(lat[0], lon[0], lat, lon)
    ts = t_ns * 1e-9
    return np.gradient(ne[:, 0], ts), np.gradient(ne[:, 1], ts)


def _course_attitude(t_ns: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """[N, 4] (t_ns, 0, 0, yaw) with yaw the course over ground of the track."""
    dn, de = _track_velocity(t_ns, lat, lon)
    yaw = np.arctan2(de, dn)
    moving = np.hypot(dn, de) >= _MIN_COURSE_SPEED_MPS
    if moving.any():  # hold the last course while hovering, the first one before it
        idx = np.where(moving, np.arange(len(yaw)), 0)
        np.maximum.accumulate(idx, out=idx)
        idx[: int(np.argmax(moving))] = int(np.argmax(moving))
        yaw = yaw[idx]
    else:
        yaw = np.zeros_like(yaw)
    return np.stack([t_ns, np.zeros_like(yaw), np.zeros_like(yaw), yaw], -1)


def _track_log(t_ns: np.ndarray, lat: np.ndarray, lon: np.ndarray, alt: np.ndarray,
               rel_alt: np.ndarray | None, att: np.ndarray | None, n: int) -> TelemetryLog:
    """A log from a position track: velocity by differences, attitude from the course."""
    if len(t_ns) == 0:
        raise SkyfixError("no position samples")
    order = np.argsort(t_ns, kind="stable")
    t_ns, lat, lon, alt = t_ns[order], lat[order], lon[order], alt[order]
    rel = alt - alt[0] if rel_alt is None else rel_alt[order]
    if len(t_ns) > 1:
        ts = t_ns * 1e-9
        vn, ve = _track_velocity(t_ns, lat, lon)
        vd = -np.gradient(alt, ts)
    else:
        vn = ve = vd = np.zeros(1)
    pos = np.stack([t_ns, lat, lon, alt, rel, vn, ve, vd], -1)
    ones = np.ones_like(lat)
    gnss = np.stack([t_ns, lat, lon, alt, 3 * ones, 0 * ones, np.nan * ones], -1)
    measured = att is not None
    att = att[order] if measured else _course_attitude(t_ns, lat, lon)
    return TelemetryLog(att, pos, gnss, n, 0, attitude_measured=measured)


# --- ArduPilot DataFlash ---------------------------------------------------------------

def from_dataflash(path: Path) -> TelemetryLog:
    from pymavlink import mavutil

    path = Path(path)
    try:
        conn = mavutil.mavlink_connection(str(path))
    except Exception as exc:  # DFReader raises bare errors on a broken header
        raise SkyfixError(f"{path}: unreadable DataFlash log ({exc})") from None
    att, pos, gps, n = [], [], [], 0
    while True:
        try:
            msg = conn.recv_match(type=["ATT", "POS", "GPS"])
        except Exception as exc:
            raise SkyfixError(f"{path}: unreadable DataFlash log ({exc})") from None
        if msg is None:
            break
        n += 1
        try:
            _dataflash_row(msg, att, pos, gps)
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:  # a damaged record
            raise SkyfixError(f"{path}: unusable {msg.get_type()} record ({type(exc).__name__}:"
                              f" {exc})") from None
    if not att:
        raise SkyfixError(f"{path}: no ATT messages (not a DataFlash log, or truncated)")
    if not gps and not pos:
        raise SkyfixError(f"{path}: no GPS or POS messages, position unknown")
    g = _sorted(gps, 10)
    if pos:
        p = _sorted(pos, 5)
        if np.isnan(p[:, 4]).all():
            p[:, 4] = p[:, 3] - p[0, 3]
        vel = [np.interp(p[:, 0], g[:, 0], g[:, k]) if len(g) else np.zeros(len(p))
               for k in (7, 8, 9)]
        pos_arr = np.column_stack([p, *vel])
    else:
        rel = g[:, 6] if not np.isnan(g[:, 6]).all() else g[:, 3] - g[0, 3]
        pos_arr = np.column_stack([g[:, :4], rel, g[:, 7:10]])
    gnss = np.column_stack([g[:, :6], np.full(len(g), np.nan)]) if len(g) else np.zeros((0, 7))
    att_arr = _sorted(att, 4)
    att_arr[:, [1, 3]] = (att_arr[:, [1, 3]] + np.pi) % (2 * np.pi) - np.pi  # ATT logs 0..360
    return TelemetryLog(att_arr, pos_arr, gnss, n, 0)


def _dataflash_row(msg, att: list, pos: list, gps: list) -> None:
    """Append one DataFlash ATT / POS / GPS record to its rows (from_dataflash layout)."""
    t = int(round(msg._timestamp * 1e9))
    kind = msg.get_type()
    if kind == "ATT":
        att.append((t, *np.radians([msg.Roll, msg.Pitch, msg.Yaw])))
    elif kind == "POS":
        rel = getattr(msg, "RelHomeAlt", np.nan)
        pos.append((t, msg.Lat, msg.Lng, msg.Alt, rel))
    elif kind == "GPS" and getattr(msg, "I", 0) == 0 and msg.Status >= 2:
        rel = getattr(msg, "RelAlt", np.nan)
        crs = np.radians(msg.GCrs)
        gps.append((t, msg.Lat, msg.Lng, msg.Alt, msg.Status, msg.NSats, rel,
                    msg.Spd * np.cos(crs), msg.Spd * np.sin(crs), msg.VZ))


# --- PX4 ULog --------------------------------------------------------------------------

def from_ulog(path: Path) -> TelemetryLog:
    from pyulog import ULog

    path = Path(path)
    topics = ["vehicle_attitude", "vehicle_global_position", "vehicle_local_position",
              "vehicle_gps_position", "sensor_gps"]
    try:
        ulog = ULog(str(path), topics)
    except Exception as exc:  # pyulog raises bare errors on a bad header
        raise SkyfixError(f"{path}: unreadable ULog ({exc})") from None
    data = {}
    for d in ulog.data_list:
        if d.multi_id == 0:
            data[d.name] = d.data
    if "vehicle_attitude" not in data:
        raise SkyfixError(f"{path}: no vehicle_attitude topic (not a PX4 ULog, or truncated)")
    gps = data.get("vehicle_gps_position", data.get("sensor_gps"))
    offset_us = _ulog_utc_offset_us(gps)

    def t_ns(d: dict) -> np.ndarray:
        return (d["timestamp"].astype(np.float64) + offset_us) * 1e3

    a = data["vehicle_attitude"]
    q = np.stack([a[f"q[{k}]"] for k in range(4)], -1).astype(np.float64)
    att = np.array([(t, *euler_from_R_ned_body(_quat_to_R(qi))) for t, qi in zip(t_ns(a), q,
                                                                                strict=True)])
    g_rows = np.zeros((0, 7))
    if gps is not None:
        lat, lon, alt = _ulog_gps_lla(gps)
        g_rows = np.column_stack([t_ns(gps), lat, lon, alt, gps["fix_type"],
                                  gps["satellites_used"], gps["eph"]])
    if "vehicle_global_position" in data:
        gp = data["vehicle_global_position"]
        t, lat, lon, alt = t_ns(gp), gp["lat"], gp["lon"], gp["alt"]
    elif len(g_rows):
        t, lat, lon, alt = g_rows[:, 0], g_rows[:, 1], g_rows[:, 2], g_rows[:, 3]
    else:
        raise SkyfixError(f"{path}: no global position or GPS topic, position unknown")
    lat, lon, alt = (np.asarray(x, np.float64) for x in (lat, lon, alt))
    rel, vel = alt - alt[0], [np.zeros(len(t))] * 3
    if "vehicle_local_position" in data:
        lp = data["vehicle_local_position"]
        tl = t_ns(lp)
        rel = np.interp(t, tl, -lp["z"].astype(np.float64))
        vel = [np.interp(t, tl, lp[k].astype(np.float64)) for k in ("vx", "vy", "vz")]
    pos = np.column_stack([t, lat, lon, alt, rel, *vel])
    gnss = g_rows[g_rows[:, 4] >= 2] if len(g_rows) else g_rows
    return TelemetryLog(_sorted(att, 4), _sorted(pos, 8), _sorted(gnss, 7),
                        len(att) + len(pos) + len(g_rows), 0)


def _ulog_utc_offset_us(gps: dict | None) -> float:
    """Unix time minus boot time (us), from the GPS's UTC stamps; 0 without any."""
    if gps is None or "time_utc_usec" not in gps:
        return 0.0
    utc = gps["time_utc_usec"].astype(np.float64)
    ok = utc > 1e15  # after 2001: a real UTC stamp
    if not ok.any():
        return 0.0
    return float(np.median(utc[ok] - gps["timestamp"][ok].astype(np.float64)))


def _ulog_gps_lla(gps: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if "latitude_deg" in gps:  # PX4 >= 1.14
        return gps["latitude_deg"], gps["longitude_deg"], gps["altitude_msl_m"]
    return gps["lat"] * 1e-7, gps["lon"] * 1e-7, gps["alt"] * 1e-3


def _quat_to_R(q: np.ndarray) -> np.ndarray:
    """[3, 3] body-to-NED rotation of a PX4 (w, x, y, z) quaternion."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


# --- GPS track CSV ---------------------------------------------------------------------

def from_track_csv(path: Path) -> TelemetryLog:
    """Columns: `t_ns` or `utc_usec` or `unix_s`; `lat`; `lon`; `alt_msl` (or `alt`)."""
    path = Path(path)
    try:
        rows = _track_rows(path)
    except UnicodeDecodeError as exc:
        raise SkyfixError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise SkyfixError(f"{path}: not a CSV file ({exc})") from None
    if not rows:
        raise SkyfixError(f"{path}: no track samples")
    a = _sorted(rows, 4)
    return _track_log(a[:, 0], a[:, 1], a[:, 2], a[:, 3], None, None, len(a))


def _track_rows(path: Path) -> list[tuple[float, float, float, float]]:
    """(t_ns, lat, lon, alt) of each row of a GPS track CSV."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        tcol = next((c for c in ("t_ns", "utc_usec", "unix_s") if c in cols), None)
        acol = next((c for c in ("alt_msl", "alt") if c in cols), None)
        if tcol is None or acol is None or not {"lat", "lon"} <= cols:
            raise SkyfixError(f"{path}: a GPS track needs columns t_ns|utc_usec|unix_s, lat, "
                              "lon, alt_msl|alt")
        scale = {"t_ns": 1.0, "utc_usec": 1e3, "unix_s": 1e9}[tcol]
        for row_no, r in enumerate(reader, start=2):
            try:
                row = (float(r[tcol]) * scale, float(r["lat"]), float(r["lon"]), float(r[acol]))
            except (TypeError, ValueError):
                row = (np.nan,)
            if not np.isfinite(row).all():
                raise SkyfixError(f"{path}:{row_no}: not a number in {tcol}/lat/lon/alt")
            rows.append(row)
    return rows


# --- Image EXIF + DJI XMP --------------------------------------------------------------

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DJI_NS = "{http://www.dji.com/drone-dji/1.0/}"
_XMP_KEYS = ("RelativeAltitude", "AbsoluteAltitude", "GimbalRollDegree", "GimbalYawDegree",
             "GimbalPitchDegree", "FlightRollDegree", "FlightYawDegree", "FlightPitchDegree")


@dataclass(frozen=True)
class ImageMeta:
    """What a photo says about itself. Angles in degrees (DJI XMP), NaN when absent."""

    width: int
    height: int
    time_utc: datetime | None  # DateTimeOriginal + SubSec (+ OffsetTime; UTC if none)
    lat_deg: float
    lon_deg: float
    alt_m: float
    focal_mm: float
    focal_35mm: float
    xmp: dict[str, float]


def read_image_meta(path: Path) -> ImageMeta:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            size = im.size
            xmp_raw = im.info.get("xmp", b"")
    except (OSError, UnidentifiedImageError) as exc:
        raise SkyfixError(f"{path}: not a readable image ({exc})") from None
    ex = exif.get_ifd(_EXIF_IFD)
    gps = exif.get_ifd(_GPS_IFD)
    xmp = _dji_xmp(xmp_raw)
    lat, lon, alt = _exif_gps(gps)
    return ImageMeta(size[0], size[1], _exif_time(ex), lat, lon, alt,
                     float(ex.get(37386, np.nan) or np.nan),
                     float(ex.get(41989, np.nan) or np.nan), xmp)


def _dji_xmp(packet: bytes | str) -> dict[str, float]:
    """The DJI drone-dji values of an XMP packet (attributes or elements of the RDF), read
    with a hardened XML parser; a packet that is not XML gives none."""
    if not packet:
        return {}
    try:
        root = DefusedET.fromstring(packet)
    except (DefusedET.ParseError, DefusedXmlException, ValueError):
        return {}
    found: dict[str, str] = {}
    for el in root.iter():
        found.update({k[len(_DJI_NS):]: v for k, v in el.attrib.items() if k.startswith(_DJI_NS)})
        if isinstance(el.tag, str) and el.tag.startswith(_DJI_NS) and el.text:
            found[el.tag[len(_DJI_NS):]] = el.text
    xmp = {}
    for key in _XMP_KEYS:
        try:
            value = float(found.get(key, "").strip())
        except ValueError:
            continue
        if np.isfinite(value):
            xmp[key] = value
    return xmp


def _exif_time(ex: dict) -> datetime | None:
    stamp = ex.get(36867)
    if not isinstance(stamp, str):
        return None
    try:
        t = datetime.strptime(stamp.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    sub = str(ex.get(37521, "")).strip("\x00 ")
    if sub.isdigit():
        t += timedelta(seconds=float("0." + sub))
    tz = timezone.utc
    off = re.fullmatch(r"([+-])(\d\d):(\d\d)", str(ex.get(36881, "")).strip("\x00 "))
    if off:
        sign = 1 if off.group(1) == "+" else -1
        tz = timezone(sign * timedelta(hours=int(off.group(2)), minutes=int(off.group(3))))
    return t.replace(tzinfo=tz)


def _exif_gps(gps: dict) -> tuple[float, float, float]:
    """(lat, lon, alt) of the EXIF GPS block; NaN when absent or zero (no receiver)."""
    try:
        lat = sum(float(v) / 60**k for k, v in enumerate(gps[2])) * (-1 if gps[1] == "S" else 1)
        lon = sum(float(v) / 60**k for k, v in enumerate(gps[4])) * (-1 if gps[3] == "W" else 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return np.nan, np.nan, np.nan
    if abs(lat) < 1e-3 and abs(lon) < 1e-3:  # cameras without a receiver write zeros
        return np.nan, np.nan, np.nan
    alt = float(gps.get(6, np.nan))
    if gps.get(5) in (1, b"\x01"):
        alt = -alt
    return lat, lon, alt


def _gimbal_as_body(roll_deg: float, pitch_deg: float, yaw_deg: float) -> tuple[float, ...]:
    """(roll, pitch, yaw) rad of a body carrying the standard nadir camera mount that
    points the camera as a gimbal at these angles does (gimbal pitch -90 = nadir).

    The gimbal's camera frame (x optical axis) is Rz(yaw) Ry(pitch) Rx(roll); pitching
    it by -90 deg onto the nadir mount turns its roll into a turn about the optical axis:
    R_ned_body = Rz(yaw) Ry(pitch + 90) Rz(roll).
    """
    g = np.radians([roll_deg, pitch_deg, yaw_deg])
    cr, sr = np.cos(g[0]), np.sin(g[0])
    R = R_ned_body(0.0, g[1] + np.pi / 2, g[2]) @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return euler_from_R_ned_body(R)


def telemetry_from_images(metas: list[ImageMeta], t_ns: np.ndarray) -> TelemetryLog | None:
    """Telemetry from per-image EXIF GPS + DJI XMP at the frames' times `t_ns` [N] int64,
    or None when the images carry no position. The attitude is the gimbal's (DJI
    Gimbal*Degree), else the airframe's with a nadir camera (Flight*Degree), else level
    along the course over ground. Height above ground is RelativeAltitude (above
    take-off), else the GPS altitude above the lowest photo's."""
    lat = np.array([m.lat_deg for m in metas])
    if not np.isfinite(lat).all():
        return None
    lon = np.array([m.lon_deg for m in metas])
    alt = np.array([m.xmp.get("AbsoluteAltitude", m.alt_m) for m in metas], np.float64)
    if not np.isfinite(alt).all():
        alt = np.zeros(len(metas))
    rel = np.array([m.xmp.get("RelativeAltitude", np.nan) for m in metas])
    if not np.isfinite(rel).all():
        rel = alt - alt.min()
    t = np.asarray(t_ns, np.float64)
    att = None
    for prefix, as_body in (("Gimbal", _gimbal_as_body), ("Flight", None)):
        keys = [f"{prefix}{a}Degree" for a in ("Roll", "Pitch", "Yaw")]
        if all(k in m.xmp for m in metas for k in keys):
            rpy = np.array([[m.xmp[k] for k in keys] for m in metas])
            rows = ([as_body(*r) for r in rpy] if as_body else np.radians(rpy))
            att = np.column_stack([t, np.asarray(rows)])
            break
    return _track_log(t, lat, lon, alt, rel, att, len(metas))
