"""Frame sources. `RecordedFlight` reads a recorded-flight folder (what `skyfix sim
flight` writes): flight.json, camera.yaml, frames.csv + images, telemetry.tlog and,
for simulated flights, truth.csv.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rasterio.crs import CRS

from skyfix.calibration.camera import CameraModel
from skyfix.runtime.errors import SkyfixError
from skyfix.runtime.types import Frame

FLIGHT_FORMAT = "skyfix-flight/1"


@dataclass(frozen=True)
class Truth:
    """Reference positions for scoring only. `t_ns`: [N] int64; `en`: [N, 2] map metres."""

    t_ns: np.ndarray
    en: np.ndarray
    crs: CRS

    def at(self, t_ns: np.ndarray) -> np.ndarray:
        """[M, 2] reference (E, N) linearly interpolated at `t_ns`."""
        return np.stack([np.interp(t_ns, self.t_ns, self.en[:, k]) for k in (0, 1)], -1)


@dataclass(frozen=True)
class RecordedFlight:
    root: Path
    camera: CameraModel
    frame_times_ns: np.ndarray  # [N] int64
    frame_files: tuple[Path, ...]
    telemetry_path: Path
    truth: Truth | None

    @classmethod
    def open(cls, root: Path) -> RecordedFlight:
        root = Path(root)
        meta_path = root / "flight.json"
        if not meta_path.is_file():
            raise SkyfixError(f"{root} is not a recorded flight (no flight.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise SkyfixError(
                f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if meta.get("format") != FLIGHT_FORMAT:
            raise SkyfixError(
                f"{meta_path}: format {meta.get('format')!r}, expected {FLIGHT_FORMAT!r}")
        try:
            camera = CameraModel.load(root / meta["camera"])
            times, files = _read_frames_csv(root / meta["frames"], root)
            truth = None
            if meta.get("truth"):
                truth = _read_truth(root / meta["truth"], CRS.from_user_input(meta["crs"]))
            tlog = root / meta["telemetry"]
        except KeyError as exc:
            raise SkyfixError(f"{meta_path}: missing key {exc}") from None
        return cls(root, camera, times, files, tlog, truth)

    def frames(self) -> Iterator[Frame | tuple[int, int, str]]:
        """Frames in time order; an unreadable image yields (index, t_ns, reason) instead."""
        for i, (t, path) in enumerate(zip(self.frame_times_ns, self.frame_files, strict=True)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
            if image is None:
                yield (i, int(t), f"unreadable image {path.name}")
            else:
                yield Frame(i, int(t), image)


def _read_frames_csv(path: Path, root: Path) -> tuple[np.ndarray, tuple[Path, ...]]:
    if not path.is_file():
        raise SkyfixError(f"frame list not found: {path}")
    times, files = [], []
    with open(path, newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):
            try:
                times.append(int(row["t_ns"]))
                files.append(root / row["file"])
            except (KeyError, TypeError, ValueError):
                raise SkyfixError(f"{path}:{row_no}: expected columns index,t_ns,file") from None
    if not times:
        raise SkyfixError(f"{path}: no frames listed")
    order = np.argsort(times, kind="stable")
    return np.asarray(times, np.int64)[order], tuple(files[i] for i in order)


def _read_truth(path: Path, crs: CRS) -> Truth:
    if not path.is_file():
        raise SkyfixError(f"ground truth not found: {path}")
    with open(path, newline="") as f:
        rows = [(int(r["t_ns"]), float(r["east_m"]), float(r["north_m"]))
                for r in csv.DictReader(f)]
    if not rows:
        raise SkyfixError(f"{path}: no rows")
    arr = np.array(rows, np.float64)
    return Truth(arr[:, 0].astype(np.int64), arr[:, 1:], crs)
