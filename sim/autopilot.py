"""`skyfix sim autopilot`: an ArduCopter stand-in speaking MAVLink 2 over UDP.

It flies a lawn-mower mission over a map (sim/trajectory.py) in real time and streams
what a flight controller streams to a companion computer, as system 1 / component 1:

    HEARTBEAT, SYSTEM_TIME        1 Hz
    ATTITUDE                      25 Hz (truth + Gauss-Markov attitude error)
    SCALED_IMU                    FlightSpec.imu_hz (sim/imu.py: noise, bias, bias drift)
    GLOBAL_POSITION_INT, SIM_STATE 10 Hz (true position; SIM_STATE: true pose, as SITL
                                   sends when asked)
    GPS_RAW_INT                   5 Hz (truth + Gauss-Markov error; no fix after the cut)

At `gnss_off_at_s` its GNSS loses the fix (fix_type 1, no satellites) for good. Every
GPS_INPUT it receives is recorded with its arrival time. GLOBAL_POSITION_INT keeps
reporting the true position after the cut: the emulator has no EKF of its own; the
companion only uses it for heights and velocity.

`AutopilotSpec.faults` (sim/faults.py) spoils the link on a schedule: telemetry gaps,
link loss (nothing sent, nothing heard), clock steps of the time fields and a GNSS
position that a spoofer drags away while it still reports a healthy fix.

MAV_CMD_SET_MESSAGE_INTERVAL for SCALED_IMU or ATTITUDE sets that stream's rate, as an
autopilot does (the commands are recorded with what else it receives). Its messages carry
time_boot_ms of its boot clock (the start of the mission, clock faults included), and a
TIMESYNC request (tc1 = 0) is answered as ArduPilot does: tc1 = that clock in ns when the
request is read, ts1 echoed.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.flight.daemon import raise_thread_priority
from skyfix.runtime.io.telemetry import open_link
from skyfix.sim.camera import TruePose
from skyfix.sim.faults import FaultSchedule
from skyfix.sim.flight import FlightSpec, PoseRenderer
from skyfix.sim.imu import ImuSensor, ImuSpec, scaled_imu
from skyfix.sim.render import ground_offsets, to_lla
from skyfix.sim.trajectory import (
    Trajectory,
    TrajectoryState,
    Wobble,
    gauss_markov,
    plan_lawnmower,
)

_ARMED_AUTO = (mav2.MAV_MODE_FLAG_SAFETY_ARMED | mav2.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
               | mav2.MAV_MODE_FLAG_STABILIZE_ENABLED | mav2.MAV_MODE_FLAG_GUIDED_ENABLED
               | mav2.MAV_MODE_FLAG_AUTO_ENABLED)
_COPTER_AUTO = 3  # ArduCopter custom_mode AUTO
_RATES_HZ = {"heartbeat": 1.0, "attitude": 25.0, "position": 10.0, "gnss": 5.0}
_STREAM_OF = {mav2.MAVLINK_MSG_ID_SCALED_IMU: "imu", mav2.MAVLINK_MSG_ID_ATTITUDE: "attitude"}


@dataclass(frozen=True)
class AutopilotSpec:
    """The mission and the sensors. Lengths in metres, times in seconds."""

    duration_s: float = 60.0
    gnss_off_at_s: float = 20.0  # GNSS loses its fix at this time (< 0: never)
    flight: FlightSpec = FlightSpec()  # height, speed, seed, camera, sensor errors
    faults: FaultSchedule = FaultSchedule()  # link faults (sim/faults.py)


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the emulator received: arrival Unix time (ns), its type and its bytes as
    received (~100 B, not the parsed object's ~2 kB: a long soak receives 16 a second)."""

    t_ns: int
    kind: str
    buf: bytes

    @property
    def msg(self) -> mav2.MAVLink_message:
        """The message, parsed again from its bytes."""
        return mav2.MAVLink(None).decode(bytearray(self.buf))


