"""Fault injection for the closed loop: `skyfix sim closed-loop --fault NAME[@START:END]`.

Each fault acts where it would act in flight. Times are seconds from the emulator's
start; a window is [start, end).

    camera  freeze         the same image again and again, freshly stamped
            black          all-zero frames (lens cap, dead sensor)
            saturated      all-255 frames (sun into the lens, exposure runaway)
            blur           gaussian blur, sigma BLUR_SIGMA_PX (focus lost, vibration)
            clock-back     the camera's and the autopilot's clocks step back CLOCK_STEP_S
            clock-forward  ... and forward CLOCK_STEP_S
    link    telemetry-gap  no ATTITUDE / SCALED_IMU / GLOBAL_POSITION_INT (heartbeats go on)
            link-loss      nothing either way; the link comes back at the window's end
            spoof-drift    GPS_RAW_INT still reports a healthy 3D fix, pulled away from
                           the truth at SPOOF_DRIFT_MPS
    map     corrupt-map    one byte of a copy of the pack flipped: it must be refused
            wrong-map      the pack shows another place (the ortho mirrored east-west)
            featureless    the ground under the track during the window is water ...
            repetitive     ... or a car park, in the camera's world and in the map alike

Map faults act for the whole flight (the window places featureless / repetitive ground).
`fault_outcomes` turns what the emulator received into one `FaultOutcome` per fault.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.transform import rowcol

from skyfix.runtime.core.errors import SkyfixError

CAMERA_FAULTS = ("freeze", "black", "saturated", "blur", "clock-back", "clock-forward")
LINK_FAULTS = ("telemetry-gap", "link-loss", "spoof-drift")
MAP_FAULTS = ("corrupt-map", "wrong-map", "featureless", "repetitive")
FAULT_NAMES = CAMERA_FAULTS + LINK_FAULTS + MAP_FAULTS

BLUR_SIGMA_PX = 12.0
CLOCK_STEP_S = 5.0
SPOOF_DRIFT_MPS = 2.0  # east; ~ what the GNSS monitor's CUSUM is documented to catch in ~10 s
WRONG_FIX_M = 30.0  # integrity: no claimed fix this far off ...
CONFIDENT_SIGMA_M = 10.0  # ... while claiming a 1-sigma below this
_CORRUPTED_FILE = "local_descriptors.npy"
_FIX_STATES = ("skyfix: 3D fix", "skyfix: no fix")  # runtime/flight/output.py _fix_text
_FAULT_RE = re.compile(r"^([a-z-]+)(?:@([0-9.]+):([0-9.]+))?$")


@dataclass(frozen=True)
class Fault:
    name: str
    start_s: float
    end_s: float

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s

    def __str__(self) -> str:
        return f"{self.name}@{self.start_s:g}:{self.end_s:g}"


def parse_fault(text: str, duration_s: float, gnss_off_at_s: float) -> Fault:
    """`NAME` or `NAME@START:END` (seconds); without a window: the middle third of the
    flight after GNSS loss."""
    m = _FAULT_RE.match(text.strip())
    if m is None or m.group(1) not in FAULT_NAMES:
        raise SkyfixError(f"fault {text!r}: expected NAME[@START:END] with NAME one of "
                          f"{', '.join(FAULT_NAMES)}")
    if m.group(2) is None:
        third = (duration_s - gnss_off_at_s) / 3.0
        return Fault(m.group(1), gnss_off_at_s + third, gnss_off_at_s + 2 * third)
    start, end = float(m.group(2)), float(m.group(3))
    if not 0 <= start < end <= duration_s:
        raise SkyfixError(f"fault {text!r}: need 0 <= START < END <= duration "
                          f"({duration_s:g} s)")
    return Fault(m.group(1), start, end)


@dataclass(frozen=True)
class FaultSchedule:
    """The faults of one flight, asked by name and time (seconds from the start)."""

    faults: tuple[Fault, ...] = ()

    def active(self, name: str, t_s: float) -> bool:
        return any(f.name == name and f.active(t_s) for f in self.faults)

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.faults)

    def clock_step_ns(self, t_s: float) -> int:
        """How far the clocks are off the truth at `t_s` (clock faults)."""
        step = CLOCK_STEP_S * (self.active("clock-forward", t_s) - self.active("clock-back", t_s))
        return int(step * 1e9)

    def spoof_offset_en_m(self, t_s: float) -> np.ndarray:
        """[2] east/north metres the spoofer has pulled the GNSS position at `t_s`."""
        off = np.zeros(2)
        for f in self.faults:
            if f.name == "spoof-drift" and f.active(t_s):
                off[0] += SPOOF_DRIFT_MPS * (t_s - f.start_s)
        return off


class CameraFaults:
    """Applies the camera faults of `schedule` to rendered frames; `start_ns` is the
    emulator's start (Unix ns)."""

    def __init__(self, schedule: FaultSchedule, start_ns: int) -> None:
        self.schedule, self.start_ns = schedule, start_ns
        self._frozen: np.ndarray | None = None

    def apply(self, image: np.ndarray, t_ns: int) -> tuple[np.ndarray, int]:
        """(image, stamp) as the faulty camera delivers the frame `image` [H, W, 3] uint8
        taken at `t_ns`."""
        s = self.schedule
        t_s = (t_ns - self.start_ns) * 1e-9
        if s.active("freeze", t_s):
            if self._frozen is None:
                self._frozen = image.copy()
            image = self._frozen.copy()
        else:
            self._frozen = None
        if s.active("black", t_s):
            image = np.zeros_like(image)
        elif s.active("saturated", t_s):
            image = np.full_like(image, 255)
        elif s.active("blur", t_s):
            image = cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA_PX)
        return image, t_ns + s.clock_step_ns(t_s)


