"""What GPS_INPUT carries besides the position: a visual heading and a satellite count.

yaw: each accepted fix measures the autopilot's heading error (Fix.heading_err_deg, the
visual minus the reported heading, from the pose of that frame). While the last such
measurement is fresh (within output.lock_budget_s) and agrees with the one before within
`HEADING_AGREE_DEG` (two frames, a consistent correction, not one odd pose), the visual
heading is the autopilot's heading at the send time (ATTITUDE) plus that correction. A bad
compass shows up as a large, steady correction; ArduPilot can compare it with its own yaw
(and fuse it with EK3_SRCn_YAW = GPS). Otherwise no yaw is sent (GPS_INPUT yaw 0).

satellites_visible: not satellites. It is the number of fixes the filter accepted in the
last output.lock_budget_s, capped at output.satellites. ArduPilot's EKF3 inflates a GPS's
noise below 6 satellites, so sparse fixes (a few per lock budget) weigh less; with
GPS_AUTO_SWITCH = 1 a receiver needs more satellites to be preferred, and the cap keeps a
healthy real GNSS ahead of skyfix.
"""

from __future__ import annotations

import math
import threading
from collections import deque

HEADING_AGREE_DEG = 5.0


class OutputAids:
    """Fed with accepted fixes (`on_fix`, the chain's vision step); read at each send slot
    (`yaw_deg`, `satellites`). Times are Unix ns."""

    def __init__(self, lock_budget_s: float, max_satellites: int) -> None:
        self.budget_ns = int(lock_budget_s * 1e9)
        self.max_satellites = max_satellites
        self._fix_t: deque[int] = deque()
        self._heading: deque[tuple[int, float]] = deque(maxlen=2)  # (t_ns, correction deg)
        self._lock = threading.Lock()

    def on_fix(self, t_ns: int, heading_err_deg: float) -> None:
        """A fix the filter accepted, taken at `t_ns`."""
        with self._lock:
            self._fix_t.append(int(t_ns))
            if math.isfinite(heading_err_deg):
                self._heading.append((int(t_ns), float(heading_err_deg)))

    def satellites(self, t_ns: int) -> int:
        with self._lock:
            while self._fix_t and self._fix_t[0] < t_ns - self.budget_ns:
                self._fix_t.popleft()
            return min(len(self._fix_t), self.max_satellites)

    def yaw_deg(self, t_ns: int, heading_deg: float | None) -> float | None:
        """The visual heading, degrees [0, 360), or None when not trustworthy now."""
        with self._lock:
            heading = list(self._heading)
        yaw = heading_deg if heading_deg is not None and math.isfinite(heading_deg) else None
        if yaw is None or len(heading) < 2 or t_ns - heading[-1][0] > self.budget_ns:
            return None
        (_, a), (_, b) = heading
        if abs((b - a + 180.0) % 360.0 - 180.0) > HEADING_AGREE_DEG:
            return None
        return (yaw + b) % 360.0
