"""GPS_INPUT's yaw (visual heading when two fresh fixes agree on the compass correction),
altitude (skyfix's own when two fresh fixes agree on it) and satellites_visible (fixes
accepted within the lock budget, capped)."""

from __future__ import annotations

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.config import OutputConfig
from skyfix.runtime.core.types import Estimate
from skyfix.runtime.flight.aids import OutputAids
from skyfix.runtime.io.mavlink import global_position_sensor, gps_input
from skyfix.runtime.nav.heading import HeadingCorrection

S = 1_000_000_000
CFG = OutputConfig(lock_budget_s=2.0, satellites=10)


def _est(age_s: float = 0.2) -> Estimate:
    return Estimate(0, 0.0, 0.0, 1.0, 0.0, np.eye(2), np.eye(2), lat_deg=48.0, lon_deg=16.0,
                    alt_amsl_m=100.0, last_fix_age_s=age_s)


def _wire(msg):
    (back,) = mav2.MAVLink(None).parse_buffer(msg.pack(mav2.MAVLink(None, 1, 191)))
    return back


def test_visual_heading_needs_two_agreeing_fresh_corrections():
    heading = HeadingCorrection(2.0)
    aids = OutputAids(2.0, 10, heading)
    assert aids.yaw_deg(0, 90.0) is None  # no fix yet
    heading.add(1 * S, -20.0)  # the compass reads 20 deg too high
    assert aids.yaw_deg(1 * S, 90.0) is None  # one fix is not enough
    heading.add(2 * S, -21.0)
    assert aids.yaw_deg(2 * S, 90.0) == 69.0
    assert aids.yaw_deg(2 * S, -170.0) == (190.0 - 21.0)  # turned: the correction follows
    assert aids.yaw_deg(2 * S, None) is None  # no heading from the autopilot
    assert aids.yaw_deg(2 * S, float("nan")) is None
    assert aids.yaw_deg(4 * S + 1, 90.0) is None  # stale after the lock budget
    heading.add(5 * S, 10.0)  # disagrees with the previous by 31 deg
    assert aids.yaw_deg(5 * S, 90.0) is None
    heading.add(6 * S, float("nan"))  # a fix without a heading estimate leaves it alone
    assert aids.yaw_deg(6 * S, 90.0) is None
    heading.add(7 * S, 179.0)
    heading.add(8 * S, -178.0)  # 3 deg apart across the wrap
    assert aids.yaw_deg(8 * S, 90.0) == (90.0 - 178.0) % 360.0


def test_satellites_count_recent_fixes_capped():
    aids = OutputAids(2.0, 3, HeadingCorrection(2.0))
    assert aids.satellites(0) == 0
    for k in range(5):
        aids.on_fix(k * S // 2)  # 2 fixes a second
    assert aids.satellites(2 * S) == 3  # 5 in the window, capped at 3
    assert aids.satellites(int(3.8 * S)) == 1  # only the fix at 2.0 s is within 2 s


def test_gps_input_carries_yaw_and_count_only_with_a_fix():
    m = _wire(gps_input(_est(), CFG, 0, satellites=4, yaw_deg=359.996))
    assert (m.satellites_visible, m.yaw) == (4, 36000)  # north is 36000, 0 means "no yaw"
    m = _wire(gps_input(_est(), CFG, 0, satellites=25, yaw_deg=123.456))
    assert (m.satellites_visible, m.yaw) == (10, 12346)  # capped at output.satellites
    m = _wire(gps_input(_est(), CFG, 0))
    assert (m.satellites_visible, m.yaw) == (10, 0)  # nothing given: the configured value
    m = _wire(gps_input(_est(age_s=5.0), CFG, 0, satellites=4, yaw_deg=90.0))
    assert (m.fix_type, m.satellites_visible, m.yaw) == (0, 0, 0)  # no fix claimed


def test_altitude_needs_two_agreeing_fresh_measurements():
    aids = OutputAids(2.0, 10, HeadingCorrection(2.0), map_sigma_m=1.5)
    est = _est()  # the autopilot's altitude 100 m
    assert aids.with_altitude(est, 0) is est  # nothing measured yet
    aids.on_fix(1 * S, 2.6, 2.0)  # fixes on a pack without a DEM carry no altitude:
    aids.on_fix(1 * S, float("nan"), float("nan"))  # they leave it alone
    assert aids.with_altitude(est, 1 * S) is est  # one measurement is not enough
    aids.on_fix(2 * S, 3.0, 2.0)
    out = aids.with_altitude(est, 2 * S)
    assert out.alt_amsl_m == 103.0  # the autopilot's altitude now plus the last offset
    assert out.alt_sigma_m == np.hypot(2.0, 1.5)  # with the map's georeferencing error
    assert (out.north_m, out.cov_ne_m2.tolist()) == (est.north_m, est.cov_ne_m2.tolist())
    assert aids.with_altitude(est, 4 * S + 1) is est  # stale after the lock budget
    aids.on_fix(5 * S, 20.0, 2.0)  # 17 m from the one before: > 3 x 2.8 m
    assert aids.with_altitude(est, 5 * S) is est
    unknown = Estimate(0, 0.0, 0.0, 1.0, 0.0, np.eye(2), np.eye(2), lat_deg=48.0,
                       lon_deg=16.0, last_fix_age_s=0.2)  # the autopilot's altitude unknown
    aids.on_fix(6 * S, 20.5, 2.0)
    assert aids.with_altitude(unknown, 6 * S) is unknown
    assert aids.with_altitude(est, 6 * S).alt_amsl_m == 120.5


def test_gps_input_marks_which_altitude_it_carries():
    from dataclasses import replace

    m = _wire(gps_input(_est(), CFG, 0))  # the autopilot's own: no accuracy claimed
    assert (m.alt, m.vert_accuracy) == (100.0, 0.0)
    assert m.ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    assert not m.ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_ALT
    m = _wire(gps_input(replace(_est(), alt_amsl_m=103.0, alt_sigma_m=2.5), CFG, 0))
    assert (m.alt, m.vert_accuracy) == (103.0, 2.5)  # skyfix's own, with its 1-sigma
    assert not m.ignore_flags & (mav2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
                                 | mav2.GPS_INPUT_IGNORE_FLAG_ALT)
    m = _wire(gps_input(replace(_est(), alt_amsl_m=float("nan"), alt_sigma_m=2.5), CFG, 0))
    assert m.ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_ALT  # no altitude: neither field
    assert m.ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    px4 = _wire(global_position_sensor(replace(_est(), alt_amsl_m=103.0, alt_sigma_m=2.5),
                                       CFG, 0))
    assert (px4.alt, px4.epv) == (103.0, 2.5)  # PX4's message carries the same altitude
    assert np.isnan(_wire(global_position_sensor(_est(), CFG, 0)).epv)
