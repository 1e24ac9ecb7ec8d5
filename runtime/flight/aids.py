"""What GPS_INPUT carries besides the position: a visual heading, an altitude and a
satellite count.

yaw: while the autopilot's heading error that skyfix's fixes measure is trustworthy
(nav/heading.py: fresh, the last two agreeing), the visual heading is the autopilot's
heading at the send time (ATTITUDE) plus that correction. A bad compass shows up as a
large, steady correction; ArduPilot can compare it with its own yaw (and fuse it with
EK3_SRCn_YAW = GPS). Otherwise no yaw is sent (GPS_INPUT yaw 0).

altitude: on a pack with a DEM each accepted fix measures the camera's altitude (the
pose's height over the DEM, Fix.alt_amsl_m, with its 1-sigma) and hence the offset of the
autopilot's altitude (telemetry at the frame's time) from it. While the last offset is
fresh and agrees with the one before within `HEIGHT_AGREE_SIGMA` of their combined sigma,
the altitude sent is the autopilot's altitude at the send time plus that offset: the
vision sets the level, the autopilot's own altitude only carries it over the fraction of a
second since the frame, so its barometer is not fed back to it as a measurement. The
1-sigma adds the map's georeferencing error. Otherwise the autopilot's altitude passes
through, marked as no measurement (Estimate.alt_sigma_m NaN; GPS_INPUT vert_accuracy
ignored).

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
from dataclasses import replace

from skyfix.runtime.core.types import Estimate
from skyfix.runtime.nav.heading import HeadingCorrection

HEIGHT_AGREE_SIGMA = 3.0


class OutputAids:
    """Fed with accepted fixes (`on_fix`, the chain's vision step); read at each send slot
    (`yaw_deg`, `satellites`). Times are Unix ns. `heading`: the navigator's heading
    correction (fed with the same fixes)."""

    def __init__(self, lock_budget_s: float, max_satellites: int, heading: HeadingCorrection,
                 map_sigma_m: float = 0.0) -> None:
        self.budget_ns = int(lock_budget_s * 1e9)
        self.max_satellites = max_satellites
        self.map_sigma_m = map_sigma_m
        self.heading = heading
        self._fix_t: deque[int] = deque()
        self._height: deque[tuple[int, float, float]] = deque(maxlen=2)  # (t_ns, offset, sigma)
        self._lock = threading.Lock()

    def on_fix(self, t_ns: int, alt_offset_m: float = math.nan,
               alt_sigma_m: float = math.nan) -> None:
        """A fix the filter accepted, taken at `t_ns`; `alt_offset_m`: its altitude minus
        the autopilot's then (NaN when the fix has none), 1-sigma `alt_sigma_m`."""
        with self._lock:
            self._fix_t.append(int(t_ns))
            if math.isfinite(alt_offset_m) and math.isfinite(alt_sigma_m):
                self._height.append((int(t_ns), float(alt_offset_m), float(alt_sigma_m)))

    def satellites(self, t_ns: int) -> int:
        with self._lock:
            while self._fix_t and self._fix_t[0] < t_ns - self.budget_ns:
                self._fix_t.popleft()
            return min(len(self._fix_t), self.max_satellites)

    def _fresh_pair(self, last_two: deque, t_ns: int) -> list | None:
        """The two measurements in `last_two` (oldest first) when the newer one is fresh at
        `t_ns` (within the lock budget), else None."""
        with self._lock:
            pair = list(last_two)
        if len(pair) < 2 or t_ns - pair[-1][0] > self.budget_ns:
            return None
        return pair

    def yaw_deg(self, t_ns: int, heading_deg: float | None) -> float | None:
        """The visual heading, degrees [0, 360), or None when not trustworthy now."""
        correction = self.heading.at(t_ns)
        if correction is None or heading_deg is None or not math.isfinite(heading_deg):
            return None
        return (heading_deg + correction) % 360.0

    def with_altitude(self, est: Estimate, t_ns: int) -> Estimate:
        """`est` (carrying the autopilot's altitude at `t_ns`) with skyfix's own altitude
        and its 1-sigma when there is a trustworthy one now, else `est` unchanged."""
        pair = self._fresh_pair(self._height, t_ns)
        if pair is None or not math.isfinite(est.alt_amsl_m):
            return est
        (_, a, sa), (_, b, sb) = pair
        if abs(b - a) > HEIGHT_AGREE_SIGMA * math.hypot(sa, sb):
            return est
        return replace(est, alt_amsl_m=est.alt_amsl_m + b,
                       alt_sigma_m=math.hypot(sb, self.map_sigma_m))
