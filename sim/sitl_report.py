"""What a SITL flight recorded, and the figures judged from it.

`FlightRecord` listens to the ground-station link (truth and autopilot state) and to
what the daemon sends (GPS_INPUT), keeping time-stamped arrays (arrival Unix ns):

    truth    SIM_STATE            t, lat, lon, alt                       the simulator's truth
             (PX4: HIL_STATE_QUATERNION)
    ekf      GLOBAL_POSITION_INT  t, lat, lon, alt, relative_alt        the autopilot's EKF
    status   EKF_STATUS_REPORT    t, flags  (PX4: ESTIMATOR_STATUS, the same flag bits)
    gps1/2   GPS_RAW_INT/GPS2_RAW t, fix_type, satellites
    sent     GPS_INPUT (ours)     t, lat, lon, fix_type, horiz_accuracy
             (PX4: GLOBAL_POSITION_SENSOR, fix_type 3 unless flagged unhealthy, eph)
    mode     HEARTBEAT            t, custom_mode, armed

`figures` turns them into report.json's numbers; errors are horizontal, in metres of
the map grid (truth interpolated to each sample's arrival time).
"""

from __future__ import annotations

import csv
import gc
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.warp import transform as crs_transform

from skyfix.runtime.core.geo import WGS84
from skyfix.sim.camera import sim_state_pose

# row width of each kind (module docstring), plus the daemon's memory (rss: t, MB) and
# its output thread's run-queue wait (runq: t, ms per s)
_WIDTH = {"truth": 4, "ekf": 5, "status": 2, "gps1": 3, "gps2": 3, "sent": 5, "mode": 3,
          "rss": 2, "runq": 2}
CAMERA_FLOOR_M = 20.0  # below about this height above home the camera gets no fix
GPS_INPUT_MAX_INTERVAL_MS = 215.0  # ArduPilot's GPS_INPUT health rule (average below this)
FIX_3D = 3


