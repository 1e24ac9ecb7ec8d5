"""`skyfix run`: the flight daemon.

Three threads share one Navigator's output and never wait on each other:

    receiver  MAVLink in -> TelemetryBuffer (+ listeners); counts garbage; reconnects
              after `daemon.link_timeout_s` of silence or a link error
    vision    latest frame -> Navigator.on_frame -> publishes a copy of the filter;
              frames that are frozen (identical to the previous one) or mis-stamped (off
              the daemon's clock by more than daemon.max_frame_age_s, or not after the
              previous frame) are refused, counted and announced in a STATUSTEXT
    output    every 1 / filter.rate_hz: the published filter predicted to the send time
              -> GnssMonitor hand-over decision -> GPS_INPUT (and, in ekf-source mode,
              MAV_CMD_SET_EKF_SOURCE_SET); HEARTBEAT (onboard computer), NAMED_VALUE_FLOAT
              diagnostics, STATUSTEXT when the claimed fix or the GNSS state changes; a
              health summary in the log

With output.signing_key everything sent is MAVLink 2 signed (and unsigned input is
refused with output.refuse_unsigned); refused input counts as bad messages.

The output thread only reads the last published filter copy (taken under a short
lock after each frame), so a slow frame delays the next fix, never a send. SIGTERM
and SIGINT stop all three and close the link and the camera.
"""

from __future__ import annotations

import copy
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.maps.pack import MapPack
from skyfix.models.registry import encoder_for_id
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config, load_config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate, Fix, Frame
from skyfix.runtime.flight.aids import OutputAids
from skyfix.runtime.flight.gnss import GnssMonitor, Handover
from skyfix.runtime.io.camera_source import CameraSource, LatestFrameQueue, valid_image
from skyfix.runtime.io.dialects import decode_other
from skyfix.runtime.io.external_position import external_position_estimate
from skyfix.runtime.io.mavlink import (
    FIX_3D,
    advance_signing_clock,
    fix_type_for,
    global_position_sensor,
    gps_input,
    heartbeat,
    load_signing_key,
    named_value,
    set_ekf_source_set,
    statustext,
)
from skyfix.runtime.io.recorder import FlightRecorder
from skyfix.runtime.io.telemetry import TelemetryBuffer, device_and_baud, open_link
from skyfix.runtime.nav.filter import PositionFilter, estimate_at
from skyfix.runtime.nav.navigator import FrameResult, Localizer, Navigator

log = logging.getLogger("skyfix.daemon")

Listener = Callable[[object, int], None]  # (pymavlink message, arrival Unix ns)
# daemon.autopilot ardupilot-plane: MAV_CMD_EXTERNAL_POSITION_ESTIMATE at most this often
# (ArduPlane resets its dead-reckoned position to it; a reset per second bounds the drift)
EXTERNAL_POSITION_PERIOD_S = 1.0


@dataclass
class DaemonStats:
    """Running counters (mutable, owned by the daemon; read for the health summary)."""

    messages: int = 0  # MAVLink messages received from the vehicle
    bad_messages: int = 0  # garbage bytes / unknown messages, skipped
    link_losses: int = 0
    frames: int = 0  # frames taken from the queue
    bad_frames: int = 0  # not an image, or no telemetry for it
    frozen_frames: int = 0  # identical to the previous frame (refused; blank ones too)
    mis_stamped_frames: int = 0  # time stamp off the clock or not after the previous (refused)
    frame_errors: int = 0  # frames whose processing raised (logged, skipped)
    dropped_frames: int = 0  # frames the latest-frame queue dropped unprocessed
    fixes: int = 0
    sent: int = 0  # GPS_INPUT messages sent
    max_send_gap_ms: float = 0.0
    fix_type: int = -1  # last fix_type sent (-1 before the first)
    frame_ms_p50: float = float("nan")  # frame processing time over the last 100 frames
    frame_ms_p95: float = float("nan")


@dataclass(frozen=True)
class _Published:
    """What the vision thread hands to the output thread after each frame."""

    filter: PositionFilter | None
    last_fix_t_ns: int | None


