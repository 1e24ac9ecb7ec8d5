"""MAVLink telemetry input: attitude, heights, velocity and the aircraft's own GNSS.

`TelemetryLog` holds a whole recorded log (a .tlog) as arrays and answers "what was
the state at time t" by interpolation; `TelemetryBuffer` is its live twin for the
daemon, fed pymavlink messages as they arrive and keeping the last few seconds. Both
turn messages into rows with `parse_message` and answer with the same functions.
`open_link` opens the live MAVLink connection (serial, UDP or TCP) pinned to MAVLink 2.

Time stamps: each row is stamped by an `AutopilotClock` (runtime/io/clock.py): at the
autopilot time of the message (its time_boot_ms mapped to the clock of the arrival stamps)
once that mapping is locked, else at its arrival. The log reader runs the same clock over
the .tlog's receive stamps in file order, so a replay stamps each row exactly as the
daemon did when it received it (telemetry.clock: arrival keeps the receive stamps).

Height above ground comes from GLOBAL_POSITION_INT's
relative_alt (height above home) plus the home ground height minus the ground height
under the aircraft when a terrain model is given, so on flat terrain it is
relative_alt itself.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymavlink import mavutil

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.limits import plausible_time_ns
from skyfix.runtime.core.types import GnssSample, Telemetry
from skyfix.runtime.io.clock import AutopilotClock
from skyfix.runtime.io.link import AutopilotUDP, check_link_spec
from skyfix.runtime.io.mavlink import UERE_M, pin_mavlink2, setup_signing

_MAX_GAP_NS = 2_000_000_000  # no attitude within 2 s of a frame -> no telemetry for it
_MAX_RANGE_AGE_NS = 300_000_000  # a rangefinder reading older than this is not used
_REORDER_NS = 500_000_000  # live rows stamped earlier than the newest by up to this are
# put in order (autopilot stamps undo the link's reordering); older ones: a clock step
_DOWNWARD = 25  # MAV_SENSOR_ROTATION_PITCH_270: a DISTANCE_SENSOR looking down
WIDTHS = {"att": 4, "pos": 8, "gnss": 7, "rng": 2, "imu": 8}  # row widths of the arrays
IMU_MESSAGES = ("HIGHRES_IMU", "SCALED_IMU", "RAW_IMU")  # the source column of an imu row
_MG_TO_MPS2 = 9.80665e-3  # SCALED_IMU / ArduPilot RAW_IMU accelerations are in milli-g
_HIGHRES_ACC_GYRO = 0x3F  # HIGHRES_IMU fields_updated bits of x/y/z acc and x/y/z gyro


@dataclass(frozen=True)
class TelemetryLog:
    """Time-sorted telemetry arrays. Times are Unix ns.

    att: [N, 4] (t_ns, roll, pitch, yaw) rad; pos: [M, 8] (t_ns, lat, lon, alt_amsl_m,
    rel_alt_m, vn, ve, vd); gnss: [G, 7] (t_ns, lat, lon, alt, fix, sats, eph_m);
    rng: [R, 2] (t_ns, range_m) of a downward rangefinder, along the body's down axis;
    imu: [I, 8] (t_ns, ax, ay, az m/s^2 specific force, gx, gy, gz rad/s, body FRD, source:
    index into IMU_MESSAGES), see `imu_rows`. `attitude_measured`: False when `att` is a
    stand-in (a level camera along the course, for a source without attitude).
    """

    att: np.ndarray
    pos: np.ndarray
    gnss: np.ndarray
    messages: int
    bad_bytes: int
    rng: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    imu: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))
    attitude_measured: bool = True

    @classmethod
    def from_tlog(cls, path: Path, clock: AutopilotClock | None = None) -> TelemetryLog:
        """The log at `path`, rows stamped by `clock` (default: a fresh AutopilotClock)
        fed the receive stamps in file order (see the module doc)."""
        path = Path(path)
        clock = AutopilotClock() if clock is None else clock
        if not path.is_file():
            raise SkyfixError(f"telemetry log not found: {path}")
        try:  # the memory-mapped reader indexes the whole file here
            conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega",
                                              robust_parsing=True)
        except Exception as exc:  # pymavlink raises bare errors on broken records
            raise SkyfixError(f"{path}: unreadable MAVLink log ({exc})") from None
        rows: dict[str, list] = {k: [] for k in WIDTHS}
        n = bad_stamps = 0
        wanted = ["ATTITUDE", "GLOBAL_POSITION_INT", "GPS_RAW_INT", "DISTANCE_SENSOR",
                  "RANGEFINDER", *IMU_MESSAGES, "SYSTEM_TIME", "TIMESYNC"]
        while True:
            try:
                msg = conn.recv_match(type=wanted)
            except Exception as exc:  # pymavlink raises bare errors on broken records
                raise SkyfixError(f"{path}: unreadable MAVLink log ({exc})") from None
            if msg is None:
                break
            n += 1
            t_ns = msg._timestamp * 1e9
            if not plausible_time_ns(t_ns):  # a broken record stamp (year 586524, say)
                bad_stamps += 1
                continue
            parsed = parse_message(msg, clock.stamp(msg, int(round(t_ns))))
            if parsed is not None:
                rows[parsed[0]].append(parsed[1])
        if not rows["att"]:
            raise SkyfixError(f"{path}: no ATTITUDE messages, cannot rectify frames")
        if not rows["pos"]:
            raise SkyfixError(
                f"{path}: no GLOBAL_POSITION_INT messages, height above ground unknown")

        a = {k: np.array(v, np.float64).reshape(-1, WIDTHS[k]) for k, v in rows.items()}
        a = {k: v[np.argsort(v[:, 0], kind="stable")] for k, v in a.items()}
        bad = int(getattr(conn.mav, "total_receive_errors", 0)) + bad_stamps
        return cls(a["att"], a["pos"], a["gnss"], n, bad, a["rng"], imu_rows(a["imu"]))

    def at(self, t_ns: int) -> Telemetry | None:
        """Interpolated state at `t_ns`, or None when the log does not cover that time."""
        return state_at(self.att, self.pos, t_ns, self.rng, self.attitude_measured)

    def gnss_at(self, t_ns: int, max_age_ns: int = 1_000_000_000) -> GnssSample | None:
        """The latest GNSS sample at or before `t_ns`, if not older than `max_age_ns`."""
        return gnss_at(self.gnss, t_ns, max_age_ns)

    def imu_between(self, t0_ns: int, t1_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(imu [K, 8] rows with t0_ns < t <= t1_ns, their attitude [K, 3] rad), as
        `TelemetryBuffer.imu_after` answers live."""
        imu = self.imu[(self.imu[:, 0] > t0_ns) & (self.imu[:, 0] <= t1_ns)]
        return imu, attitude_at(self.att, imu[:, 0])


