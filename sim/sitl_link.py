"""A real autopilot simulator as a process, and a ground-station link that drives it.

`SimulatorProcess` runs a simulator binary as a child of this (long-lived) process and
always stops it on exit (SIGTERM, then SIGKILL), so no simulator outlives the run.
`SitlProcess` starts the ArduCopter SITL binary in a fresh working directory with its
home given (it checks its parent on every physics step and exits when the parent is
gone); sim/sitl_px4.py starts PX4 SIH.

`Vehicle` is the ground-station side (system 255) on the simulator's first MAVLink
port (ArduPilot: TCP; PX4: UDP, where it also sends a GCS HEARTBEAT each second so that
PX4 learns its address and sees a ground station). A receiver thread records every
message into a tlog and keeps the latest of each type and each parameter's last
reported value (a vector parameter is answered with one PARAM_VALUE per component, so
the latest PARAM_VALUE alone can miss the one asked for); every step of a flight is a
request followed by a wait for its answer (PARAM_VALUE, COMMAND_ACK, MISSION_ACK) or
for the state it asks for (HEARTBEAT mode and armed flag), resent at `RESEND_S` until
`timeout_s`, never a fixed sleep.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.mavlink import pin_mavlink2

log = logging.getLogger("skyfix.sim.sitl")

RESEND_S = 1.0  # a request without its answer is sent again after this long
GCS_SYSTEM_ID = 255
ARDUPILOT_PORT = 5760  # SERIAL0 of instance 0; SERIAL1 is +2, SERIAL2 +3; -I N adds 10 N


def free_instance() -> int:
    """An ArduPilot SITL instance number whose three TCP ports are free here."""
    for instance in range(0, 40):
        base = ARDUPILOT_PORT + 10 * instance
        try:
            for port in (base, base + 2, base + 3):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return instance
    raise SkyfixError("no free ArduPilot SITL instance (TCP ports 5760..6155 all busy)")


Action = Callable[[float], float]  # called when due, with the seconds since the start;
# returns when it is next due (inf: done)


def gnss_cut(vehicle: Vehicle, param: str, t_off: list[int]) -> Action:
    """The action that switches the simulator's GNSS off (`param` = 0) and appends the Unix
    ns it did so to `t_off`."""
    def cut(_elapsed_s: float) -> float:
        vehicle.set_param(param, 0)
        t_off.append(time.time_ns())
        log.info("simulated GNSS off")
        return math.inf
    return cut


def fly_schedule(vehicle: Vehicle, t_start_ns: int, timeout_s: float,
                 schedule: Sequence[tuple[float, Action]]) -> None:
    """Until the vehicle disarms, call each (due_s, action) of `schedule` when `due_s`
    seconds since `t_start_ns` (Unix ns) have passed, then when it says it is next due;
    SkyfixError if the vehicle is still armed after `timeout_s`."""
    due = [d for d, _ in schedule]
    deadline = time.monotonic() + timeout_s
    while vehicle.armed():
        elapsed_s = (time.time_ns() - t_start_ns) * 1e-9
        for i, (_, action) in enumerate(schedule):
            if elapsed_s >= due[i]:
                due[i] = action(elapsed_s)
        next_s = min(due, default=math.inf)
        vehicle.wait(lambda next_s=next_s: not vehicle.armed()
                     or (time.time_ns() - t_start_ns) * 1e-9 >= next_s,
                     "landing (disarm)", max(deadline - time.monotonic(), 0.1))


class SimulatorProcess:
    """A simulator subprocess (`proc`) logging into `workdir`/`log_name`; a context manager
    that always stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, args: Sequence[str], workdir: Path, log_name: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self._log = open(self.workdir / log_name, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(list(args), cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        log.info("simulator pid %d: %s", self.proc.pid, " ".join(args))

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise SkyfixError(f"simulator exited with status {code} (see {self._log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SitlProcess(SimulatorProcess):
    """The ArduCopter SITL binary running in `workdir` (wiped first) as instance
    `instance`, home (lat, lon, alt AMSL m, heading deg), parameter defaults from the
    files `defaults` and then `params` (written to WORKDIR/skyfix.parm: some, like the
    stream rates, are read only at boot). A context manager."""

    def __init__(self, binary: Path, workdir: Path, home: tuple[float, float, float, float],
                 defaults: Sequence[Path] = (), params: dict[str, float] | None = None,
                 instance: int = 0) -> None:
        binary = Path(binary).absolute()
        if not binary.is_file():
            raise SkyfixError(f"SITL binary not found: {binary}")
        self.binary, self.instance = binary, instance
        shutil.rmtree(workdir, ignore_errors=True)
        Path(workdir).mkdir(parents=True)
        args = [str(binary), "--model", "+", "--speedup", "1", f"-I{instance}",
                "--home", ",".join(f"{v:.7f}" for v in home)]
        files = [str(Path(f).absolute()) for f in defaults]
        if params:
            own = Path(workdir) / "skyfix.parm"
            own.write_text("".join(f"{k} {v:g}\n" for k, v in params.items()))
            files.append(str(own))
        if files:
            args += ["--defaults", ",".join(files)]
        super().__init__(args, workdir, "sitl.log")

    def port(self, serial: int) -> int:
        """TCP port of SERIALn (0, 1 or 2) of this instance."""
        return ARDUPILOT_PORT + 10 * self.instance + (0, 2, 3)[serial]


@dataclass(frozen=True)
class MissionItem:
    """One MISSION_ITEM_INT: `command` (MAV_CMD), lat/lon deg, alt m above home, params 1-4;
    `frame` (PX4 wants MAV_FRAME_MISSION for commands without a position)."""

    command: int
    lat_deg: float = 0.0
    lon_deg: float = 0.0
    alt_m: float = 0.0
    params: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    frame: int = mav2.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT


Listener = Callable[[Any, int], None]  # (pymavlink message, arrival Unix ns)


class Vehicle:
    """Ground-station link to the vehicle (system, component `target`) on pymavlink
    connection `url` (see the module doc). Every message received goes into `tlog` and
    to each of `listeners`. `px4`: integer parameters travel byte-wise in PARAM_SET and
    PARAM_VALUE's float (PX4's encoding; ArduPilot converts them), and a GCS HEARTBEAT
    goes out each second."""

    def __init__(self, url: str, tlog: Path, alive: Callable[[], None] = lambda: None,
                 connect_timeout_s: float = 30.0, target: tuple[int, int] = (1, 1),
                 px4: bool = False) -> None:
        self.listeners: list[Listener] = []
        self.target, self.px4 = target, px4
        self._alive = alive
        self._latest: dict[str, Any] = {}
        self._params: dict[str, float] = {}
        self._texts: list[tuple[int, str]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        deadline = time.monotonic() + connect_timeout_s
        conn = None
        while conn is None:
            alive()
            try:
                conn = mavutil.mavlink_connection(url, source_system=GCS_SYSTEM_ID,
                                                  dialect="ardupilotmega", autoreconnect=False)
            except OSError as exc:  # the simulator has not opened its port yet
                if time.monotonic() > deadline:
                    raise SkyfixError(f"SITL link {url}: cannot connect ({exc})") from exc
                self._stop.wait(0.2)
        pin_mavlink2(conn)
        self.conn = conn
        self._tlog = open(tlog, "wb")  # noqa: SIM115 (closed in close)
        self._thread = threading.Thread(target=self._receive, name="skyfix-sitl-gcs",
                                        daemon=True)
        self._thread.start()

    # -- receiving ------------------------------------------------------------------------

    def _receive(self) -> None:
        next_heartbeat = time.monotonic()
        while not self._stop.is_set():
            if self.px4 and time.monotonic() >= next_heartbeat:
                self.send(mav2.MAVLink_heartbeat_message(
                    mav2.MAV_TYPE_GCS, mav2.MAV_AUTOPILOT_INVALID, 0, 0, 0, 3))
                next_heartbeat = time.monotonic() + 1.0
            try:
                msg = self.conn.recv_match(blocking=True, timeout=0.2)
            except OSError:  # the simulator went away; waits report it
                self._stop.wait(0.2)
                continue
            if msg is None or msg.get_type() == "BAD_DATA":
                continue
            t_ns = time.time_ns()
            self._tlog.write(struct.pack(">Q", t_ns // 1000) + msg.get_msgbuf())
            if (msg.get_srcSystem(), msg.get_srcComponent()) != self.target:
                continue  # e.g. skyfix's own messages, routed here by the autopilot
            with self._cond:
                self._latest[msg.get_type()] = msg
                if msg.get_type() == "PARAM_VALUE":
                    self._params[msg.param_id] = self._param_value(msg)
                elif msg.get_type() == "STATUSTEXT":
                    self._texts.append((t_ns, msg.text))
                    log.info("vehicle: %s", msg.text)
                self._cond.notify_all()
            for listener in self.listeners:
                listener(msg, t_ns)

    def latest(self, kind: str) -> Any:
        with self._cond:
            return self._latest.get(kind)

    def texts(self) -> list[tuple[int, str]]:
        """(arrival Unix ns, text) of every STATUSTEXT so far."""
        with self._cond:
            return list(self._texts)

    def wait(self, ready: Callable[[], bool], what: str, timeout_s: float,
             resend: Callable[[], None] | None = None) -> None:
        """Wait until `ready()`; call `resend` at once and every RESEND_S; SkyfixError
        naming `what` (and the vehicle's last words) after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        next_send = time.monotonic()
        while True:
            self._alive()
            now = time.monotonic()
            if resend is not None and now >= next_send:
                resend()
                next_send = now + RESEND_S
            with self._cond:
                if ready():
                    return
                if now >= deadline:
                    last = "; ".join(t for _, t in self._texts[-3:])
                    raise SkyfixError(f"SITL: no {what} within {timeout_s:g} s "
                                      f"(vehicle said: {last or 'nothing'})")
                self._cond.wait(min(0.2, max(deadline - now, 0.01)))

    # -- requests -------------------------------------------------------------------------

    def send(self, msg) -> None:
        self.conn.mav.send(msg)

    def _param_value(self, msg) -> float:
        if self.px4 and msg.param_type == mav2.MAV_PARAM_TYPE_INT32:
            return float(struct.unpack("<i", struct.pack("<f", msg.param_value))[0])
        return msg.param_value

    def _param_set(self, name: str, value: float):
        """PARAM_SET of `value`; for PX4 an int goes byte-wise as INT32."""
        kind, wire = mav2.MAV_PARAM_TYPE_REAL32, float(value)
        if self.px4 and isinstance(value, int):
            kind = mav2.MAV_PARAM_TYPE_INT32
            wire = struct.unpack("<f", struct.pack("<i", value))[0]
        return mav2.MAVLink_param_set_message(*self.target, name.encode(), wire, kind)

    def _param_is(self, name: str, value: float) -> bool:
        """The vehicle last reported `name` as `value` (to float32 precision)."""
        got = self._params.get(name)
        return got is not None and math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9)

    def set_param(self, name: str, value: float, timeout_s: float = 15.0) -> None:
        """PARAM_SET until the vehicle answers PARAM_VALUE with the value."""
        with self._cond:
            self._params.pop(name, None)  # only an answer to this request counts
        self.wait(lambda: self._param_is(name, value), f"PARAM_VALUE {name}={value:g}",
                  timeout_s, lambda: self.send(self._param_set(name, value)))

    def set_params(self, params: dict[str, float]) -> None:
        for name, value in params.items():
            self.set_param(name, value)

    def check_params(self, params: dict[str, float], timeout_s: float = 15.0) -> None:
        """PARAM_REQUEST_READ each until PARAM_VALUE shows the value (those set at boot)."""
        for name, value in params.items():
            self.wait(lambda name=name, value=value: self._param_is(name, value),
                      f"PARAM_VALUE {name}={value:g}", timeout_s,
                      lambda name=name: self.send(mav2.MAVLink_param_request_read_message(
                          *self.target, name.encode(), -1)))

    def command(self, command: int, *params: float, timeout_s: float = 15.0) -> None:
        """COMMAND_LONG until COMMAND_ACK for it says ACCEPTED."""
        p = [float(v) for v in params] + [0.0] * (7 - len(params))
        with self._cond:
            self._latest.pop("COMMAND_ACK", None)

        def done() -> bool:
            ack = self._latest.get("COMMAND_ACK")
            return (ack is not None and ack.command == command
                    and ack.result == mav2.MAV_RESULT_ACCEPTED)

        self.wait(done, f"accepted COMMAND_ACK for command {command}", timeout_s,
                  lambda: self.send(mav2.MAVLink_command_long_message(*self.target, command,
                                                                      0, *p)))

    def set_message_rate(self, msg_id: int, rate_hz: float) -> None:
        self.command(mav2.MAV_CMD_SET_MESSAGE_INTERVAL, msg_id, 1e6 / rate_hz)

    def mode(self) -> int | None:
        hb = self._latest.get("HEARTBEAT")
        return None if hb is None else int(hb.custom_mode)

    def armed(self) -> bool:
        hb = self._latest.get("HEARTBEAT")
        return hb is not None and bool(hb.base_mode & mav2.MAV_MODE_FLAG_SAFETY_ARMED)

    def set_mode(self, custom_mode: int, timeout_s: float = 15.0,
                 mode_params: tuple[float, float] | None = None) -> None:
        """MAV_CMD_DO_SET_MODE until HEARTBEAT shows `custom_mode`; `mode_params`: its
        params 2 and 3 (PX4: main and sub mode), else (custom_mode, 0)."""
        p2, p3 = mode_params or (custom_mode, 0)
        self.wait(lambda: self.mode() == custom_mode, f"mode {custom_mode}", timeout_s,
                  lambda: self.send(mav2.MAVLink_command_long_message(
                      *self.target, mav2.MAV_CMD_DO_SET_MODE, 0,
                      mav2.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, p2, p3, 0, 0, 0, 0)))

    def arm(self, timeout_s: float) -> None:
        """Arm; the vehicle refuses until its pre-arm checks pass (EKF aligned on GNSS):
        asked again every RESEND_S until HEARTBEAT says armed."""
        self.wait(self.armed, "arming (pre-arm checks)", timeout_s,
                  lambda: self.send(mav2.MAVLink_command_long_message(
                      *self.target, mav2.MAV_CMD_COMPONENT_ARM_DISARM, 0, 1, 0, 0, 0, 0, 0,
                      0)))

    def upload_mission(self, items: Sequence[MissionItem], timeout_s: float = 60.0) -> None:
        """The mission protocol: MISSION_COUNT, answer each MISSION_REQUEST(_INT) with its
        MISSION_ITEM_INT, until MISSION_ACK accepted. Item 0 is the home slot. A vehicle
        still booting answers NO_SPACE ("Only 0 items are supported") or cancels: asked again."""
        deadline = time.monotonic() + timeout_s
        while not self._upload_once(items, max(deadline - time.monotonic(), 1.0)):
            if time.monotonic() > deadline:
                raise SkyfixError("SITL: mission storage not ready (MISSION_ACK NO_SPACE)")
            self._stop.wait(RESEND_S)

    def _upload_once(self, items: Sequence[MissionItem], timeout_s: float) -> bool:
        with self._cond:
            for kind in ("MISSION_ACK", "MISSION_REQUEST", "MISSION_REQUEST_INT"):
                self._latest.pop(kind, None)
        answered: list[Any] = []  # the request messages answered, in order

        def step() -> None:
            req = self._latest.get("MISSION_REQUEST_INT") or self._latest.get("MISSION_REQUEST")
            if req is None or (answered and req is answered[-1]):
                return
            it = items[req.seq]
            self.send(mav2.MAVLink_mission_item_int_message(
                *self.target, req.seq, it.frame, it.command, 0, 1, *it.params,
                int(round(it.lat_deg * 1e7)), int(round(it.lon_deg * 1e7)), float(it.alt_m), 0))
            answered.append(req)

        def done() -> bool:
            step()
            return self._latest.get("MISSION_ACK") is not None

        def count() -> None:  # until the vehicle starts asking for items
            if not answered:
                self.send(mav2.MAVLink_mission_count_message(*self.target, len(items), 0))

        self.wait(done, "MISSION_ACK", timeout_s, count)
        ack = self.latest("MISSION_ACK")
        if ack.type in (mav2.MAV_MISSION_NO_SPACE, mav2.MAV_MISSION_OPERATION_CANCELLED):
            return False
        if ack.type != mav2.MAV_MISSION_ACCEPTED:
            raise SkyfixError(f"SITL refused the mission (MISSION_ACK type {ack.type})")
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.conn.close()
        self._tlog.close()
