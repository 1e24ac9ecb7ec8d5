"""The simulated camera: frames rendered from the orthophoto at the pose the simulator
itself reports (SIM_STATE, or PX4's HIL_STATE_QUATERNION: true position, altitude and
attitude), in real time. It serves the real ArduPilot and PX4 SITLs (sim/sitl.py,
sim/sitl_px4.py) and skyfix's autopilot emulator (sim/closed_loop.py) alike.

    SIM_STATE (arrival Unix ns, lat/lon, alt AMSL, roll/pitch/yaw)  -> on_message
    thread, `fps` times a second: render at the latest true pose -> Frame(t_ns = that
    pose's arrival time) -> faults, if any -> the daemon's latest-frame queue

The ground is flat at 0 m AMSL (PoseRenderer), so the simulator's home must be at 0 m
AMSL for its altitude to be the height above the ground. During each blank window
(Unix ns, start inclusive, end exclusive) the frames are black: a covered or failed
camera, which the daemon refuses as blank after the first. The camera is not on the
MAVLink link: with `truth` given, when the last SIM_STATE is more than `STALE_POSE_NS`
old (the link is down), it renders at `truth`'s pose now.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.warp import transform as crs_transform

from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.core.types import Frame
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.sim.faults import CameraFaults
from skyfix.sim.flight import PoseRenderer


@dataclass(frozen=True)
class TruePose:
    """The simulator's true state, stamped with its arrival (Unix ns)."""

    t_ns: int
    lat_deg: float
    lon_deg: float
    alt_amsl_m: float
    rpy_rad: tuple[float, float, float]


def sim_state_pose(msg, t_ns: int) -> TruePose | None:
    """TruePose of a SIM_STATE message (ArduPilot fills lat/lon in 1e-7 degrees and the
    lat_int/lon_int extensions; MAVLink says degrees) or of a HIL_STATE_QUATERNION (PX4
    SIH streams its ground truth so: 1e-7 degrees, mm AMSL, attitude quaternion w, x,
    y, z), None for any other message."""
    if msg.get_type() == "HIL_STATE_QUATERNION":
        w, x, y, z = (float(v) for v in msg.attitude_quaternion)
        rpy = (math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y)),
               math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x)))),
               math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        return TruePose(t_ns, msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3, rpy)
    if msg.get_type() != "SIM_STATE":
        return None
    lat, lon = float(msg.lat), float(msg.lon)
    if getattr(msg, "lat_int", 0) or getattr(msg, "lon_int", 0):
        lat, lon = msg.lat_int * 1e-7, msg.lon_int * 1e-7
    elif abs(lat) > 90.0 or abs(lon) > 180.0:
        lat, lon = lat * 1e-7, lon * 1e-7
    return TruePose(t_ns, lat, lon, float(msg.alt),
                    (float(msg.roll), float(msg.pitch), float(msg.yaw)))


class SimCamera:
    """Renders `fps` frames a second at the latest true pose into `queue` (see the module
    doc); `faults` (sim/faults.py CameraFaults) spoil them on their schedule. `rendered`
    counts frames, `skipped` ticks with no fresh pose, `render_ms` holds the last 100
    render times."""

    STALE_POSE_NS = 500_000_000

    def __init__(self, renderer: PoseRenderer, queue: LatestFrameQueue, fps: float,
                 blank_windows_ns: Sequence[tuple[int, int]] = (),
                 truth: Callable[[int], TruePose] | None = None,
                 faults: CameraFaults | None = None) -> None:
        self.renderer, self.queue, self.fps = renderer, queue, fps
        self.blank_windows_ns = list(blank_windows_ns)
        self.truth, self.faults = truth, faults
        self.rendered = 0
        self.skipped = 0
        self.render_ms: list[float] = []
        self._pose: TruePose | None = None
        self._used_t_ns = 0
        self._thread: threading.Thread | None = None

    def on_message(self, msg, t_ns: int) -> None:
        pose = sim_state_pose(msg, t_ns)
        if pose is not None:
            self._pose = pose

    def blank_at(self, t_ns: int) -> bool:
        return any(a <= t_ns < b for a, b in self.blank_windows_ns)

    def start(self, stop: threading.Event) -> SimCamera:
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
            next_t = max(next_t + period, time.monotonic())  # never a burst to catch up
            pose = self._current_pose()
            if pose is None or pose.t_ns == self._used_t_ns:
                self.skipped += 1
                continue
            self._used_t_ns = pose.t_ns
            image, t_ns = self.render(pose), pose.t_ns
            if self.faults is not None:
                image, t_ns = self.faults.apply(image, t_ns)
            self.queue.put(Frame(self.rendered, t_ns, image))
            self.rendered += 1

    def _current_pose(self) -> TruePose | None:
        pose, now = self._pose, time.time_ns()
        if self.truth is not None and (pose is None or now - pose.t_ns > self.STALE_POSE_NS):
            return self.truth(now)
        return pose

    def render(self, pose: TruePose) -> np.ndarray:
        """[H, W, 3] uint8 BGR frame at `pose` (black inside a blank window)."""
        cam = self.renderer.spec.camera
        if self.blank_at(pose.t_ns):
            return np.zeros((cam.height, cam.width, 3), np.uint8)
        t0 = time.perf_counter()
        x, y = crs_transform(WGS84, self.renderer.crs, [pose.lon_deg], [pose.lat_deg])
        image = self.renderer.render(np.array([x[0], y[0]]), pose.alt_amsl_m,
                                     np.array(pose.rpy_rad), self.rendered)
        self.render_ms = [*self.render_ms[-99:], (time.perf_counter() - t0) * 1e3]
        return image