def parse_message(msg, t_ns: int) -> tuple[str, tuple] | None:
    """("att" | "pos" | "gnss" | "rng", row) of one pymavlink message received at `t_ns`,
    in the column layout of `TelemetryLog`; None for other messages, GNSS without a fix,
    ranges out of the sensor's span or not looking down, and attitudes that are not
    finite (a NaN would spread to every interpolated neighbour)."""
    kind = msg.get_type()
    if kind == "ATTITUDE":
        row = (t_ns, msg.roll, msg.pitch, msg.yaw)
        return ("att", row) if np.isfinite(row[1:]).all() else None
    if kind == "GLOBAL_POSITION_INT":
        return "pos", (t_ns, msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3,
                       msg.relative_alt * 1e-3, msg.vx * 1e-2, msg.vy * 1e-2, msg.vz * 1e-2)
    if kind == "GPS_RAW_INT" and msg.fix_type >= 2:
        # 1-sigma horizontal error: h_acc (mm) when the receiver reports it, else HDOP x UERE
        h_acc = getattr(msg, "h_acc", 0)
        eph = h_acc * 1e-3 if h_acc else (msg.eph * 1e-2 * UERE_M if msg.eph != 65535 else np.nan)
        return "gnss", (t_ns, msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3, msg.fix_type,
                        msg.satellites_visible, eph)
    if kind == "DISTANCE_SENSOR" and msg.orientation == _DOWNWARD \
            and msg.min_distance <= msg.current_distance <= msg.max_distance:
        return "rng", (t_ns, msg.current_distance * 1e-2)
    if kind == "RANGEFINDER" and np.isfinite(msg.distance) and msg.distance > 0:
        return "rng", (t_ns, float(msg.distance))
    if kind in IMU_MESSAGES:
        return _imu_row(msg, kind, t_ns)
    return None


