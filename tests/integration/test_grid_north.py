"""Grid north is not true north: the bundled orthophoto warped into UTM 33N, whose grid
north lies 0.98 deg east of true north at Schoenbrunn, flown with an autopilot that
reports its heading about true north without error. Views must be made north-up in the
map's grid, so that each fix measures the autopilot's heading error (here none), not the
projection's convergence."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject

from skyfix.maps.build import build_pack
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import grid_convergence_deg
from skyfix.runtime.core.types import Fix
from skyfix.sim.flight import FlightSpec, simulate_flight

UTM33 = CRS.from_epsg(32633)


@pytest.fixture(scope="module")
def flown(tmp_path_factory, ortho_path):
    work = tmp_path_factory.mktemp("grid_north")
    with rasterio.open(ortho_path) as src:
        tf, w, h = calculate_default_transform(src.crs, UTM33, src.width, src.height,
                                               *src.bounds, resolution=0.3)
        warped = np.zeros((src.count, h, w), np.uint8)
        reproject(src.read(), warped, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=tf, dst_crs=UTM33, resampling=Resampling.bilinear)
        profile = dict(driver="GTiff", width=w, height=h, count=src.count, dtype="uint8",
                       crs=UTM33, transform=tf)
    utm = work / "ortho_utm33.tif"
    with rasterio.open(utm, "w", **profile) as dst:
        dst.write(warped)
        b = dst.bounds
    gamma = grid_convergence_deg(UTM33, 0.5 * (b.left + b.right), 0.5 * (b.bottom + b.top))
    simulate_flight(utm, work / "flight", FlightSpec(duration_s=20.0, seed=3,
                                                     attitude_noise_deg=0.0, yaw_noise_deg=0.0),
                    progress=False)
    pack = build_pack([utm], work / "pack", progress=False)
    return replay(work / "flight", pack, work / "out", Config(), progress=False), gamma


def test_fixes_measure_the_heading_about_true_north(flown):
    result, gamma = flown
    assert gamma == pytest.approx(0.98, abs=0.03)
    fixes = [r.result for r in result.frames if isinstance(r.result, Fix)]
    assert len(fixes) >= 20
    heading = np.array([f.heading_err_deg for f in fixes])
    # the autopilot's heading is exact: what a fix measures is the image's own error,
    # not the convergence (which would read -0.98 deg)
    assert abs(np.median(heading)) < 0.25, np.median(heading)
    assert result.report.integrity_violations == 0 and result.report.gross_errors == 0
