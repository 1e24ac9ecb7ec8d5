"""`skyfix sim sitl --autopilot px4`: skyfix in a closed loop with a real PX4 SITL (SIH).

    px4 SIH (home = map centre, 0 m AMSL; parameters given at boot as PX4_PARAM_*)
      GCS link      UDP 18570+i <-> Vehicle (ground station): parameters, mission, mode,
                    arm, truth (HIL_STATE_QUATERNION: SIH's ground truth, asked for)
      onboard link  UDP -> 14540+i <-> Daemon (udpin; PX4 sends there unasked):
                    telemetry in, GLOBAL_POSITION_SENSOR out
    HIL_STATE_QUATERNION (true pose) -> SimCamera renders the ortho there -> Daemon

PX4 turns GLOBAL_POSITION_SENSOR into uORB aux_global_position, which EKF2 fuses as
auxiliary global position when a slot's EKF2_AGPn_ID equals the message's id (skyfix's
output.gps_id) and its EKF2_AGPn_CTRL has bit 0 (horizontal position). EKF2 makes its
slots at start-up from the IDs set then, so they are boot parameters here. The flight:
a mission (take off, the rectangle over the map, return to launch) in AUTO.MISSION,
armed, the simulated GNSS cut at `gnss_off_after_s` (SIM_GPS_USED=0: sensor_gps_sim
then publishes fix_type 0), until the vehicle has landed and disarmed. Once during
the GNSS loss the EKF's own control flags are read (px4-listener
estimator_status_flags): aux_gpos fused, gnss_pos not.

OUT/ gets what sim/sitl.py writes (flight.tlog, sent.tlog, truth.csv, report.json,
plot.png, recording/) and px4/ (PX4's working directory: px4.log, log/*.ulg).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.maps.build import build_pack
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.sim.flight import FlightSpec, PoseRenderer
from skyfix.sim.sitl import (
    SHARED_SITL,
    Loop,
    SitlSpec,
    _check_fits,
    flight_report,
    map_frame,
    plan_mission,
)
from skyfix.sim.sitl_link import SimulatorProcess, Vehicle, fly_schedule, gnss_cut
from skyfix.sim.sitl_report import GcPauses, Timeline

log = logging.getLogger("skyfix.sim.sitl")

GCS_PORT, OFFBOARD_PORT, OFFBOARD_REMOTE_PORT = 18570, 14580, 14540  # + instance
AUTO_MISSION = (4 << 16) | (4 << 24)  # PX4 custom_mode: main mode AUTO, sub mode MISSION
# The GCS link streams ~250 messages/s PX4's own displays want; parsed here, each takes
# time from the daemon. Switched off (interval -1); the report needs none of them.
_QUIET = (mav2.MAVLINK_MSG_ID_ATTITUDE, mav2.MAVLINK_MSG_ID_ATTITUDE_QUATERNION,
          mav2.MAVLINK_MSG_ID_ATTITUDE_TARGET, mav2.MAVLINK_MSG_ID_SERVO_OUTPUT_RAW,
          mav2.MAVLINK_MSG_ID_LOCAL_POSITION_NED, mav2.MAVLINK_MSG_ID_POSITION_TARGET_LOCAL_NED)


def default_root() -> Path | None:
    """../shared/sitl/px4 beside the repository (bin/px4, etc/), when present."""
    root = SHARED_SITL / "px4"
    return root if (root / "bin" / "px4").is_file() else None


def free_px4_instance() -> int:
    """A PX4 instance number (1..39) whose UDP ports are free here."""
    for instance in range(1, 40):
        try:
            for port in (GCS_PORT, OFFBOARD_PORT, OFFBOARD_REMOTE_PORT):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", port + instance))
        except OSError:
            continue
        return instance
    raise SkyfixError("no free PX4 SITL instance (UDP ports 18571..18609 busy)")


def sim_config() -> Config:
    """skyfix's configuration for this loop: the defaults, with `gnss.mode` always (PX4 has
    no EKF source sets), `filter.kind` cv and `match.max_rotation_deg` 15. Seen here: the
    IMU-aided filter on PX4's HIGHRES_IMU drifted 30-40 m within 3 s without fixes
    (claimed errors to 60 m, 42 beyond 3 sigma in one flight; cv: 12 m, none; auto now
    refuses SIH's IMU as too noisy, see Navigator._choose_filter), and SIH's
    EKF2 heading is up to 17 degrees off its ground truth while hovering and after the
    GNSS loss: the first fixes must come with the views rotated that much (after them,
    views are turned by the error the fixes measure, nav/heading.py)."""
    cfg = Config()
    return replace(cfg, gnss=replace(cfg.gnss, mode="always"),
                   filter=replace(cfg.filter, kind="cv"),
                   match=replace(cfg.match, max_rotation_deg=15.0))


def px4_params(spec: SitlSpec, home: tuple[float, float], gps_id: int) -> dict[str, float]:
    """Boot parameters (also in the README): SIH's home over the map at 0 m AMSL; skyfix
    as EKF2 auxiliary global position slot 0 (id = output.gps_id, horizontal position),
    its noise at least 3 m (EKF2 takes max(eph, EKF2_AGP0_NOISE); skyfix's fixes are off
    by up to ~5 m at the 95th percentile, more than the eph it claims) and its
    innovation gate 5 sigma (as ArduPilot's EK3_POS_I_GATE; PX4's default is 3);
    the mission's height and speeds; a quick landing (the camera cannot localise below
    about 20 m). SIH's default drag (SIH_KDV 1 N per m/s on its 1 kg quad) tilts it by
    about 30 degrees at 6 m/s, and the camera with it; 0.2 flies 5 m/s at about 6 degrees,
    as ArduPilot's SITL copter does."""
    return {"SIH_LOC_LAT0": home[0], "SIH_LOC_LON0": home[1], "SIH_LOC_H0": 0.0,
            "SIH_KDV": 0.2,
            "EKF2_AGP0_ID": gps_id, "EKF2_AGP0_CTRL": 1,
            "EKF2_AGP0_NOISE": 3.0, "EKF2_AGP0_GATE": 5.0,
            "MIS_TAKEOFF_ALT": spec.agl_m, "RTL_RETURN_ALT": spec.agl_m,
            "MPC_XY_CRUISE": spec.speed_mps, "MPC_TKO_SPEED": 3.0,
            "MPC_Z_VEL_MAX_DN": 3.0, "MPC_Z_V_AUTO_DN": 3.0,
            "MPC_LAND_ALT1": 8.0, "MPC_LAND_ALT2": 3.0, "MPC_LAND_SPEED": 1.0,
            **spec.extra_params}


