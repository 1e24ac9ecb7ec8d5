"""Flight lines of a lawn-mower survey, from the track alone.

A survey flies parallel lines in alternating directions joined by turns. The line axis is
the dominant course modulo 180 deg: with each step's course a_k and length w_k, the axis
is half the angle of the length-weighted mean of the doubled angles,

    axis = atan2(sum w_k sin 2 a_k, sum w_k cos 2 a_k) / 2,

so that steps flown in opposite directions along one axis agree. A frame lies on a line
when a step next to it (from the frame before, or to the frame after) is within
LINE_TOLERANCE_DEG of the axis; consecutive such frames flown the same way form one line,
and a run of fewer than MIN_LINE_FRAMES is a turn or a transit, not a line. Lines are
numbered 0, 1, 2, ... in time order; frames on no line get NOT_ON_A_LINE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skyfix.runtime.core.errors import SkyfixError

LINE_TOLERANCE_DEG = 20.0  # a step this close to the line axis (either way) is along a line
MIN_LINE_FRAMES = 3  # a shorter run of aligned frames is a turn or transit
NOT_ON_A_LINE = -1


@dataclass(frozen=True)
class FlightLines:
    """`line`: [N] int, the line of each frame (NOT_ON_A_LINE for turns and transits);
    `axis_deg`: the line axis, a course in 0..180 deg (clockwise from north)."""

    line: np.ndarray
    axis_deg: float

    @property
    def count(self) -> int:
        return int(self.line.max()) + 1 if (self.line >= 0).any() else 0


def split_lines(east_m: np.ndarray, north_m: np.ndarray) -> FlightLines:
    """The flight lines of frames at (`east_m`, `north_m`) [N], given in time order."""
    e, n = np.asarray(east_m, np.float64), np.asarray(north_m, np.float64)
    if len(e) < MIN_LINE_FRAMES:
        raise SkyfixError(f"{len(e)} frames are too few for flight lines (at least "
                          f"{MIN_LINE_FRAMES})")
    de, dn = np.diff(e), np.diff(n)
    w = np.hypot(de, dn)
    if not (w > 0).any():
        raise SkyfixError("the frames were all taken at one place: no flight lines")
    course = np.arctan2(de, dn)
    axis = 0.5 * np.arctan2(np.sum(w * np.sin(2 * course)), np.sum(w * np.cos(2 * course)))
    # each step: +1 along the axis, -1 against it, 0 off it (or standing still)
    off = np.degrees(np.angle(np.exp(1j * (course - axis))))
    tol = LINE_TOLERANCE_DEG
    step_dir = np.where(w > 0, np.where(np.abs(off) <= tol, 1,
                                        np.where(np.abs(off) >= 180 - tol, -1, 0)), 0)
    # a frame takes the direction of the step into it, else of the step out of it
    into = np.concatenate([[0], step_dir])
    out_of = np.concatenate([step_dir, [0]])
    frame_dir = np.where(into != 0, into, out_of)
    line = np.full(len(e), NOT_ON_A_LINE, np.int64)
    number, start = 0, 0
    for i in range(1, len(e) + 1):
        if i < len(e) and frame_dir[i] == frame_dir[start]:
            continue
        if frame_dir[start] != 0 and i - start >= MIN_LINE_FRAMES:
            line[start:i] = number
            number += 1
        start = i
    return FlightLines(line, float(np.degrees(axis) % 180.0))


def parse_line_spec(spec: str, count: int) -> tuple[int, ...]:
    """Line numbers named by `spec`: "even", "odd" or a comma list such as "0,2,5", each
    below `count`."""
    text = spec.strip().lower()
    if text in ("even", "odd"):
        chosen = tuple(range(0 if text == "even" else 1, count, 2))
    else:
        try:
            chosen = tuple(sorted({int(x) for x in text.split(",")}))
        except ValueError:
            raise SkyfixError(f"--lines {spec!r}: expected even, odd or line numbers such as "
                              "0,2,5") from None
        bad = [k for k in chosen if not 0 <= k < count]
        if bad:
            raise SkyfixError(f"--lines {spec!r}: the survey has lines 0..{count - 1}, not "
                              f"{bad[0]}")
    if not chosen:
        raise SkyfixError(f"--lines {spec!r} names no line of the {count} in this survey")
    return chosen
