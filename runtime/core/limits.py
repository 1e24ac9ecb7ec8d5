"""Plausibility bounds every reader applies to what it reads (times, sizes).

A time stamp outside 2000..2100 is a broken or hostile input, never a real capture time:
readers refuse (or drop) it before it can drive a loop over the gap it spans or
overflow an int64 of nanoseconds.
"""

from __future__ import annotations

import math

from skyfix.runtime.core.errors import SkyfixError

T_MIN_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
T_MAX_NS = 4_102_444_800 * 10**9  # 2100-01-01T00:00:00Z


def plausible_time_ns(t_ns: float) -> bool:
    """Whether `t_ns` (Unix ns, int or float) is a finite time in 2000..2100."""
    try:
        return math.isfinite(t_ns) and T_MIN_NS <= t_ns < T_MAX_NS
    except TypeError:
        return False


def check_time_ns(t_ns: int, where: str) -> int:
    """`t_ns` as an int when plausible; else a one-line SkyfixError naming `where`."""
    if isinstance(t_ns, bool) or not isinstance(t_ns, int | float) or not plausible_time_ns(t_ns):
        raise SkyfixError(f"{where}: time stamp {t_ns!r} ns is not a time in 2000..2100 "
                          "(Unix nanoseconds expected)")
    return int(t_ns)