class Px4Process(SimulatorProcess):
    """PX4 SITL with SIH (`root`/bin/px4, `root`/etc) as instance `instance` in `workdir`
    (wiped first), `params` set at boot. The start-up scripts call the px4-<module>
    links in bin/; a copy that lost them (e.g. made by something that drops symlinks)
    runs from a private bin/ in `workdir` with the links made there."""

    def __init__(self, root: Path, workdir: Path, instance: int,
                 params: dict[str, float], model: str = "sihsim_quadx") -> None:
        root, workdir = Path(root).absolute(), Path(workdir).absolute()
        if not (root / "bin" / "px4").is_file():
            raise SkyfixError(f"PX4 SITL not found: {root / 'bin' / 'px4'}")
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.instance, self.bin = instance, _runnable_bin(root, workdir)
        env = {**os.environ, "PX4_SIM_MODEL": model, "PX4_SIMULATOR": "sihsim",
               **{f"PX4_PARAM_{k}": str(v) for k, v in params.items()}}
        super().__init__([str(self.bin / "px4"), "-d", "-i", str(instance),
                          str(root / "etc")], workdir, "px4.log", env)

    @property
    def system_id(self) -> int:
        return self.instance + 1  # MAV_SYS_ID of instance N

    def listener(self, topic: str) -> dict[str, str]:
        """One uORB message of `topic` as field -> text (px4-listener), {} if none."""
        try:
            run = subprocess.run([str(self.bin / "px4-listener"), "--instance",
                                  str(self.instance), topic, "-n", "1"], cwd=self.workdir,
                                 capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return {}
        pairs = (line.strip().split(": ", 1) for line in run.stdout.splitlines())
        return {p[0]: p[1] for p in pairs if len(p) == 2}


def _runnable_bin(root: Path, workdir: Path) -> Path:
    names = (root / "bin-symlinks.txt").read_text().split()
    if all((root / "bin" / n).is_symlink() for n in names):
        return root / "bin"
    own = workdir / "bin"
    own.mkdir()
    for name in ("px4", "px4-alias.sh"):
        shutil.copy2(root / "bin" / name, own / name)
    for name in names:
        (own / name).symlink_to("px4")
    return own


def run_sitl_px4(ortho: Path, out: Path, spec: SitlSpec, cfg: Config | None = None,
                 pack: Path | None = None, root: Path | None = None) -> dict:
    """Fly the closed loop of the module doc; returns (and writes) report.json. `cfg`:
    skyfix's configuration (default `sim_config()`); `root`: the PX4 folder (bin/px4,
    etc/), default ../shared/sitl/px4."""
    if spec.spoof_mps > 0 or spec.gps_delay_ms:
        raise SkyfixError("--spoof and --gps-delay-ms need ArduPilot's simulated GNSS "
                          "(--autopilot arducopter)")
    if cfg is not None and cfg.gnss.mode == "ekf-source":
        raise SkyfixError("--gnss-mode ekf-source switches ArduPilot's EKF3 source sets; PX4 "
                          "has none (use always)")
    root = root or default_root()
    if root is None:
        raise SkyfixError(f"no PX4 SITL: give --binary PATH (a folder with bin/px4 and "
                          f"etc/; {SHARED_SITL / 'px4'} has none)")
    if not (Path(root) / "bin" / "px4").is_file():
        raise SkyfixError(f"PX4 SITL not found: {Path(root) / 'bin' / 'px4'}")
    cfg = cfg or sim_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pack = pack or build_pack([ortho], out / "pack", force=True, progress=False)
    with PoseRenderer(ortho, FlightSpec(agl_m=spec.agl_m, fps=spec.fps,
                                        seed=spec.seed)) as renderer:
        _check_fits(renderer, spec)
        centre, to_lla = map_frame(renderer)
        home = to_lla(0.0, 0.0)
        params = px4_params(spec, home, cfg.output.gps_id)
        instance = free_px4_instance()
        cfg = replace(cfg, daemon=replace(cfg.daemon, autopilot="px4"),
                      output=replace(cfg.output, system_id=instance + 1))
        with Px4Process(root, out / "px4", instance, params) as proc:
            with GcPauses() as gc_pauses:
                timeline, loop, flags = _fly(proc, renderer, home, to_lla, spec, cfg, pack,
                                             out)
        report = {"spec": asdict(spec), "autopilot": "px4", "binary": str(root),
                  "sitl": {"pid": proc.proc.pid, "exit_status": proc.proc.returncode},
                  "home_lat_lon": list(home), "gnss_mode": cfg.gnss.mode, "params": params,
                  "ekf2_flags_during_gnss_loss": flags,
                  **flight_report(loop, timeline, renderer, centre, spec, cfg, gc_pauses)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fly(proc: Px4Process, renderer: PoseRenderer, home, to_lla, spec: SitlSpec, cfg: Config,
         pack: Path, out: Path) -> tuple[Timeline, Loop, dict]:
    """The flight itself, on a running simulator: (timeline, loop, EKF2 flags read
    during the GNSS loss)."""
    vehicle = Vehicle(f"udpout:127.0.0.1:{GCS_PORT + proc.instance}", out / "flight.tlog",
                      proc.check_alive, target=(proc.system_id, 1), px4=True)
    loop = Loop(vehicle, renderer, spec, cfg, pack, out,
                f"udpin:127.0.0.1:{OFFBOARD_REMOTE_PORT + proc.instance}")
    t_start = t_off = t_landed = None
    flags: dict = {}
    try:
        vehicle.wait(lambda: getattr(vehicle.latest("HEARTBEAT"), "system_status", 0)
                     == mav2.MAV_STATE_STANDBY, "HEARTBEAT with state STANDBY (booted)", 60.0)
        for msg_id, rate_hz in ((mav2.MAVLINK_MSG_ID_HIL_STATE_QUATERNION, 10.0),
                                (mav2.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, 10.0),
                                (mav2.MAVLINK_MSG_ID_ESTIMATOR_STATUS, 5.0),
                                (mav2.MAVLINK_MSG_ID_GPS_RAW_INT, 5.0)):
            vehicle.set_message_rate(msg_id, rate_hz)
        for msg_id in _QUIET:
            vehicle.command(mav2.MAV_CMD_SET_MESSAGE_INTERVAL, msg_id, -1)
        vehicle.check_params({k: v for k, v in px4_params(spec, home, cfg.output.gps_id).items()
                              if not k.startswith("SIH_LOC_L")})  # float32 of a latitude
        loop.start()
        items = plan_mission(home, to_lla, spec)[1:]  # PX4 has no home slot
        items[-1] = replace(items[-1], frame=mav2.MAV_FRAME_MISSION)  # return to launch
        vehicle.upload_mission(items)
        vehicle.set_mode(AUTO_MISSION, mode_params=(4, 4))
        vehicle.arm(spec.arm_timeout_s)
        t_start = time.time_ns()
        loop.camera.blank_windows_ns = [(t_start + int(a * 1e9), t_start + int((a + d) * 1e9))
                                        for a, d in spec.blanks]
        log.info("armed in AUTO.MISSION; mission started")
        t_off, flags = _until_landed(vehicle, proc, spec, t_start)
        t_landed = time.time_ns()
    finally:
        vehicle.close()
        loop.close()
    return Timeline(t_start, t_off, t_landed, tuple(loop.camera.blank_windows_ns)), loop, flags


FLAGS_READ_AFTER_S = 20.0  # the EKF's flags are read this long into the GNSS loss


def _until_landed(vehicle: Vehicle, proc: Px4Process, spec: SitlSpec, t_start: int
                  ) -> tuple[int | None, dict]:
    """Cut the GNSS at `gnss_off_after_s`, read EKF2's flags FLAGS_READ_AFTER_S later,
    wait for the disarm. (Unix ns of the cut or None, {flag: text} or {})."""
    t_off: list[int] = []
    flags: dict = {}

    def read_flags(_elapsed_s: float) -> float:
        got = proc.listener("estimator_status_flags")
        flags.update({k: got.get(k) for k in ("cs_aux_gpos", "cs_gnss_pos",
                                               "cs_inertial_dead_reckoning")})
        log.info("EKF2 flags %s", flags)
        return math.inf

    off_s = spec.gnss_off_after_s if spec.gnss_off_after_s >= 0 else math.inf
    fly_schedule(vehicle, t_start, spec.mission_timeout_s * max(spec.laps, 1),
                 [(off_s, gnss_cut(vehicle, "SIM_GPS_USED", t_off)),
                  (off_s + FLAGS_READ_AFTER_S, read_flags)])
    return (t_off[0] if t_off else None), flags