class Daemon:
    """Runs `nav` on the frames of `queue` and talks MAVLink on `link` (see module doc)."""

    def __init__(self, cfg: Config, nav: Navigator, queue: LatestFrameQueue,
                 link: str | None = None) -> None:
        self.cfg, self.nav, self.queue = cfg, nav, queue
        self.link = link or cfg.daemon.link
        device_and_baud(self.link)  # a malformed link string fails here, not in a thread
        self.telemetry = TelemetryBuffer()
        self.gnss = GnssMonitor(cfg.gnss, own_instance=cfg.output.gps_id)
        self.aids = OutputAids(cfg.output.lock_budget_s, cfg.output.satellites)  # yaw, sats
        self.handover: Handover | None = None
        out = cfg.output
        self._key = load_signing_key(Path(out.signing_key)) if out.signing_key else None
        self.stats = DaemonStats()
        self.listeners: list[Listener] = []
        self.sent_listeners: list[Listener] = []  # (message sent, Unix ns), e.g. a recorder
        self.frame_listeners: list[Callable[[Frame], None]] = []  # each frame taken
        self.result_listeners: list[Callable[[FrameResult], None]] = []  # each frame's outcome
        self._published = _Published(None, None)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._conn = None
        self._heard = False  # a message arrived on the current connection
        self._last_rx_ns = 0
        self._alt_amsl_m = float("nan")
        self._latencies_ms: deque[float] = deque(maxlen=100)
        self._last_frame: Frame | None = None  # the previous frame taken from the queue
        self._last_ok_t_ns: int | None = None  # stamp of the last frame not refused here
        self._repeat_ok = True  # one frame may repeat the last usable stamp without alarm
        self._camera_problem = ""  # kind of the current streak of refused frames; "" if none

    # -- lifecycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event, duration_s: float | None = None) -> DaemonStats:
        """Run until `stop` is set (or `duration_s` passes); returns the final counters."""
        threads = [threading.Thread(target=self._guard, args=(fn, stop), name=f"skyfix-{name}",
                                    daemon=True)
                   for name, fn in (("receiver", self._receive_loop),
                                    ("vision", self._vision_loop),
                                    ("output", self._output_loop))]
        log.info("started: link=%s rate_hz=%.1f", self.link, self.cfg.filter.rate_hz)
        for t in threads:
            t.start()
        stop.wait(duration_s)
        stop.set()
        for t in threads:
            t.join(timeout=5.0)
        self._close_link()
        self._log_health()
        log.info("stopped")
        return self.stats

    @staticmethod
    def _guard(loop: Callable[[threading.Event], None], stop: threading.Event) -> None:
        """Run one thread's loop; a bug in it stops the whole daemon (systemd restarts it)
        rather than leaving it half alive."""
        try:
            loop(stop)
        except Exception:
            log.exception("%s failed; stopping", threading.current_thread().name)
            stop.set()

    # -- MAVLink in -----------------------------------------------------------------------

    def _receive_loop(self, stop: threading.Event) -> None:
        timeout_ns = int(self.cfg.daemon.link_timeout_s * 1e9)
        while not stop.is_set():
            if self._conn is None:
                out = self.cfg.output
                try:
                    conn = open_link(self.link, out.system_id, out.component_id, self._key,
                                     out.refuse_unsigned, out.signing_link_id)
                except Exception as exc:  # device absent, port busy: keep trying
                    log.warning("link %s: cannot open (%s); retrying", self.link, exc)
                    stop.wait(1.0)
                    continue
                with self._send_lock:
                    self._conn = conn
                self._last_rx_ns = time.time_ns()
                log.info("link %s open", self.link)
            try:
                msg = self._conn.recv_match(blocking=True, timeout=0.1)
            except Exception as exc:  # serial unplugged, socket error
                log.warning("link %s: receive failed (%s)", self.link, exc)
                msg = None
                self._last_rx_ns = 0
            now = time.time_ns()
            if msg is None:
                if now - self._last_rx_ns > timeout_ns:
                    self.stats.link_losses += 1
                    log.warning("link %s: silent for %.1f s, reconnecting", self.link,
                                self.cfg.daemon.link_timeout_s)
                    self._close_link()
                continue
            self._last_rx_ns = now
            self.on_message(msg, now)

    def on_message(self, msg, t_ns: int) -> None:
        """Handle one received message (also the entry point for tests and bridges)."""
        kind = msg.get_type()
        if kind.startswith("UNKNOWN"):  # outside ardupilotmega: GNSS_INTEGRITY is wanted
            conn = self._conn
            msg = decode_other(msg, None if conn is None else conn.mav.signing) or msg
            kind = msg.get_type()
        if kind == "BAD_DATA" or kind.startswith("UNKNOWN"):
            self.stats.bad_messages += 1
            return
        if msg.get_srcSystem() != self.cfg.output.system_id:
            return  # a ground station or another vehicle
        self.stats.messages += 1
        self._heard = True  # the vehicle is there: replies may go out
        self.telemetry.add(msg, t_ns)
        if kind == "ATTITUDE":
            self.aids.on_attitude(msg.yaw)
        with self._lock:
            self.gnss.observe(msg, t_ns)
        for listener in self.listeners:
            listener(msg, t_ns)

    def _close_link(self) -> None:
        with self._send_lock:
            conn, self._conn, self._heard = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    # -- vision ---------------------------------------------------------------------------

    def _vision_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            frame = self.queue.get(0.2)
            if frame is None:
                continue
            for listener in self.frame_listeners:
                listener(frame)
            self.stats.frames += 1
            self.stats.dropped_frames = self.queue.dropped
            if not self._frame_usable(frame, time.time_ns()):
                continue
            tel = self.telemetry.at(frame.t_ns) if valid_image(frame.image) else None
            if tel is None:
                self.stats.bad_frames += 1
                continue
            self._alt_amsl_m = tel.alt_amsl_m
            trusted = self.handover is None or self.handover.state in ("healthy", "degraded")
            gnss = self.telemetry.gnss_at(frame.t_ns) if trusted else None  # search prior
            try:
                result = self.nav.on_frame(frame, tel, gnss)
            except Exception:  # a frame must never take the daemon down
                self.stats.frame_errors += 1
                log.exception("frame %d failed; skipped", frame.index)
                continue
            for listener in self.result_listeners:
                listener(result)
            fix, inn = result.result, result.innovation
            if isinstance(fix, Fix) and inn is not None and inn.accepted:
                self.aids.on_fix(fix.t_ns, fix.heading_err_deg)
            self._latencies_ms.append(result.latency_ms)
            self.stats.frame_ms_p50, self.stats.frame_ms_p95 = (
                float(v) for v in np.percentile(self._latencies_ms, [50, 95]))
            self.stats.fixes += isinstance(result.result, Fix)
            self.publish()

    def _frame_usable(self, frame: Frame, now_ns: int) -> bool:
        """False (counted, announced once per streak) for a frozen or mis-stamped frame.

        A frozen camera repeats one image with fresh stamps: fixes from it would pin the
        aircraft where it was. A stepped camera clock puts a frame at the wrong time:
        its fix would be fused seconds away from where the aircraft was then."""
        prev, self._last_frame = self._last_frame, frame
        problem = text = ""
        max_age_ns = int(self.cfg.daemon.max_frame_age_s * 1e9)
        if abs(now_ns - frame.t_ns) > max_age_ns:
            self.stats.mis_stamped_frames += 1
            problem, text = "clock", f"camera clock off by {(frame.t_ns - now_ns) * 1e-9:+.1f} s"
        elif self._last_ok_t_ns is not None and frame.t_ns <= self._last_ok_t_ns:
            self.stats.mis_stamped_frames += 1
            if frame.t_ns == self._last_ok_t_ns and self._repeat_ok:
                self._repeat_ok = False  # the same instant once more (a camera faster than
                return False  # its time source): nothing new, no alarm
            problem, text = "backwards", "camera time stamps go backwards or repeat"
        elif (prev is not None and isinstance(frame.image, np.ndarray)
              and isinstance(prev.image, np.ndarray) and frame.image.shape == prev.image.shape
              and np.array_equal(frame.image, prev.image)):
            self.stats.frozen_frames += 1
            problem, text = "frozen", "camera frozen (identical frames)"
            if frame.image.size and frame.image.min() == frame.image.max():
                problem, text = "blank", "camera image blank (one value)"
        if problem != self._camera_problem:
            text = f"skyfix: {text}" if problem else "skyfix: camera frames usable again"
            log.warning("%s", text)
            self.send(statustext(text, mavlink2.MAV_SEVERITY_WARNING if problem
                                 else mavlink2.MAV_SEVERITY_INFO))
            self._camera_problem = problem
        if not problem:
            self._last_ok_t_ns, self._repeat_ok = frame.t_ns, True
        return not problem

    def frame_latencies_ms(self) -> list[float]:
        """Processing times of the last (up to 100) frames, oldest first."""
        return list(self._latencies_ms)

    def publish(self) -> None:
        """Hand a copy of the navigator's filter to the output thread (after each frame)."""
        nav = self.nav
        published = _Published(copy.deepcopy(nav.filter) if nav.filter.initialized else None,
                               nav.last_fix_t_ns)
        with self._lock:
            self._published = published

    def estimate(self, t_ns: int) -> Estimate | None:
        """The latest published filter predicted to `t_ns`; None before the first fix."""
        with self._lock:
            pub = self._published
        if pub.filter is None:
            return None
        return estimate_at(pub.filter, t_ns, self.nav.frame, self._alt_amsl_m,
                           pub.last_fix_t_ns)

    # -- MAVLink out ----------------------------------------------------------------------

    def send(self, msg) -> bool:
        """Send `msg` on the link; False when it is down, the vehicle has not been heard
        on it since it was opened (a UDP server has no peer address before), or the
        write failed."""
        with self._send_lock:
            if self._conn is None or not self._heard:
                return False
            try:
                if self._key is not None:
                    advance_signing_clock(self._conn, time.time_ns())
                self._conn.mav.send(msg)
            except OSError as exc:
                log.warning("link %s: send failed (%s)", self.link, exc)
                return False
        for listener in self.sent_listeners:
            listener(msg, time.time_ns())
        return True

    def _output_loop(self, stop: threading.Event) -> None:
        """Paced on the monotonic clock (a step of the wall clock, e.g. by NTP, must not
        stall the output); messages and estimates are stamped with the wall clock."""
        d = self.cfg.daemon
        period_ns = int(1e9 / self.cfg.filter.rate_hz)
        tick = time.monotonic_ns()
        due = {"hb": 0, "diag": 0, "ext": 0, "health": tick + int(d.health_period_s * 1e9)}
        next_tick = tick
        last_sent: int | None = None
        while not stop.is_set():
            tick = time.monotonic_ns()
            if tick < next_tick:
                stop.wait((next_tick - tick) * 1e-9)
                continue
            next_tick = max(next_tick + period_ns, tick + period_ns // 2)  # skip missed slots
            now = time.time_ns()
            est = self.estimate(now)
            fix_type = 0 if est is None else fix_type_for(est, self.cfg.output)
            self._hand_over(est, fix_type, now)
            if est is None:  # no position yet, or lost after a filter reset:
                est = Estimate.none(now)  # say "no fix" (fix_type 0) rather than nothing
            if self.cfg.daemon.autopilot == "ardupilot":
                aids = {"satellites": self.aids.satellites(now), "yaw_deg": self.aids.yaw_deg(now)}
                position = lambda e, c, t, aids=aids: gps_input(e, c, t, **aids)  # noqa: E731
            else:
                position = global_position_sensor
            if d.autopilot == "ardupilot-plane":  # occasional resets, not a GPS stream
                if tick >= due["ext"] and self.handover is not None \
                        and self.handover.send_gps_input:
                    reset = external_position_estimate(est, self.cfg.output, now,
                                                       self.cfg.output.system_id)
                    if reset is not None and self.send(reset):
                        due["ext"] = tick + int(EXTERNAL_POSITION_PERIOD_S * 1e9)
            elif (est is not None and self.handover is not None and self.handover.send_gps_input
                    and self.send(position(est, self.cfg.output, now))):
                self.stats.sent += 1
                if last_sent is not None:
                    gap = (tick - last_sent) * 1e-6
                    self.stats.max_send_gap_ms = max(self.stats.max_send_gap_ms, gap)
                last_sent = tick
                self._on_fix_type(est, fix_type)
            if tick >= due["hb"]:
                self.send(heartbeat())
                due["hb"] = tick + int(1e9 / d.heartbeat_hz)
            if d.diagnostics_hz > 0 and tick >= due["diag"]:
                self._send_diagnostics(est, now)
                due["diag"] = tick + int(1e9 / d.diagnostics_hz)
            if tick >= due["health"]:
                self._log_health()
                due["health"] = tick + int(d.health_period_s * 1e9)

    def _hand_over(self, est: Estimate | None, fix_type: int, now: int) -> None:
        if not self._heard:
            return  # no verdict on the vehicle's GNSS before the vehicle has been heard
        with self._lock:
            if est is not None:
                self.gnss.observe_estimate(est, now)
            decision = self.gnss.decide(now, visual_ok=fix_type >= FIX_3D)
        before, self.handover = self.handover, decision
        if before is None or decision.state != before.state:
            text = f"skyfix: GNSS {decision.state} ({decision.reason})"
            log.info("%s", text)
            bad = decision.state in ("lost", "spoofed")
            self.send(statustext(text, mavlink2.MAV_SEVERITY_WARNING if bad
                                 else mavlink2.MAV_SEVERITY_INFO))
        if decision.ekf_source_set is not None:
            log.info("EKF source set -> %d", decision.ekf_source_set)
            self.send(set_ekf_source_set(decision.ekf_source_set, self.cfg.output.system_id))

    def _on_fix_type(self, est: Estimate, fix_type: int) -> None:
        if fix_type == self.stats.fix_type:
            return
        self.stats.fix_type = fix_type
        if fix_type >= FIX_3D:
            text = f"skyfix: 3D fix, sigma {est.horiz_sigma_m:.1f} m"
            severity = mavlink2.MAV_SEVERITY_INFO
        else:
            text = f"skyfix: no fix (last fix {est.last_fix_age_s:.1f} s ago)"
            severity = mavlink2.MAV_SEVERITY_WARNING
        log.info("%s", text)
        self.send(statustext(text, severity))

    def _send_diagnostics(self, est: Estimate | None, now_ns: int) -> None:
        boot_ms = now_ns // 1_000_000
        values = {"SF_FRM_MS": self.stats.frame_ms_p50, "SF_FIXES": float(self.stats.fixes),
                  "SF_FIXTYPE": float(max(self.stats.fix_type, 0))}
        if est is not None:
            values["SF_SIGMA_M"] = est.horiz_sigma_m
            values["SF_FIXAGE"] = min(est.last_fix_age_s, 1e6)
        for name, value in values.items():
            if np.isfinite(value):
                self.send(named_value(name, value, boot_ms))

    def _log_health(self) -> None:
        s = asdict(self.stats)
        s["rejections"] = dict(self.nav.rejections)
        s["gnss"] = None if self.handover is None else self.handover.state
        log.info("health: %s", " ".join(f"{k}={v}" for k, v in s.items()))


def build_navigator(pack_path: Path, camera: CameraModel, cfg: Config) -> Navigator:
    """A Navigator over the map pack at `pack_path`, with the encoder the pack was built
    with, in a local frame about the pack's centre."""
    pack = MapPack.open(Path(pack_path))
    encoder = encoder_for_id(pack.manifest.encoder_id, cfg.encoder)
    cx, cy = np.asarray(pack.tile_center_en).mean(0)
    frame = LocalFrame.at(pack.crs, float(cx), float(cy))
    return Navigator(Localizer(pack, camera, encoder, cfg), frame, cfg)


def run_daemon(config_path: Path, duration_s: float | None = None,
               record: Path | None = None, record_every: int = 1,
               record_max_bytes: int = 2 * 1024**3) -> DaemonStats:
    """`skyfix run --config CONFIG [--record DIR]`: camera + map pack + MAVLink link from
    the config, until SIGTERM/SIGINT (or `duration_s`); with `record`, frames (every
    `record_every`-th, at most `record_max_bytes`), telemetry and outputs go to DIR
    (runtime/io/recorder.py)."""
    cfg = load_config(config_path)
    if not cfg.daemon.map:
        raise SkyfixError(f"{config_path}: daemon.map (the map pack folder) is not set")
    if not cfg.camera.calibration:
        raise SkyfixError(f"{config_path}: camera.calibration (camera.yaml) is not set")
    if cfg.daemon.autopilot not in ("ardupilot", "ardupilot-plane", "px4"):
        raise SkyfixError(f"daemon.autopilot must be ardupilot, ardupilot-plane or px4, "
                          f"got {cfg.daemon.autopilot!r}")
    if cfg.filter.rate_hz < 5.0:
        raise SkyfixError("filter.rate_hz must be at least 5 (ArduPilot wants < 215 ms gaps)")
    calib = Path(cfg.camera.calibration)
    if not calib.is_file():
        raise SkyfixError(f"camera calibration not found: {calib}")
    camera = CameraModel.load(calib)
    nav = build_navigator(Path(cfg.daemon.map), camera, cfg)
    source = CameraSource(cfg.camera)
    daemon = Daemon(cfg, nav, source.queue)
    recorder = None
    if record is not None:
        recorder = FlightRecorder(record, camera, record_every, record_max_bytes)
        daemon.frame_listeners.append(recorder.on_frame)
        daemon.listeners.append(recorder.on_message)
        daemon.sent_listeners.append(recorder.on_sent)
        daemon.result_listeners.append(recorder.on_result)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    source.start()
    try:
        return daemon.run(stop, duration_s)
    finally:
        source.stop()
        if recorder is not None:
            recorder.close()
