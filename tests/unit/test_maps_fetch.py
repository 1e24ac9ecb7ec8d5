"""maps fetch against a tile server on 127.0.0.1 cut from the bundled Vienna orthophoto:
the mosaic equals the source and sits where it should; faults end cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from skyfix.maps.area import (
    area_from_bbox,
    area_from_point,
    area_from_track,
    pack_gsds_m,
    zoom_for,
)
from skyfix.maps.download import DownloadOptions
from skyfix.maps.fetch import dem_from_file, fetch_dem, fetch_imagery, record_path
from skyfix.maps.tilesource import xyz_source
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.sim.tile_server import TileFault, TileServer

FAST = DownloadOptions(workers=4, rate_per_s=500.0, timeout_s=2.0, retries=2, backoff_s=0.05)


@pytest.fixture(scope="module")
def inner_area(ortho_path):
    """The middle 60 % of the bundled ortho, in UTM."""
    with rasterio.open(ortho_path) as s:
        w, s_, e, n = transform_bounds(s.crs, "EPSG:4326", *s.bounds)
    dx, dy = (e - w) * 0.2, (n - s_) * 0.2
    return area_from_bbox([w + dx, s_ + dy, e - dx, n - dy])


@pytest.fixture(scope="module")
def small_area(inner_area):
    """120 m square at the middle of the bundled ortho."""
    lon, lat = inner_area.centre_deg
    return area_from_point(lat, lon, 60.0)


def _reference(ortho_path: Path, ds: rasterio.DatasetReader) -> np.ndarray:
    with rasterio.open(ortho_path) as s:
        ref = np.zeros((3, ds.height, ds.width), np.uint8)
        reproject(s.read(), ref, src_transform=s.transform, src_crs=s.crs,
                  dst_transform=ds.transform, dst_crs=ds.crs, resampling=Resampling.bilinear)
    return ref


def _gray(chw: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(np.moveaxis(chw, 0, -1)),
                        cv2.COLOR_RGB2GRAY).astype(np.float32)


def test_mosaic_equals_the_source_and_is_georeferenced(tmp_path, ortho_path, inner_area):
    with TileServer(ortho_path, max_zoom=19) as srv:
        r = fetch_imagery(inner_area, xyz_source(srv.url, "Stadt Wien", "CC BY 4.0"),
                          tmp_path / "map.tif", 0.3, tmp_path / "cache", FAST, progress=False)
    assert r.level == "19" and r.tiles.downloaded == r.tiles.total > 0
    with rasterio.open(r.path) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.res == pytest.approx((0.3, 0.3))
        assert ds.tags()["TIFFTAG_COPYRIGHT"] == "Stadt Wien"
        assert ds.tags()["SKYFIX_TERMS"] == "CC BY 4.0"
        assert ds.overviews(1), "a COG has overviews"
        got, valid = ds.read(), ds.dataset_mask() > 0
        ref = _reference(ortho_path, ds)
    assert valid.mean() == 1.0
    diff = np.abs(got.astype(np.float64) - ref)
    assert diff.mean() < 4.0  # two JPEG encodings (source Q75, tiles Q90) and two warps
    (dx, dy), _ = cv2.phaseCorrelate(_gray(got), _gray(ref))
    assert np.hypot(dx, dy) < 0.5
    record = json.loads(record_path(r.path).read_text())
    assert record["attribution"] == "Stadt Wien" and record["tiles"]["total"] == r.tiles.total


def test_rerun_takes_tiles_from_the_cache_and_edges_are_nodata(tmp_path, ortho_path):
    with rasterio.open(ortho_path) as s:
        w, s_, e, n = transform_bounds(s.crs, "EPSG:4326", *s.bounds)
    lon, lat = e, (s_ + n) / 2  # half of this area lies east of the imagery
    area = area_from_point(lat, lon, 100.0)
    with TileServer(ortho_path, max_zoom=19) as srv:
        src = xyz_source(srv.url, "Stadt Wien")
        first = fetch_imagery(area, src, tmp_path / "a.tif", 0.3, tmp_path / "cache",
                              FAST, max_missing=0.9, progress=False)
        hits = sum(srv.hits.values())
        again = fetch_imagery(area, src, tmp_path / "b.tif", 0.3, tmp_path / "cache", FAST,
                              max_missing=0.9, progress=False)
        assert sum(srv.hits.values()) == hits  # nothing asked twice, 404s included
    assert first.tiles.missing > 0 and again.tiles.cached == again.tiles.total
    with rasterio.open(first.path) as ds:
        valid = ds.dataset_mask() > 0
    assert 0.15 < valid.mean() < 0.6
    with TileServer(ortho_path, max_zoom=19) as srv:
        with pytest.raises(SkyfixError, match=r"do not exist at the source, more than"):
            fetch_imagery(area, xyz_source(srv.url, "x"), tmp_path / "c.tif", 0.3,
                          tmp_path / "cache2", FAST, max_missing=0.01, progress=False)
    assert not (tmp_path / "c.tif").exists()


@pytest.mark.parametrize("kind", ["429", "truncate", "html", "slow"])
def test_transient_faults_are_retried(tmp_path, ortho_path, small_area, kind):
    with TileServer(ortho_path, max_zoom=18) as probe:
        key = next(iter(_keys(probe, small_area)))
    fault = TileFault(kind, times=1, retry_after_s=1.0, delay_s=3.0)
    with TileServer(ortho_path, max_zoom=18, faults={key: fault}) as srv:
        r = fetch_imagery(small_area, xyz_source(srv.url, "x"), tmp_path / "m.tif", 0.6,
                          tmp_path / "cache", FAST, progress=False)
        assert srv.hits[key] == 2
        first, second = srv.hit_times[key]
    assert r.tiles.retries == 1 and r.tiles.missing == 0
    if kind == "429":  # Retry-After (1 s) is honoured, not the 0.05 s back-off
        assert second - first >= 0.95


@pytest.mark.parametrize("kind,message", [("truncate", "broken image"),
                                          ("429", "HTTP 429"),
                                          ("slow", "no answer within 2 s")])
def test_persistent_faults_fail_with_one_line_and_no_output(tmp_path, ortho_path,
                                                            small_area, kind, message):
    with TileServer(ortho_path, max_zoom=18) as probe:
        key = next(iter(_keys(probe, small_area)))
    fault = TileFault(kind, times=10, retry_after_s=0.05, delay_s=3.0)
    with TileServer(ortho_path, max_zoom=18, faults={key: fault}) as srv:
        with pytest.raises(SkyfixError, match=f"tile 18/.*{message}.* after 3 tries"):
            fetch_imagery(small_area, xyz_source(srv.url, "x"), tmp_path / "m.tif", 0.6,
                          tmp_path / "cache", FAST, progress=False)
    assert not (tmp_path / "m.tif").exists()
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert all(not p.name.endswith(".tmp") for p in cached)
    for p in cached:  # every cached tile is a whole image
        assert p.name.endswith(".none") or cv2.imread(str(p)) is not None


def _keys(srv: TileServer, area) -> list[str]:
    src = xyz_source(srv.url, "x")
    level = src.level_for(0.6, area)
    box = transform_bounds(area.crs, level.crs, *area.bounds_en)
    cols, rows = level.tile_range(box)
    return [f"{level.name}/{c}/{r}" for r in rows for c in cols]


def test_terrain_tiles_and_local_dem_give_the_same_heights(tmp_path, ortho_path,
                                                           small_area):
    from conftest import shared_file

    dem = shared_file("vienna_ortho_2023_30cm/44_2_dgm.tif")
    with TileServer(ortho_path, max_zoom=18, dem=dem) as probe:
        first = _keys(probe, small_area)[0]
    with TileServer(ortho_path, max_zoom=18, dem=dem,
                    faults={first: TileFault("404", times=99)}) as srv:
        r = fetch_dem(small_area, xyz_source(srv.terrarium_url, "Stadt Wien"), "terrarium",
                      tmp_path / "dem.tif", 0.5, tmp_path / "cache", FAST, max_missing=0.5,
                      progress=False)
    assert r.tiles.missing == 1
    dem_from_file(small_area, dem, tmp_path / "local.tif", 0.5)
    with rasterio.open(r.path) as a, rasterio.open(tmp_path / "local.tif") as b:
        ha, hb = a.read(1), b.read(1)
    ok = np.isfinite(ha) & np.isfinite(hb)
    assert 0.2 < ok.mean() < 0.95  # the missing tile is unknown height, not 0 m
    assert 20 < np.nanmin(ha) and np.nanmax(ha) < 40
    assert np.median(np.abs(ha[ok] - hb[ok])) < 0.3


def test_track_files_and_zoom_choice(tmp_path):
    plan = {"fileType": "Plan", "mission": {"items": [
        {"type": "SimpleItem", "frame": 3, "params": [0, 0, 0, None, 48.1850, 16.3100, 50]},
        {"type": "SimpleItem", "frame": 2, "params": [0, 0, 0, 0, 0, 0, 0]},
        {"type": "ComplexItem", "polygon": [[48.1870, 16.3150], [48.1860, 16.3160]]}],
        "plannedHomePosition": [48.1855, 16.3120, 0]}}
    (tmp_path / "m.plan").write_text(json.dumps(plan))
    kml = ('<kml xmlns="http://www.opengis.net/kml/2.2"><Placemark><LineString><coordinates>'
           '16.3100,48.1850,0 16.3160,48.1870,0</coordinates></LineString></Placemark></kml>')
    (tmp_path / "t.kml").write_text(kml)
    gpx = ('<gpx xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
           '<trkpt lat="48.1850" lon="16.3100"/><trkpt lat="48.1870" lon="16.3160"/>'
           '</trkseg></trk></gpx>')
    (tmp_path / "t.gpx").write_text(gpx)
    areas = [area_from_track(tmp_path / f, 100.0) for f in ("m.plan", "t.kml", "t.gpx")]
    for a in areas:
        assert a.bounds_deg[0] < 16.3100 and a.bounds_deg[2] > 16.3160
        assert 0.25 < a.area_km2 < 0.3  # (0.44 + 0.2) x (0.22 + 0.2) km
    (tmp_path / "bad.gpx").write_text("<gpx><trkpt lat='x'/></gpx>")
    with pytest.raises(SkyfixError, match="bad.gpx: not a valid gpx file"):
        area_from_track(tmp_path / "bad.gpx", 10.0)
    assert zoom_for(0.3, 48.2) == 19 and zoom_for(0.3, 0.0) == 19 and zoom_for(0.6, 0.0) == 18
    cam = CameraModel.from_fov(640, 480, 70.0)
    gsds = pack_gsds_m(0.2, 400.0, cam)
    assert gsds[:2] == (0.2, 0.4) and gsds[-1] >= 0.75 * 400.0 / cam.fx


def test_cli_fetch_and_build_records_attribution_and_accuracy_in_the_pack(tmp_path, ortho_path,
                                                            small_area, capsys):
    from test_provenance import key_pair

    private, public = key_pair(tmp_path, "maker")
    lon, lat = small_area.centre_deg
    with TileServer(ortho_path, max_zoom=18) as srv:
        code = main(["maps", "fetch", "--point", f"{lat},{lon}", "--radius", "60",
                     "--url", srv.url, "--attribution", "Stadt Wien", "--terms", "CC BY 4.0",
                     "--gsd", "0.6", "--rate", "500", "--cache", str(tmp_path / "c"),
                     "--out", str(tmp_path / "m.tif"), "--build", str(tmp_path / "pack"),
                     "--georef-sigma", "2.5", "--sign-key", str(private)])
    assert code == 0, capsys.readouterr().err
    assert main(["maps", "verify", str(tmp_path / "pack"), "--trusted-key", str(public)]) == 0
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    credit = manifest["build"]["credits"][0]
    assert credit["attribution"] == "Stadt Wien" and credit["terms"] == "CC BY 4.0"
    assert manifest["crs_epsg"] == 32633
    assert manifest["georef_sigma_m"] == 2.5  # the provider's stated accuracy, claimed
    assert main(["maps", "fetch", "--bbox", "16.3,48.2,16.2,48.3", "--url", srv.url,
                 "--attribution", "x", "--out", str(tmp_path / "x.tif")]) == 2
    assert "W < E" in capsys.readouterr().err


@pytest.mark.parametrize("service", ["wmts", "wms"])
def test_ogc_services_give_the_same_map(tmp_path, ortho_path, inner_area, service):
    from skyfix.maps.tilesource import wms_source, wmts_source

    with TileServer(ortho_path, max_zoom=19) as srv:
        base = srv.url.split("/{z}")[0]
        src = (wmts_source(f"{base}/wmts") if service == "wmts"
               else wms_source(f"{base}/wms", inner_area, 0.3))
        assert "CC BY 4.0" in src.attribution
        r = fetch_imagery(inner_area, src, tmp_path / "m.tif", 0.3, tmp_path / "cache", FAST,
                          progress=False)
    with rasterio.open(r.path) as ds:
        assert ds.crs.to_epsg() == 32633
        got, valid = ds.read(), ds.dataset_mask() > 0
        ref = _reference(ortho_path, ds)
    assert valid.mean() == 1.0
    assert np.abs(got.astype(np.float64) - ref).mean() < 4.0
    (dx, dy), _ = cv2.phaseCorrelate(_gray(got), _gray(ref))
    assert np.hypot(dx, dy) < 0.5


def test_a_source_that_stops_short_of_the_zoom_falls_back(tmp_path, ortho_path, small_area):
    with TileServer(ortho_path, max_zoom=18) as srv:  # no zoom 19 at this source
        r = fetch_imagery(small_area, xyz_source(srv.url, "x"), tmp_path / "m.tif", 0.25,
                          tmp_path / "cache", FAST, progress=False)
    assert r.level == "18" and r.tiles.missing == 0
    assert r.gsd_m == pytest.approx(r.source_res_m, abs=1e-3)  # not finer than the source
    assert json.loads(record_path(r.path).read_text())["level_fallbacks"] == 1


def test_named_providers_come_from_the_xyzservices_catalogue():
    from skyfix.maps.tilesource import provider_source

    src = provider_source("OpenStreetMap.Mapnik")
    assert src.template == "https://tile.openstreetmap.org/{level}/{col}/{row}.png"
    assert "OpenStreetMap" in src.attribution and src.name == "OpenStreetMap.Mapnik"
    with pytest.raises(SkyfixError, match="needs an API key"):
        provider_source("Thunderforest.OpenCycleMap")
    keyed = provider_source("Thunderforest.OpenCycleMap", api_key="K")
    assert "apikey=K" in keyed.template and "K" not in keyed.name
    with pytest.raises(SkyfixError, match="unknown tile provider"):
        provider_source("Nope.Nothing")
