"""What reaches the autopilot, decided in one place for the daemon and replay alike.

Two gates stand between the navigator and the autopilot:

    FrameGate    frame -> usable?  Frames that are frozen (identical to the previous one,
                 or blank) or mis-stamped (off the clock by more than max_frame_age_s, or
                 not after the previous usable frame) are refused: a frozen camera would pin
                 the aircraft where it was, a stepped camera clock would fuse a fix seconds
                 away from where the aircraft was then. A STATUSTEXT announces each change
                 of problem.
    SendPolicy   estimate at a send time -> messages.  The GNSS monitor's hand-over
                 decision (STATUSTEXT on a change of state, MAV_CMD_SET_EKF_SOURCE_SET when
                 a switch is due), the position message whenever the hand-over says to
                 send: GPS_INPUT for ArduPilot (with the visual yaw, the altitude and the
                 fix count of flight/aids.py), GLOBAL_POSITION_SENSOR for PX4 (only while
                 a fix is claimed: PX4 ignores its flags), and for ArduPlane
                 MAV_CMD_EXTERNAL_POSITION_ESTIMATE once per EXTERNAL_POSITION_PERIOD_S
                 while a fix is claimed (a dead-reckoning reset, not a GPS stream),
                 fix_type 0 when there is no position at all, a STATUSTEXT when the claimed
                 fix type changes, and HEARTBEAT once a second.

The daemon sends what they return on its link; replay writes the same messages to
gps_input.tlog, so a replay is a rehearsal of the flight, message for message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.types import Estimate, Frame
from skyfix.runtime.flight.aids import OutputAids
from skyfix.runtime.flight.gnss import GnssMonitor, Handover
from skyfix.runtime.io.external_position import (
    EXTERNAL_POSITION_PERIOD_S,
    external_position_estimate,
)
from skyfix.runtime.io.mavlink import (
    FIX_3D,
    fix_type_for,
    global_position_sensor,
    gps_input,
    heartbeat,
    set_ekf_source_set,
    statustext,
)

_WARN, _INFO = mavlink2.MAV_SEVERITY_WARNING, mavlink2.MAV_SEVERITY_INFO


@dataclass(frozen=True)
class GateVerdict:
    """`usable`: the frame may go to the navigator. `problem`: "" or frozen | blank | clock
    | backwards; `announce`: the STATUSTEXT to send now (a change of problem), else None."""

    usable: bool
    problem: str
    announce: object | None = None


class FrameGate:
    """Refuses frozen and mis-stamped frames (see the module doc); counts them."""

    def __init__(self, max_frame_age_s: float) -> None:
        self.max_age_ns = int(max_frame_age_s * 1e9)
        self.frozen = 0  # frames identical to the previous one (blank ones too)
        self.mis_stamped = 0  # off the clock, or not after the previous usable frame
        self._last: Frame | None = None
        self._last_ok_t_ns: int | None = None
        self._repeat_ok = True  # one frame may repeat the last usable stamp without alarm
        self._problem = ""

    def check(self, frame: Frame, now_ns: int) -> GateVerdict:
        """The verdict on `frame`, arriving when the clock reads `now_ns`."""
        prev, self._last = self._last, frame
        problem = text = ""
        if abs(now_ns - frame.t_ns) > self.max_age_ns:
            self.mis_stamped += 1
            problem, text = "clock", f"camera clock off by {(frame.t_ns - now_ns) * 1e-9:+.1f} s"
        elif self._last_ok_t_ns is not None and frame.t_ns <= self._last_ok_t_ns:
            self.mis_stamped += 1
            if frame.t_ns == self._last_ok_t_ns and self._repeat_ok:
                self._repeat_ok = False  # the same instant once more (a camera faster than
                return GateVerdict(False, "")  # its time source): nothing new, no alarm
            problem, text = "backwards", "camera time stamps go backwards or repeat"
        elif _same_image(frame, prev):
            self.frozen += 1
            problem, text = "frozen", "camera frozen (identical frames)"
            if frame.image.size and frame.image.min() == frame.image.max():
                problem, text = "blank", "camera image blank (one value)"
        announce = None
        if problem != self._problem:
            text = f"skyfix: {text}" if problem else "skyfix: camera frames usable again"
            announce = statustext(text, _WARN if problem else _INFO)
            self._problem = problem
        if not problem:
            self._last_ok_t_ns, self._repeat_ok = frame.t_ns, True
        return GateVerdict(not problem, problem, announce)


def _same_image(frame: Frame, prev: Frame | None) -> bool:
    return (prev is not None and isinstance(frame.image, np.ndarray)
            and isinstance(prev.image, np.ndarray) and frame.image.shape == prev.image.shape
            and np.array_equal(frame.image, prev.image))


@dataclass(frozen=True)
class Tick:
    """One send slot: the messages to send in order; `position` the position message among
    them (None when the hand-over says not to send); the fix type it claims; the hand-over."""

    messages: tuple
    position: object | None
    estimate: Estimate
    fix_type: int
    handover: Handover | None


@dataclass
class SendPolicy:
    """Turns the estimate at each send time into the messages for the autopilot."""

    cfg: Config
    gnss: GnssMonitor
    aids: OutputAids
    handover: Handover | None = None
    fix_type: int = -1  # last fix type announced (-1 before the first)
    _last_heartbeat_ns: int | None = field(default=None, repr=False)
    _last_reset_ns: int | None = field(default=None, repr=False)  # ArduPlane position reset

    def tick(self, now_ns: int, est: Estimate | None, heard: bool = True,
             heading_deg: float | None = None) -> Tick:
        """Messages for the send slot at `now_ns` (Unix ns). `est`: the estimate predicted to
        `now_ns`, None when there is no position. `heard`: the vehicle has been heard on the
        link (no hand-over verdict and no position before that). `heading_deg`: the
        autopilot's own heading now (for the visual yaw), None when unknown."""
        out: list = []
        fix_type = 0 if est is None else fix_type_for(est, self.cfg.output)
        if heard:
            self._hand_over(est, fix_type, now_ns, out)
        # say "no fix" rather than nothing; skyfix's own altitude where it has one
        est = Estimate.none(now_ns) if est is None else self.aids.with_altitude(est, now_ns)
        position = None
        if heard and self.handover is not None and self.handover.send_gps_input:
            position = self._position(est, now_ns, heading_deg)
            if position is not None and fix_type != self.fix_type:  # announced just before
                self.fix_type = fix_type  # the first message claiming it
                out.append(_fix_text(est, fix_type, self.cfg))
            if position is not None:
                out.append(position)
        last, period_ns = self._last_heartbeat_ns, 1e9 / self.cfg.daemon.heartbeat_hz
        if last is None or not 0 <= now_ns - last < period_ns:  # a clock step too
            out.append(heartbeat())
            self._last_heartbeat_ns = now_ns
        return Tick(tuple(out), position, est, fix_type, self.handover)

    def _position(self, est: Estimate, now_ns: int, heading_deg: float | None):
        """The position message for the autopilot in use, or None (ArduPlane between resets,
        or without a fix)."""
        out, autopilot = self.cfg.output, self.cfg.daemon.autopilot
        if autopilot == "ardupilot":
            return gps_input(est, out, now_ns, satellites=self.aids.satellites(now_ns),
                             yaw_deg=self.aids.yaw_deg(now_ns, heading_deg))
        if autopilot == "px4":  # only claimed fixes: PX4 (main, 2026-03) publishes every
            # GLOBAL_POSITION_SENSOR to uORB aux_global_position whatever its flags, even
            # INT32_MAX coordinates, and EKF2 may reset its position to one (README, PX4)
            fixed = fix_type_for(est, out) >= FIX_3D
            return global_position_sensor(est, out, now_ns) if fixed else None
        last = self._last_reset_ns  # ardupilot-plane: an occasional reset
        if last is not None and 0 <= now_ns - last < EXTERNAL_POSITION_PERIOD_S * 1e9:
            return None
        reset = external_position_estimate(est, out, now_ns, out.system_id)
        if reset is not None:
            self._last_reset_ns = now_ns
        return reset

    def _hand_over(self, est: Estimate | None, fix_type: int, now_ns: int, out: list) -> None:
        if est is not None:
            self.gnss.observe_estimate(est, now_ns)
        decision = self.gnss.decide(now_ns, visual_ok=fix_type >= FIX_3D)
        before, self.handover = self.handover, decision
        if before is None or decision.state != before.state:
            bad = decision.state in ("lost", "spoofed")
            out.append(statustext(f"skyfix: GNSS {decision.state} ({decision.reason})",
                                  _WARN if bad else _INFO))
        if bool(decision.disputed) != bool(before is not None and before.disputed):
            out.append(statustext(f"skyfix: held, {decision.disputed}", _WARN)
                       if decision.disputed else
                       statustext("skyfix: visual agrees with GNSS again", _INFO))
        if decision.ekf_source_set is not None:
            out.append(set_ekf_source_set(decision.ekf_source_set, self.cfg.output.system_id))

    def gnss_trusted(self) -> bool:
        """The aircraft's GNSS may serve as a search prior (healthy or degraded, or no
        verdict yet)."""
        return self.handover is None or self.handover.state in ("healthy", "degraded")


def _fix_text(est: Estimate, fix_type: int, cfg: Config):
    if fix_type >= FIX_3D:
        return statustext(f"skyfix: 3D fix, sigma {est.horiz_sigma_m:.1f} m", _INFO)
    if not est.valid:
        why = "no position"
    elif not est.last_fix_age_s <= cfg.output.lock_budget_s:
        why = f"last fix {est.last_fix_age_s:.1f} s ago"
    else:
        why = f"sigma {est.horiz_sigma_m:.0f} m"
    return statustext(f"skyfix: no fix ({why})", _WARN)
