"""`skyfix sim sitl`: the daemon against a real ArduPilot SITL (arducopter).

The bridge starts `arducopter` (or connects to a running SITL on `connect`), places
its home at the centre of the ortho, and runs the daemon on the SITL's MAVLink port.
SITL publishes the true vehicle pose in SIMSTATE; `SimStateCamera` renders a camera
frame from the ortho at that pose into the daemon's frame queue, and the daemon sends
GPS_INPUT back as GPS2 (GPS2_TYPE=14). The bridge arms the copter in GUIDED, takes off
to `agl_m` and flies a square; at `gnss_off_at_s` it disables the simulated GPS 1
(SIM_GPS1_ENABLE=0; SIM_GPS_DISABLE=1 on older SITL) so the autopilot has our fix only.

Written to OUT/sitl.json: our estimate's horizontal error against SIMSTATE (sampled
once a second), GPS_INPUT counts, and the share of EKF_STATUS_REPORTs after the cut
whose flags say the EKF has an absolute horizontal position (POS_HORIZ_ABS).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.warp import transform as crs_transform

from skyfix.maps.build import build_pack
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.sim.closed_loop import SimStateCamera
from skyfix.sim.flight import FlightSpec, PoseRenderer

# Parameters the bridge sets (also listed in the README): GPS 2 is skyfix, the EKF may
# switch to it, SIMSTATE and the telemetry streams come at useful rates.
SITL_PARAMS = {"GPS2_TYPE": 14, "GPS_AUTO_SWITCH": 1, "GPS2_DELAY_MS": 100,
               "SR0_EXTRA1": 25, "SR0_POSITION": 10, "SR0_EXT_STAT": 5, "SR0_EXTRA3": 5}
_GNSS_OFF = {"SIM_GPS1_ENABLE": 0, "SIM_GPS_DISABLE": 1}  # new name, old name
_SQUARE_M = 120.0  # side of the flown square


class _Flight:
    """Drives the copter through the daemon's link: params, GUIDED, arm, take off, square."""

    def __init__(self, daemon: Daemon, agl_m: float) -> None:
        self.daemon, self.agl_m = daemon, agl_m

    def _cmd(self, command: int, *params: float) -> None:
        p = list(params) + [0.0] * (7 - len(params))
        self.daemon.send(mav2.MAVLink_command_long_message(1, 1, command, 0, *p))

    def param(self, name: str, value: float) -> None:
        self.daemon.send(mav2.MAVLink_param_set_message(
            1, 1, name.encode(), float(value), mav2.MAV_PARAM_TYPE_REAL32))

    def run(self, stop: threading.Event, gnss_off_at_s: float, t0: float) -> None:
        for name, value in SITL_PARAMS.items():
            self.param(name, value)
        stop.wait(20.0)  # EKF alignment on the simulated GPS
        self._cmd(mav2.MAV_CMD_DO_SET_MODE, mav2.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, 4)  # GUIDED
        self._cmd(mav2.MAV_CMD_COMPONENT_ARM_DISARM, 1)
        stop.wait(2.0)
        self._cmd(mav2.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, self.agl_m)
        stop.wait(self.agl_m / 2.5 + 5.0)
        corners = [(_SQUARE_M, 0), (_SQUARE_M, _SQUARE_M), (0, _SQUARE_M), (0, 0)]
        k, gnss_cut = 0, False
        while not stop.is_set():
            if not gnss_cut and time.monotonic() - t0 >= gnss_off_at_s:
                for name, value in _GNSS_OFF.items():
                    self.param(name, value)
                gnss_cut = True
            n, e = corners[k % 4]
            self.daemon.send(mav2.MAVLink_set_position_target_local_ned_message(
                0, 1, 1, mav2.MAV_FRAME_LOCAL_NED, 0b0000111111111000, n, e, -self.agl_m,
                0, 0, 0, 0, 0, 0, 0, 0))
            k += 1
            stop.wait(_SQUARE_M / 5.0)


def run_sitl(ortho: Path, out: Path, binary: Path | None = None, connect: str | None = None,
             duration_s: float = 180.0, gnss_off_at_s: float = 90.0, agl_m: float = 120.0,
             fps: float = 2.0, cfg: Config | None = None, pack: Path | None = None) -> dict:
    """Fly SITL with the daemon in the loop (see the module doc); returns sitl.json."""
    cfg = cfg or Config()
    if binary is None and connect is None:
        raise SkyfixError("give --binary PATH_TO_arducopter or --connect to a running SITL")
    if binary is not None and not Path(binary).is_file():
        raise SkyfixError(f"SITL binary not found: {binary}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if pack is None:
        pack = build_pack([ortho], out / "pack", force=True)
    flight = FlightSpec(agl_m=agl_m, fps=fps)
    with PoseRenderer(ortho, flight) as renderer:
        b = renderer.bounds_en
        lon, lat = crs_transform(renderer.crs, WGS84, [(b[0] + b[2]) / 2], [(b[1] + b[3]) / 2])
        proc = None
        if binary is not None:
            proc = subprocess.Popen(
                [str(Path(binary).absolute()), "--model", "quad", "--speedup", "1", "-I0",
                 "--home", f"{lat[0]:.7f},{lon[0]:.7f},0,0"],
                cwd=out, stdout=open(out / "sitl.log", "w"), stderr=subprocess.STDOUT)
            time.sleep(3.0)
        link = connect or "tcp:127.0.0.1:5760"
        chain = build_chain(cfg, pack, flight.camera)
        queue = LatestFrameQueue(cfg.camera.queue)
        daemon = Daemon(chain, queue, link=link)
        camera = SimStateCamera(renderer, queue, fps)
        errors: list[tuple[float, float]] = []
        ekf: list[tuple[float, bool]] = []
        t0 = time.monotonic()

        def watch(msg, t_ns: int) -> None:
            kind = msg.get_type()
            if kind == "SIMSTATE" and (not errors or time.monotonic() - t0 - errors[-1][0] >= 1):
                est = daemon.estimate(t_ns)
                if est is not None:
                    truth = chain.frame.lla_to_ned(msg.lat * 1e-7, msg.lng * 1e-7)[0]
                    errors.append((time.monotonic() - t0,
                                   float(np.hypot(est.north_m - truth[0], est.east_m - truth[1]))))
            elif kind == "EKF_STATUS_REPORT":
                ekf.append((time.monotonic() - t0,
                            bool(msg.flags & mav2.EKF_POS_HORIZ_ABS)))

        daemon.listeners += [camera.on_message, watch]
        stop = threading.Event()
        camera.start(stop)
        threading.Thread(target=_Flight(daemon, agl_m).run, args=(stop, gnss_off_at_s, t0),
                         daemon=True).start()
        try:
            daemon.run(stop, duration_s)
        finally:
            stop.set()
            camera.join()
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
    after = [e for t, e in errors if t >= gnss_off_at_s]
    abs_after = [ok for t, ok in ekf if t >= gnss_off_at_s]
    result = {
        "duration_s": duration_s, "gnss_off_at_s": gnss_off_at_s,
        "error_samples": len(errors),
        "error_after_gnss_loss_max_m": round(max(after), 3) if after else None,
        "error_after_gnss_loss_p50_m": round(float(np.median(after)), 3) if after else None,
        "ekf_pos_horiz_abs_share_after_gnss_loss":
            round(float(np.mean(abs_after)), 3) if abs_after else None,
        "frames_rendered": camera.rendered, "daemon": asdict(daemon.stats),
    }
    (out / "sitl.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
