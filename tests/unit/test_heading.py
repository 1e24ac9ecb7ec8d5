"""The compass correction the accepted fixes measure (nav/heading.py), and what the
Navigator does with it: frames rendered from the real Vienna orthophoto, flown past a
compass whose error grows beyond the rotation gate (match.max_rotation_deg)."""

from __future__ import annotations

import numpy as np

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.types import Fix, Frame, Rejection, Telemetry
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.nav.heading import HeadingCorrection
from skyfix.sim.flight import FlightSpec, PoseRenderer

S = 1_000_000_000
T0 = 1_767_225_600 * S


def test_the_correction_is_the_newest_of_two_fresh_agreeing_measurements():
    h = HeadingCorrection(2.0)
    assert h.at(0) is None
    h.add(1 * S, 12.0)
    assert h.at(1 * S) is None  # one fix is not enough
    h.add(2 * S, 14.0)
    assert h.at(2 * S) == 14.0 and h.at(4 * S) == 14.0
    assert h.at(4 * S + 1) is None  # stale after 2 s
    h.add(5 * S, -2.0)  # 16 deg from the one before: an odd pose, or the compass jumped
    assert h.at(5 * S) is None
    h.add(6 * S, float("nan"))  # a fix that measured no heading leaves it alone
    assert h.at(6 * S) is None
    h.add(7 * S, -1.0)
    assert h.at(7 * S) == -1.0


def _fly(ortho_path, ortho_pack, compass_err_deg):
    """Frames 120 m over the map's centre, 2 a second, flying east at 6 m/s; the autopilot
    reports the true heading plus `compass_err_deg(t_s)`. -> [(t_s, error, result)]."""
    spec = FlightSpec(agl_m=120.0, seed=4)
    chain = build_chain(Config(), ortho_pack, spec.camera)
    out = []
    with PoseRenderer(ortho_path, spec) as r:
        w, s, e, n = r.bounds_en
        start = np.array([0.5 * (w + e) - 60.0, 0.5 * (s + n)])
        yaw = np.pi / 2 + r.convergence_rad  # east in the grid, about true north
        for k in range(28):
            t_s = 0.5 * k
            t_ns = T0 + int(t_s * S)
            image = r.render(start + [6.0 * t_s, 0.0], 120.0, np.array([0.0, 0.0, yaw]), k)
            err = compass_err_deg(t_s)
            tel = Telemetry(t_ns, 0.0, 0.0, yaw + np.radians(err), 120.0, 120.0,
                            (0.0, 6.0, 0.0))
            out.append((t_s, err, chain.on_frame(Frame(k, t_ns, image), t_ns, tel,
                                                 None).result.result))
    return out


def test_fixes_keep_coming_while_the_compass_drifts_past_the_rotation_gate(ortho_path,
                                                                          ortho_pack):
    """The error grows 3 deg a second from 2 s to 18 deg, beyond the 8-deg gate from
    about 5 s: every view is turned by the correction the fixes before it measured, so
    the fixes go on, each measuring the compass's error."""
    gate = Config().match.max_rotation_deg
    flown = _fly(ortho_path, ortho_pack, lambda t: float(np.clip(3.0 * (t - 2.0), 0.0, 18.0)))
    beyond = [(err, res) for _, err, res in flown if err > gate + 4.0]
    assert len(beyond) >= 14
    fixes = [(err, res) for err, res in beyond if isinstance(res, Fix)]
    assert len(fixes) >= 0.8 * len(beyond), [res for _, res in beyond]
    assert not [res for _, res in beyond
                if isinstance(res, Rejection) and res.reason == "heading"]
    for err, fix in fixes:  # measured against the reported heading: minus the error
        assert abs(fix.heading_err_deg + err) < 2.0, (err, fix.heading_err_deg)