# -- map faults -------------------------------------------------------------------------


def _water(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """[3, H, W] uint8 RGB: flat dark water with faint smooth ripples."""
    ripple = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 15)
    ripple *= 3.0 / max(float(ripple.std()), 1e-6)
    return np.clip(np.array([38, 62, 70], np.float32)[:, None, None] + ripple, 0, 255
                   ).astype(np.uint8)


def _car_park(shape: tuple[int, int], gsd_m: float) -> np.ndarray:
    """[3, H, W] uint8 RGB: asphalt with white bay lines every 2.5 m, rows every 6 m."""
    yy, xx = np.mgrid[:shape[0], :shape[1]] * gsd_m
    line = ((xx % 2.5) < 0.15) & ((yy % 6.0) < 5.0) | ((yy % 6.0) < 0.15)
    img = np.where(line, 225, 85).astype(np.uint8)
    return np.repeat(img[None], 3, 0)


def _paint_track(rgb: np.ndarray, transform, track_en: np.ndarray, radius_m: float,
                 ground: np.ndarray) -> None:
    """Replace the pixels of `rgb` [3, H, W] within `radius_m` of the points `track_en`
    [N, 2] by those of `ground` [3, H, W]."""
    mask = np.zeros(rgb.shape[1:], np.uint8)
    r_px = int(round(radius_m / transform.a))
    rows, cols = rowcol(transform, track_en[:, 0].tolist(), track_en[:, 1].tolist())
    for r, c in zip(rows, cols, strict=True):
        cv2.circle(mask, (int(c), int(r)), r_px, 1, -1)
    sel = mask.astype(bool)
    rgb[:, sel] = ground[:, sel]


def fault_ortho(ortho: Path, out: Path, schedule: FaultSchedule,
                track: Callable[[np.ndarray], np.ndarray] | None, radius_m: float,
                what: str) -> Path:
    """A copy of `ortho` as the map fault `what` sees the world, written under `out`.

    "wrong-map": mirrored east-west (another place's imagery on the same coordinates);
    "world" (what the camera sees) and "map" (what the pack is built from): with featureless
    / repetitive ground painted `radius_m` around the track `track(t_s) -> [N, 2] map
    metres` during those faults' windows. The car park is the same in both; the water's
    ripples are not, as water never looks the same on two days."""
    with rasterio.open(ortho) as src:
        profile, rgb = src.profile, src.read()
    if rgb.shape[0] < 3 or rgb.dtype != np.uint8:
        raise SkyfixError(f"{ortho}: map faults need a 3-band uint8 ortho")
    rgb = np.ascontiguousarray(rgb[:3])
    if what == "wrong-map":
        rgb = np.ascontiguousarray(rgb[:, :, ::-1])
    else:
        rng = np.random.default_rng(7 if what == "world" else 8)
        for f in schedule.faults:
            if f.name not in ("featureless", "repetitive"):
                continue
            ground = (_water(rgb.shape[1:], rng) if f.name == "featureless"
                      else _car_park(rgb.shape[1:], profile["transform"].a))
            t = np.arange(f.start_s, f.end_s + 1e-9, 0.25)
            _paint_track(rgb, profile["transform"], track(t), radius_m, ground)
    profile.update(count=3, compress="deflate", driver="GTiff", photometric="RGB")
    profile.pop("blockysize", None)
    path = Path(out) / f"ortho_{what}.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb)
    return path


