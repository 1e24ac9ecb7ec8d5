"""`skyfix run --record DIR`: what the daemon saw and said, in the recorded-flight layout
that `skyfix replay` reads (runtime/io/sources.py RecordedFlight):

    DIR/flight.json      format, camera, frames, telemetry (+ outputs)
    DIR/camera.yaml      the camera model the daemon runs with
    DIR/frames/NNNNNN.jpg every `every_n`-th frame the daemon took from its queue
    DIR/frames.csv       index,t_ns,file of the frames on disk
    DIR/telemetry.tlog   every MAVLink message received from the vehicle (Unix us + bytes)
    DIR/outputs.tlog     every MAVLink message skyfix sent (GPS_INPUT, STATUSTEXT, ...)
    DIR/fixes.csv        t_ns,status,fix_e,fix_n,fix_sigma_m of every frame the daemon
                         processed (status "fix" or the rejection reason; map metres)

Disk is bounded: when the frames take more than `max_frame_bytes`, the oldest frames are
deleted first (and leave frames.csv); the logs are small beside them (a few MB an hour).
frames.csv is appended as frames are written, so a recording cut short by a crash still
reads (frames deleted by the rotation then read as unreadable images), and it is
rewritten with the frames still on disk when the recording is closed.
"""

from __future__ import annotations

import csv
import json
import struct
import threading
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Fix, Frame
from skyfix.runtime.io.sources import FLIGHT_FORMAT

JPEG_QUALITY = 90


class FlightRecorder:
    """Listeners for the daemon (`on_frame`, `on_message`, `on_sent`) writing DIR (see the
    module doc). Thread-safe; `close` finishes the layout."""

    def __init__(self, root: Path, camera: CameraModel, every_n: int = 1,
                 max_frame_bytes: int = 2 * 1024**3) -> None:
        if every_n < 1:
            raise SkyfixError(f"record every n-th frame: n must be at least 1, got {every_n}")
        if max_frame_bytes <= 0:
            raise SkyfixError("recording disk budget must be positive")
        self.root = Path(root)
        (self.root / "frames").mkdir(parents=True, exist_ok=True)
        camera.save(self.root / "camera.yaml")
        self.every_n, self.max_frame_bytes = every_n, max_frame_bytes
        self._lock = threading.Lock()
        self._seen = 0
        self._frames: deque[tuple[int, int, str, int]] = deque()  # index, t_ns, file, bytes
        self._frame_bytes = 0
        self.deleted = 0  # frames removed by the rotation
        self._csv_file = open(self.root / "frames.csv", "w", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["index", "t_ns", "file"])
        self._telemetry: BinaryIO = open(self.root / "telemetry.tlog", "wb")  # noqa: SIM115
        self._outputs: BinaryIO = open(self.root / "outputs.tlog", "wb")  # noqa: SIM115
        self._fixes_file = open(self.root / "fixes.csv", "w", newline="")  # noqa: SIM115
        self._fixes = csv.writer(self._fixes_file)
        self._fixes.writerow(["t_ns", "status", "fix_e", "fix_n", "fix_sigma_m"])
        self._write_meta()

    def _write_meta(self) -> None:
        meta = {"format": FLIGHT_FORMAT, "camera": "camera.yaml", "frames": "frames.csv",
                "telemetry": "telemetry.tlog", "outputs": "outputs.tlog",
                "recorded_by": "skyfix run"}
        (self.root / "flight.json").write_text(json.dumps(meta, indent=2) + "\n")

    def on_frame(self, frame: Frame) -> None:
        """A frame the daemon took; every `every_n`-th is written (JPEG)."""
        with self._lock:
            self._seen += 1
            if (self._seen - 1) % self.every_n:
                return
            name = f"frames/{frame.index:06d}.jpg"
            ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                return
            (self.root / name).write_bytes(buf.tobytes())
            self._frames.append((frame.index, frame.t_ns, name, len(buf)))
            self._frame_bytes += len(buf)
            self._csv.writerow([frame.index, frame.t_ns, name])
            self._csv_file.flush()
            while self._frame_bytes > self.max_frame_bytes and len(self._frames) > 1:
                _, _, old, size = self._frames.popleft()
                (self.root / old).unlink(missing_ok=True)
                self._frame_bytes -= size
                self.deleted += 1

    def on_message(self, msg: Any, t_ns: int) -> None:
        """A message received from the vehicle (the daemon's listener signature)."""
        with self._lock:
            self._telemetry.write(struct.pack(">Q", int(t_ns) // 1000) + msg.get_msgbuf())

    def on_sent(self, msg: Any, t_ns: int) -> None:
        """A message skyfix sent."""
        with self._lock:
            self._outputs.write(struct.pack(">Q", int(t_ns) // 1000) + msg.get_msgbuf())

    def on_result(self, result: Any) -> None:
        """What the navigator made of a frame (runtime/nav FrameResult)."""
        r = result.result
        with self._lock:
            if isinstance(r, Fix):
                sigma = float(np.sqrt(max(np.linalg.eigvalsh(r.cov_en_m2).max(), 0.0)))
                self._fixes.writerow([r.t_ns, "fix", f"{r.east_m:.3f}", f"{r.north_m:.3f}",
                                      f"{sigma:.3f}"])
            else:
                self._fixes.writerow([r.t_ns, r.reason, "", "", ""])
            self._fixes_file.flush()

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    def close(self) -> None:
        with self._lock:
            self._csv_file.close()
            with open(self.root / "frames.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["index", "t_ns", "file"])
                for index, t_ns, name, _ in self._frames:
                    w.writerow([index, t_ns, name])
            self._telemetry.close()
            self._outputs.close()
            self._fixes_file.close()
