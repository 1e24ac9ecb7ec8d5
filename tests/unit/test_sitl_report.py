"""The SITL report's integrity figure: a claimed fix beyond 3 sigma of the simulator's
truth is counted, and said when and by how much, so that a failing flight names it."""

from __future__ import annotations

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS

from skyfix.sim.sitl_report import FlightRecord, Timeline, figures

UTM33 = CRS.from_epsg(32633)
LAT, LON = 48.186, 16.312
M_PER_DEG_LAT = 111_200.0


def _truth(lat: float, lon: float):
    return mav2.MAVLink_hil_state_quaternion_message(
        0, [1.0, 0.0, 0.0, 0.0], 0, 0, 0, int(lat * 1e7), int(lon * 1e7), 80_000,
        0, 0, 0, 0, 0, 0, 0, 0)


def _claim(lat: float, lon: float, eph: float):
    return mav2.MAVLink_global_position_sensor_message(
        0, 0, 1, 0, 0, mav2.GLOBAL_POSITION_SRC_VISION, 0, int(round(lat * 1e7)),
        int(round(lon * 1e7)), float("nan"), 80.0, eph, 1.0)


def test_claims_beyond_three_sigma_are_counted_and_located(tmp_path):
    rec = FlightRecord(tmp_path / "sent.tlog")
    t0 = 1_800_000_000_000_000_000
    for k in range(21):  # the aircraft holds still for 2 s
        rec.on_vehicle(_truth(LAT, LON), t0 + k * 100_000_000)
    north = 2.0 / M_PER_DEG_LAT  # each claim is 2 m north of the truth
    rec.on_sent(_claim(LAT + north, LON, 1.0), t0 + 500_000_000)  # 2 sigma: honest
    rec.on_sent(_claim(LAT + north, LON, 0.5), t0 + 1_200_000_000)  # 4 sigma
    rec.on_sent(_claim(LAT, LON, 0.5), t0 + 1_500_000_000)  # on the truth
    rec.close()
    tl = Timeline(mission_start_ns=t0, gnss_off_ns=t0, landed_ns=None, blank_windows_ns=())
    r = figures(rec, tl, UTM33, np.zeros(2), lock_budget_s=1.0, camera_period_s=0.1)
    assert r["claimed_fix_over_3_sigma"] == 1
    [at] = r["claimed_fix_over_3_sigma_at"]
    assert at["t_s"] == 1.2 and at["sigma_m"] == 0.5
    assert abs(at["error_m"] - 2.0) < 0.05