class AutopilotEmulator:
    """Flies `spec` over the map `ortho` and talks MAVLink on `link` (pymavlink string;
    default: send to a companion listening on udpin:127.0.0.1:14550)."""

    def __init__(self, ortho: Path, spec: AutopilotSpec = AutopilotSpec(),
                 link: str = "udpout:127.0.0.1:14550") -> None:
        if not 0 < spec.duration_s <= 86_400:
            raise SkyfixError(f"autopilot duration must be positive and at most a day (it "
                              f"flies in real time), got {spec.duration_s}")
        self.spec, self.link = spec, link
        fs = spec.flight
        with PoseRenderer(ortho, fs) as r:  # opens and checks the map; bounds and CRS
            self.crs, bounds, self.convergence_rad = r.crs, r.bounds_en, r.convergence_rad
        rng = np.random.default_rng(fs.seed)
        corners = ground_offsets(fs.camera, fs.agl_m)
        plan = plan_lawnmower(bounds, float(np.hypot(*corners.T).max()),
                              float(np.ptp(corners[:, 1])), fs.speed_mps,
                              fs.speed_mps * spec.duration_s + 1.0, rng)
        self.trajectory = Trajectory(plan, Wobble.random(fs.wobble_deg, rng), fs.speed_mps,
                                     fs.agl_m)  # flat ground at 0 m AMSL, home below start
        noise = np.random.default_rng([fs.seed, 3])
        n_att = int(spec.duration_s * 25) + 2
        self._att_err = np.concatenate([gauss_markov(noise, n_att, 0.04, 5.0, 1.0, 2),
                                        gauss_markov(noise, n_att, 0.04, 20.0, 1.0, 1)], 1)
        self._att_err *= np.radians([fs.attitude_noise_deg, fs.attitude_noise_deg,
                                     fs.yaw_noise_deg])
        self._gnss_err = gauss_markov(noise, int(spec.duration_s * 5) + 2, 0.2, 30.0,
                                      fs.gnss_sigma_m, 2)
        self.rates_hz = {**_RATES_HZ, "imu": fs.imu_hz}
        self._imu = ImuSensor(ImuSpec(rate_hz=fs.imu_hz), np.random.default_rng([fs.seed, 5]))
        self.received: list[ReceivedMessage] = []
        self.start_ns: int | None = None
        self.sent = 0
        self._conn = None

    # -- truth ----------------------------------------------------------------------------

    def true_state(self, t_ns: int) -> TrajectoryState:
        """The true state at Unix time `t_ns` (one instant: arrays of length 1), about true
        north as an autopilot reports it (position in the map grid)."""
        if self.start_ns is None:
            raise RuntimeError("the emulator has not started")
        return self._state((t_ns - self.start_ns) * 1e-9)

    def _state(self, t_s: float) -> TrajectoryState:
        return self.trajectory.sample(np.array([t_s])).in_true_north(self.convergence_rad)

    def true_pose(self, t_ns: int) -> TruePose:
        """The true pose at Unix time `t_ns`, as the camera takes it from SIM_STATE."""
        st = self.true_state(t_ns)
        lat, lon = self.to_lla(st.en_m)
        return TruePose(int(t_ns), float(lat[0]), float(lon[0]), float(st.alt_amsl_m[0]),
                        tuple(float(a) for a in st.rpy_rad[0]))

    def to_lla(self, en_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([N] lat_deg, [N] lon_deg) of [N, 2] map points."""
        return to_lla(self.crs, np.atleast_2d(en_m))

    # -- running --------------------------------------------------------------------------

    def run(self, stop: threading.Event, system_id: int = 1) -> None:
        """Stream telemetry and record GPS_INPUT until `stop` or the mission's end. The
        emulator stands for an autopilot on its own hardware: its thread runs at raised
        priority where allowed, so that what it records is what skyfix sent, not how long
        it waited for a CPU shared with skyfix."""
        raise_thread_priority()
        self._conn = open_link(self.link, system_id, 1)
        self.start_ns = time.time_ns()
        due = dict.fromkeys(self.rates_hz, self.start_ns)
        end_ns = self.start_ns + int(self.spec.duration_s * 1e9)
        try:
            while not stop.is_set():
                now = time.time_ns()
                if now >= end_ns:
                    break
                link_down = self.spec.faults.active("link-loss", (now - self.start_ns) * 1e-9)
                for stream, rate in self.rates_hz.items():
                    if now >= due[stream]:  # the state as it is now, even when late
                        if not link_down:
                            self._emit(stream, time.time_ns())
                        due[stream] += int(1e9 / rate)
                self._receive(keep=not link_down)
                stop.wait(max(0.0, (min(due.values()) - time.time_ns()) * 1e-9))
        finally:
            self._conn.close()

    def _receive(self, keep: bool = True) -> None:
        while (msg := self._conn.recv_msg()) is not None:
            if keep and msg.get_type() == "TIMESYNC" and msg.tc1 == 0:
                now = time.time_ns()
                boot_ns = now - self.start_ns + self.spec.faults.clock_step_ns(
                    (now - self.start_ns) * 1e-9)
                self._conn.mav.send(self._conn.mav.timesync_encode(boot_ns, msg.ts1))
                self.sent += 1
            if (keep and msg.get_type() == "COMMAND_LONG"
                    and msg.command == mav2.MAV_CMD_SET_MESSAGE_INTERVAL
                    and int(msg.param1) in _STREAM_OF and msg.param2 > 0):
                self.rates_hz[_STREAM_OF[int(msg.param1)]] = 1e6 / msg.param2
            if keep and msg.get_type() in ("GPS_INPUT", "STATUSTEXT", "HEARTBEAT",
                                           "NAMED_VALUE_FLOAT", "COMMAND_LONG"):
                self.received.append(ReceivedMessage(time.time_ns(), msg.get_type(),
                                                     bytes(msg.get_msgbuf())))

    def _emit(self, stream: str, t_ns: int) -> None:
        mav = self._conn.mav
        t_s = (t_ns - self.start_ns) * 1e-9
        skew_ns = self.spec.faults.clock_step_ns(t_s)  # the autopilot's clocks, not the truth
        boot_ms = int(t_s * 1e3) + skew_ns // 1_000_000
        st = self._state(t_s)
        gap = self.spec.faults.active("telemetry-gap", t_s)
        msgs = []
        if stream == "heartbeat":
            msgs.append(mav.heartbeat_encode(mav2.MAV_TYPE_QUADROTOR,
                                             mav2.MAV_AUTOPILOT_ARDUPILOTMEGA, _ARMED_AUTO,
                                             _COPTER_AUTO, mav2.MAV_STATE_ACTIVE))
            msgs.append(mav.system_time_encode((t_ns + skew_ns) // 1000, boot_ms))
        elif stream == "attitude" and gap:
            pass
        elif stream == "attitude":
            rpy = st.rpy_rad[0] + self._att_err[min(int(round(t_s * 25)),
                                                    len(self._att_err) - 1)]
            gyro = st.body_rates_radps()[0]
            msgs.append(mav.attitude_encode(boot_ms, float(rpy[0]), float(rpy[1]),
                                            float((rpy[2] + np.pi) % (2 * np.pi) - np.pi),
                                            *map(float, gyro)))
        elif stream == "imu" and not gap:
            acc, gyro = self._imu.measure(np.array([t_s]), st.specific_force_body_mps2(),
                                          st.body_rates_radps())
            msgs.append(scaled_imu(mav, boot_ms, acc[0], gyro[0], st.R_ned_body()[0]))
        elif stream == "imu":
            pass
        elif stream == "position":
            lat, lon = self.to_lla(st.en_m)
            lat_e7, lon_e7 = int(round(lat[0] * 1e7)), int(round(lon[0] * 1e7))
            alt = float(st.alt_amsl_m[0])
            vel_cms = [int(round(v * 100)) for v in st.vel_ned_mps[0]]
            hdg = int(round(np.degrees(st.rpy_rad[0, 2]) % 360 * 100)) % 36000
            if not gap:
                msgs.append(mav.global_position_int_encode(
                    boot_ms, lat_e7, lon_e7, int(round(alt * 1000)),
                    int(round(alt * 1000)), *vel_cms, hdg))  # home on the ground at 0 m
            msgs.append(_sim_state(st, lat[0], lon[0]))
        else:
            msgs.append(self._gnss(t_ns + skew_ns, t_s, st))
        for m in msgs:
            mav.send(m)
            self.sent += 1

    def _gnss(self, t_ns: int, t_s: float, st: TrajectoryState) -> mav2.MAVLink_message:
        mav = self._conn.mav
        if 0 <= self.spec.gnss_off_at_s <= t_s:  # jammed: no fix, no satellites
            return mav.gps_raw_int_encode(t_ns // 1000, mav2.GPS_FIX_TYPE_NO_FIX, 0, 0, 0,
                                          65535, 65535, 65535, 65535, 0)
        err = self._gnss_err[min(int(round(t_s * 5)), len(self._gnss_err) - 1)]
        err = err + self.spec.faults.spoof_offset_en_m(t_s)
        lat, lon = self.to_lla(st.en_m + err)
        speed = float(np.hypot(*st.vel_ned_mps[0, :2]))
        cog = int(round(np.degrees(np.arctan2(st.vel_ned_mps[0, 1], st.vel_ned_mps[0, 0]))
                        % 360 * 100)) % 36000
        h_acc = max(1, round(self.spec.flight.gnss_sigma_m * 1000))
        alt_mm = int(round(st.alt_amsl_m[0] * 1000))
        return mav.gps_raw_int_encode(t_ns // 1000, mav2.GPS_FIX_TYPE_3D_FIX,
                                      int(round(lat[0] * 1e7)), int(round(lon[0] * 1e7)),
                                      alt_mm, 80, 120, int(round(speed * 100)), cog, 14,
                                      alt_mm, h_acc, round(1.5 * h_acc), 150)

    # -- records --------------------------------------------------------------------------

    def gps_inputs(self) -> list[ReceivedMessage]:
        return [r for r in self.received if r.kind == "GPS_INPUT"]

    def write_received(self, path: Path) -> Path:
        """Write what was received as a .tlog (arrival time + the message as sent)."""
        path = Path(path)
        with open(path, "wb") as f:
            for r in self.received:
                f.write(struct.pack(">Q", r.t_ns // 1000) + r.buf)
        return path


def _sim_state(st: TrajectoryState, lat_deg: float, lon_deg: float):
    """SIM_STATE of the true state `st` (one instant): attitude as quaternion and Euler
    angles, body specific force and rates, position in degrees (and 1e-7 degrees)."""
    (roll, pitch, yaw), (vn, ve, vd) = st.rpy_rad[0], st.vel_ned_mps[0]
    cr, cp, cy = np.cos(np.array([roll, pitch, yaw]) / 2)
    sr, sp, sy = np.sin(np.array([roll, pitch, yaw]) / 2)
    q = (cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
         cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy)
    return mav2.MAVLink_sim_state_message(
        *map(float, q), float(roll), float(pitch), float(yaw),
        *map(float, st.specific_force_body_mps2()[0]), *map(float, st.body_rates_radps()[0]),
        float(lat_deg), float(lon_deg), float(st.alt_amsl_m[0]), 0.0, 0.0,
        float(vn), float(ve), float(vd), int(round(lat_deg * 1e7)), int(round(lon_deg * 1e7)))
