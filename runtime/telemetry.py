"""MAVLink telemetry input: attitude, heights, velocity and the aircraft's own GNSS.

`TelemetryLog` holds a whole recorded log (a .tlog) as arrays and answers "what was
the state at time t" by interpolation; the live daemon feeds the same arrays
message by message. Height above ground comes from GLOBAL_POSITION_INT's
relative_alt (height above home) plus the home ground height minus the ground height
under the aircraft when a terrain model is given, so on flat terrain it is
relative_alt itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymavlink import mavutil

from skyfix.runtime.errors import SkyfixError
from skyfix.runtime.types import GnssSample, Telemetry

_MAX_GAP_NS = 2_000_000_000  # no attitude within 2 s of a frame -> no telemetry for it


@dataclass(frozen=True)
class TelemetryLog:
    """Time-sorted telemetry arrays. Times are Unix ns.

    att: [N, 4] (t_ns, roll, pitch, yaw) rad; pos: [M, 8] (t_ns, lat, lon, alt_amsl_m,
    rel_alt_m, vn, ve, vd); gnss: [G, 7] (t_ns, lat, lon, alt, fix, sats, eph_m).
    """

    att: np.ndarray
    pos: np.ndarray
    gnss: np.ndarray
    messages: int
    bad_bytes: int

    @classmethod
    def from_tlog(cls, path: Path) -> TelemetryLog:
        path = Path(path)
        if not path.is_file():
            raise SkyfixError(f"telemetry log not found: {path}")
        conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega", robust_parsing=True)
        att, pos, gnss = [], [], []
        n = 0
        wanted = ["ATTITUDE", "GLOBAL_POSITION_INT", "GPS_RAW_INT"]
        while True:
            try:
                msg = conn.recv_match(type=wanted)
            except Exception as exc:  # pymavlink raises bare errors on broken records
                raise SkyfixError(f"{path}: unreadable MAVLink log ({exc})") from None
            if msg is None:
                break
            n += 1
            t = int(round(msg._timestamp * 1e9))
            kind = msg.get_type()
            if kind == "ATTITUDE":
                att.append((t, msg.roll, msg.pitch, msg.yaw))
            elif kind == "GLOBAL_POSITION_INT":
                pos.append((t, msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3,
                            msg.relative_alt * 1e-3, msg.vx * 1e-2, msg.vy * 1e-2, msg.vz * 1e-2))
            elif kind == "GPS_RAW_INT" and msg.fix_type >= 2:
                eph = msg.eph * 1e-2 if msg.eph != 65535 else np.nan
                gnss.append((t, msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3, msg.fix_type,
                             msg.satellites_visible, eph))
        if not att:
            raise SkyfixError(f"{path}: no ATTITUDE messages, cannot rectify frames")
        if not pos:
            raise SkyfixError(
                f"{path}: no GLOBAL_POSITION_INT messages, height above ground unknown")

        def arr(rows: list, width: int) -> np.ndarray:
            a = np.array(rows, np.float64).reshape(-1, width)
            return a[np.argsort(a[:, 0], kind="stable")]

        bad = int(getattr(conn.mav, "total_receive_errors", 0))
        return cls(arr(att, 4), arr(pos, 8), arr(gnss, 7), n, bad)

    def at(self, t_ns: int) -> Telemetry | None:
        """Interpolated state at `t_ns`, or None when the log does not cover that time."""
        t = self.att[:, 0]
        if t_ns < t[0] - _MAX_GAP_NS or t_ns > t[-1] + _MAX_GAP_NS:
            return None
        i = int(np.searchsorted(t, t_ns))
        near = min(abs(t[min(i, len(t) - 1)] - t_ns), abs(t[max(i - 1, 0)] - t_ns))
        if near > _MAX_GAP_NS:
            return None
        roll = np.interp(t_ns, t, self.att[:, 1])
        pitch = np.interp(t_ns, t, self.att[:, 2])
        yaw = np.interp(t_ns, t, np.unwrap(self.att[:, 3]))
        p = self.pos
        alt, rel, vn, ve, vd = (float(np.interp(t_ns, p[:, 0], p[:, k])) for k in range(3, 8))
        return Telemetry(
            t_ns=t_ns, roll_rad=float(roll), pitch_rad=float(pitch),
            yaw_rad=float((yaw + np.pi) % (2 * np.pi) - np.pi),
            agl_m=rel, alt_amsl_m=alt, vel_ned_mps=(vn, ve, vd),
        )

    def gnss_at(self, t_ns: int, max_age_ns: int = 1_000_000_000) -> GnssSample | None:
        """The latest GNSS sample at or before `t_ns`, if not older than `max_age_ns`."""
        if not len(self.gnss):
            return None
        i = int(np.searchsorted(self.gnss[:, 0], t_ns, side="right")) - 1
        if i < 0 or t_ns - self.gnss[i, 0] > max_age_ns:
            return None
        g = self.gnss[i]
        return GnssSample(int(g[0]), float(g[1]), float(g[2]), float(g[3]), int(g[4]), int(g[5]),
                          float(g[6]))
