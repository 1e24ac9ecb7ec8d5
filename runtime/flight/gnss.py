"""Real-GNSS health monitor and hand-over policy.

The monitor reads what the autopilot reports about its own receivers and compares their
positions with our visual estimate:

- GPS_RAW_INT (receiver instance 0) and GPS2_RAW (instance 1): fix type, satellites,
  eph (HDOP x 100; 65535 unknown) and, when sent, h_acc (mm; 0 unknown). The instance
  our own GPS_INPUT feeds (`own_instance`, i.e. OutputConfig.gps_id) is ignored: ArduPilot
  reports our injected fix there, and it must not vouch for itself.
- any message with `jamming_state` / `spoofing_state` fields and an `id` instance:
  in pymavlink 2.4.50 that is GNSS_INTEGRITY, defined only in the development dialect
  (GPS_RAW_INT and GPS2_RAW carry no such fields in common or ardupilotmega).
- divergence between a receiver's position g and our estimate p, both [2] north/east
  metres. A report's position is older than its arrival: the receiver's latency plus up
  to one period of the autopilot's stream, some age a in [0, A], A = cfg.max_fix_age_s.
  With a uniform on that interval, p is predicted with its velocity v to the arrival
  time minus A / 2, and the rest of a enters as variance along v:

      d = g - (p + v (t_gnss - A / 2 - t_est))      [2]
      S = P_est + sigma_gnss^2 I + (A^2 / 12) v v^T [2, 2]
      NIS = d^T S^-1 d                              ~ chi-square(2) when both agree
      C_k = min(max(0, C_{k-1} + (NIS_k - drift) dt_k), 2 limit)    (CUSUM, NIS x s)

  with dt_k the time since the receiver's previous comparison (at most 1 s). A single
  NIS above `spoof_gate` (a jump) or C above `spoof_cusum_limit` (a slow pull: each
  sample adds little, but the sum grows) marks the receiver spoofed. C integrates over
  time, not samples, because both errors are correlated in time (GNSS for tens of
  seconds, the filtered estimate for seconds): more samples per second carry no more
  evidence. sigma_gnss is h_acc when reported, else HDOP x UERE, else cfg.max_h_acc_m.
  What this can and cannot catch (the flights of tests/unit/test_gnss.py, 20 seeds,
  sigma 3 m visual + 1.5 m GNSS, both correlated): a drift of 0.2 m/s is flagged after a
  median 10 m, 2 m/s after 18 m (at most 23 m); no alarm in 20 honest 10-minute flights.
  A drift slower than the honest errors' own wander cannot be told from them.

Who is wrong: a disagreement proves only that one side is. The visual side is trusted
over the GNSS only after it has agreed with a healthy receiver for `verify_s` seconds of
comparisons (no jump, C below the limit). A disagreement before that is blamed on the
visual side (a camera clock seconds off, a wrong mount or a wrong map give a confident
track that is consistently off): the hand-over marks the visual estimate disputed, no
position is sent, and the dispute holds (also after GNSS is lost) until the two agree
again for `verify_s`. While a receiver reports, no fix is sent before the first
comparison. A GNSS spoofed from before the first fix is therefore never caught;
a wrong visual track is never sent while a healthy GNSS says otherwise.

States, best to worst: healthy < degraded (few satellites, high HDOP/h_acc, jamming
or spoofing "mitigated"/jamming "detected") < lost (no receiver with a usable fix for
`lost_after_s`) < spoofed. The overall state is the best receiver's, except that any
spoofed receiver makes it spoofed. Hysteresis: a worse state is taken at once, a better
one only after it has held for `recover_after_s`.

Modes: `always` sends GPS_INPUT all the time (we are a second GPS, the autopilot chooses);
`on-loss` sends only while the held state is lost or spoofed; `ekf-source` sends all the
time and asks for EKF source set `ekf_source_visual` when GNSS goes lost/spoofed while our
visual lock is good, and for `ekf_source_gnss` when GNSS is back (see
io/mavlink.set_ekf_source_set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from skyfix.runtime.core.config import GnssConfig
from skyfix.runtime.core.geo import geodesic_ne_m
from skyfix.runtime.core.types import Estimate, GnssSample
from skyfix.runtime.io.mavlink import UERE_M

GnssState = Literal["healthy", "degraded", "lost", "spoofed"]
_RANK: dict[str, int] = {"healthy": 0, "degraded": 1, "lost": 2, "spoofed": 3}

# GPS_JAMMING_STATE / GPS_SPOOFING_STATE (MAVLink development dialect)
INTEGRITY_MITIGATED = 2
INTEGRITY_DETECTED = 3

_EPH_UNKNOWN = 65535
_RAW_INSTANCE = {"GPS_RAW_INT": 0, "GPS2_RAW": 1}
_MAX_PAIR_GAP_NS = 1_000_000_000  # an estimate further than this from a GNSS sample is not compared


@dataclass(frozen=True)
class Handover:
    """What to do now. `ekf_source_set`: the EKF source set to command now (only on the
    decide() call where a switch is due, ekf-source mode), else None. `disputed`: why
    the visual estimate is not to be sent ("" when it may be)."""

    state: GnssState
    send_gps_input: bool
    ekf_source_set: int | None
    reason: str
    disputed: str = ""


@dataclass
class _Receiver:
    """What we know about one GNSS receiver (mutable bookkeeping, not passed between stages)."""

    last_t_ns: int | None = None
    good_t_ns: int | None = None  # last report with fix_type >= cfg.min_fix_type
    fix_type: int = 0
    satellites: int = 0
    hdop: float = float("nan")
    h_acc_m: float = float("nan")
    jamming: int = 0
    spoofing: int = 0
    integrity_t_ns: int | None = None
    cusum: float = 0.0
    last_nis: float = 0.0
    compared_t_ns: int | None = None
    last_fix: tuple[int, float, float] | None = None  # (t_ns, lat, lon) of the last good fix


class GnssMonitor:
    """Feed it telemetry with `observe`, our estimates with `observe_estimate`, and ask
    `decide` at the output rate. Times are one monotonic clock, ns."""

    def __init__(self, cfg: GnssConfig, own_instance: int | None = None) -> None:
        self.cfg = cfg
        self.own_instance = own_instance
        self._rx: dict[int, _Receiver] = {}
        self._est: tuple[Estimate, int] | None = None
        self._t_start: int | None = None
        self._held: GnssState | None = None
        self._held_reason = ""
        self._better_since: int | None = None
        self._ekf_set = cfg.ekf_source_gnss  # assume the autopilot starts on GNSS
        self._agreed_s = 0.0  # comparison time in agreement since the last disagreement
        self._disputed = ""  # why the visual estimate is blamed, "" when it is not
        self._compared = False  # an estimate has been compared with a receiver

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, msg: Any, t_ns: int) -> None:
        """Take a pymavlink message received at `t_ns`; anything not about GNSS is ignored."""
        t_ns = int(t_ns)
        self._t_start = t_ns if self._t_start is None else self._t_start
        kind = msg.get_type()
        if kind in _RAW_INSTANCE:
            self._observe_raw(msg, _RAW_INSTANCE[kind], t_ns)
        elif hasattr(msg, "jamming_state") and hasattr(msg, "spoofing_state"):
            inst = int(getattr(msg, "id", 0))
            if inst == self.own_instance:
                return
            rx = self._rx.setdefault(inst, _Receiver())
            rx.jamming, rx.spoofing = int(msg.jamming_state), int(msg.spoofing_state)
            rx.integrity_t_ns = t_ns

    def observe_estimate(self, est: Estimate, t_ns: int) -> None:
        """Our latest estimate, valid at `t_ns` (the monitor's clock). The first one is
        compared at once with each receiver's last good fix (later ones as fixes come)."""
        self._est = (est, int(t_ns))
        if not self._compared:
            for rx in self._rx.values():
                if rx.last_fix is not None:
                    t_fix, lat, lon = rx.last_fix
                    self._compare(rx, lat, lon, t_fix)

    def _observe_raw(self, msg: Any, inst: int, t_ns: int) -> None:
        hdop = msg.eph / 100.0 if msg.eph != _EPH_UNKNOWN else float("nan")
        h_acc = getattr(msg, "h_acc", 0)
        self._observe_fix(inst, t_ns, int(msg.fix_type), int(msg.satellites_visible), hdop,
                          h_acc / 1000.0 if h_acc else float("nan"), msg.lat * 1e-7,
                          msg.lon * 1e-7)

    def observe_sample(self, sample: GnssSample, instance: int = 0) -> None:
        """Take a receiver report read from a log (replay): its eph_m is the receiver's
        1-sigma horizontal accuracy (h_acc, or HDOP x UERE), so HDOP = eph_m / UERE."""
        t_ns = int(sample.t_ns)
        self._t_start = t_ns if self._t_start is None else self._t_start
        self._observe_fix(instance, t_ns, sample.fix_type, sample.satellites,
                          sample.eph_m / UERE_M, sample.eph_m, sample.lat_deg, sample.lon_deg)

    def _observe_fix(self, inst: int, t_ns: int, fix_type: int, satellites: int, hdop: float,
                     h_acc_m: float, lat_deg: float, lon_deg: float) -> None:
        if inst == self.own_instance:
            return
        rx = self._rx.setdefault(inst, _Receiver())
        rx.last_t_ns = t_ns
        rx.fix_type, rx.satellites, rx.hdop, rx.h_acc_m = fix_type, satellites, hdop, h_acc_m
        if rx.fix_type >= self.cfg.min_fix_type:
            rx.good_t_ns, rx.last_fix = t_ns, (t_ns, lat_deg, lon_deg)
            self._compare(rx, lat_deg, lon_deg, t_ns)

    def _gnss_sigma_m(self, rx: _Receiver) -> float:
        if np.isfinite(rx.h_acc_m):
            return rx.h_acc_m
        if np.isfinite(rx.hdop):
            return rx.hdop * UERE_M
        return self.cfg.max_h_acc_m

    def _compare(self, rx: _Receiver, lat_deg: float, lon_deg: float, t_ns: int) -> None:
        if self._est is None:
            return
        est, t_est = self._est
        if (not est.valid or abs(t_ns - t_est) > _MAX_PAIR_GAP_NS
                or not np.all(np.isfinite(est.cov_ne_m2))
                or not np.isfinite(est.lat_deg + est.lon_deg)):
            return
        age_s = self.cfg.max_fix_age_s
        dt_s = (t_ns - t_est) * 1e-9 - age_s / 2  # to the middle of the fix's possible age
        v = np.array([est.vn_mps, est.ve_mps])
        # local north/east offset of the GNSS fix from the estimate's geodetic position
        g_ne = geodesic_ne_m(est.lat_deg, est.lon_deg, lat_deg, lon_deg)
        d = g_ne - dt_s * v  # d = g - (p + v dt)
        # S = P_est + sigma^2 I + (A^2 / 12) v v^T
        S = (est.cov_ne_m2 + self._gnss_sigma_m(rx) ** 2 * np.eye(2)
             + age_s ** 2 / 12 * np.outer(v, v))
        nis = float(d @ np.linalg.solve(S, d))  # NIS = d^T S^-1 d
        cfg = self.cfg
        dt_k = 0.0 if rx.compared_t_ns is None else min((t_ns - rx.compared_t_ns) * 1e-9, 1.0)
        # C_k = min(max(0, C_{k-1} + (NIS_k - drift) dt_k), 2 limit)
        rx.cusum = min(max(0.0, rx.cusum + (nis - cfg.spoof_cusum_drift) * dt_k),
                       2 * cfg.spoof_cusum_limit)
        rx.last_nis, rx.compared_t_ns, self._compared = nis, t_ns, True
        if nis <= cfg.spoof_gate and rx.cusum <= cfg.spoof_cusum_limit:
            self._agreed_s += dt_k
            if self._agreed_s >= cfg.verify_s:
                self._disputed = ""
        elif self._disputed or self._agreed_s < cfg.verify_s:  # not verified: blame visual
            off_m = float(np.hypot(*d))
            self._disputed = f"unverified visual {off_m:.0f} m off GNSS"
            self._agreed_s, rx.cusum, rx.last_nis = 0.0, 0.0, 0.0

    # -- decision -------------------------------------------------------------------------

    def _receiver_state(self, rx: _Receiver, t_ns: int) -> tuple[GnssState, str]:
        cfg = self.cfg
        lost_ns = int(cfg.lost_after_s * 1e9)
        fresh_integrity = rx.integrity_t_ns is not None and t_ns - rx.integrity_t_ns <= lost_ns
        if fresh_integrity and rx.spoofing == INTEGRITY_DETECTED:
            return "spoofed", "receiver reports spoofing"
        if rx.last_nis > cfg.spoof_gate:
            return "spoofed", f"GNSS jumped from visual, NIS {rx.last_nis:.0f}"
        if rx.cusum > cfg.spoof_cusum_limit:
            return "spoofed", f"GNSS drifts from visual, CUSUM {rx.cusum:.0f}"
        if rx.good_t_ns is None or t_ns - rx.good_t_ns > lost_ns:
            if rx.last_t_ns is None or t_ns - rx.last_t_ns > lost_ns:
                return "lost", "no GNSS report"
            return "lost", f"GNSS fix type {rx.fix_type}"
        if fresh_integrity and rx.jamming == INTEGRITY_DETECTED:
            return "degraded", "receiver reports jamming"
        if fresh_integrity and INTEGRITY_MITIGATED in (rx.jamming, rx.spoofing):
            return "degraded", "receiver mitigating interference"
        if rx.satellites < cfg.min_satellites:
            return "degraded", f"GNSS {rx.satellites} satellites"
        if rx.hdop > cfg.max_hdop:
            return "degraded", f"GNSS HDOP {rx.hdop:.1f}"
        if rx.h_acc_m > cfg.max_h_acc_m:
            return "degraded", f"GNSS h_acc {rx.h_acc_m:.1f} m"
        return "healthy", "GNSS healthy"

    def raw_state(self, t_ns: int) -> tuple[GnssState, str]:
        """(state, reason) at `t_ns` without hysteresis: the best receiver's state, or
        spoofed when any receiver is."""
        states = [self._receiver_state(rx, t_ns) for rx in self._rx.values()]
        spoofed = [s for s in states if s[0] == "spoofed"]
        if spoofed:
            return spoofed[0]
        if not states:
            waited = 0.0 if self._t_start is None else (t_ns - self._t_start) * 1e-9
            if waited > self.cfg.lost_after_s:
                return "lost", "no GNSS report"
            return "degraded", "waiting for GNSS"
        return min(states, key=lambda s: _RANK[s[0]])

    def decide(self, t_ns: int, visual_ok: bool) -> Handover:
        """The hand-over decision at `t_ns`; `visual_ok`: our own estimate is usable."""
        t_ns = int(t_ns)
        self._t_start = t_ns if self._t_start is None else self._t_start
        raw, why = self.raw_state(t_ns)
        if self._held is None or _RANK[raw] >= _RANK[self._held]:
            self._held, self._held_reason, self._better_since = raw, why, None
        else:
            if self._better_since is None:
                self._better_since = t_ns
            waited_s = (t_ns - self._better_since) * 1e-9
            if waited_s >= self.cfg.recover_after_s:
                self._held, self._held_reason, self._better_since = raw, why, None
            else:
                why = f"{self._held_reason}; {raw} {waited_s:.0f}/{self.cfg.recover_after_s:.0f} s"
        state = self._held
        gnss_out = state in ("lost", "spoofed")
        mode = self.cfg.mode
        # while a receiver reports, no fix is sent before the first comparison
        unchecked = (visual_ok and self._est is not None and not self._compared
                     and not gnss_out and bool(self._rx))
        send = (gnss_out if mode == "on-loss" else True) and not (self._disputed or unchecked)
        switch_to: int | None = None
        if mode == "ekf-source":
            wanted = self._ekf_set
            if gnss_out and visual_ok and not self._disputed:
                wanted = self.cfg.ekf_source_visual
            elif not gnss_out:
                wanted = self.cfg.ekf_source_gnss
            if wanted != self._ekf_set:
                switch_to = self._ekf_set = wanted
        return Handover(state, send, switch_to, why, self._disputed)
