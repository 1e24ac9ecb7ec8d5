"""Live camera input for the daemon: OpenCV capture in its own thread feeding a bounded
latest-frame queue.

The vision thread always wants the newest frame: a frame that waited while the previous
one was being localised is stale, so when the queue is full the oldest frame is dropped
(and counted), never the capture blocked. Sources, by the form of `CameraConfig.source`:

    "0", "1", ...        V4L2 device index
    "... ! appsink"      GStreamer pipeline (OpenCV must be built with GStreamer)
    "rtsp://..."         RTSP stream (FFmpeg backend); reopened after a read failure
    a file path          a video file, played back at its own frame rate, once

Frames are stamped with the Unix time (ns) at which they were grabbed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from skyfix.runtime.core.config import CameraConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Frame

log = logging.getLogger("skyfix.camera")

_REOPEN_S = 1.0  # wait before reopening a live source that failed


class LatestFrameQueue:
    """A bounded buffer of frames: `put` never blocks (when full, the oldest frame is
    dropped); `get` returns the newest frame and drops the older ones, so the vision
    thread never works on a stale frame. `dropped` counts frames never processed."""

    def __init__(self, maxlen: int = 2) -> None:
        if maxlen < 1:
            raise SkyfixError(f"camera.queue must be at least 1, got {maxlen}")
        self._frames: deque[Frame] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, frame: Frame) -> None:
        with self._cond:
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(frame)
            self._cond.notify()

    def get(self, timeout_s: float) -> Frame | None:
        """The newest frame (older ones are dropped), or None after `timeout_s` or once
        closed and empty."""
        with self._cond:
            if not self._frames and not self.closed:
                self._cond.wait(timeout_s)
            if not self._frames:
                return None
            self.dropped += len(self._frames) - 1
            frame = self._frames.pop()
            self._frames.clear()
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def valid_image(image: object) -> bool:
    """True for a non-empty [H, W, 3] or [H, W] uint8 array with some texture."""
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8
            and image.ndim in (2, 3) and min(image.shape[:2]) >= 16
            and (image.ndim == 2 or image.shape[2] == 3))


def source_kind(source: str) -> str:
    """"v4l2", "gstreamer", "rtsp" or "file" for a `camera.source` string."""
    s = source.strip()
    if s.isdigit():
        return "v4l2"
    if "!" in s:
        return "gstreamer"
    if s.lower().startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    return "file"


class CameraSource:
    """OpenCV capture of `cfg.source` in a daemon thread, into `queue`.

    `frames` counts frames captured, `bad` frames OpenCV returned unusable; `ended` is
    set when a video file is exhausted (live sources are reopened instead).
    """

    def __init__(self, cfg: CameraConfig, queue: LatestFrameQueue | None = None) -> None:
        self.cfg = cfg
        self.kind = source_kind(cfg.source)
        if self.kind == "file" and not Path(cfg.source).is_file():
            raise SkyfixError(f"camera source is not a device index, GStreamer pipeline, "
                              f"RTSP URL or existing video file: {cfg.source!r}")
        self.queue = queue or LatestFrameQueue(cfg.queue)
        self.frames = self.bad = 0
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self) -> cv2.VideoCapture:
        src = self.cfg.source.strip()
        if self.kind == "v4l2":
            cap = cv2.VideoCapture(int(src), cv2.CAP_V4L2)
        elif self.kind == "gstreamer":
            cap = cv2.VideoCapture(src, cv2.CAP_GSTREAMER)
        elif self.kind == "rtsp":
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG)
        else:
            cap = cv2.VideoCapture(src)
        if self.kind in ("v4l2", "rtsp"):
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing old frames
        if self.cfg.width > 0 and self.cfg.height > 0:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        if self.cfg.fps > 0:
            cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        return cap

    def start(self) -> CameraSource:
        self._thread = threading.Thread(target=self._run, name="skyfix-camera", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.queue.close()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            cap = self._open()
            if not cap.isOpened():
                log.warning("camera %s (%s) did not open; retrying", self.cfg.source, self.kind)
                cap.release()
                if self.kind == "file":
                    break
                self._stop.wait(_REOPEN_S)
                continue
            period_s = 0.0
            if self.kind == "file":
                fps = cap.get(cv2.CAP_PROP_FPS)
                period_s = 1.0 / fps if fps and 0 < fps < 1000 else 1.0 / 30
            next_t = time.monotonic()
            while not self._stop.is_set():
                ok, image = cap.read()
                t_ns = time.time_ns()
                if not ok:
                    break
                if not valid_image(image):
                    self.bad += 1
                    continue
                self.queue.put(Frame(index, t_ns, image))
                index += 1
                self.frames += 1
                if period_s:  # play a file back in real time, as a camera would deliver it
                    next_t += period_s
                    self._stop.wait(max(0.0, next_t - time.monotonic()))
            cap.release()
            if self.kind == "file":
                break
            log.warning("camera %s stopped delivering frames; reopening", self.cfg.source)
            self._stop.wait(_REOPEN_S)
        self.ended.set()
        self.queue.close()