def _imu_row(msg, kind: str, t_ns: int) -> tuple[str, tuple] | None:
    """An "imu" row in SI units. HIGHRES_IMU is in m/s^2 and rad/s (only when its acc and
    gyro fields are fresh); SCALED_IMU in milli-g and mrad/s; RAW_IMU as ArduPilot sends it
    (the same units as SCALED_IMU: its AP_InertialSensor values scaled like them; other
    autopilots' RAW_IMU is in raw sensor counts, which no row can be made of)."""
    acc = np.array([msg.xacc, msg.yacc, msg.zacc], np.float64)
    gyro = np.array([msg.xgyro, msg.ygyro, msg.zgyro], np.float64)
    if kind == "HIGHRES_IMU":
        if msg.fields_updated & _HIGHRES_ACC_GYRO != _HIGHRES_ACC_GYRO:
            return None
    else:
        acc, gyro = acc * _MG_TO_MPS2, gyro * 1e-3
    row = (t_ns, *acc.tolist(), *gyro.tolist(), float(IMU_MESSAGES.index(kind)))
    return ("imu", row) if np.isfinite(row[1:7]).all() else None


def imu_rows(imu: np.ndarray) -> np.ndarray:
    """The rows of `imu` [I, 8] from its best source alone (HIGHRES_IMU, else SCALED_IMU,
    else RAW_IMU): an autopilot streaming two of them sends the same samples twice."""
    if not len(imu):
        return imu.reshape(0, 8)
    return imu[imu[:, 7] == imu[:, 7].min()]


