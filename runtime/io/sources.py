"""Frame sources and replay inputs.

`RecordedFlight` reads a recorded-flight folder (what `skyfix sim flight` writes):
flight.json, camera.yaml, frames.csv + images, telemetry.tlog and, for simulated
flights, truth.csv. `ImageFolder` and `VideoFrames` read frames as they come off a
camera; `open_inputs` puts frames, telemetry (runtime.logs), camera model and the
scoring reference together into `ReplayInputs`, so the replay itself never has to
know which files a flight came in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import cv2
import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import read_csv, read_json_object
from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.core.limits import T_MAX_NS, T_MIN_NS, check_time_ns
from skyfix.runtime.core.types import Frame, FrameItem, UnreadableFrame
from skyfix.runtime.io.clock import AutopilotClock
from skyfix.runtime.io.logs import (
    ImageMeta,
    read_image_meta,
    read_telemetry,
    telemetry_from_images,
)
from skyfix.runtime.io.telemetry import TelemetryLog

UNKNOWN_GNSS_SIGMA_M = 5.0  # a reference GNSS fix that does not report its accuracy
FLIGHT_FORMAT = "skyfix-flight/1"


@dataclass(frozen=True)
class Truth:
    """Reference positions for scoring only. `t_ns`: [N] int64; `en`: [N, 2] (x, y) in
    `crs` (map metres for a simulated flight's truth, lon/lat for a log's own GNSS)."""

    t_ns: np.ndarray
    en: np.ndarray
    crs: CRS
    sigma_m: np.ndarray | None = None  # [N] 1-sigma horizontal error of a GNSS reference

    def at(self, t_ns: np.ndarray) -> np.ndarray:
        """[M, 2] reference (E, N) linearly interpolated at `t_ns`."""
        return np.stack([np.interp(t_ns, self.t_ns, self.en[:, k]) for k in (0, 1)], -1)

    def covers(self, t_ns: np.ndarray, margin_ns: int = 1_000_000_000) -> np.ndarray:
        """[M] bool: `t_ns` lies within the reference's time span (plus `margin_ns`)."""
        t = np.asarray(t_ns)
        return (t >= self.t_ns[0] - margin_ns) & (t <= self.t_ns[-1] + margin_ns)

    @classmethod
    def from_gnss(cls, log: TelemetryLog) -> Truth | None:
        """The log's own GNSS fixes (2D or better) as a reference, or None without any."""
        g = log.gnss
        if not len(g):
            return None
        sigma = np.where(np.isfinite(g[:, 6]), g[:, 6], UNKNOWN_GNSS_SIGMA_M)
        return cls(g[:, 0].astype(np.int64), g[:, [2, 1]].copy(), WGS84, sigma)

    def sigma_at(self, t_ns: np.ndarray) -> np.ndarray:
        """[M] 1-sigma error of the reference itself at `t_ns` (0 for a simulation's truth)."""
        if self.sigma_m is None:
            return np.zeros(np.shape(t_ns))
        return np.interp(t_ns, self.t_ns, self.sigma_m)


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
        meta = read_json_object(meta_path, "flight description", 1_000_000)
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
        except TypeError:
            raise SkyfixError(f"{meta_path}: camera, frames, telemetry and truth must be file "
                              "names") from None
        except CRSError as exc:
            raise SkyfixError(f"{meta_path}: unusable crs {meta.get('crs')!r} ({exc})") from None
        return cls(root, camera, times, files, tlog, truth)

    def frames(self) -> Iterator[FrameItem]:
        """Frames in time order; an unreadable image yields an UnreadableFrame instead."""
        for i, (t, path) in enumerate(zip(self.frame_times_ns, self.frame_files, strict=True)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
            if image is None:
                yield UnreadableFrame(i, int(t), f"unreadable image {path.name}")
            else:
                yield Frame(i, int(t), image)


def _read_frames_csv(path: Path, root: Path) -> tuple[np.ndarray, tuple[Path, ...]]:
    times, files = [], []
    for row_no, row in enumerate(read_csv(path, "frame list")[1], start=2):
        try:
            t_ns, file = int(row["t_ns"]), root / row["file"]
        except (KeyError, TypeError, ValueError):
            raise SkyfixError(f"{path}:{row_no}: expected columns index,t_ns,file") from None
        times.append(check_time_ns(t_ns, f"{path}:{row_no}"))
        files.append(file)
    if not times:
        raise SkyfixError(f"{path}: no frames listed")
    order = np.argsort(times, kind="stable")
    return np.asarray(times, np.int64)[order], tuple(files[i] for i in order)


def _read_truth(path: Path, crs: CRS) -> Truth:
    rows = []
    for row_no, r in enumerate(read_csv(path, "ground truth")[1], start=2):
        try:
            row = (int(r["t_ns"]), float(r["east_m"]), float(r["north_m"]))
        except (KeyError, TypeError, ValueError):
            raise SkyfixError(f"{path}:{row_no}: expected columns t_ns,east_m,north_m"
                              ) from None
        check_time_ns(row[0], f"{path}:{row_no}")
        if not np.isfinite(row[1:]).all():
            raise SkyfixError(f"{path}:{row_no}: east_m and north_m must be finite")
        rows.append(row)
    if not rows:
        raise SkyfixError(f"{path}: no rows")
    arr = np.array(rows, np.float64)
    return Truth(arr[:, 0].astype(np.int64), arr[:, 1:], crs)


# --- Frames as they come off a camera ----------------------------------------------------

MAX_VIDEO_FRAMES = 50_000_000  # ~19 days at 30 fps: a larger count is a broken container
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# A UTC time in a file name: YYYYmmddHHMMSS and optional fraction digits (cuav: ...SScc).
_NAME_TIME = re.compile(r"(?<!\d)(\d{14})(\d{0,6})(?!\d)")


def _read_images(files: tuple[Path, ...], times_ns: np.ndarray) -> Iterator[FrameItem]:
    for i, (t, path) in enumerate(zip(times_ns, files, strict=True)):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            yield UnreadableFrame(i, int(t), f"unreadable image {path.name}")
        else:
            yield Frame(i, int(t), image)


def _unix_ns(t: datetime) -> int:
    return int(round(t.timestamp() * 1e6)) * 1000


@dataclass(frozen=True)
class ImageFolder:
    """Photos in a folder, in time order. `metas`: what each photo says about itself."""

    root: Path
    frame_times_ns: np.ndarray  # [N] int64, Unix ns on the camera's clock
    frame_files: tuple[Path, ...]
    metas: tuple[ImageMeta, ...]

    @classmethod
    def open(cls, root: Path, times_csv: Path | None = None) -> ImageFolder:
        """Capture times from `times_csv`, else EXIF DateTimeOriginal (+SubSec), else a
        `YYYYmmddHHMMSS[fraction]` UTC time in the file name."""
        root = Path(root)
        if not root.is_dir():
            raise SkyfixError(f"image folder not found: {root}")
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SkyfixError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
        metas = [read_image_meta(p) for p in files]
        listed = _read_times_csv(times_csv) if times_csv is not None else {}
        times = []
        for path, meta in zip(files, metas, strict=True):
            if times_csv is not None:
                t = listed.get(path.name)
                if t is None:
                    raise SkyfixError(f"{times_csv}: no time for {path.name}")
            elif meta.time_utc is not None:
                t = _unix_ns(meta.time_utc)
            elif (m := _NAME_TIME.search(path.stem)) is not None:
                t = _name_time_ns(m)
            else:
                raise SkyfixError(f"{path}: no capture time (no EXIF DateTimeOriginal, no "
                                  "YYYYmmddHHMMSS in the name); pass --frame-times CSV")
            times.append(check_time_ns(t, f"{path} capture time"))
        order = np.argsort(times, kind="stable")
        return cls(root, np.asarray(times, np.int64)[order], tuple(files[i] for i in order),
                   tuple(metas[i] for i in order))

    def frames(self) -> Iterator[FrameItem]:
        """Frames in time order; an unreadable image yields (index, t_ns, reason) instead."""
        return _read_images(self.frame_files, self.frame_times_ns)

    def telemetry(self) -> TelemetryLog | None:
        """Per-photo EXIF GPS + DJI XMP as telemetry, or None when the photos carry none."""
        return telemetry_from_images(list(self.metas), self.frame_times_ns)


def _name_time_ns(m: re.Match) -> int:
    try:
        t = datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise SkyfixError(f"{m.string}: {m.group(1)} is not a YYYYmmddHHMMSS time") from None
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return _unix_ns(t) + int(round(frac * 1e9))


def _read_times_csv(path: Path) -> dict[str, int]:
    """file name -> Unix ns, from columns file|filename|image and t_ns|unix_s|utc_unix_s."""
    path = Path(path)
    out = {}
    cols, reader = read_csv(path, "frame-times file")
    fcol = next((c for c in ("file", "filename", "image") if c in cols), None)
    tcol = next((c for c in ("t_ns", "unix_s", "utc_unix_s") if c in cols), None)
    if fcol is None or tcol is None:
        raise SkyfixError(f"{path}: expected columns file|filename|image and "
                          "t_ns|unix_s|utc_unix_s")
    for row_no, row in enumerate(reader, start=2):
        try:
            v = Decimal(str(row[tcol]).strip())
            t_ns = int(v if tcol == "t_ns" else v * 10**9)
            name = Path(row[fcol]).name
        except (TypeError, ValueError, InvalidOperation, OverflowError):
            raise SkyfixError(f"{path}:{row_no}: {tcol} is not a number") from None
        out[name] = check_time_ns(t_ns, f"{path}:{row_no}")
    return out


@dataclass(frozen=True)
class VideoFrames:
    """Frames of a video file at most `max_fps` per second; times are `start_ns` plus the
    container's presentation time of each frame."""

    path: Path
    start_ns: int
    frame_times_ns: np.ndarray  # [N] int64, nominal (from the container's frame rate)
    stride: int
    width: int
    height: int

    @classmethod
    def open(cls, path: Path, start: str, max_fps: float = 2.0) -> VideoFrames:
        path = Path(path)
        if not path.is_file():
            raise SkyfixError(f"video not found: {path}")
        try:
            t0 = datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            raise SkyfixError(f"--video-start {start!r} is not an ISO 8601 time") from None
        if t0.tzinfo is None:
            t0 = t0.replace(tzinfo=timezone.utc)
        cap = cv2.VideoCapture(str(path))
        fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()
        if not (0 < fps <= 10_000 and 0 < count <= MAX_VIDEO_FRAMES and w > 0):
            raise SkyfixError(f"{path}: not a readable video (or {count} frames at {fps:g} fps)")
        if not (np.isfinite(max_fps) and max_fps > 0):
            raise SkyfixError(f"--video-fps must be a positive number, got {max_fps}")
        stride = max(1, int(round(fps / max_fps)))
        idx = np.arange(0, count, stride)
        start_ns = check_time_ns(_unix_ns(t0), f"--video-start {start!r}")
        return cls(path, start_ns, (start_ns + idx * 1e9 / fps).astype(np.int64), stride, w, h)

    def frames(self) -> Iterator[FrameItem]:
        cap = cv2.VideoCapture(str(self.path))
        try:
            for i in range(len(self.frame_times_ns) * self.stride):
                ok, image = cap.read()
                if not ok:
                    return
                if i % self.stride == 0:
                    t = self.start_ns + int(round(cap.get(cv2.CAP_PROP_POS_MSEC) * 1e6))
                    yield Frame(i // self.stride, t, image)
        finally:
            cap.release()


# --- Cameras -------------------------------------------------------------------------

def load_camera(path: Path) -> CameraModel:
    """An OpenCV FileStorage YAML (CameraModel.load) or a cuav-style JSON
    (`K` 3x3, `D` distortion, `xresolution`, `yresolution`)."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return CameraModel.load(path)
    if not path.is_file():
        raise SkyfixError(f"camera file not found: {path}")
    try:
        d = json.loads(path.read_text())
        K = np.asarray(d["K"], np.float64)
        dist = np.ravel(np.asarray(d.get("D", np.zeros(5)), np.float64))
        w, h = int(d["xresolution"]), int(d["yresolution"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SkyfixError(f"camera file {path}: expected JSON with K, D, xresolution, "
                          f"yresolution ({type(exc).__name__}: {exc})") from None
    if K.shape != (3, 3) or dist.size not in (4, 5, 8) or not np.isfinite(K).all():
        raise SkyfixError(f"camera file {path}: K must be 3x3 and D have 4, 5 or 8 values")
    d5 = tuple(float(x) for x in np.pad(dist[:5], (0, max(0, 5 - dist.size))))
    return CameraModel(w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                       d5)  # type: ignore[arg-type]


def camera_from_exif(meta: ImageMeta, name: str) -> CameraModel:
    """First guess of a photo's camera: focal length from FocalLengthIn35mmFilm (defined on
    the 43.27 mm diagonal of a 36x24 mm frame), principal point at the centre, no
    distortion. Calibrate (or pass --camera) for anything better."""
    if not meta.focal_35mm > 0:
        raise SkyfixError(f"{name}: no FocalLengthIn35mmFilm in EXIF; pass --camera")
    f_px = meta.focal_35mm * np.hypot(meta.width, meta.height) / np.hypot(36.0, 24.0)
    return CameraModel(meta.width, meta.height, f_px, f_px, (meta.width - 1) / 2,
                       (meta.height - 1) / 2)


def fit_camera(camera: CameraModel, width: int, height: int, name: str) -> CameraModel:
    """`camera` scaled to frames of `width` x `height` (same aspect ratio), else an error."""
    if (camera.width, camera.height) == (width, height):
        return camera
    factor = width / camera.width
    if abs(camera.height * factor - height) > 1.0:
        raise SkyfixError(f"{name}: frames are {width}x{height} but the camera model is "
                          f"{camera.width}x{camera.height}")
    return camera.scaled(factor)


# --- Everything a replay needs ---------------------------------------------------------

@dataclass(frozen=True)
class ReplayInputs:
    """Frames + telemetry + camera of one flight, with the reference it is scored against.

    `frames` is a RecordedFlight, ImageFolder or VideoFrames (frame_times_ns, frames());
    its times are already on the telemetry's clock. `reference` says what `truth` is.
    """

    name: str
    camera: CameraModel
    frames: RecordedFlight | ImageFolder | VideoFrames
    telemetry: TelemetryLog
    truth: Truth | None
    reference: str


def open_inputs(flight: Path | None = None, *, frames: Path | None = None,
                frame_times: Path | None = None, video: Path | None = None,
                video_start: str | None = None, video_fps: float = 2.0,
                telemetry: Path | None = None, camera: Path | None = None,
                time_offset_s: float = 0.0, clock: AutopilotClock | None = None) -> ReplayInputs:
    """Open a flight from a recorded-flight folder, an image folder or a video.

    `time_offset_s` is added to the frame times (camera clock -> log clock). Without a
    `telemetry` log, an image folder's own EXIF GPS + DJI XMP serve as telemetry. A .tlog's
    rows are stamped by `clock` (default: AutopilotClock(), as telemetry.clock auto).
    """
    given = [x for x in (flight, frames, video) if x is not None]
    if len(given) != 1:
        raise SkyfixError("give exactly one of: a recorded-flight folder, --frames DIR, "
                          "--video FILE")
    # a camera whose clock was never set can be years off; the shifted times must still
    # fall in 2000..2100 (checked where they are read)
    span_s = (T_MAX_NS - T_MIN_NS) * 1e-9
    if not (np.isfinite(time_offset_s) and abs(time_offset_s) <= span_s):
        raise SkyfixError(f"--time-offset must be a number of seconds within 100 years, got "
                          f"{time_offset_s}")
    offset_ns = int(round(time_offset_s * 1e9))
    if flight is not None:
        rec = RecordedFlight.open(flight)
        src: RecordedFlight | ImageFolder | VideoFrames = replace(
            rec, frame_times_ns=rec.frame_times_ns + offset_ns)
        log = read_telemetry(telemetry or rec.telemetry_path, clock)
        cam = load_camera(camera) if camera else rec.camera
        if rec.truth is not None:
            _check_overlap(src.frame_times_ns, log, str(flight))
            return ReplayInputs(str(flight), cam, src, log, rec.truth, "truth.csv")
        name = str(flight)
    elif frames is not None:
        folder = ImageFolder.open(frames, frame_times)
        src = replace(folder, frame_times_ns=folder.frame_times_ns + offset_ns)
        own = src.telemetry() if telemetry is None else None
        if telemetry is None and own is None:
            raise SkyfixError(f"{frames}: the images carry no GPS/attitude; pass --telemetry")
        log = own if own is not None else read_telemetry(telemetry, clock)
        first = src.metas[0]
        cam = (load_camera(camera) if camera
               else camera_from_exif(first, str(src.frame_files[0])))
        cam = fit_camera(cam, first.width, first.height, str(frames))
        name = str(frames)
    else:
        if video_start is None:
            raise SkyfixError("--video needs --video-start (ISO 8601 time of the first frame)")
        if telemetry is None or camera is None:
            raise SkyfixError("--video needs --telemetry and --camera")
        vid = VideoFrames.open(video, video_start, video_fps)  # type: ignore[arg-type]
        src = replace(vid, start_ns=vid.start_ns + offset_ns,
                      frame_times_ns=vid.frame_times_ns + offset_ns)
        log = read_telemetry(telemetry, clock)
        cam = fit_camera(load_camera(camera), vid.width, vid.height, str(video))
        name = str(video)
    _check_overlap(src.frame_times_ns, log, name)
    truth = Truth.from_gnss(log)
    ref = "none" if truth is None else ("EXIF GPS" if telemetry is None and frames else
                                        "log GNSS")
    return ReplayInputs(name, cam, src, log, truth, ref)


def _check_overlap(frame_t_ns: np.ndarray, log: TelemetryLog, name: str) -> None:
    """Refuse frames that all lie outside the log: a clock or time-offset problem."""
    lo, hi = log.att[0, 0] - 2e9, log.att[-1, 0] + 2e9
    if not ((frame_t_ns >= lo) & (frame_t_ns <= hi)).any():
        def utc(t: float) -> str:
            return datetime.fromtimestamp(t * 1e-9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        raise SkyfixError(
            f"{name}: frames ({utc(frame_t_ns[0])} .. {utc(frame_t_ns[-1])} UTC) and telemetry "
            f"({utc(log.att[0, 0])} .. {utc(log.att[-1, 0])} UTC) do not overlap; "
            "check the clocks or pass --time-offset")
