"""`skyfix sim sitl`: skyfix in a closed loop with a real ArduCopter SITL.

    arducopter SITL (home = map centre, 0 m AMSL)
      SERIAL0 tcp  <-> Vehicle (ground station): parameters, mission, mode, arm, truth
      SERIAL1 tcp  <-> Daemon (as on an aircraft): telemetry in, GPS_INPUT out (GPS2)
    SIM_STATE (true pose) -> SimCamera renders the ortho there, in real time -> Daemon

Every step waits for the autopilot's answer or state (sim/sitl_link.py). The flight:
parameters that make skyfix GPS 2 (GPS2_TYPE=14, MAVLink) with GPS_AUTO_SWITCH=1 (the
autopilot takes the best receiver), an AUTO mission (take off, a rectangle over the
map, return to launch, land), arming as soon as the pre-arm checks pass, the
simulator's own GNSS switched off (SIM_GPS1_ENABLE=0) `gnss_off_after_s` into the
mission, optional camera blanks, until the vehicle has landed and disarmed.

OUT/ gets: flight.tlog (everything the vehicle sent to the ground station), sent.tlog
(everything skyfix sent), truth.csv (SIM_STATE), report.json, plot.png, sitl/ (the
simulator's working directory and log), recording/ (what `skyfix run --record` writes:
the daemon's frames, telemetry, outputs and per-frame outcomes, for `skyfix replay`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.warp import transform as crs_transform

from skyfix.maps.build import build_pack
from skyfix.runtime.core.config import Config, GnssConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.recorder import FlightRecorder
from skyfix.sim.camera import SimCamera
from skyfix.sim.flight import FlightSpec, PoseRenderer
from skyfix.sim.sitl_link import (
    MissionItem,
    SitlProcess,
    Vehicle,
    fly_schedule,
    free_instance,
    gnss_cut,
)
from skyfix.sim.sitl_plot import plot_flight
from skyfix.sim.sitl_report import (
    FlightRecord,
    GcPauses,
    Timeline,
    figures,
    memory_figures,
    runqueue_figures,
)

log = logging.getLogger("skyfix.sim.sitl")

SHARED_SITL = Path(__file__).resolve().parents[2] / "shared" / "sitl"
COPTER_AUTO, COPTER_RTL, COPTER_LAND = 3, 6, 9  # ArduCopter custom modes
METRES_PER_DEG_LAT = 111_132.0  # close enough for a simulated spoofing pull
# ArduCopter refuses to arm while any configured GPS lacks a 3D fix ("GPS 2: Bad fix") or
# has not been detected ("still configuring"); skyfix has no fix on the ground (the camera
# sees the ground from a few decimetres), so skyfix becomes GPS 2 once the vehicle is armed.
AFTER_ARMING = {"GPS2_TYPE": 14}


def default_binary() -> Path | None:
    """../shared/sitl/ardupilot/arducopter beside the repository, when present."""
    path = SHARED_SITL / "ardupilot" / "arducopter"
    return path if path.is_file() else None


@dataclass(frozen=True)
class SitlSpec:
    """The flight. Times in seconds from arming; `blanks`: (start, duration) pairs."""

    agl_m: float = 80.0
    speed_mps: float = 5.0
    box_m: tuple[float, float] = (160.0, 120.0)  # east x north sides of the flown rectangle
    laps: int = 1
    fps: float = 2.0
    gnss_off_after_s: float = 60.0  # < 0: never
    blanks: tuple[tuple[float, float], ...] = ()
    spoof_after_s: float = 0.0
    spoof_mps: float = 0.0  # > 0: the simulated GNSS drifts north at this speed (spoofing)
    spoof_for_s: float = 60.0  # then the spoofer stops (a vehicle on the ground that sees
    # its GNSS still drifting holds its motors against it and never disarms)
    gps_delay_ms: int = 0  # GPS2_DELAY_MS: skyfix predicts to the send time
    wp_yaw_behavior: int = 0  # 0: hold the heading through the corners (survey style)
    arm_timeout_s: float = 150.0
    mission_timeout_s: float = 600.0  # per lap of the rectangle
    seed: int = 1
    extra_params: dict[str, float] = field(default_factory=dict)


# EKF source set 2, which the daemon asks for (gnss.mode ekf-source) when the real GNSS is
# lost while skyfix has a fix: horizontal position from the GPS (GPS 2 = skyfix, the only
# one left with a fix), velocity from the IMU alone (no GPS velocity: skyfix's comes from
# a constant-velocity filter that lags in turns), height from the barometer; and only
# the active set's velocities are fused (EK3_SRC_OPTIONS bit 0 off).
EKF_SOURCE_PARAMS = {"EK3_SRC2_POSXY": 3, "EK3_SRC2_VELXY": 0, "EK3_SRC2_POSZ": 1,
                     "EK3_SRC2_VELZ": 0, "EK3_SRC2_YAW": 1, "EK3_SRC_OPTIONS": 0}


# The ground-station link (SERIAL0, MAV1_*) gets only what the report needs, asked for by
# SET_MESSAGE_INTERVAL: every message parsed in this process takes time from the daemon.
_QUIET_GCS_STREAMS = {f"MAV1_{s}": 0 for s in ("RAW_SENS", "EXT_STAT", "RC_CHAN", "RAW_CTRL",
                                                 "POSITION", "EXTRA1", "EXTRA2", "EXTRA3")}


def vehicle_params(spec: SitlSpec, gnss_mode: str = "ekf-source") -> dict[str, float]:
    """What the autopilot is told before arming (also in the README): GPS 2's settings
    (GPS2_TYPE itself comes after arming, see AFTER_ARMING); the streams the
    daemon needs on SERIAL1 (the second MAVLink channel: MAV2_*); mission speeds; AUTO may
    arm and take off without sticks. The landing is quick below 20 m (3 m/s down to 3 m,
    then 1.5 m/s): the camera cannot localise below about 20 m (the view at the map's
    resolution gets too small), so the EKF is unaided there and drifts."""
    return {
        "GPS_AUTO_SWITCH": 1, "GPS2_DELAY_MS": spec.gps_delay_ms,
        "MAV2_EXTRA1": 20, "MAV2_POSITION": 10, "MAV2_EXT_STAT": 5, "MAV2_EXTRA3": 2,
        "WPNAV_SPEED": spec.speed_mps * 100, "WPNAV_SPEED_UP": 400, "WPNAV_SPEED_DN": 300,
        "LAND_SPEED": 150, "LAND_ALT_LOW": 300, "AUTO_OPTIONS": 3,
        "WP_YAW_BEHAVIOR": spec.wp_yaw_behavior, **_QUIET_GCS_STREAMS,
        **(EKF_SOURCE_PARAMS if gnss_mode == "ekf-source" else {}), **spec.extra_params,
    }


def plan_mission(home: tuple[float, float], to_lla, spec: SitlSpec) -> list[MissionItem]:
    """Home slot, take off to agl_m, the rectangle's corners `laps` times about home (turns
    of 90 degrees), return to launch. `to_lla(e, n)` -> (lat, lon) of map metres."""
    half_e, half_n = spec.box_m[0] / 2, spec.box_m[1] / 2
    items = [MissionItem(mav2.MAV_CMD_NAV_WAYPOINT, *home, 0.0),
             MissionItem(mav2.MAV_CMD_NAV_TAKEOFF, *home, spec.agl_m)]
    corners = [(half_e, half_n), (half_e, -half_n), (-half_e, -half_n), (-half_e, half_n)]
    for _ in range(spec.laps):
        for de, dn in corners:
            items.append(MissionItem(mav2.MAV_CMD_NAV_WAYPOINT, *to_lla(de, dn), spec.agl_m))
    items.append(MissionItem(mav2.MAV_CMD_NAV_RETURN_TO_LAUNCH))
    return items


def _check_fits(renderer: PoseRenderer, spec: SitlSpec) -> None:
    b = renderer.bounds_en
    cam = renderer.spec.camera
    half_w = spec.agl_m * cam.width / (2 * cam.fx)
    half_h = spec.agl_m * cam.height / (2 * cam.fy)
    reach = np.hypot(half_w, half_h)
    if (spec.box_m[0] / 2 + reach > (b[2] - b[0]) / 2
            or spec.box_m[1] / 2 + reach > (b[3] - b[1]) / 2):
        raise SkyfixError(f"the flown rectangle {spec.box_m[0]:g} x {spec.box_m[1]:g} m at "
                          f"{spec.agl_m:g} m AGL sees beyond the map ({b[2] - b[0]:.0f} x "
                          f"{b[3] - b[1]:.0f} m)")


def run_sitl(ortho: Path, out: Path, spec: SitlSpec = SitlSpec(), cfg: Config | None = None,
             pack: Path | None = None, binary: Path | None = None,
             autopilot: str = "arducopter") -> dict:
    """Fly the closed loop of the module doc (PX4: sim/sitl_px4.py); returns (and writes)
    report.json."""
    if autopilot == "px4":
        from skyfix.sim.sitl_px4 import run_sitl_px4

        return run_sitl_px4(ortho, out, spec, cfg, pack, binary)
    if autopilot != "arducopter":
        raise SkyfixError(f"--autopilot {autopilot}: arducopter or px4")
    binary = binary or default_binary()
    if binary is None:
        raise SkyfixError(f"no SITL binary: give --binary PATH/arducopter ({SHARED_SITL} "
                          f"has none)")
    cfg = cfg or Config(gnss=GnssConfig(mode="ekf-source"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pack = pack or build_pack([ortho], out / "pack", force=True, progress=False)
    flight = FlightSpec(agl_m=spec.agl_m, fps=spec.fps, seed=spec.seed)
    with PoseRenderer(ortho, flight) as renderer:
        _check_fits(renderer, spec)
        centre, to_lla = map_frame(renderer)
        home = to_lla(0.0, 0.0)
        defaults = Path(binary).parent / "copter.parm"
        with SitlProcess(binary, out / "sitl", (*home, 0.0, 0.0),
                         [defaults] if defaults.is_file() else [],
                         vehicle_params(spec, cfg.gnss.mode),
                         free_instance()) as proc:
            with GcPauses() as gc_pauses:
                timeline, loop = _fly(proc, renderer, home, to_lla, spec, cfg, pack, out)
        sitl = {"pid": proc.proc.pid, "exit_status": proc.proc.returncode}
        report = {"spec": asdict(spec), "autopilot": autopilot, "binary": str(binary),
                  "sitl": sitl, "home_lat_lon": list(home), "gnss_mode": cfg.gnss.mode,
                  "params": {**vehicle_params(spec, cfg.gnss.mode), **AFTER_ARMING},
                  **flight_report(loop, timeline, renderer, centre, spec, cfg, gc_pauses)}
    if spec.spoof_mps > 0 and timeline.mission_start_ns is not None:
        report["spoof"] = _spoof_figures(loop.rec, timeline.mission_start_ns, spec)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def map_frame(renderer: PoseRenderer):
    """(centre [2] map metres, to_lla(e, n) -> (lat, lon) of metres from the centre)."""
    b = renderer.bounds_en
    centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])

    def to_lla(de: float, dn: float) -> tuple[float, float]:
        lon, lat = crs_transform(renderer.crs, WGS84, [centre[0] + de], [centre[1] + dn])
        return lat[0], lon[0]

    return centre, to_lla


def flight_report(loop: Loop, timeline: Timeline, renderer: PoseRenderer, centre: np.ndarray,
                  spec: SitlSpec, cfg: Config, gc_pauses: GcPauses) -> dict:
    """The figures every SITL report has; writes truth.csv and plot.png beside them."""
    rec = loop.rec
    t0 = timeline.mission_start_ns
    rec.write_truth(loop.out / "truth.csv")
    plot_flight(rec, timeline, renderer.crs, loop.out / "plot.png")
    return {
        "timeline_unix_ns": {"armed": t0, "gnss_off": timeline.gnss_off_ns,
                             "landed": timeline.landed_ns},
        "timeline_s": {k: (None if v is None else round((v - t0) * 1e-9, 2))
                       for k, v in (("gnss_off", timeline.gnss_off_ns),
                                    ("landed", timeline.landed_ns))} if t0 else {},
        **figures(rec, timeline, renderer.crs, centre, cfg.output.lock_budget_s,
                  1.0 / spec.fps),
        "camera": {"fps": spec.fps, "rendered": loop.camera.rendered,
                   "render_ms_p50": _p50(loop.camera.render_ms)},
        "daemon": asdict(loop.daemon.stats),
        "gc_pauses": gc_pauses.figures(),
        "memory": memory_figures(rec),
        "scheduling": runqueue_figures(rec),
        "load_average": list(os.getloadavg()),
    }


def _until_landed(vehicle: Vehicle, spec: SitlSpec, t_start: int) -> int | None:
    """Run the flight's schedule until the vehicle disarms: the simulated GNSS off at
    `gnss_off_after_s`, and from `spoof_after_s` for `spoof_for_s` its position pulled
    north at `spoof_mps` (SIM_GPS1_GLTCH_X, degrees of latitude, updated each second),
    then released. Returns the Unix ns the GNSS went off (None if it did not)."""
    t_off: list[int] = []

    def spoof(elapsed_s: float) -> float:
        spoofing_s = elapsed_s - spec.spoof_after_s
        pull_m = spec.spoof_mps * spoofing_s if spoofing_s < spec.spoof_for_s else 0.0
        vehicle.set_param("SIM_GPS1_GLTCH_X", pull_m / METRES_PER_DEG_LAT)
        return elapsed_s + 1.0 if pull_m else math.inf

    fly_schedule(vehicle, t_start, spec.mission_timeout_s * max(spec.laps, 1), [
        (spec.gnss_off_after_s if spec.gnss_off_after_s >= 0 else math.inf,
         gnss_cut(vehicle, "SIM_GPS1_ENABLE", t_off)),
        (spec.spoof_after_s if spec.spoof_mps > 0 else math.inf, spoof)])
    return t_off[0] if t_off else None


def _spoof_figures(rec: FlightRecord, t_start_ns: int, spec: SitlSpec) -> dict:
    """When skyfix's hand-over first said the GNSS is spoofed, and how far the simulated
    GNSS had been pulled by then."""
    t_spoof = t_start_ns + int(spec.spoof_after_s * 1e9)
    hits = [t for t, text in rec.sent_texts() if "GNSS spoofed" in text and t >= t_spoof]
    after_s = None if not hits else round((hits[0] - t_spoof) * 1e-9, 2)
    return {"drift_mps": spec.spoof_mps, "detected_after_s": after_s,
            "pull_at_detection_m": None if after_s is None else round(spec.spoof_mps * after_s,
                                                                      1)}


def _p50(values: list[float]) -> float | None:
    return round(float(np.median(values)), 1) if values else None


class Loop:
    """skyfix's side of a SITL flight, wired as on an aircraft: the daemon on `link`, the
    simulated camera fed by the vehicle's truth messages, the flight record, and what
    `skyfix run --record` writes (OUT/recording). `start()` runs the daemon and the
    camera; `close()` stops them and closes the files."""

    def __init__(self, vehicle: Vehicle, renderer: PoseRenderer, spec: SitlSpec, cfg: Config,
                 pack: Path, out: Path, link: str) -> None:
        self.out = out
        self.rec = rec = FlightRecord(out / "sent.tlog")
        chain = build_chain(cfg, pack, renderer.spec.camera)
        queue = LatestFrameQueue(cfg.camera.queue)
        self.daemon = daemon = Daemon(chain, queue, link=link)
        self.camera = SimCamera(renderer, queue, spec.fps)
        vehicle.listeners += [self.camera.on_message, rec.on_vehicle]
        daemon.sent_listeners.append(rec.on_sent)
        self.recording = recording = FlightRecorder(out / "recording", renderer.spec.camera)
        daemon.frame_listeners.append(recording.on_frame)
        daemon.listeners.append(recording.on_message)
        daemon.sent_listeners.append(recording.on_sent)
        daemon.result_listeners.append(recording.on_result)
        self.stop = threading.Event()
        self.runner = threading.Thread(target=daemon.run, args=(self.stop,),
                                       name="skyfix-daemon", daemon=True)

    def start(self) -> None:
        self.runner.start()
        self.camera.start(self.stop)

    def close(self) -> None:
        self.stop.set()
        if self.runner.is_alive():
            self.runner.join(timeout=10.0)
        self.camera.join()
        self.rec.close()
        self.recording.close()


def _fly(proc: SitlProcess, renderer: PoseRenderer, home, to_lla, spec: SitlSpec, cfg: Config,
         pack: Path, out: Path) -> tuple[Timeline, Loop]:
    """The flight itself, on a running simulator."""
    vehicle = Vehicle(f"tcp:127.0.0.1:{proc.port(0)}", out / "flight.tlog", proc.check_alive)
    loop = Loop(vehicle, renderer, spec, cfg, pack, out, f"tcp:127.0.0.1:{proc.port(1)}")
    camera = loop.camera
    t_start = t_off = t_landed = None
    try:
        vehicle.wait(lambda: getattr(vehicle.latest("HEARTBEAT"), "system_status", 0)
                     == mav2.MAV_STATE_STANDBY, "HEARTBEAT with state STANDBY (booted)", 60.0)
        for msg_id, rate_hz in ((mav2.MAVLINK_MSG_ID_SIM_STATE, 10.0),
                                (mav2.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 10.0),
                                (mav2.MAVLINK_MSG_ID_EKF_STATUS_REPORT, 5.0),
                                (mav2.MAVLINK_MSG_ID_GPS_RAW_INT, 5.0),
                                (mav2.MAVLINK_MSG_ID_GPS2_RAW, 5.0)):
            vehicle.set_message_rate(msg_id, rate_hz)
        vehicle.check_params(vehicle_params(spec, cfg.gnss.mode))
        loop.start()
        vehicle.upload_mission(plan_mission(home, to_lla, spec))
        vehicle.set_mode(COPTER_AUTO)
        vehicle.arm(spec.arm_timeout_s)
        t_start = time.time_ns()
        vehicle.set_params(AFTER_ARMING)
        camera.blank_windows_ns = [(t_start + int(a * 1e9), t_start + int((a + d) * 1e9))
                                   for a, d in spec.blanks]
        log.info("armed in AUTO; mission started")
        t_off = _until_landed(vehicle, spec, t_start)
        t_landed = time.time_ns()
    finally:
        vehicle.close()
        loop.close()
    return Timeline(t_start, t_off, t_landed, tuple(camera.blank_windows_ns)), loop
