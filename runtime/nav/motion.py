"""The visual track against the autopilot's own motion.

A fix says where the aircraft is; the autopilot's velocity (GLOBAL_POSITION_INT vx/vy,
its EKF's estimate, good to a fraction of a metre per second even without GNSS for a
while) says how far it moved since the last fix. A fix that disagrees with "last
accepted fix + velocity integrated over the gap" by more than their combined
uncertainty is refused: a frozen camera (fixes stay put while the aircraft flies on), a
frame stamped at the wrong time (rectified with the attitude of another moment), a
match on the wrong tile of a repetitive scene.

`MotionGate` is fed the autopilot's velocity as it comes (`observe`, e.g. once per frame
from its Telemetry) and asked about each fix (`check`), in the local NED frame of the
filter (metres north, east). The disagreement r = z - (z_anchor + d) is tested with
NIS = r^T S^-1 r against a chi-square gate (2 dof), S = R_anchor + R + Q_d, where the
displacement's own covariance Q_d holds a velocity error that persists over the gap
(sigma_v * gap per axis, sigma_v = vel_sigma_mps + vel_sigma_frac * speed) and a time-stamp
error of time_sigma_s at both ends (along the velocity).

The anchor is not just the last accepted fix but the fusion of it with the motion
predicted since the anchor before (a Kalman update with the velocity-propagated anchor):
otherwise fixes that each lag by a marginal amount (a frozen camera, sampled slowly)
would walk the anchor along with them.

When several refused fixes in a row agree with each other under the same test (fused
the same way), the old anchor was the odd one out (a wrong first fix): the gate
re-anchors on them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

_MAX_SAMPLES = 4096  # velocity samples kept (at 10 Hz: ~7 minutes)


@dataclass(frozen=True)
class MotionVerdict:
    """Whether a fix agrees with the autopilot's motion since the last accepted fix.

    `nis`: chi-square (2 dof) of the disagreement, NaN when not tested; `reason`: "" when
    it agreed, "motion" when refused, or why it was not tested ("first", "gap",
    "no_velocity", "reanchored")."""

    accepted: bool
    nis: float
    reason: str


@dataclass(frozen=True)
class _Anchor:
    t_ns: int
    z_ne: np.ndarray  # [2] m
    R: np.ndarray  # [2, 2] m^2


class MotionGate:
    """See the module doc. `gate`: chi-square threshold (13.8: 99.9 % for 2 dof);
    `max_gap_s`: a longer gap since the last accepted fix is not tested (the fix becomes
    the new anchor); `reanchor_after`: refused fixes in a row, consistent among
    themselves, that replace the anchor."""

    def __init__(self, gate: float = 13.8, vel_sigma_mps: float = 0.5,
                 vel_sigma_frac: float = 0.05, time_sigma_s: float = 0.05,
                 max_gap_s: float = 120.0, reanchor_after: int = 3) -> None:
        self.gate, self.max_gap_s, self.reanchor_after = gate, max_gap_s, reanchor_after
        self.vel_sigma_mps, self.vel_sigma_frac = vel_sigma_mps, vel_sigma_frac
        self.time_sigma_s = time_sigma_s
        self._vel: deque[tuple[int, float, float]] = deque(maxlen=_MAX_SAMPLES)
        self._anchor: _Anchor | None = None
        self._candidate: _Anchor | None = None
        self._streak = 0

    def observe(self, t_ns: int, vn_mps: float, ve_mps: float) -> None:
        """One velocity sample of the autopilot (NED north, east) at `t_ns`; samples out
        of time order or not finite are ignored."""
        if not (np.isfinite(vn_mps) and np.isfinite(ve_mps)):
            return
        if self._vel and t_ns <= self._vel[-1][0]:
            return
        self._vel.append((int(t_ns), float(vn_mps), float(ve_mps)))

    def displacement(self, t0_ns: int, t1_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """([2] m north/east moved from t0 to t1, [2, 2] its covariance), or None when the
        velocity samples do not cover the interval (gaps over 1 s, or none at its ends)."""
        if not self._vel or t1_ns <= t0_ns:
            return None
        v = np.array(self._vel, np.float64)
        t = v[:, 0]
        if t[0] > t0_ns + 1e9 or t[-1] < t1_ns - 1e9:
            return None
        inside = (t > t0_ns) & (t < t1_ns)
        grid = np.concatenate([[t0_ns], t[inside], [t1_ns]])
        if np.diff(grid).max() > 1e9:
            return None
        vn, ve = np.interp(grid, t, v[:, 1]), np.interp(grid, t, v[:, 2])
        dt = np.diff(grid) * 1e-9
        d = np.array([np.sum((vn[1:] + vn[:-1]) * 0.5 * dt),
                      np.sum((ve[1:] + ve[:-1]) * 0.5 * dt)])
        gap_s = (t1_ns - t0_ns) * 1e-9
        speed = float(np.hypot(vn, ve).max())
        sigma_v = self.vel_sigma_mps + self.vel_sigma_frac * speed
        v_end = np.array([[vn[0], ve[0]], [vn[-1], ve[-1]]])
        Q = (sigma_v * gap_s) ** 2 * np.eye(2)
        Q += self.time_sigma_s ** 2 * sum(np.outer(x, x) for x in v_end)
        return d, Q

    def _update(self, a: _Anchor, fix: _Anchor) -> tuple[float, _Anchor] | None:
        """(NIS of `fix` against `a` moved to its time, the fused anchor), or None when
        the velocity does not cover the gap."""
        moved = self.displacement(a.t_ns, fix.t_ns)
        if moved is None:
            return None
        d, Q = moved
        pred, P = a.z_ne + d, a.R + Q
        r = fix.z_ne - pred
        S = P + fix.R
        K = P @ np.linalg.inv(S)
        fused = _Anchor(fix.t_ns, pred + K @ r, (np.eye(2) - K) @ P)
        return float(r @ np.linalg.solve(S, r)), fused

    def check(self, t_ns: int, z_ne: np.ndarray, R: np.ndarray) -> MotionVerdict:
        """Test a fix at `t_ns`: position `z_ne` [2] (m north, east) with covariance `R`
        [2, 2]; an accepted fix becomes the anchor for the next."""
        fix = _Anchor(int(t_ns), np.asarray(z_ne, np.float64).copy(),
                      np.asarray(R, np.float64).copy())
        a = self._anchor
        if a is None or not (np.isfinite(fix.z_ne).all() and np.isfinite(fix.R).all()):
            return self._take(fix, "first") if a is None else MotionVerdict(False, np.nan,
                                                                             "motion")
        if fix.t_ns <= a.t_ns:
            return MotionVerdict(False, np.nan, "motion")  # not after the anchor: no motion
        if (fix.t_ns - a.t_ns) * 1e-9 > self.max_gap_s:
            return self._take(fix, "gap")
        tested = self._update(a, fix)
        if tested is None:
            return self._take(fix, "no_velocity")
        nis, fused = tested
        if nis <= self.gate:
            return self._take(fused, "", nis)
        return self._refuse(fix, nis)

    def _take(self, fix: _Anchor, reason: str, nis: float = float("nan")) -> MotionVerdict:
        self._anchor, self._candidate, self._streak = fix, None, 0
        return MotionVerdict(True, nis, reason)

    def _refuse(self, fix: _Anchor, nis: float) -> MotionVerdict:
        c = self._candidate
        tested = self._update(c, fix) if c is not None and fix.t_ns > c.t_ns else None
        if tested is not None and tested[0] <= self.gate:
            self._candidate, self._streak = tested[1], self._streak + 1
        else:
            self._candidate, self._streak = fix, 1
        if self._streak >= self.reanchor_after:
            return self._take(self._candidate, "reanchored", nis)
        return MotionVerdict(False, nis, "motion")
