"""skyfix flying a real PX4 SITL with SIH (../shared/sitl/px4): the closed loop of
sim/sitl_px4.py, in real time, one flight of about 4 minutes on the 2-core machine.

The flight: AUTO.MISSION (take off to 80 m, a 120 x 90 m rectangle at 5 m/s, return to
launch, land); the simulated GNSS cut (SIM_GPS_USED 0) 60 s after arming, once the EKF's
heading has settled on GNSS velocity. skyfix is EKF2 auxiliary global position slot 0
(GLOBAL_POSITION_SENSOR, id 1), configured by sim_config(). Targets: EKF2 fuses it and
not the GNSS during the loss (its own control flags); ESTIMATOR_STATUS says absolute
horizontal position within 10 s of the loss and for 75 % of the rest (82-92 %); GLOBAL_POSITION_INT
against the simulator's truth p95 <= 5 m (the issue's target), max <= 15 m while the
camera sees, above 20 m; landed and disarmed within 40 m of home (flights: 8-29 m; below about 20 m
the camera cannot fix and EKF2 dead-reckons); a message every 100 ms on average, no gap
over 1 s (GLOBAL_POSITION_SENSOR goes only while a fix is claimed, so a gap is the
machine's scheduling, up to 0.6 s seen, or a lost fix), no claimed fix beyond 3 sigma.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skyfix.maps.build import build_pack
from skyfix.sim.sitl import SHARED_SITL, SitlSpec
from skyfix.sim.sitl_px4 import default_root, run_sitl_px4

pytestmark = pytest.mark.slow

SPEC = SitlSpec(agl_m=80.0, box_m=(120.0, 90.0), speed_mps=5.0, gnss_off_after_s=60.0)


@pytest.fixture(scope="module")
def flown(tmp_path_factory, ortho_path):
    root = default_root()
    if root is None:
        pytest.skip(f"no PX4 SITL: {SHARED_SITL}/px4/bin/px4 is absent (the PX4 SITL test "
                    f"flies the build in ../shared/sitl/px4)")
    out = tmp_path_factory.mktemp("sitl_px4")
    pack = build_pack([ortho_path], out / "pack", progress=False)
    return out, run_sitl_px4(ortho_path, out, SPEC, None, pack, root)


def test_flight_is_recorded_and_the_simulator_stopped(flown):
    out, report = flown
    for name in ("flight.tlog", "sent.tlog", "truth.csv", "report.json", "plot.png",
                 "px4/px4.log"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["sitl"]["exit_status"] == 0
    assert not Path(f"/proc/{report['sitl']['pid']}").exists()


def test_mission_flown_and_landed(flown):
    _, r = flown
    assert r["timeline_s"]["gnss_off"] <= 65.0
    assert r["mission_duration_s"] >= 150.0
    assert r["landing_error_m"] <= 40.0  # the last 20 m of the descent are unaided


def test_ekf2_fuses_skyfix_not_the_lost_gnss(flown):
    _, r = flown
    assert r["ekf2_flags_during_gnss_loss"]["cs_aux_gpos"] == "True"
    assert r["ekf2_flags_during_gnss_loss"]["cs_gnss_pos"] == "False"
    assert r["ekf_abs_from_skyfix_after_s"] is not None
    assert r["ekf_abs_from_skyfix_after_s"] <= 10.0
    assert r["ekf_abs_share_after_gnss_loss"] >= 0.75  # the unaided end of the descent


def test_ekf_follows_truth_while_the_camera_sees(flown):
    """Above 20 m: below, the camera gets no fix and EKF2 dead-reckons the rest of the
    descent (it drifted ~3 m/s there: 29 m in one flight)."""
    _, r = flown
    err = r["ekf_error_while_seeing_above_20m"]
    assert err["n"] > 500  # 10 Hz over the ~2 minutes after the GNSS loss
    assert err["p95_m"] <= 5.0  # the target (measured 2.9-4.8 m)
    assert err["max_m"] <= 15.0


def test_position_messages_keep_coming(flown):
    _, r = flown
    assert r["gps_input_sent"] > 1000  # GLOBAL_POSITION_SENSOR here
    assert r["gps_input_mean_interval_ms"] <= 120.0
    assert r["gps_input_max_interval_ms"] <= 1000.0  # EKF2 drops the source after 5 s
    assert r["claimed_fix_over_3_sigma"] == 0, r["claimed_fix_over_3_sigma_at"]
