"""The autopilot's heading error, as the fixes skyfix accepts measure it.

Each fix the filter accepts measures the error of the heading the autopilot reported for
its frame (Fix.heading_err_deg: the visual minus the reported heading, from that frame's
pose). While the newest measurement is fresh (within output.lock_budget_s) and agrees with
the one before within `AGREE_DEG` (two frames, a steady correction rather than one odd
pose), it is the correction. It has two readers:

    the Navigator turns each view by it before matching: a compass off by more than the
        rotation gate (match.max_rotation_deg), and the coarse stage's residual rotations,
        would otherwise refuse every fix for as long as it stays off; the gate then judges
        what is left;
    GPS_INPUT's visual yaw (flight/aids.py): the autopilot's heading at the send time plus
        the correction.

The first correction needs fixes inside the gate: a compass already off by more than the
gate at the first frames gets none until it comes back within it.
"""

from __future__ import annotations

import math
import threading
from collections import deque

AGREE_DEG = 5.0


class HeadingCorrection:
    """Fed by the vision step (`add`), read by both steps (`at`); thread-safe. Unix ns."""

    def __init__(self, fresh_s: float) -> None:
        self.fresh_ns = int(fresh_s * 1e9)
        self._last: deque[tuple[int, float]] = deque(maxlen=2)  # (t_ns, error deg)
        self._lock = threading.Lock()

    def add(self, t_ns: int, heading_err_deg: float) -> None:
        """An accepted fix's heading error (NaN: the fix measured none; ignored)."""
        if math.isfinite(heading_err_deg):
            with self._lock:
                self._last.append((int(t_ns), float(heading_err_deg)))

    def at(self, t_ns: int) -> float | None:
        """The correction to add to the autopilot's heading at `t_ns`, degrees; None when
        there is no trustworthy one (see the module doc)."""
        with self._lock:
            pair = list(self._last)
        if len(pair) < 2 or t_ns - pair[-1][0] > self.fresh_ns:
            return None
        (_, a), (_, b) = pair
        return b if abs((b - a + 180.0) % 360.0 - 180.0) <= AGREE_DEG else None
