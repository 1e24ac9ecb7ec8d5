"""Replay a recorded flight through the in-flight chain, as the daemon would fly it.

The flight comes as `ReplayInputs` (sources.open_inputs: a sim flight folder, an image
folder or a video, with a tlog/.bin/.ulg/track CSV or the photos' own EXIF/XMP). The chain
is the daemon's (flight/assembly.py): the same frame gate, navigator, GNSS monitor and send
policy. Frames and telemetry are fed in time order, each frame arriving at its capture
time with the log's IMU samples up to that time (for the IMU filter; the daemon hands
them over the same way), and each send slot with those up to its time (the daemon's output
thread carries its copy of the filter through them). The recorded GNSS reaches the GNSS
monitor and serves as a search prior only before `gnss_off_at_s` (seconds after the first
frame; 0: not at all), and otherwise only scores.
Every 1 / filter.rate_hz the send policy runs on the estimate predicted to that time, and
every message it gives (GPS_INPUT or GLOBAL_POSITION_SENSOR, STATUSTEXT, HEARTBEAT, EKF
source commands) goes to OUT/gps_input.tlog: what the autopilot would have received. Of a
long gap between frames (a frame stamped hours late, say) only the lock budget plus
MAX_GAP_S is sent: the rest would repeat "no fix" and grow the log without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skyfix.maps.tilemap import TileMap
from skyfix.runtime.apps.report import Report, SentEstimate, write_outputs
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Frame, FrameItem, Rejection
from skyfix.runtime.flight.assembly import Chain, build_chain
from skyfix.runtime.io.clock import AutopilotClock
from skyfix.runtime.io.sources import ReplayInputs, open_inputs
from skyfix.runtime.io.telemetry import gnss_sample
from skyfix.runtime.io.tlog import TlogWriter
from skyfix.runtime.nav.navigator import FrameResult

MAX_GAP_S = 30.0  # beyond the lock budget, a gap between frames is recorded this long at most


@dataclass(frozen=True)
class ReplayResult:
    report: Report
    files: tuple[Path, ...]
    frames: tuple[FrameResult, ...] = ()  # what each frame gave (fix, innovation, ...)


def replay(flight: Path | ReplayInputs, pack: Path | TileMap, out: Path, cfg: Config,
           gnss_off_at_s: float = 0.0, progress: bool = True) -> ReplayResult:
    """Replay `flight` (a recorded-flight folder, or inputs from `open_inputs`) over the
    map `pack` (a plain or sharded pack's folder, or one already open). A recorded
    flight's .tlog is stamped as telemetry.clock says (runtime/io/clock.py), as the daemon
    stamped it live."""
    inputs = (flight if isinstance(flight, ReplayInputs)
              else open_inputs(Path(flight), clock=AutopilotClock.from_config(cfg)))
    chain = build_chain(cfg, pack, inputs.camera)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times = inputs.frames.frame_times_ns
    if not len(times):
        raise SkyfixError(f"{inputs.name}: no frames to replay")
    flight_ = _Flight(chain, inputs, int(times[0]), gnss_off_at_s,
                      TlogWriter(out / "gps_input.tlog", cfg.output.system_id,
                                 cfg.output.component_id))
    try:
        for item in tqdm(inputs.frames.frames(), total=len(times), desc="replay",
                         unit="frame", disable=not progress):
            flight_.frame(item)
        flight_.send_until(flight_.next_send + 1)  # the slot after the last frame
    finally:
        flight_.writer.close()
    report, files = write_outputs(out, chain.pack, chain.frame, inputs.truth, flight_.results,
                                  flight_.sent, dict(chain.rejections), inputs.reference)
    return ReplayResult(report, files, tuple(flight_.results))


class _Flight:
    """The replay clock: send slots every 1 / rate_hz from the first frame, frames at their
    capture times, the log's GNSS fed to the monitor as it was received."""

    def __init__(self, chain: Chain, inputs: ReplayInputs, t0_ns: int, gnss_off_at_s: float,
                 writer: TlogWriter) -> None:
        self.chain, self.inputs, self.writer = chain, inputs, writer
        self.t_off_ns = t0_ns + int(gnss_off_at_s * 1e9)
        self.step_ns = int(1e9 / chain.cfg.filter.rate_hz)
        self.next_send = t0_ns
        self.alt_amsl_m = float("nan")
        self.results: list[FrameResult] = []
        self.sent: list[SentEstimate] = []
        gnss = inputs.telemetry.gnss
        self._gnss = gnss[gnss[:, 0] < self.t_off_ns] if len(gnss) else gnss
        self._gnss_next = 0
        self._imu_fed_ns = t0_ns - self.step_ns  # IMU samples up to this are in the Navigator

    def frame(self, item: FrameItem) -> None:
        t = item.t_ns
        self.send_until(t)  # what the autopilot would have received up to this capture
        self._feed_gnss(t)
        if not isinstance(item, Frame):  # a file that could not be read
            self.chain.rejections["bad_image"] += 1
            self.results.append(FrameResult(t, Rejection(t, "bad_image", item.reason), None,
                                            "none", 0.0))
            return
        tel = self.inputs.telemetry.at(t)
        if tel is not None:
            self.alt_amsl_m = tel.alt_amsl_m
        gnss = self.inputs.telemetry.gnss_at(t) if t < self.t_off_ns else None
        self._feed_imu(t)
        step = self.chain.on_frame(item, t, tel, gnss)
        for msg in step.messages:
            self.writer.write(msg, t)
        self.results.append(step.result)

    def send_until(self, t_ns: int) -> None:
        """Run every send slot before `t_ns` (of a long gap, the first lock budget +
        MAX_GAP_S; the slots after that are skipped)."""
        cfg = self.chain.cfg
        gap_end = self.next_send + int((cfg.output.lock_budget_s + MAX_GAP_S) * 1e9)
        while self.next_send < t_ns:
            if self.next_send >= gap_end:
                self.next_send += -(-(t_ns - self.next_send) // self.step_ns) * self.step_ns
                break
            now = self.next_send
            self._feed_gnss(now)
            tel = self.inputs.telemetry.at(now)  # the autopilot's heading, for the visual yaw
            heading = None if tel is None else float(np.degrees(tel.yaw_rad))
            self._feed_imu(now)  # as the daemon's output thread carries its filter along
            slot = self.chain.tick(now, self.chain.navigator.estimate(now, self.alt_amsl_m),
                                   heading_deg=heading)
            for msg in slot.messages:
                self.writer.write(msg, now)
            if slot.position is not None:
                self.sent.append(SentEstimate(now, slot.estimate, slot.fix_type))
            self.next_send += self.step_ns

    def _feed_imu(self, t_ns: int) -> None:
        """The log's IMU samples received up to `t_ns` to the Navigator."""
        imu, rpy = self.inputs.telemetry.imu_between(self._imu_fed_ns, t_ns)
        if len(imu):
            self.chain.navigator.on_imu(imu[:, 0], imu[:, 1:4], imu[:, 4:7], rpy)
        self._imu_fed_ns = max(self._imu_fed_ns, t_ns)

    def _feed_gnss(self, t_ns: int) -> None:
        """The log's GNSS reports received up to `t_ns` (before the GNSS-off time) to the
        GNSS monitor, as the daemon's receiver thread would hand them over."""
        g, monitor = self._gnss, self.chain.policy.gnss
        while self._gnss_next < len(g) and g[self._gnss_next, 0] <= t_ns:
            monitor.observe_sample(gnss_sample(g[self._gnss_next]))
            self._gnss_next += 1
