"""`skyfix sim closed-loop`: the daemon against the autopilot emulator, in real time.

    emulator --UDP MAVLink (telemetry, SIMSTATE)--> daemon --GPS_INPUT--> emulator
    SIMSTATE (true pose) -> SimStateCamera renders the frame there -> daemon's frame queue

The camera renders each frame from the ortho at the true pose the autopilot publishes
in SIMSTATE, exactly as the SITL bridge does with a real ArduPilot SITL. GNSS is cut
at `gnss_off_at_s`; at `blank_at_s` the camera goes black, and the runtime must stop
claiming a 3D fix within `output.lock_budget_s`. The figures a user relies on are
written to OUT/closed_loop.json:

    after GNSS loss, while the camera sees: GPS_INPUT rate and largest interval
    (ArduPilot: average < 215 ms), horizontal error of the claimed fixes vs truth;
    after blanking: the delay until fix_type drops.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rasterio.warp import transform as crs_transform

from skyfix.maps.build import build_pack
from skyfix.runtime.camera_source import LatestFrameQueue
from skyfix.runtime.config import Config
from skyfix.runtime.daemon import Daemon, build_navigator
from skyfix.runtime.errors import SkyfixError
from skyfix.runtime.geo import WGS84
from skyfix.runtime.types import Frame
from skyfix.sim.autopilot import AutopilotEmulator, AutopilotSpec
from skyfix.sim.flight import FlightSpec, PoseRenderer

log = logging.getLogger("skyfix.sim")

ARDUPILOT_MAX_INTERVAL_MS = 215.0  # GPS_INPUT health: average interval below this
MAX_ERROR_M = 10.0
MIN_RATE_HZ = 5.0


class SimStateCamera:
    """A simulated camera: `on_message` takes SIMSTATE (true attitude, lat/lon) and
    GLOBAL_POSITION_INT (altitude); a thread renders a frame at the latest true pose
    `fps` times a second into `queue`, stamped with that pose's arrival time, or a
    black frame once `blank_after_ns` (Unix ns) has passed."""

    def __init__(self, renderer: PoseRenderer, queue: LatestFrameQueue, fps: float,
                 blank_after_ns: int | None = None) -> None:
        self.renderer, self.queue, self.fps = renderer, queue, fps
        self.blank_after_ns = blank_after_ns
        self.rendered = 0
        self._pose: tuple[int, float, float, np.ndarray] | None = None
        self._alt_amsl_m: float | None = None
        self._thread: threading.Thread | None = None

    def on_message(self, msg, t_ns: int) -> None:
        kind = msg.get_type()
        if kind == "GLOBAL_POSITION_INT":
            self._alt_amsl_m = msg.alt * 1e-3
        elif kind == "SIMSTATE":
            self._pose = (t_ns, msg.lat * 1e-7, msg.lng * 1e-7,
                          np.array([msg.roll, msg.pitch, msg.yaw]))

    def start(self, stop: threading.Event) -> SimStateCamera:
        self._thread = threading.Thread(target=self._run, args=(stop,), daemon=True,
                                        name="skyfix-simcamera")
        self._thread.start()
        return self

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self, stop: threading.Event) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not stop.wait(max(0.0, next_t - time.monotonic())):
            next_t += period
            pose, alt = self._pose, self._alt_amsl_m
            if pose is None or alt is None:
                continue
            t_ns, lat, lon, rpy = pose
            cam = self.renderer.spec.camera
            if self.blank_after_ns is not None and t_ns >= self.blank_after_ns:
                image = np.zeros((cam.height, cam.width, 3), np.uint8)
            else:
                x, y = crs_transform(WGS84, self.renderer.crs, [lon], [lat])
                image = self.renderer.render(np.array([x[0], y[0]]), alt, rpy, self.rendered)
            self.queue.put(Frame(self.rendered, t_ns, image))
            self.rendered += 1


@dataclass(frozen=True)
class ClosedLoopSpec:
    duration_s: float = 90.0
    gnss_off_at_s: float = 20.0
    blank_at_s: float = -1.0  # camera goes black here (< 0: 10 s before the end)
    fps: float = 2.0
    agl_m: float = 120.0
    seed: int = 1


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_closed_loop(ortho: Path, out: Path, spec: ClosedLoopSpec = ClosedLoopSpec(),
                    cfg: Config | None = None, pack: Path | None = None,
                    progress: bool = True) -> dict:
    """Fly `spec` with the daemon in the loop; write OUT/closed_loop.json (returned as a
    dict) and OUT/received.tlog (everything the emulator received)."""
    cfg = cfg or Config()
    blank_at = spec.blank_at_s if spec.blank_at_s >= 0 else spec.duration_s - 10.0
    if not 0 <= spec.gnss_off_at_s < blank_at < spec.duration_s:
        raise SkyfixError(f"need 0 <= gnss-off-at ({spec.gnss_off_at_s:g} s) < blank-at "
                          f"({blank_at:g} s) < duration ({spec.duration_s:g} s)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if pack is None:
        pack = build_pack([ortho], out / "pack", force=True, progress=progress)
    flight = FlightSpec(agl_m=spec.agl_m, fps=spec.fps, seed=spec.seed)
    emulator_spec = AutopilotSpec(spec.duration_s, spec.gnss_off_at_s, flight)
    port = free_udp_port()
    emulator = AutopilotEmulator(ortho, emulator_spec, link=f"udpout:127.0.0.1:{port}")
    nav = build_navigator(pack, flight.camera, cfg)
    queue = LatestFrameQueue(cfg.camera.queue)
    daemon = Daemon(cfg, nav, queue, link=f"udpin:127.0.0.1:{port}")
    stop = threading.Event()
    with PoseRenderer(ortho, flight) as renderer:
        camera = SimStateCamera(renderer, queue, spec.fps)
        daemon.listeners.append(camera.on_message)
        runner = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
        runner.start()
        time.sleep(0.2)  # the daemon's socket is bound before the emulator sends
        ap = threading.Thread(target=emulator.run, args=(stop,), daemon=True)
        ap.start()
        while emulator.start_ns is None and ap.is_alive():
            time.sleep(0.01)
        camera.blank_after_ns = emulator.start_ns + int(blank_at * 1e9)
        camera.start(stop)
        ap.join()
        stop.set()
        runner.join(timeout=10.0)
        camera.join()
    emulator.write_received(out / "received.tlog")
    result = score(emulator, replace(spec, blank_at_s=blank_at), cfg, out / "gps_input.csv")
    result["daemon"] = asdict(daemon.stats)
    result["rejections"] = dict(nav.rejections)
    result["frames_rendered"] = camera.rendered
    (out / "closed_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def score(emulator: AutopilotEmulator, spec: ClosedLoopSpec, cfg: Config,
          csv_path: Path | None = None) -> dict:
    """The closed-loop figures from what the emulator received (see the module doc);
    with `csv_path`, also each GPS_INPUT's arrival time, fix_type, claimed 1-sigma and
    true error there."""
    msgs = emulator.gps_inputs()
    if len(msgs) < 2:
        raise SkyfixError("the autopilot received fewer than two GPS_INPUT messages")
    t0 = emulator.start_ns
    arrive_s = np.array([(r.t_ns - t0) * 1e-9 for r in msgs])
    stamp_ns = np.array([r.msg.time_usec * 1000 for r in msgs], np.int64)
    fix = np.array([r.msg.fix_type for r in msgs])
    lat = np.array([r.msg.lat * 1e-7 for r in msgs])
    lon = np.array([r.msg.lon * 1e-7 for r in msgs])
    x, y = crs_transform(WGS84, emulator.crs, lon.tolist(), lat.tolist())
    truth = emulator.trajectory.sample((stamp_ns - t0) * 1e-9).en_m
    err = np.hypot(np.asarray(x) - truth[:, 0], np.asarray(y) - truth[:, 1])
    sigma = np.array([r.msg.horiz_accuracy for r in msgs])
    if csv_path is not None:
        np.savetxt(csv_path, np.stack([arrive_s, fix, sigma, err], 1), fmt="%.3f",
                   delimiter=",", header="t_s,fix_type,horiz_accuracy_m,error_m", comments="")

    after = arrive_s >= spec.gnss_off_at_s
    seeing = after & (arrive_s < spec.blank_at_s)
    gaps_ms = np.diff(arrive_s[after]) * 1e3
    window_s = spec.duration_s - spec.gnss_off_at_s
    claimed = seeing & (fix >= 3)
    seeing_err = err[claimed]
    dropped = np.flatnonzero((arrive_s >= spec.blank_at_s) & (fix < 3))
    drop_delay = float(arrive_s[dropped[0]] - spec.blank_at_s) if len(dropped) else None
    allowed = cfg.output.lock_budget_s + 2.0 / cfg.filter.rate_hz

    def r(v: float) -> float:
        return round(float(v), 3)

    figures = {
        "duration_s": spec.duration_s, "gnss_off_at_s": spec.gnss_off_at_s,
        "blank_at_s": spec.blank_at_s, "rate_hz_configured": cfg.filter.rate_hz,
        "lock_budget_s": cfg.output.lock_budget_s,
        "gps_input_total": len(msgs),
        "gps_input_rate_hz_after_gnss_loss": r(after.sum() / window_s),
        "gps_input_max_interval_ms_after_gnss_loss": r(gaps_ms.max()) if len(gaps_ms) else None,
        "gps_input_mean_interval_ms_after_gnss_loss": r(gaps_ms.mean()) if len(gaps_ms) else None,
        "gps_input_intervals_over_215ms": int((gaps_ms > ARDUPILOT_MAX_INTERVAL_MS).sum()),
        "claimed_fix_share_while_seeing": r(claimed.sum() / max(seeing.sum(), 1)),
        "error_while_seeing_max_m": r(seeing_err.max()) if len(seeing_err) else None,
        "error_while_seeing_p95_m": r(np.percentile(seeing_err, 95)) if len(seeing_err) else None,
        "error_while_seeing_p50_m": r(np.median(seeing_err)) if len(seeing_err) else None,
        "error_max_any_claimed_fix_after_gnss_loss_m":
            r(err[after & (fix >= 3)].max()) if (after & (fix >= 3)).any() else None,
        # claimed 3D fixes further off than 3 times the horiz_accuracy they were sent with
        "integrity_violations_after_gnss_loss":
            int(((err > 3 * sigma) & after & (fix >= 3)).sum()),
        "fix_drop_delay_s": None if drop_delay is None else r(drop_delay),
        "fix_drop_allowed_s": r(allowed),
    }
    figures["passed"] = {
        "rate": figures["gps_input_rate_hz_after_gnss_loss"] >= MIN_RATE_HZ,
        "max_interval": (figures["gps_input_max_interval_ms_after_gnss_loss"] or 1e9)
        <= ARDUPILOT_MAX_INTERVAL_MS,
        "error": len(seeing_err) > 0 and float(seeing_err.max()) <= MAX_ERROR_M
        and figures["claimed_fix_share_while_seeing"] >= 0.8,
        "fix_drop": drop_delay is not None and drop_delay <= allowed,
        "integrity": figures["integrity_violations_after_gnss_loss"] == 0,
    }
    return figures