def corrupt_pack(pack: Path, out: Path) -> Path:
    """A copy of the map pack `pack` at `out` with one byte of one data file flipped."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(pack, out)
    path = out / _CORRUPTED_FILE
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    return out


# -- outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultOutcome:
    """How the daemon fared during one fault (times in seconds from the flight's start).

    claimed_share: share of GPS_INPUT in the window claiming a 3D fix;
    error_max_claimed_m: worst error of those; confident_wrong: GPS_INPUT from the fault's
    start to the end of the flight claiming a 3D fix with horiz_accuracy < 10 m while
    more than 30 m off; recovered_after_s: from the window's end to the first claimed fix
    within 10 m of the truth (None: not before the flight ended); statustext: what the
    daemon said from the start of the window to 5 s after it, statustext_at_s: when,
    seconds after the window's start; fix_state: the last of its fix announcements ("3D
    fix ...", "no fix ...") before the window's end, what the pilot reads then (None: none).
    """

    fault: str
    start_s: float
    end_s: float
    claimed_share: float
    error_max_claimed_m: float | None
    confident_wrong: int
    max_interval_ms: float | None
    recovered_after_s: float | None
    statustext: tuple[str, ...]
    statustext_at_s: tuple[float, ...]
    fix_state: str | None


def confident_wrong(fix: np.ndarray, sigma_m: np.ndarray, err_m: np.ndarray) -> np.ndarray:
    """[N] bool: claimed 3D fixes with a 1-sigma below 10 m that are more than 30 m off."""
    return (fix >= 3) & (sigma_m < CONFIDENT_SIGMA_M) & (err_m > WRONG_FIX_M)


def fault_outcomes(faults: tuple[Fault, ...], arrive_s: np.ndarray, fix: np.ndarray,
                   sigma_m: np.ndarray, err_m: np.ndarray,
                   texts: list[tuple[float, str]]) -> list[FaultOutcome]:
    """One outcome per fault from the GPS_INPUT the autopilot received ([N] arrival s,
    fix_type, horiz_accuracy m, true error m) and its STATUSTEXT ((arrival s, text))."""
    wrong = confident_wrong(fix, sigma_m, err_m)
    outcomes = []
    for f in faults:
        inside = (arrive_s >= f.start_s) & (arrive_s < f.end_s)
        claimed = inside & (fix >= 3)
        gaps = np.diff(arrive_s[inside]) * 1e3
        good = np.flatnonzero((arrive_s >= f.end_s) & (fix >= 3) & (err_m <= 10.0))
        said = [(a, t) for a, t in texts if f.start_s <= a < f.end_s + 5.0]
        states = [t for a, t in texts if a < f.end_s and t.startswith(_FIX_STATES)]
        outcomes.append(FaultOutcome(
            str(f), f.start_s, f.end_s,
            round(float(claimed.sum() / max(inside.sum(), 1)), 3),
            round(float(err_m[claimed].max()), 2) if claimed.any() else None,
            int((wrong & (arrive_s >= f.start_s)).sum()),
            round(float(gaps.max()), 1) if len(gaps) else None,
            round(float(arrive_s[good[0]] - f.end_s), 2) if len(good) else None,
            tuple(t for a, t in said), tuple(round(a - f.start_s, 2) for a, _ in said),
            states[-1] if states else None))
    return outcomes