def attitude_at(att: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    """[K, 3] roll, pitch, yaw rad at times `t_ns` [K], interpolated in `att` [N, 4] (the
    yaw unwrapped first); rows outside the attitude's span (or farther than 2 s from a
    sample) are NaN."""
    t_ns = np.asarray(t_ns, np.float64)
    out = np.full((len(t_ns), 3), np.nan)
    if not len(att):
        return out
    t = att[:, 0]
    ok = (t_ns >= t[0] - _MAX_GAP_NS) & (t_ns <= t[-1] + _MAX_GAP_NS)
    yaw = np.unwrap(att[:, 3])
    for k, col in enumerate((att[:, 1], att[:, 2], yaw)):
        out[ok, k] = np.interp(t_ns[ok], t, col)
    out[:, 2] = (out[:, 2] + np.pi) % (2 * np.pi) - np.pi
    return out


def state_at(att: np.ndarray, pos: np.ndarray, t_ns: int, rng: np.ndarray | None = None,
             attitude_measured: bool = True) -> Telemetry | None:
    """Telemetry at `t_ns` interpolated from `att` [N, 4], `pos` [M, 8] and `rng` [R, 2]
    (TelemetryLog layout), or None when they do not cover that time."""
    if not len(att) or not len(pos):
        return None
    t = att[:, 0]
    if t_ns < t[0] - _MAX_GAP_NS or t_ns > t[-1] + _MAX_GAP_NS:
        return None
    i = int(np.searchsorted(t, t_ns))
    near = min(abs(t[min(i, len(t) - 1)] - t_ns), abs(t[max(i - 1, 0)] - t_ns))
    if near > _MAX_GAP_NS:
        return None
    roll = np.interp(t_ns, t, att[:, 1])
    pitch = np.interp(t_ns, t, att[:, 2])
    yaw = np.interp(t_ns, t, np.unwrap(att[:, 3]))
    alt, rel, vn, ve, vd = (float(np.interp(t_ns, pos[:, 0], pos[:, k])) for k in range(3, 8))
    range_m = None
    if rng is not None and len(rng):
        j = int(np.searchsorted(rng[:, 0], t_ns))
        near = [k for k in (j - 1, j) if 0 <= k < len(rng)]
        if min(abs(rng[k, 0] - t_ns) for k in near) <= _MAX_RANGE_AGE_NS:
            range_m = float(np.interp(t_ns, rng[:, 0], rng[:, 1]))
    return Telemetry(
        t_ns=t_ns, roll_rad=float(roll), pitch_rad=float(pitch),
        yaw_rad=float((yaw + np.pi) % (2 * np.pi) - np.pi),
        agl_m=rel, alt_amsl_m=alt, vel_ned_mps=(vn, ve, vd), range_m=range_m,
        attitude_measured=attitude_measured,
    )


def gnss_at(gnss: np.ndarray, t_ns: int, max_age_ns: int) -> GnssSample | None:
    """The latest row of `gnss` [G, 7] at or before `t_ns`, if not older than `max_age_ns`."""
    if not len(gnss):
        return None
    i = int(np.searchsorted(gnss[:, 0], t_ns, side="right")) - 1
    if i < 0 or t_ns - gnss[i, 0] > max_age_ns:
        return None
    return gnss_sample(gnss[i])


def gnss_sample(row: np.ndarray) -> GnssSample:
    """The GnssSample of one [7] row of a telemetry GNSS array."""
    return GnssSample(int(row[0]), float(row[1]), float(row[2]), float(row[3]), int(row[4]),
                      int(row[5]), float(row[6]))


class TelemetryBuffer:
    """Live telemetry: `add` each received pymavlink message with its arrival time (Unix
    ns); rows are stamped by `clock` (see the module doc); `at` / `gnss_at` answer like
    `TelemetryLog` from the last `window_s` seconds. Thread-safe: the MAVLink receiver
    (the only caller of `add`, and so of the clock) adds while the vision thread asks."""

    def __init__(self, window_s: float = 10.0, clock: AutopilotClock | None = None) -> None:
        self.window_ns = int(window_s * 1e9)
        self.clock = AutopilotClock() if clock is None else clock
        self._rows: dict[str, deque] = {k: deque() for k in WIDTHS}
        self._lock = threading.Lock()
        self.messages = 0

    def add(self, msg, t_ns: int) -> None:
        parsed = parse_message(msg, self.clock.stamp(msg, int(t_ns)))
        with self._lock:
            self.messages += 1
            if parsed is None:
                return
            rows, row = self._rows[parsed[0]], parsed[1]
            if rows and row[0] < rows[-1][0]:
                if row[0] < rows[-1][0] - _REORDER_NS:
                    return  # a clock step: keep the arrays sorted
                rows.insert(bisect.bisect_right(rows, row[0], key=lambda r: r[0]), row)
            else:
                rows.append(row)
            while rows and rows[0][0] < t_ns - self.window_ns:
                rows.popleft()

    def _arrays(self, kinds: tuple[str, ...] = ("att", "pos", "gnss", "rng")
                ) -> tuple[np.ndarray, ...]:
        """The rows of `kinds` as arrays (TelemetryLog layout)."""
        with self._lock:
            return tuple(np.array(self._rows[k], np.float64).reshape(-1, WIDTHS[k])
                         for k in kinds)

    def at(self, t_ns: int) -> Telemetry | None:
        att, pos, _, rng = self._arrays()
        return state_at(att, pos, t_ns, rng)

    def gnss_at(self, t_ns: int, max_age_ns: int = 1_000_000_000) -> GnssSample | None:
        return gnss_at(self._arrays()[2], t_ns, max_age_ns)

    def imu_after(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(imu [K, 8] rows newer than `t_ns` from the best source (`imu_rows`), their
        autopilot attitude [K, 3] roll, pitch, yaw rad, NaN where not covered)."""
        att, imu = self._arrays(("att", "imu"))
        imu = imu_rows(imu[imu[:, 0] > t_ns])
        return imu, attitude_at(att, imu[:, 0])


def open_link(spec: str, system_id: int, component_id: int, signing_key: bytes | None = None,
              refuse_unsigned: bool = False, link_id: int = 0, peer: str | None = None):
    """A pymavlink connection for `spec` (`/dev/ttyTHS1,921600`, `udpin:0.0.0.0:14550`,
    `tcp:host:port`, ...) speaking MAVLink 2 (ardupilotmega) as system/component, signing
    what it sends when given a key. A UDP server (`udpin:`) answers only the autopilot
    (system `system_id`) at `peer` ("host:port"), or else at the address of its first
    valid HEARTBEAT: see `AutopilotUDP`."""
    device, baud = device_and_baud(spec)
    server = next((p for p in ("udpin:", "udp:") if device.startswith(p)), None)
    if server is not None:  # (pymavlink's udp: is a server too)
        conn = AutopilotUDP(device[len(server):], system_id, peer, signing_key is not None,
                            source_system=system_id, source_component=component_id)
    else:
        conn = mavutil.mavlink_connection(device, baud=baud, source_system=system_id,
                                          source_component=component_id, autoreconnect=True,
                                          dialect="ardupilotmega", robust_parsing=True)
    pin_mavlink2(conn)  # not the MAVLink 1 module mavutil picks without an env variable
    if signing_key is not None:
        setup_signing(conn, signing_key, refuse_unsigned, link_id)
    return conn


def device_and_baud(spec: str) -> tuple[str, int]:
    """(device, baud) of a link string; `/dev/ttyTHS1,921600` names a serial baud rate."""
    if "," in spec and ":" not in spec.split(",")[0]:
        device, _, rate = spec.partition(",")
        if not rate.strip().isdigit():
            raise SkyfixError(f"serial link {spec!r}: baud rate must be a number")
        return device, int(rate)
    check_link_spec(spec)
    return spec, 115200
