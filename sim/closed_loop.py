"""`skyfix sim closed-loop`: the daemon against the autopilot emulator, in real time.

Despite the command's name the loop is open: the emulator flies its fixed plan and only
records what skyfix sends, so this checks the daemon's output (rate, accuracy, fix
drops), fast; that an autopilot flies on skyfix's position is shown by sim/sitl.py with
a real ArduCopter SITL.

    emulator --UDP MAVLink (telemetry, SIM_STATE)--> daemon --GPS_INPUT--> emulator
    SIM_STATE (true pose) -> SimCamera renders the frame there -> daemon's frame queue

The camera (sim/camera.py, the one sim/sitl.py uses with a real ArduPilot SITL) renders
each frame from the ortho at the true pose the emulator publishes in SIM_STATE. GNSS is cut
at `gnss_off_at_s`; at `blank_at_s` the camera goes black, and the runtime must stop
claiming a 3D fix within `output.lock_budget_s`. The figures a user relies on are
written to OUT/closed_loop.json:

    after GNSS loss, while the camera sees: GPS_INPUT rate and largest interval
    (ArduPilot: average < 215 ms), horizontal error of the claimed fixes vs truth;
    after blanking: the delay until fix_type drops.

With `faults` (sim/faults.py) the camera, the emulator and the map misbehave on a
schedule, and closed_loop.json also holds one outcome per fault.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rasterio.warp import transform as crs_transform

from skyfix.maps.build import build_pack
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.sim.autopilot import AutopilotEmulator, AutopilotSpec
from skyfix.sim.camera import SimCamera
from skyfix.sim.faults import (
    CameraFaults,
    Fault,
    FaultSchedule,
    confident_wrong,
    corrupt_pack,
    fault_ortho,
    fault_outcomes,
)
from skyfix.sim.flight import FlightSpec, PoseRenderer
from skyfix.sim.render import ground_offsets

log = logging.getLogger("skyfix.sim")

ARDUPILOT_MAX_INTERVAL_MS = 215.0  # GPS_INPUT health: average interval below this
MAX_ERROR_M = 10.0
MIN_RATE_HZ = 5.0


@dataclass(frozen=True)
class ClosedLoopSpec:
    duration_s: float = 90.0
    gnss_off_at_s: float = 20.0
    blank_at_s: float = -1.0  # camera goes black (< 0: 10 s before the end; >= duration: never)
    fps: float = 2.0
    agl_m: float = 120.0
    seed: int = 1
    faults: tuple[Fault, ...] = ()  # sim/faults.py


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fault_maps(ortho: Path, out: Path, spec: ClosedLoopSpec, emulator: AutopilotEmulator,
                pack: Path | None, progress: bool) -> tuple[Path, Path]:
    """(ortho the camera sees, map pack the daemon gets) under the map faults of `spec`."""
    schedule = FaultSchedule(spec.faults)
    terrain = schedule.has("featureless") or schedule.has("repetitive")
    own_map = terrain or schedule.has("wrong-map")
    if own_map and pack is not None:
        raise SkyfixError("--map cannot be used with the wrong-map, featureless or repetitive "
                          "faults: they build their own map")
    world = map_ortho = ortho
    if terrain:
        fs = emulator.spec.flight  # footprint radius: the camera sees only the fault's ground
        radius_m = float(np.hypot(*ground_offsets(fs.camera, fs.agl_m).T).max()) + 10.0
        world, map_ortho = (fault_ortho(ortho, out, schedule,
                                        lambda t: emulator.trajectory.sample(t).en_m,
                                        radius_m, what) for what in ("world", "map"))
    if schedule.has("wrong-map"):
        map_ortho = fault_ortho(map_ortho, out, schedule, None, 0.0, "wrong-map")
    if pack is None:
        pack = build_pack([map_ortho], out / "pack", force=True, progress=progress)
    if schedule.has("corrupt-map"):
        pack = corrupt_pack(pack, out / "pack_corrupt")
    return world, pack


def fly(daemon: Daemon, emulator: AutopilotEmulator, renderer: PoseRenderer,
        queue: LatestFrameQueue, spec: ClosedLoopSpec,
        observer: Callable[[Daemon], None] | None = None) -> SimCamera:
    """Run `daemon` against `emulator` until the emulator's flight ends, with camera frames
    rendered at the pose it publishes (blanked from `spec.blank_at_s`, spoilt by
    `spec.faults`); `observer` is called with the daemon about once a second. Returns the
    camera (its `rendered` count)."""
    stop = threading.Event()
    camera = SimCamera(renderer, queue, spec.fps, truth=emulator.true_pose)
    daemon.listeners.append(camera.on_message)
    runner = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    runner.start()
    time.sleep(0.2)  # the daemon's socket is bound before the emulator sends
    ap = threading.Thread(target=emulator.run, args=(stop,), daemon=True)
    ap.start()
    while emulator.start_ns is None and ap.is_alive():
        time.sleep(0.01)
    camera.blank_windows_ns = [(emulator.start_ns + int(spec.blank_at_s * 1e9), 2**63 - 1)]
    camera.faults = CameraFaults(FaultSchedule(spec.faults), emulator.start_ns)
    camera.start(stop)
    while ap.is_alive():
        ap.join(1.0)
        if observer is not None:
            observer(daemon)
    stop.set()
    runner.join(timeout=10.0)
    camera.join()
    return camera


def run_closed_loop(ortho: Path, out: Path, spec: ClosedLoopSpec = ClosedLoopSpec(),
                    cfg: Config | None = None, pack: Path | None = None,
                    progress: bool = True,
                    observer: Callable[[Daemon], None] | None = None) -> dict:
    """Fly `spec` with the daemon in the loop; write OUT/closed_loop.json (returned as a
    dict) and OUT/received.tlog (everything the emulator received). `observer` is
    called with the daemon about once a second while it flies."""
    cfg = cfg or Config()
    blank_at = spec.blank_at_s if spec.blank_at_s >= 0 else spec.duration_s - 10.0
    if not 0 <= spec.gnss_off_at_s < blank_at <= spec.duration_s <= 86_400:
        raise SkyfixError(f"need 0 <= gnss-off-at ({spec.gnss_off_at_s:g} s) < blank-at "
                          f"({blank_at:g} s) <= duration ({spec.duration_s:g} s) <= a day")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flight = FlightSpec(agl_m=spec.agl_m, fps=spec.fps, seed=spec.seed)
    emulator_spec = AutopilotSpec(spec.duration_s, spec.gnss_off_at_s, flight,
                                  FaultSchedule(spec.faults))
    port = free_udp_port()
    emulator = AutopilotEmulator(ortho, emulator_spec, link=f"udpout:127.0.0.1:{port}")
    ortho, pack = _fault_maps(ortho, out, spec, emulator, pack, progress)
    chain = build_chain(cfg, pack, flight.camera)
    queue = LatestFrameQueue(cfg.camera.queue)
    daemon = Daemon(chain, queue, link=f"udpin:127.0.0.1:{port}")
    with PoseRenderer(ortho, flight) as renderer:
        camera = fly(daemon, emulator, renderer, queue, replace(spec, blank_at_s=blank_at),
                     observer)
    emulator.write_received(out / "received.tlog")
    result = score(emulator, replace(spec, blank_at_s=blank_at), cfg, out / "gps_input.csv")
    result["daemon"] = asdict(daemon.stats)
    result["rejections"] = dict(chain.rejections)
    result["frames_rendered"] = camera.rendered
    result["emulator_records"] = len(emulator.received)
    # the daemon still talking at the end (heartbeats go out even without a fix)
    result["daemon_last_heard_s"] = round((emulator.received[-1].t_ns - emulator.start_ns)
                                          * 1e-9, 3) if emulator.received else None
    if spec.faults:
        t0 = emulator.start_ns
        texts = [((r.t_ns - t0) * 1e-9, r.msg.text) for r in emulator.received
                 if r.kind == "STATUSTEXT"]
        result["faults"] = [asdict(o) for o in
                            fault_outcomes(spec.faults, *gps_input_table(emulator), texts)]
    (out / "closed_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def gps_input_table(emulator: AutopilotEmulator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every GPS_INPUT the emulator received: [N] arrival s since its start, fix_type,
    horiz_accuracy m and true horizontal error m (at the message's time stamp)."""
    received = emulator.gps_inputs()
    if not received:
        return tuple(np.zeros(0) for _ in range(4))
    t0 = emulator.start_ns
    arrive_s = np.array([(r.t_ns - t0) * 1e-9 for r in received])
    msgs = [r.msg for r in received]
    stamp_ns = np.array([m.time_usec * 1000 for m in msgs], np.int64)
    fix = np.array([m.fix_type for m in msgs])
    lat = np.array([m.lat * 1e-7 for m in msgs])
    lon = np.array([m.lon * 1e-7 for m in msgs])
    x, y = crs_transform(WGS84, emulator.crs, lon.tolist(), lat.tolist())
    truth = emulator.trajectory.sample((stamp_ns - t0) * 1e-9).en_m
    err = np.hypot(np.asarray(x) - truth[:, 0], np.asarray(y) - truth[:, 1])
    sigma = np.array([m.horiz_accuracy for m in msgs])
    return arrive_s, fix, sigma, err


def score(emulator: AutopilotEmulator, spec: ClosedLoopSpec, cfg: Config,
          csv_path: Path | None = None) -> dict:
    """The closed-loop figures from what the emulator received (see the module doc);
    with `csv_path`, also each GPS_INPUT's arrival time, fix_type, claimed 1-sigma and
    true error there."""
    arrive_s, fix, sigma, err = gps_input_table(emulator)
    if len(arrive_s) < 2 and not spec.faults:  # with faults, silence can be the outcome
        raise SkyfixError("the autopilot received fewer than two GPS_INPUT messages")
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
        "gps_input_total": len(arrive_s),
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
        # claimed 3D fixes (whole flight) more than 30 m off while claiming sigma < 10 m
        "confident_wrong_fixes": int(confident_wrong(fix, sigma, err).sum()),
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
