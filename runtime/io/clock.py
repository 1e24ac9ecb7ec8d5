"""The autopilot's boot clock mapped to ours: telemetry stamped when it was measured.

A message's arrival time is late by the link's transport delay, which on a serial link
jitters with buffering (a few ms to hundreds). Most autopilot messages carry the time they
were measured on the autopilot's boot clock (`time_boot_ms`, or `time_usec` since boot);
`AutopilotClock` maps that clock onto the clock that stamps arrivals ("local": the
daemon's wall clock, which also stamps the camera's frames; a .tlog's receive stamps in
replay), so each sample is stamped at its autopilot time, not its arrival.

Model. With tau the autopilot time of a message and t_local the same instant on our clock,

    t_local = tau + offset(tau),   offset(tau) = a + b tau    (b: rate difference, ~1e-5)

Every message gives an upper bound (it cannot arrive before it was measured):

    u_i = arrival_i - tau_i = offset(tau_i) + delay_i  >=  offset(tau_i)

The upper line is the lower envelope of the u_i: as in Moon, Skelly & Towsley (1999,
"Estimation and removal of clock skew from network delay measurements"), the line under
all points that maximises the sum of a + b tau_i, i.e. the edge of the points' lower
convex hull above their mean tau. It overestimates the offset by the smallest delay in
the window (a stamp is late by at most that), and random jitter above it does not move
it. Points are first reduced to one minimum per `_BUCKET_NS` of autopilot time and the
window is `window_s` long; the slope is fitted once the points span `_SLOPE_SPAN_NS`
(before that b = 0, a windowed minimum).

TIMESYNC gives a lower bound too. We send tc1 = 0, ts1 = t1 (our time, its last three
digits replaced by our component id, as ArduPilot marks its own requests with its system
id: the autopilot answers every requester, and only replies to ours are used); the
autopilot answers tc1 = its boot time in ns (ArduPilot: when it received the request;
PX4 alike) and we receive the reply at t4, so  t1 <= tc1 + offset <= t4:

    l_j = t1_j - tc1_j  <=  offset(tc1_j)  <=  t4_j - tc1_j (another upper bound)

With lower bounds in the window the offset is the middle of [L(tau), U(tau)] (both lines
with slope b) and `bound_ns` its half width; without, it is U (one-sided: late by at most
the smallest one-way delay).

Discontinuities: the autopilot time going back by more than `_REBOOT_BACK_NS` (a reboot,
or its clock stepped back) starts a new epoch; a sample more than `_STEP_NS` under the
line (the autopilot's clock stepped forward, or ours back) too; and when every point of
the last `_RECENT_NS` lies more than `_JUMP_NS` above the line (our clock stepped forward)
the older points are dropped. A 32-bit `time_boot_ms` wraps after 49.7 days: it is
unwrapped against the last time seen. Messages without a time field (HEARTBEAT,
SIM_STATE, RANGEFINDER), with a Unix `time_usec` (GPS_RAW_INT), or from another
component keep their arrival time; so does everything until the clock is locked
(`_LOCK_SAMPLES` samples over `_LOCK_SPAN_NS`) and whenever the fitted rate is
implausible for two crystals (more than `_MAX_RATE` apart: not a clock, or a simulator
running faster than real time).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.config import Config

_AUTOPILOT_COMPONENT = 1  # MAV_COMP_ID_AUTOPILOT1: the clock followed
_MS_FIELDS_WRAP_NS = 2**32 * 1_000_000  # a uint32 time_boot_ms wraps after this
_USEC_FIELDS = ("HIGHRES_IMU", "RAW_IMU")  # time_usec since boot (ArduPilot, PX4)
_UNIX_USEC = 10**15  # a time_usec above this (2001-09-09) is Unix time, not boot time
_BUCKET_NS = 500_000_000  # one envelope point (the smallest u) per this much autopilot time
_SLOPE_SPAN_NS = 10_000_000_000  # fit the rate once the points span this
_LOCK_SAMPLES = 10
_LOCK_SPAN_NS = 1_000_000_000
_MAX_RATE = 1e-3  # |b| above this (1000 ppm) is not two crystals: not locked
_REBOOT_BACK_NS = 1_000_000_000  # autopilot time back by more -> new epoch
_STEP_NS = 500_000_000  # a sample this far under the line -> new epoch
_RECENT_NS, _JUMP_NS = 2_000_000_000, 1_000_000_000  # all recent points this far above
_MAX_RTT_NS = 500_000_000  # TIMESYNC replies slower than this (or not ours) are ignored


@dataclass(frozen=True)
class ClockState:
    """Where the mapping stands. `source`: "autopilot" (locked: samples are stamped at
    their autopilot time) or "arrival". offset_ns: local - autopilot time at the latest
    sample; drift_ppm: d offset / d tau; bound_ns: half width of the offset's interval
    when TIMESYNC bounds it from below, else None (one-sided: stamps late by at most the
    smallest one-way delay); epochs: times the mapping started over (reboots, steps)."""

    source: Literal["autopilot", "arrival"]
    offset_ns: int
    drift_ppm: float
    bound_ns: int | None
    samples: int
    epochs: int
    note: str

    def summary(self) -> str:
        """One line for the log: "autopilot (offset ..., drift ..., +-... ms)" or why not."""
        if self.source == "arrival":
            return f"arrival time ({self.note})"
        bound = "one-sided" if self.bound_ns is None else f"+-{self.bound_ns * 1e-6:.1f} ms"
        return (f"autopilot time (drift {self.drift_ppm:+.0f} ppm, {bound}, "
                f"{self.epochs} epoch{'s' * (self.epochs != 1)})")


def timesync_request(t_ns: int, component_id: int) -> mavlink2.MAVLink_timesync_message:
    """A TIMESYNC request sent at `t_ns` (our clock), ts1 marked with `component_id`: its
    last three digits (ts1 <= t_ns, so it is still a lower bound of the send time)."""
    return mavlink2.MAVLink_timesync_message(0, t_ns - t_ns % 1000 + component_id % 1000)


def boot_time_ns(msg) -> tuple[int, bool] | None:
    """(the autopilot boot time of `msg` in ns, whether it is a wrapping 32-bit ms field),
    or None for a message without one."""
    t_ms = getattr(msg, "time_boot_ms", None)
    if t_ms is not None:
        return int(t_ms) * 1_000_000, True
    if msg.get_type() in _USEC_FIELDS and 0 < msg.time_usec < _UNIX_USEC:
        return int(msg.time_usec) * 1000, False
    return None


class AutopilotClock:
    """The mapping (see module doc): `stamp` each received message with its arrival time;
    it answers the time to stamp the message's data with. Not thread-safe: the receiver
    stamps, others read `state()` (a frozen snapshot)."""

    def __init__(self, window_s: float = 60.0, enabled: bool = True,
                 component_id: int = 191) -> None:
        self.window_ns = int(window_s * 1e9)
        self.enabled = enabled
        self.component_id = component_id  # ours: marks our TIMESYNC requests
        self.epochs = 0
        self._source: tuple[int, int] | None = None  # (system, component) followed
        self._state = ClockState("arrival", 0, 0.0, None, 0, 0,
                                 "no time fields yet" if enabled else "telemetry.clock: arrival")
        self._reset_epoch()

    @classmethod
    def from_config(cls, cfg: Config) -> AutopilotClock:
        """As telemetry.clock / clock_window_s say, for requests from output.component_id."""
        tel = cfg.telemetry
        return cls(tel.clock_window_s, tel.clock == "auto", cfg.output.component_id)

    def state(self) -> ClockState:
        return self._state

    # -- input ---------------------------------------------------------------------------

    def stamp(self, msg, arrival_ns: int) -> int:
        """The local time to stamp `msg`'s data with: its autopilot time mapped once the
        clock is locked, else `arrival_ns`. Never later than the arrival."""
        if not self.enabled or not self._ours(msg):
            return arrival_ns
        if msg.get_type() == "TIMESYNC":
            self._timesync(msg, arrival_ns)
            return arrival_ns
        boot = boot_time_ns(msg)
        if boot is None:
            return arrival_ns
        tau = self._unwrap(*boot)
        self._observe(tau, arrival_ns - tau)
        if self._state.source != "autopilot":
            return arrival_ns
        return min(arrival_ns, tau + self._offset_ns(tau))

    def _ours(self, msg) -> bool:
        """Follow the first autopilot component heard (a gimbal has a clock of its own)."""
        src = (msg.get_srcSystem(), msg.get_srcComponent())
        if src[1] != _AUTOPILOT_COMPONENT:
            return False
        if self._source is None:
            self._source = src
        return src == self._source

    def _unwrap(self, t_ns: int, wraps: bool) -> int:
        """A 32-bit ms field moved by whole wrap periods to lie nearest the last time."""
        if wraps and self._last is not None:
            t_ns += round((self._last - t_ns) / _MS_FIELDS_WRAP_NS) * _MS_FIELDS_WRAP_NS
        return t_ns

    def _timesync(self, msg, t4: int) -> None:
        """A reply (tc1 != 0) to a request of ours: an upper and a lower bound."""
        t1, tc1 = int(msg.ts1), int(msg.tc1)
        if tc1 <= 0 or t1 % 1000 != self.component_id % 1000 or not 0 <= t4 - t1 <= _MAX_RTT_NS:
            return  # the autopilot's own request, or not an answer to ours
        self._observe(tc1, t4 - tc1)
        x = tc1 - self._tau0
        self._lows.append((x, float(t1 - tc1 - self._u0)))
        self._refit()
        self._update_state()

    # -- estimation ----------------------------------------------------------------------

    def _reset_epoch(self) -> None:
        self._tau0 = self._u0 = 0  # references: the points are kept relative to them
        self._last: int | None = None  # the latest autopilot time (unwrapped)
        self._first = 0
        self._n = 0
        self._points: deque[tuple[float, float]] = deque()  # closed buckets' minima (x, y)
        self._bucket: tuple[int, float, float] | None = None  # (index, x, y) of the open one
        self._lows: deque[tuple[float, float]] = deque()  # TIMESYNC lower bounds (x, l)
        self._a = self._b = 0.0  # upper line y = a + b x
        self._a_low: float | None = None  # lower line y = a_low + b x

    def _observe(self, tau: int, u: int) -> None:
        """Add the upper bound u = arrival - tau; start over on a discontinuity."""
        if self._last is not None and tau < self._last - _REBOOT_BACK_NS:
            self._restart(tau, u, "autopilot time went back (reboot?)")
            return
        if self._n == 0:
            self._tau0, self._u0, self._first = tau, u, tau
        x, y = float(tau - self._tau0), float(u - self._u0)
        if self._n and y < self._a + self._b * x - _STEP_NS:
            self._restart(tau, u, "autopilot clock stepped")
            return
        self._n += 1
        self._last = tau if self._last is None else max(self._last, tau)
        if self._n == 1 or y < self._a + self._b * x:
            self._a = y - self._b * x  # the line stays under every bound: shift it down
        k = int(x // _BUCKET_NS)  # (a sample older than the open bucket only shifts the line)
        if self._bucket is None or k > self._bucket[0]:
            if self._bucket is not None:
                self._points.append(self._bucket[1:])
            self._bucket = (k, x, y)
            self._refit()
        elif k == self._bucket[0] and y < self._bucket[2]:
            self._bucket = (k, x, y)
        if self._bucket[1] == x or self._state.source != "autopilot":
            self._update_state()  # once locked, as each bucket opens (a snapshot)

    def _restart(self, tau: int, u: int, why: str) -> None:
        self.epochs += 1
        self._reset_epoch()
        self._observe(tau, u)
        self._state = ClockState("arrival", 0, 0.0, None, 0, self.epochs, why)

    def _refit(self) -> None:
        """Refit the lines over the window (called as each bucket closes)."""
        if self._bucket is None:
            return
        pts = [*self._points, self._bucket[1:]]
        x_end = pts[-1][0]
        while self._points and self._points[0][0] < x_end - self.window_ns:
            self._points.popleft()
        while self._lows and self._lows[0][0] < x_end - self.window_ns:
            self._lows.popleft()
        pts = [*self._points, self._bucket[1:]]
        recent = [p for p in pts if p[0] >= x_end - _RECENT_NS]
        if len(recent) < len(pts) and min(y - self._a - self._b * x
                                          for x, y in recent) > _JUMP_NS:
            self.epochs += 1  # our clock stepped forward: keep only what came after
            self._points = deque(recent[:-1])
            self._lows.clear()
            pts = recent
        self._b = _envelope_slope(pts) if pts[-1][0] - pts[0][0] >= _SLOPE_SPAN_NS else 0.0
        self._a = min(y - self._b * x for x, y in pts)
        self._a_low = max((y - self._b * x for x, y in self._lows), default=None)

    def _offset_ns(self, tau: int) -> int:
        """offset(tau): U, or the middle of [L, U] when TIMESYNC bounds it from below."""
        x = float(tau - self._tau0)
        up = self._a + self._b * x
        if self._a_low is not None and self._a_low + self._b * x <= up:
            up = (up + self._a_low + self._b * x) / 2
        return self._u0 + int(round(up))

    def _update_state(self) -> None:
        span = self._last - self._first
        if self._n < _LOCK_SAMPLES or span < _LOCK_SPAN_NS:
            note = f"locking ({self._n} samples over {span * 1e-9:.1f} s)"
            self._state = ClockState("arrival", 0, 0.0, None, self._n, self.epochs, note)
            return
        rate = self._b
        if abs(rate) > _MAX_RATE:
            note = f"time fields run {rate * 1e6:+.0f} ppm off our clock: not a clock"
            self._state = ClockState("arrival", 0, rate * 1e6, None, self._n, self.epochs, note)
            return
        bound = None  # (U - L) / 2: both lines have the slope b
        if self._a_low is not None and self._a_low <= self._a:
            bound = int(round((self._a - self._a_low) / 2))
        self._state = ClockState("autopilot", self._offset_ns(self._last), rate * 1e6,
                                 bound, self._n, self.epochs, "locked")


def _envelope_slope(pts: list[tuple[float, float]]) -> float:
    """Slope of the line under all `pts` [(x, y)] (sorted by x) that maximises the sum of
    its values at their x (Moon et al. 1999): the edge of the lower convex hull whose
    x-span holds the mean x. Hull by Andrew's monotone chain: pop while the turn
    (p1 - p0) x (p2 - p0) <= 0 (not counter-clockwise)."""
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    x_mean = sum(x for x, _ in pts) / len(pts)
    for (x0, y0), (x1, y1) in zip(hull, hull[1:], strict=False):
        if x0 <= x_mean <= x1 and x1 > x0:
            return (y1 - y0) / (x1 - x0)
    return 0.0
