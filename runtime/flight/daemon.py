"""`skyfix run`: the flight daemon.

Three threads share one Navigator's output and never wait on each other:

    receiver  MAVLink in -> TelemetryBuffer (+ listeners); counts garbage; reconnects
              after `daemon.link_timeout_s` of silence or a link error
    vision    latest frame -> Chain.on_frame (frame gate, then the Navigator) ->
              publishes the filter's state (`snapshot`: no history)
    output    every 1 / filter.rate_hz: the published filter (the IMU filter carried
              through the IMU samples received since) predicted to the send time
              -> Chain.tick (hand-over, position message, STATUSTEXT, HEARTBEAT: see
              flight/output.py) -> the link; NAMED_VALUE_FLOAT diagnostics; a health
              summary in the log

The chain comes from flight/assembly.py, exactly as replay builds it.

Time: telemetry is stamped at the autopilot's time of each message (its time_boot_ms
mapped to our clock by runtime/io/clock.py, with a TIMESYNC request every
1 / telemetry.timesync_hz) once that mapping is locked, and at its arrival before (or with
telemetry.clock arrival); the log says which whenever that changes, and the health summary
carries it (clock=...). The GNSS monitor and the listeners (a recorder) get the arrival.

IMU: unless filter.kind is cv, the daemon asks the autopilot (MAV_CMD_SET_MESSAGE_INTERVAL,
when it is first heard on a link) to stream its IMU at filter.imu_rate_hz (SCALED_IMU from
ArduPilot, HIGHRES_IMU from PX4) and ATTITUDE at up to 50 Hz; the vision step hands the
samples up to each frame's capture time to the Navigator before the frame (and the output
thread those received since to its copy, see `Daemon.estimate`), and logs which filter runs
(cv or imu) whenever that changes.

With output.signing_key everything sent is MAVLink 2 signed (and unsigned input is
refused with output.refuse_unsigned); refused input counts as bad messages. Our signing
timestamp is kept in output.signing_state (about every 10 s) and each link starts past
it, so it never goes backwards across a restart or a wall clock stepped back.

The output thread only reads the last published filter state (swapped in under a
short lock after each frame), so a slow frame delays the next fix, never a send. SIGTERM
and SIGINT stop all three and close the link and the camera.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import load_config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import systemd_state_dir
from skyfix.runtime.core.types import Estimate, Fix, Frame, Rejection
from skyfix.runtime.flight.assembly import Chain, build_chain
from skyfix.runtime.io.camera_source import CameraSource, LatestFrameQueue
from skyfix.runtime.io.clock import AutopilotClock, timesync_request
from skyfix.runtime.io.dialects import decode_other
from skyfix.runtime.io.link import parse_host_port
from skyfix.runtime.io.mavlink import (
    advance_signing_clock,
    load_signing_key,
    named_value,
    set_message_interval,
)
from skyfix.runtime.io.recorder import FlightRecorder
from skyfix.runtime.io.signature import PersistedStamp
from skyfix.runtime.io.telemetry import TelemetryBuffer, device_and_baud, open_link
from skyfix.runtime.nav.eskf import ImuFilter
from skyfix.runtime.nav.filter import PositionFilter, estimate_at
from skyfix.runtime.nav.navigator import FrameResult, feed_imu

log = logging.getLogger("skyfix.daemon")

Listener = Callable[[object, int], None]  # (pymavlink message, arrival Unix ns)


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


_BAD_FRAME = {"bad_image", "no_telemetry"}  # rejections counted as bad frames


def _text(msg) -> str:
    """A STATUSTEXT's text as str (pymavlink keeps what it was given: bytes here)."""
    text = msg.text
    return text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)


@dataclass(frozen=True)
class _Published:
    """What the vision thread hands to the output thread after each frame."""

    filter: PositionFilter | ImuFilter | None
    last_fix_t_ns: int | None
    shared_ne_m2: np.ndarray  # Navigator.shared_ne_m2


