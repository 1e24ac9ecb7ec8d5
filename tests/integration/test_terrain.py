"""Terrain: a flight low over the real Vienna terrain (1 m DEM, 13 m of relief), matched
against packs built with and without that DEM. Skips without ../shared/data."""

from __future__ import annotations

import pytest
from conftest import shared_file

from skyfix.maps.build import build_pack
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.sim.flight import FlightSpec, simulate_flight


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    ortho = shared_file("vienna_ortho_2023_30cm/44_2_op_2023_30cm.tif")
    dem = shared_file("vienna_ortho_2023_30cm/44_2_dgm.tif")
    work = tmp_path_factory.mktemp("terrain")
    simulate_flight(ortho, work / "flight", FlightSpec(agl_m=60.0, duration_s=20.0, seed=5),
                    dem=dem, progress=False)
    out = {}
    for name, d in (("flat", None), ("dem", dem)):
        build_pack([ortho], work / f"pack-{name}", dem=d, progress=False)
        out[name] = replay(work / "flight", work / f"pack-{name}", work / f"out-{name}",
                           Config(), progress=False).report
    return out


def test_terrain_model_makes_fixes_exact_and_honest(reports):
    flat, dem = reports["flat"], reports["dem"]
    assert dem.availability >= 0.9
    assert dem.integrity_violations == 0 and dem.gross_errors == 0
    assert dem.fix_cep95_m < 0.5  # 60 m over terrain known to 1 m
    assert dem.fix_cep95_m < 0.5 * flat.fix_cep95_m  # a flat-ground pack errs on the relief