class FlightRecord:
    """Collects the arrays of the module doc; `on_vehicle` and `on_sent` are listeners.
    What skyfix sent is also written to `sent_tlog` as it goes."""

    def __init__(self, sent_tlog: Path) -> None:
        # Rows go to anonymous files as float64, not to lists in memory: the record shares
        # the daemon's process, and 30 minutes of Python tuples (about 20 MB) would be
        # counted as the daemon's memory growth.
        self._rows = {k: tempfile.TemporaryFile() for k in _WIDTH}  # noqa: SIM115
        self._texts: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._sent_file = open(sent_tlog, "wb")  # noqa: SIM115 (closed in close)

    def _add(self, kind: str, row: tuple[float, ...]) -> None:
        data = struct.pack(f"<{_WIDTH[kind]}d", *row)
        with self._lock:
            self._rows[kind].write(data)

    def on_vehicle(self, msg, t_ns: int) -> None:
        kind = msg.get_type()
        pose = sim_state_pose(msg, t_ns)
        if pose is not None:
            self._add("truth", (t_ns, pose.lat_deg, pose.lon_deg, pose.alt_amsl_m))
        elif kind == "GLOBAL_POSITION_INT" and (msg.lat or msg.lon):  # 0, 0: no origin yet
            self._add("ekf", (t_ns, msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3,
                              msg.relative_alt * 1e-3))
        elif kind in ("EKF_STATUS_REPORT", "ESTIMATOR_STATUS"):
            self._add("status", (t_ns, msg.flags))
        elif kind in ("GPS_RAW_INT", "GPS2_RAW"):
            self._add("gps1" if kind == "GPS_RAW_INT" else "gps2",
                      (t_ns, msg.fix_type, msg.satellites_visible))
        elif kind == "HEARTBEAT" and msg.get_srcComponent() == 1:
            self._add("mode", (t_ns, msg.custom_mode,
                               bool(msg.base_mode & mav2.MAV_MODE_FLAG_SAFETY_ARMED)))
            self._add("rss", (t_ns, _rss_mb()))  # this process's memory, once a second
            self._add("runq", (t_ns, _runqueue_wait_ms("skyfix-output")))

    def on_sent(self, msg, t_ns: int) -> None:
        with self._lock:
            self._sent_file.write(struct.pack(">Q", t_ns // 1000) + msg.get_msgbuf())
        if msg.get_type() == "GPS_INPUT":
            self._add("sent", (t_ns, msg.lat * 1e-7, msg.lon * 1e-7, msg.fix_type,
                               msg.horiz_accuracy))
        elif msg.get_type() == "GLOBAL_POSITION_SENSOR":
            fix = 0 if msg.flags & mav2.GLOBAL_POSITION_UNHEALTHY else FIX_3D
            self._add("sent", (t_ns, msg.lat * 1e-7, msg.lon * 1e-7, fix, msg.eph))
        elif msg.get_type() == "STATUSTEXT":
            with self._lock:
                self._texts.append((t_ns, msg.text))

    def sent_texts(self) -> list[tuple[int, str]]:
        """(Unix ns, text) of every STATUSTEXT skyfix sent."""
        with self._lock:
            return list(self._texts)

    def array(self, kind: str) -> np.ndarray:
        """[N, width] float64 rows of `kind` so far."""
        with self._lock:
            f = self._rows[kind]
            f.flush()
            f.seek(0)
            data = f.read()
            f.seek(0, os.SEEK_END)
        return np.frombuffer(data, "<f8").reshape(-1, _WIDTH[kind]).copy()

    def write_truth(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_unix_ns", "lat_deg", "lon_deg", "alt_amsl_m"])
            for t, lat, lon, alt in self.array("truth"):
                w.writerow([int(t), f"{lat:.8f}", f"{lon:.8f}", f"{alt:.3f}"])

    def close(self) -> None:
        """Closes the sent .tlog; the rows stay readable."""
        with self._lock:
            self._sent_file.close()


class GcPauses:
    """Times Python's garbage collector stops every thread (gc.callbacks), per generation:
    a full collection over a large heap can hold up the daemon's output thread. A context
    manager; `figures()` -> {generation: {"n", "max_ms", "total_ms"}}."""

    def __init__(self) -> None:
        self._start = 0.0
        self._ms: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self._ms[info["generation"]].append((time.perf_counter() - self._start) * 1e3)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def figures(self) -> dict[str, dict[str, float | int]]:
        return {f"gen{g}": {"n": len(v), "max_ms": round(max(v, default=0.0), 1),
                            "total_ms": round(sum(v), 1)} for g, v in self._ms.items()}


def _rss_mb() -> float:
    """Resident memory of this process (Linux /proc), MiB; NaN where unavailable."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _runqueue_wait_ms(thread_name: str) -> float:
    """Total time the named thread of this process has waited for a CPU while runnable
    (Linux /proc/self/task/TID/schedstat, second field), ms; NaN where unavailable."""
    for t in threading.enumerate():
        if t.name == thread_name and t.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{t.native_id}/schedstat").read_text().split()
                return int(fields[1]) * 1e-6
            except (OSError, ValueError, IndexError):
                return float("nan")
    return float("nan")


def runqueue_figures(rec: FlightRecord) -> dict:
    """How long the daemon's output thread waited for a CPU while runnable, per second of
    flight (sampled at the vehicle's 1 Hz HEARTBEAT): the OS's share of its late sends."""
    rq = rec.array("runq")
    rq = rq[np.isfinite(rq[:, 1])] if rq.size else rq
    if rq.shape[0] < 2:
        return {}
    per_s = np.diff(rq[:, 1]) / np.maximum(np.diff(rq[:, 0]) * 1e-9, 1e-3)
    return {"output_thread_runqueue_ms_per_s_p50": round(float(np.median(per_s)), 1),
            "output_thread_runqueue_ms_per_s_max": round(float(per_s.max()), 1)}


def memory_figures(rec: FlightRecord, after_s: float = 300.0) -> dict:
    """Resident memory at the start, `after_s` into the recording and at the end, and the
    growth after `after_s` in percent (the soak criterion)."""
    rss = rec.array("rss")
    if rss.shape[0] < 2:
        return {}
    t = (rss[:, 0] - rss[0, 0]) * 1e-9
    base = rss[np.searchsorted(t, after_s), 1] if t[-1] > after_s else float("nan")
    return {"rss_start_mb": round(float(rss[0, 1]), 1), "rss_end_mb": round(float(rss[-1, 1]), 1),
            f"rss_at_{after_s:g}s_mb": None if np.isnan(base) else round(float(base), 1),
            "rss_growth_after_pct": None if np.isnan(base)
            else round(float((rss[-1, 1] - base) / base * 100), 2)}


@dataclass(frozen=True)
class Timeline:
    """Unix ns of the flight's events (None when it did not happen)."""

    mission_start_ns: int | None
    gnss_off_ns: int | None
    landed_ns: int | None  # disarmed after the mission
    blank_windows_ns: tuple[tuple[int, int], ...]


def _in_windows(t: np.ndarray, windows, pad_after_ns: int = 0) -> np.ndarray:
    inside = np.zeros(t.shape, bool)
    for a, b in windows:
        inside |= (t >= a) & (t < b + pad_after_ns)
    return inside


def _stats(values: np.ndarray) -> dict[str, float | int | None]:
    if values.size == 0:
        return {"n": 0, "p50_m": None, "p95_m": None, "max_m": None}
    return {"n": int(values.size), "p50_m": round(float(np.percentile(values, 50)), 3),
            "p95_m": round(float(np.percentile(values, 95)), 3),
            "max_m": round(float(values.max()), 3)}


class Truth:
    """SIM_STATE truth in map-grid metres, interpolated in time."""

    def __init__(self, truth: np.ndarray, crs) -> None:
        self.crs = crs
        self.t = truth[:, 0]
        self.en = self.to_en(truth[:, 1], truth[:, 2])

    def to_en(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """[N, 2] east/north map metres of WGS84 lat/lon [N]."""
        if len(lat) == 0:
            return np.zeros((0, 2))
        x, y = crs_transform(WGS84, self.crs, list(lon), list(lat))
        return np.column_stack([x, y])

    def at(self, t: np.ndarray) -> np.ndarray:
        return np.column_stack([np.interp(t, self.t, self.en[:, 0]),
                                np.interp(t, self.t, self.en[:, 1])])

    def covers(self, t: np.ndarray) -> np.ndarray:
        return (t >= self.t[0]) & (t <= self.t[-1])


def horizontal_errors(truth: Truth, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times [N], horizontal error m [N]) of rows (t, lat, lon, ...) against the truth."""
    samples = samples[truth.covers(samples[:, 0])] if samples.size else samples
    if samples.size == 0:
        return np.zeros(0), np.zeros(0)
    en = truth.to_en(samples[:, 1], samples[:, 2])
    return samples[:, 0], np.hypot(*(en - truth.at(samples[:, 0])).T)


def figures(rec: FlightRecord, tl: Timeline, crs, home_en: np.ndarray,
            lock_budget_s: float, camera_period_s: float) -> dict:
    """report.json's figures (see the module doc and the README's SITL section)."""
    truth = Truth(rec.array("truth"), crs)
    ekf, sent, status = rec.array("ekf"), rec.array("sent"), rec.array("status")
    gps1, gps2 = rec.array("gps1"), rec.array("gps2")
    out: dict = {}
    t0, t_off, t_end = tl.mission_start_ns, tl.gnss_off_ns, tl.landed_ns
    if t0 is not None and t_end is not None:
        out["mission_duration_s"] = round((t_end - t0) * 1e-9, 1)
    # EKF vs truth after GNSS loss, while the camera sees (blank windows and the filter's
    # recovery after them, one lock budget, left out) and in the blank windows
    t_ekf, e_ekf = horizontal_errors(truth, ekf)
    airborne = np.interp(t_ekf, ekf[:, 0], ekf[:, 4]) > 5.0 if ekf.size else t_ekf > 0
    after = (t_ekf >= (t_off or np.inf)) & (t_ekf <= (t_end or np.inf)) & airborne
    blank = _in_windows(t_ekf, tl.blank_windows_ns, int(lock_budget_s * 1e9))
    out["ekf_error_while_seeing"] = _stats(e_ekf[after & ~blank])
    high = np.interp(t_ekf, ekf[:, 0], ekf[:, 4]) > CAMERA_FLOOR_M if ekf.size else after
    out["ekf_error_while_seeing_above_20m"] = _stats(e_ekf[after & ~blank & high])
    out["ekf_error_camera_blank"] = _stats(e_ekf[after & blank])
    out["ekf_error_before_gnss_loss"] = _stats(e_ekf[(t_ekf < (t_off or np.inf)) & airborne])
    # when the EKF had an absolute position with skyfix as the only GNSS-like source
    # (skyfix's GPS: GPS2_RAW on ArduPilot; PX4 reports none, so the fixes skyfix sent)
    gps2 = sent[:, [0, 3]] if not gps2.size and sent.size else gps2
    if t_off is not None and status.size and gps1.size and gps2.size:
        abs_ok = (status[:, 1].astype(int) & mav2.EKF_POS_HORIZ_ABS) != 0
        const = (status[:, 1].astype(int) & mav2.EKF_CONST_POS_MODE) != 0
        g1 = np.interp(status[:, 0], gps1[:, 0], gps1[:, 1]) < FIX_3D
        g2 = np.interp(status[:, 0], gps2[:, 0], gps2[:, 1]) >= FIX_3D
        ok = abs_ok & ~const & g1 & g2 & (status[:, 0] >= t_off)
        first = status[ok, 0]
        out["ekf_abs_from_skyfix_after_s"] = (round((first[0] - t_off) * 1e-9, 2)
                                              if first.size else None)
        span = (status[:, 0] >= t_off) & (status[:, 0] <= (t_end or np.inf))
        out["ekf_abs_share_after_gnss_loss"] = (round(float(np.mean(abs_ok[span] & ~const[span])),
                                                      3) if span.any() else None)
    # landing point vs the planned one (home)
    if t_end is not None and truth.t.size:
        land = truth.at(np.array([t_end]))[0]
        out["landing_error_m"] = round(float(np.hypot(*(land - home_en))), 2)
    out.update(_sent_figures(truth, sent, tl, lock_budget_s, camera_period_s))
    return out


def _sent_figures(truth: Truth, sent: np.ndarray, tl: Timeline, lock_budget_s: float,
                  camera_period_s: float) -> dict:
    out: dict = {"gps_input_sent": int(sent.shape[0])}
    if sent.shape[0] < 2:
        return out
    gaps_ms = np.diff(sent[:, 0]) * 1e-6
    out["gps_input_intervals_over_215ms"] = int((gaps_ms > GPS_INPUT_MAX_INTERVAL_MS).sum())
    out["gps_input_max_interval_ms"] = round(float(gaps_ms.max()), 1)
    out["gps_input_mean_interval_ms"] = round(float(gaps_ms.mean()), 1)
    claimed = sent[sent[:, 3] >= FIX_3D]
    t_c, e_c = horizontal_errors(truth, claimed)
    sigma = claimed[truth.covers(claimed[:, 0]), 4] if claimed.size else np.zeros(0)
    after = t_c >= (tl.gnss_off_ns or t_c.max(initial=0) + 1)
    out["claimed_fix_error_after_gnss_loss"] = _stats(e_c[after])
    over = e_c > 3.0 * np.maximum(sigma, 1e-3)
    out["claimed_fix_over_3_sigma"] = int(over.sum())
    # each of them (the first 10): seconds after arming, error, claimed sigma
    t_ref = tl.mission_start_ns or (t_c.min() if t_c.size else 0)
    out["claimed_fix_over_3_sigma_at"] = [
        {"t_s": round((t_c[i] - t_ref) * 1e-9, 2), "error_m": round(float(e_c[i]), 2),
         "sigma_m": round(float(sigma[i]), 2)} for i in np.flatnonzero(over)[:10]]
    out["claimed_fix_share_after_gnss_loss"] = (
        round(float(np.mean(sent[sent[:, 0] >= tl.gnss_off_ns, 3] >= FIX_3D)), 3)
        if tl.gnss_off_ns is not None and (sent[:, 0] >= tl.gnss_off_ns).any() else None)
    # blank camera: the claimed fix must drop within the lock budget (plus one frame
    # period: the last frame before the blank may be that old) and stay dropped
    allowed_ns = int((lock_budget_s + camera_period_s) * 1e9)
    blanks = []
    for a, b in tl.blank_windows_ns:
        inside = sent[(sent[:, 0] >= a) & (sent[:, 0] < b)]
        dropped = inside[inside[:, 3] < FIX_3D, 0]
        late = inside[(inside[:, 0] > a + allowed_ns) & (inside[:, 3] >= FIX_3D)]
        blanks.append({"duration_s": round((b - a) * 1e-9, 1),
                       "fix_dropped_after_s": (round((dropped[0] - a) * 1e-9, 2)
                                               if dropped.size else None),
                       "allowed_s": round(allowed_ns * 1e-9, 2),
                       "claimed_fixes_beyond_budget": int(late.shape[0])})
    out["camera_blank"] = blanks
    return out
