"""Terrain: a flight low over the real Vienna terrain (1 m DEM, 13 m of relief), matched
against packs built with and without that DEM; on the DEM pack the altitude sent is
skyfix's own. Skips without ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file
from pymavlink import mavutil

from skyfix.maps.build import build_pack
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.sim.flight import FlightSpec, simulate_flight


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    ortho = shared_file("vienna_ortho_2023_30cm/44_2_op_2023_30cm.tif")
    dem = shared_file("vienna_ortho_2023_30cm/44_2_dgm.tif")
    work = tmp_path_factory.mktemp("terrain")
    # the autopilot's altitude 4 m high, as a barometer's offset makes it
    simulate_flight(ortho, work / "flight", FlightSpec(agl_m=60.0, duration_s=20.0, seed=5,
                                                       alt_bias_m=4.0),
                    dem=dem, progress=False)
    out = {}
    for name, d in (("flat", None), ("dem", dem)):
        build_pack([ortho], work / f"pack-{name}", dem=d, progress=False)
        out[name] = replay(work / "flight", work / f"pack-{name}", work / f"out-{name}",
                           Config(), progress=False).report
    out["work"] = work
    return out


def test_terrain_model_makes_fixes_exact_and_honest(reports):
    flat, dem = reports["flat"], reports["dem"]
    assert dem.availability >= 0.9
    assert dem.integrity_violations == 0 and dem.gross_errors == 0
    assert dem.fix_cep95_m < 0.5  # 60 m over terrain known to 1 m
    assert dem.fix_cep95_m < 0.5 * flat.fix_cep95_m  # a flat-ground pack errs on the relief


def _claimed(path):
    conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega")
    msgs = []
    while (m := conn.recv_match(type="GPS_INPUT")) is not None:
        msgs.append(m)
    return [m for m in msgs if m.fix_type == 3]


def test_dem_pack_sends_its_own_altitude_within_its_sigma(reports):
    """With a DEM the pose's height over it is an altitude: GPS_INPUT carries it with its
    vert_accuracy, every one within 3 sigma of the truth although the autopilot's own
    altitude is 4 m off; without a DEM no vertical accuracy is claimed (the autopilot's
    own altitude passes through)."""
    work = reports["work"]
    vert = mavutil.mavlink.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    flat = _claimed(work / "out-flat" / "gps_input.tlog")
    assert flat and all(m.ignore_flags & vert for m in flat)
    dem = [m for m in _claimed(work / "out-dem" / "gps_input.tlog")
           if not m.ignore_flags & vert]
    assert len(dem) >= 100  # 10 Hz over most of the 20 s
    truth = np.genfromtxt(work / "flight" / "truth.csv", delimiter=",", names=True)
    t = np.array([m._timestamp for m in dem])
    err = np.array([m.alt for m in dem]) - np.interp(t, truth["t_ns"] * 1e-9,
                                                     truth["alt_amsl_m"])
    sigma = np.array([m.vert_accuracy for m in dem])
    assert np.all(np.abs(err) <= 3 * sigma)
    assert np.percentile(np.abs(err), 95) < 2.0 and sigma.max() < 3.0  # 60 m above ground