def signing_state_path(configured: str) -> Path:
    """Where the signing timestamp is kept: `configured`, else systemd's state directory,
    else ~/.local/state/skyfix."""
    if configured:
        return Path(configured).expanduser()
    root = systemd_state_dir() or Path.home() / ".local" / "state" / "skyfix"
    return root / "signing_timestamp"


class Daemon:
    """Runs `chain` on the frames of `queue` and talks MAVLink on `link` (see module doc)."""

    def __init__(self, chain: Chain, queue: LatestFrameQueue, link: str | None = None) -> None:
        self.chain, self.cfg, self.nav, self.queue = chain, chain.cfg, chain.navigator, queue
        cfg = self.cfg
        self.link = link or cfg.daemon.link
        device_and_baud(self.link)  # a malformed link string fails here, not in a thread
        if cfg.daemon.peer:
            parse_host_port(cfg.daemon.peer, "daemon.peer")
        self.telemetry = TelemetryBuffer(clock=AutopilotClock.from_config(cfg))
        self._clock_said = ""  # the telemetry clock's source last announced in the log
        out = cfg.output
        self._key = load_signing_key(Path(out.signing_key)) if out.signing_key else None
        self._stamp = (PersistedStamp(signing_state_path(out.signing_state), log.warning)
                       if self._key is not None else None)
        self.stats = DaemonStats()
        self.listeners: list[Listener] = []
        self.sent_listeners: list[Listener] = []  # (message sent, Unix ns), e.g. a recorder
        self.frame_listeners: list[Callable[[Frame], None]] = []  # each frame taken
        self.result_listeners: list[Callable[[FrameResult], None]] = []  # each frame's outcome
        self._published = _Published(None, None, np.zeros((2, 2)))
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._conn = None
        self._heard = False  # a message arrived on the current connection
        self._last_rx_ns = 0
        self._alt_amsl_m = float("nan")
        self._latencies_ms: deque[float] = deque(maxlen=100)
        self._last_sent_tick: int | None = None  # monotonic time of the last position sent
        self._imu_fed_ns = 0  # time of the last IMU sample handed to the Navigator
        self._filter_said = ("", "")  # the filter (kind, note) last announced in the log
        self._failure: BaseException | None = None  # what ended a thread, if anything did

    # -- lifecycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event, duration_s: float | None = None) -> DaemonStats:
        """Run until `stop` is set (or `duration_s` passes); returns the final counters.
        When a thread failed, everything is stopped and closed, then its exception is
        raised here (so the process ends with a non-zero status and is restarted).

        Everything loaded so far (modules, the map pack's index, the encoder) is moved out of
        the garbage collector's sight first (gc.freeze): a full collection holds every
        thread while it scans, and frozen objects are not scanned, so it stays short."""
        gc.collect()
        gc.freeze()
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
        if self._failure is not None:
            raise self._failure
        log.info("stopped")
        return self.stats

    def _guard(self, loop: Callable[[threading.Event], None], stop: threading.Event) -> None:
        """Run one thread's loop; anything it raises stops the whole daemon, which then
        raises it from `run` (systemd restarts it) rather than staying half alive."""
        try:
            loop(stop)
        except BaseException as exc:
            log.error("%s failed (%s: %s); stopping", threading.current_thread().name,
                      type(exc).__name__, exc)
            if self._failure is None:
                self._failure = exc
            stop.set()

    # -- MAVLink in -----------------------------------------------------------------------

    def _receive_loop(self, stop: threading.Event) -> None:
        timeout_ns = int(self.cfg.daemon.link_timeout_s * 1e9)
        failures = 0
        while not stop.is_set():
            if self._conn is None:
                out = self.cfg.output
                try:
                    conn = open_link(self.link, out.system_id, out.component_id, self._key,
                                     out.refuse_unsigned, out.signing_link_id,
                                     self.cfg.daemon.peer or None)
                except (SkyfixError, ValueError, PermissionError, socket.gaierror) as exc:
                    raise SkyfixError(f"link {self.link}: cannot open ({exc}); check "
                                      f"daemon.link and daemon.peer") from None
                except OSError as exc:  # serial device absent, port busy: keep trying
                    failures += 1
                    if failures in (1, 10) or failures % 60 == 0:  # not a line a second
                        log.warning("link %s: cannot open (%s); retrying (%d)", self.link,
                                    exc, failures)
                    stop.wait(1.0)
                    continue
                failures = 0
                if self._stamp is not None:  # ahead of all we signed before a restart
                    signing = conn.mav.signing
                    signing.timestamp = max(signing.timestamp, self._stamp.resume())
                with self._send_lock:
                    self._conn = conn
                self._last_rx_ns = time.time_ns()
                log.info("link %s open", self.link)
            try:
                msg = self._conn.recv_match(blocking=True, timeout=0.1)
            except OSError as exc:  # serial unplugged, socket error: reconnect
                log.warning("link %s: receive failed (%s)", self.link, exc)
                msg = None
                self._last_rx_ns = 0
            except Exception as exc:  # pymavlink choking on crafted bytes: they are lost
                self.stats.bad_messages += 1
                log.debug("link %s: unparsable input (%s)", self.link, exc)
                msg = None
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
        first, self._heard = not self._heard, True  # the vehicle is there: replies may go out
        if first:
            self._request_streams()
        self.telemetry.add(msg, t_ns)
        clock = self.telemetry.clock.state()
        if clock.source != self._clock_said:
            self._clock_said = clock.source
            log.info("telemetry stamped with %s", clock.summary())
        with self._lock:
            self.chain.policy.gnss.observe(msg, t_ns)
        for listener in self.listeners:
            listener(msg, t_ns)

    def _request_streams(self) -> None:
        """Ask for the IMU (and a faster ATTITUDE) unless the filter is constant-velocity."""
        f = self.cfg.filter
        if f.kind == "cv":
            return
        imu = (mavlink2.MAVLINK_MSG_ID_SCALED_IMU if self.cfg.daemon.autopilot == "ardupilot"
               else mavlink2.MAVLINK_MSG_ID_HIGHRES_IMU)
        target = self.cfg.output.system_id
        self.send(set_message_interval(imu, f.imu_rate_hz, target))
        self.send(set_message_interval(mavlink2.MAVLINK_MSG_ID_ATTITUDE,
                                       min(f.imu_rate_hz, 50.0), target))

    def _feed_imu(self, t_ns: int) -> None:
        """Hand the IMU samples received since the last call, up to `t_ns` (the frame's
        capture time: replay feeds the log's the same way), to the Navigator."""
        imu, rpy = self.telemetry.imu_after(self._imu_fed_ns)
        keep = imu[:, 0] <= t_ns
        imu, rpy = imu[keep], rpy[keep]
        if len(imu):
            self.nav.on_imu(imu[:, 0], imu[:, 1:4], imu[:, 4:7], rpy)
            self._imu_fed_ns = int(imu[-1, 0])

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
            try:
                self.process_frame(frame, time.time_ns())
            except Exception:  # a frame must never take the daemon down
                self.stats.frame_errors += 1
                log.exception("frame %d failed; skipped", frame.index)

    def process_frame(self, frame: Frame, now_ns: int) -> None:
        """The vision step: `frame` arriving when the wall clock reads `now_ns`, through the
        chain with the telemetry received for its capture time; then publish."""
        tel = self.telemetry.at(frame.t_ns)
        if tel is not None:
            self._alt_amsl_m = tel.alt_amsl_m
        with self._lock:  # the hand-over state is the output thread's
            trusted = self.chain.policy.gnss_trusted()
        gnss = self.telemetry.gnss_at(frame.t_ns) if trusted else None
        self._feed_imu(frame.t_ns)
        step = self.chain.on_frame(frame, now_ns, tel, gnss)
        for msg in step.messages:
            log.warning("%s", _text(msg))
            self.send(msg)
        gate = self.chain.gate
        self.stats.frozen_frames, self.stats.mis_stamped_frames = gate.frozen, gate.mis_stamped
        result = step.result
        for listener in self.result_listeners:
            listener(result)
        if isinstance(result.result, Rejection) and result.result.reason in _BAD_FRAME:
            self.stats.bad_frames += 1
        if result.latency_ms > 0:
            self._latencies_ms.append(result.latency_ms)
            self.stats.frame_ms_p50, self.stats.frame_ms_p95 = (
                float(v) for v in np.percentile(self._latencies_ms, [50, 95]))
        self.stats.fixes += isinstance(result.result, Fix)
        said = (self.nav.filter_kind, self.nav.filter_note)
        if said != self._filter_said:
            self._filter_said = said
            log.info("filter: %s (filter.kind %s)%s", said[0], self.cfg.filter.kind,
                     f": {said[1]}" if said[1] else "")
        self.publish()

    def frame_latencies_ms(self) -> list[float]:
        """Processing times of the last (up to 100) frames, oldest first."""
        return list(self._latencies_ms)

    def publish(self) -> None:
        """Hand the navigator's filter state to the output thread (after each frame), first
        carried through the IMU samples received since the frame's capture: here, in the
        vision thread, so that a send slot never has to catch up on a frame's latency of
        IMU (1-2 s, 100-200 samples, on a slow CPU: 100-150 ms, which late sends)."""
        nav = self.nav
        filt = nav.filter.snapshot() if nav.filter.initialized else None
        self._advance(filt, time.time_ns())
        with self._lock:
            self._published = _Published(filt, nav.last_fix_t_ns, nav.shared_ne_m2)

    def _advance(self, filt: PositionFilter | ImuFilter | None, t_ns: int) -> None:
        """Carry an IMU filter through the IMU samples received after its last one, up to
        `t_ns`: the Navigator's own gets them only with the next frame, seconds away when
        frames queue or are dropped, and a prediction across that holds one sample's
        acceleration. Nothing for the constant-velocity filter."""
        if isinstance(filt, ImuFilter) and filt.initialized:
            imu, rpy = self.telemetry.imu_after(filt.t_ns)
            keep = imu[:, 0] <= t_ns
            feed_imu(filt, imu[keep, 0], imu[keep, 1:4], imu[keep, 4:7], rpy[keep])

    def estimate(self, t_ns: int) -> Estimate | None:
        """The latest published filter, carried through the IMU samples received since it
        was published (`_advance`) and predicted to `t_ns`; None before the first fix. The
        published copy is the output thread's alone (the vision thread publishes a new
        one), so it is advanced in place."""
        with self._lock:
            pub = self._published
        filt = pub.filter
        self._advance(filt, t_ns)
        if filt is None or not filt.initialized:  # (or reset: diverged numerically)
            return None
        return estimate_at(filt, t_ns, self.nav.frame, self._alt_amsl_m, pub.last_fix_t_ns,
                           self.nav.map_sigma_m, pub.shared_ne_m2)

    # -- MAVLink out ----------------------------------------------------------------------

    def send(self, msg) -> bool:
        """Send `msg` on the link; False when it is down, the vehicle has not been heard
        on it since it was opened (a UDP server has no peer address before), or the
        write failed."""
        with self._send_lock:
            if self._conn is None or not self._heard or not getattr(self._conn, "ready", True):
                return False  # (a UDP server answers only the autopilot, once it is known)
            try:
                if self._stamp is not None:
                    advance_signing_clock(self._conn, time.time_ns())
                self._conn.mav.send(msg)
                if self._stamp is not None:
                    self._stamp.seen(self._conn.mav.signing.timestamp)
            except OSError as exc:
                log.warning("link %s: send failed (%s)", self.link, exc)
                return False
        for listener in self.sent_listeners:
            listener(msg, time.time_ns())
        return True

    def _output_loop(self, stop: threading.Event) -> None:
        """Paced on the monotonic clock (a step of the wall clock, e.g. by NTP, must not
        stall the output); messages and estimates are stamped with the wall clock. Runs at
        raised priority where the OS allows it (see `raise_thread_priority`)."""
        log.info("output thread priority: %s", raise_thread_priority())
        d = self.cfg.daemon
        period_ns = int(1e9 / self.cfg.filter.rate_hz)
        tick = time.monotonic_ns()
        due = {"diag": 0, "health": tick + int(d.health_period_s * 1e9), "timesync": 0}
        tel = self.cfg.telemetry
        timesync = tel.clock == "auto" and tel.timesync_hz > 0
        next_tick = tick
        while not stop.is_set():
            tick = time.monotonic_ns()
            if tick < next_tick:
                stop.wait((next_tick - tick) * 1e-9)
                continue
            next_tick = max(next_tick + period_ns, tick + period_ns // 2)  # skip missed slots
            now = time.time_ns()
            est = self.send_slot(now, tick)
            if d.diagnostics_hz > 0 and tick >= due["diag"]:
                self._send_diagnostics(est, now)
                due["diag"] = tick + int(1e9 / d.diagnostics_hz)
            if timesync and tick >= due["timesync"]:  # answered with tc1: its boot time
                self.send(timesync_request(time.time_ns(), self.cfg.output.component_id))
                due["timesync"] = tick + int(1e9 / tel.timesync_hz)
            if tick >= due["health"]:
                self._log_health()
                due["health"] = tick + int(d.health_period_s * 1e9)

    def send_slot(self, now_ns: int, tick_ns: int) -> Estimate:
        """The send step: the published filter predicted to `now_ns` (wall clock) through
        the send policy, every message it gives sent in its order; `tick_ns` (monotonic)
        measures the gaps between position messages. Returns the estimate sent."""
        est = self.estimate(now_ns)
        tel = self.telemetry.at(now_ns)  # the autopilot's own heading, for the visual yaw
        heading = None if tel is None else float(np.degrees(tel.yaw_rad))
        with self._lock:
            slot = self.chain.tick(now_ns, est, heard=self._heard, heading_deg=heading)
        for msg in slot.messages:  # in the policy's order, as replay records them
            if msg.get_type() == "STATUSTEXT":
                log.info("%s", _text(msg))
            if self.send(msg) and msg is slot.position:
                self.stats.sent += 1
                self.stats.fix_type = slot.fix_type
                if self._last_sent_tick is not None:
                    gap = (tick_ns - self._last_sent_tick) * 1e-6
                    self.stats.max_send_gap_ms = max(self.stats.max_send_gap_ms, gap)
                self._last_sent_tick = tick_ns
        return slot.estimate

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
        handover = self.chain.policy.handover
        s["gnss"] = None if handover is None else handover.state
        s["clock"] = self.telemetry.clock.state().summary()
        log.info("health: %s", " ".join(f"{k}={v}" for k, v in s.items()))


def raise_thread_priority() -> str:
    """Give the calling thread real-time priority (SCHED_FIFO 10), else nice -10, where the
    OS allows it (root or CAP_SYS_NICE); says which it got.

    The output thread sleeps between sends and does little when awake, but on a busy
    2-core computer the vision thread's native pools (ONNX Runtime, OpenCV) can keep it
    waiting for a CPU for hundreds of ms (measured in SITL from /proc schedstat), longer
    than ArduPilot's 215 ms GPS health rule allows."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # 0: this thread
        return "real-time (SCHED_FIFO 10)"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        return "nice -10"
    except (AttributeError, OSError):
        return "normal (no permission to raise it: CAP_SYS_NICE)"


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
    chain = build_chain(cfg, Path(cfg.daemon.map), camera)
    source = CameraSource(cfg.camera)
    daemon = Daemon(chain, source.queue)
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
