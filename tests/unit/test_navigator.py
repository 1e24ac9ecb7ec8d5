"""The Navigator's own decisions (runtime/nav/navigator.py): a filter starts only on two
fixes that agree, a run of refused fixes resets it, and each frame's search prior comes
from the filter while it tracks, else from the aircraft's GNSS, else a global search."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from rasterio.crs import CRS

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Fix, GnssSample, Rejection
from skyfix.runtime.nav.navigator import Navigator

E0, N0 = 601_000.0, 5_340_000.0
FRAME = LocalFrame.at(CRS.from_epsg(32633), E0, N0)
S = 1_000_000_000


def fix(t_s: float, east_m: float, north_m: float, sigma_m: float = 1.0) -> Fix:
    return Fix(int(t_s * S), E0 + east_m, N0 + north_m, sigma_m**2 * np.eye(2), 120.0, 0.0,
               (0.0, 0.0), 80, 0, 0)


def navigator(**filter_cfg) -> Navigator:
    cfg = Config()
    return Navigator(None, FRAME, replace(cfg, filter=replace(cfg.filter, **filter_cfg)))


def test_a_lone_fix_waits_for_a_second_that_agrees():
    nav = navigator()
    first, _ = nav.fuse(fix(0.0, 0.0, 0.0))
    assert isinstance(first, Rejection) and first.reason == "gated"
    assert not nav.filter.initialized and nav.estimate(0, 300.0) is None
    second, _ = nav.fuse(fix(0.5, 5.0, 0.0))  # 10 m/s east: plausible
    assert isinstance(second, Fix) and nav.filter.initialized
    est = nav.estimate(int(0.5 * S), 300.0)
    assert est is not None and est.valid
    assert est.ve_mps == pytest.approx(10.0, abs=0.5) and abs(est.vn_mps) < 0.5


def test_two_fixes_that_disagree_do_not_start_the_filter():
    nav = navigator(max_speed_mps=40.0)
    nav.fuse(fix(0.0, 0.0, 0.0))
    far, _ = nav.fuse(fix(0.5, 200.0, 0.0))  # 400 m/s: one of the two is wrong
    assert isinstance(far, Rejection) and "disagrees" in far.detail
    assert not nav.filter.initialized
    # the latest fix waits in turn: a third that agrees with it starts the filter there
    third, _ = nav.fuse(fix(1.0, 205.0, 0.0))
    assert isinstance(third, Fix) and nav.filter.initialized
    east, _ = FRAME.ned_to_map(*nav.filter.state_at(int(1.0 * S))[0][:2])
    assert east == pytest.approx(E0 + 205.0, abs=3.0)


def test_a_run_of_refused_fixes_resets_the_filter_to_a_global_search():
    nav = navigator(divergence_after_gated=3)
    nav.fuse(fix(0.0, 0.0, 0.0))
    nav.fuse(fix(0.5, 5.0, 0.0))
    assert nav.prior(int(0.6 * S), None).source == "filter"
    for k in range(2):  # 500 m away, each refused by the NIS gate
        refused, innovation = nav.fuse(fix(1.0 + 0.5 * k, 500.0, 0.0))
        assert isinstance(refused, Rejection) and refused.reason == "gated"
        assert innovation is not None and not innovation.accepted
        assert nav.filter.initialized
    nav.fuse(fix(2.0, 500.0, 0.0))  # the third in a row: the filter is the one lost
    assert not nav.filter.initialized
    assert nav.prior(int(2.1 * S), None).source == "none"
    # and it needs two agreeing fixes again
    again, _ = nav.fuse(fix(2.5, 505.0, 0.0))
    assert isinstance(again, Rejection) and not nav.filter.initialized


def test_a_fix_between_refused_ones_restarts_the_count():
    nav = navigator(divergence_after_gated=3)
    nav.fuse(fix(0.0, 0.0, 0.0))
    nav.fuse(fix(0.5, 5.0, 0.0))
    for t, east in ((1.0, 500.0), (1.5, 500.0), (2.0, 20.0), (2.5, 500.0), (3.0, 500.0)):
        nav.fuse(fix(t, east, 0.0))
    assert nav.filter.initialized  # never three refused in a row


def test_the_search_prior_follows_the_filter_then_gnss_then_the_whole_pack():
    nav = navigator()
    gnss = GnssSample(0, FRAME.origin_lat_deg, FRAME.origin_lon_deg, 300.0, 3, 12, 2.0)
    assert nav.prior(0, None).source == "none"
    prior = nav.prior(0, gnss)
    assert prior.source == "gnss"
    assert np.allclose(prior.centre_en, [E0, N0], atol=0.01)
    nav.fuse(fix(0.0, 0.0, 0.0))
    nav.fuse(fix(0.5, 5.0, 0.0))
    tracking = nav.prior(int(1.0 * S), gnss)
    assert tracking.source == "filter"  # the filter wins over the GNSS while it tracks
    assert tracking.centre_en[0] == pytest.approx(E0 + 10.0, abs=2.0)  # predicted ahead
    lost = (nav.cfg.retrieve.global_after_s + 1.0) * S
    assert nav.prior(int(lost), gnss).source == "gnss"  # too long without a fix
    assert nav.prior(int(lost), None).source == "none"


def test_a_fix_that_disagrees_with_the_autopilots_motion_is_refused():
    """The autopilot reports 10 m/s east; fixes that stop moving (a frozen camera) or jump
    back are refused as "motion", fixes that keep up are fused."""
    nav = navigator()
    for k in range(40):  # 4 s of the autopilot's velocity at 10 Hz
        nav.motion.observe(int(k * 0.1 * S), 0.0, 10.0)
    assert isinstance(nav.fuse(fix(0.0, 0.0, 0.0, 0.5))[0], Rejection)  # waits for a second
    assert isinstance(nav.fuse(fix(0.5, 5.0, 0.0, 0.5))[0], Fix)
    assert isinstance(nav.fuse(fix(1.0, 10.0, 0.0, 0.5))[0], Fix)
    frozen, _ = nav.fuse(fix(1.5, 10.0, 0.0, 0.5))  # where the aircraft was 0.5 s ago
    assert isinstance(frozen, Rejection) and frozen.reason == "motion", frozen
    assert isinstance(nav.fuse(fix(2.0, 20.0, 0.0, 0.5))[0], Fix)  # back in step
