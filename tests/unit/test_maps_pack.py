"""Map pack build and open, on crops of the bundled real Vienna orthophoto (EPSG:31256)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from skyfix.maps.build import build_pack
from skyfix.maps.manifest import manifest_digest
from skyfix.maps.pack import PACK_FILES, MapPack, pack_info, verify_pack
from skyfix.maps.structure import N_ORIENT, structure_channels
from skyfix.models.features import RootSiftEncoder, match_mutual
from skyfix.runtime.core.errors import SkyfixError

ENC = RootSiftEncoder()
NAIP = "naip_nd_timeseries_5m/m_4709963_se_14_1_20090818.tif"


def write_crop(src_path: Path, dst: Path, col: int, row: int, size: int, **overrides) -> Path:
    """A size x size pixel window of `src_path`, georeferenced, as a GeoTIFF at `dst`."""
    with rasterio.open(src_path) as src:
        win = Window(col, row, size, size)
        data = src.read(window=win)
        profile = dict(driver="GTiff", width=size, height=size, count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(win))
    profile.update(overrides)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="module")
def crop(ortho_path, tmp_path_factory) -> Path:
    return write_crop(ortho_path, tmp_path_factory.mktemp("crop") / "crop.tif", 400, 500, 700)


@pytest.fixture(scope="module")
def pack_path(crop, tmp_path_factory) -> Path:
    return build_pack([crop], tmp_path_factory.mktemp("pack") / "pack", ENC, tile_px=256,
                      progress=False)


def gray_at(path: Path, bounds, size: int) -> np.ndarray:
    """[size, size] uint8 luminance of `path` over map `bounds`, resampled like the build."""
    with rasterio.open(path) as src:
        win = window_from_bounds(*bounds, transform=src.transform)
        rgb = src.read(window=win, out_shape=(3, size, size), resampling=Resampling.average)
    return cv2.cvtColor(np.ascontiguousarray(rgb.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)


def test_manifest_and_tiles(pack_path, crop):
    m = json.loads((pack_path / "manifest.json").read_text())
    assert m["format"] == "skyfix-pack/2" and m["crs_epsg"] == 31256
    assert m["gsds_m"] == pytest.approx([0.3, 0.6], rel=1e-3)
    # 700 px at stride 128 -> 5 x 5 tiles; 350 px at level 1 -> 2 x 2
    assert m["tile_count"] == [25, 4] and m["tile_px"] == 256 and m["overlap"] == 0.5
    assert m["encoder_id"] == ENC.id and m["encoder_sha256"] == ENC.sha256
    structure = ["structure_l0.npy", "structure_l1.npy"]
    assert m["sources"] == ["crop.tif"]
    assert sorted(m["files"]) == sorted([*PACK_FILES, *structure])
    assert m["structure_gsds_m"] == pytest.approx([0.6, 1.2], rel=1e-3)
    with rasterio.open(crop) as src:
        assert m["bounds_en"] == pytest.approx(list(src.bounds), abs=1e-6)
    pack = MapPack.open(pack_path, encoder_id=ENC.id)
    assert pack.n_tiles == 29 and pack.levels == tuple(m["gsds_m"])
    assert pack.tile_center_en.dtype == np.float64 and pack.tile_bounds_en.shape == (29, 4)
    assert not isinstance(pack.descriptors, np.memmap)  # small: read into memory
    assert isinstance(MapPack.open(pack_path, in_ram_max_bytes=0).descriptors, np.memmap)
    assert pack.descriptors.shape == (29, 32 * 128) and pack.codebook.shape == (32, 128)
    assert np.allclose(np.linalg.norm(pack.descriptors, axis=1), 1, atol=1e-4)
    assert np.load(pack_path / "keypoints.npy", mmap_mode="r").dtype == np.float32
    assert np.load(pack_path / "local_descriptors.npy", mmap_mode="r").dtype == np.float16
    with rasterio.open(pack_path / "ortho.tif") as o:
        assert o.crs.to_epsg() == 31256 and o.count == 3
        assert o.block_shapes[0] == (256, 256) and o.overviews(1)
    assert pack.level_for_gsd(0.3) == 0 and pack.level_for_gsd(0.32) == 0
    assert pack.level_for_gsd(0.5) == 1 and pack.level_for_gsd(5.0) == 1
    assert pack.level_for_gsd(0.01) == 0 and pack.level_for_gsd(float("nan")) == 0


def test_tile_features_are_absolute_and_reproducible(pack_path, crop):
    pack = MapPack.open(pack_path)
    for tile in (12, 27):  # the level-0 centre tile and a level-1 tile
        en, desc = pack.tile_features(tile)
        assert en.dtype == np.float64 and desc.dtype == np.float32 and len(en) > 200
        b, g = pack.tile_bounds_en[tile], pack.tile_gsd_m[tile]
        assert np.all((en[:, 0] > b[0]) & (en[:, 0] < b[2]) & (en[:, 1] > b[1]) & (en[:, 1] < b[3]))
        # re-extract at that spot from the source crop: same features at the same places
        feats = ENC.extract(gray_at(crop, b, 256))
        xy = feats.keypoints.astype(np.float64)
        again = np.stack([b[0] + (xy[:, 0] + 0.5) * g, b[3] - (xy[:, 1] + 0.5) * g], 1)
        pairs = match_mutual(desc, feats.descriptors)
        assert len(pairs) > 0.5 * min(len(desc), len(feats))
        err = np.linalg.norm(en[pairs[:, 0]] - again[pairs[:, 1]], axis=1)
        assert np.median(err) < 0.5 * g


@pytest.mark.parametrize("name", [*PACK_FILES, "structure_l0.npy", "manifest.json"])
def test_one_flipped_byte_is_caught(pack_path, tmp_path, name):
    bad = tmp_path / "pack"
    shutil.copytree(pack_path, bad)
    data = bytearray((bad / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / name).write_bytes(bytes(data))
    with pytest.raises(SkyfixError, match=name.replace(".", r"\.")):
        MapPack.open(bad)
    problems = verify_pack(bad)
    assert problems and name in problems[0]
    if name != "manifest.json":
        assert "sha256 mismatch" in problems[0]
        try:  # without re-hashing, only a structural problem can show, still named
            MapPack.open(bad, verify=False)
        except SkyfixError as e:
            assert name in str(e)


def test_missing_file_and_not_a_pack(pack_path, tmp_path):
    bad = tmp_path / "pack"
    shutil.copytree(pack_path, bad)
    (bad / "codebook.npy").unlink()
    with pytest.raises(SkyfixError, match="codebook.npy is missing"):
        MapPack.open(bad, verify=False)
    assert verify_pack(tmp_path) == ["not a map pack (no manifest.json)"]
    with pytest.raises(SkyfixError, match=str(tmp_path)):
        pack_info(MapPack.open(tmp_path, verify=False))


def test_pack_of_the_old_format_is_refused_with_a_rebuild_hint(pack_path, tmp_path):
    old = tmp_path / "pack"
    shutil.copytree(pack_path, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format"] = "skyfix-pack/1"
    del m["structure_gsds_m"]
    m["manifest_sha256"] = manifest_digest(m)
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SkyfixError, match="skyfix-pack/1.*rebuild the pack") as e:
        MapPack.open(old)
    assert "\n" not in str(e.value)


def test_structure_channels_in_the_pack_are_the_view_sides(pack_path, crop):
    """The pack's precomputed channels equal those the runtime computes from the same
    pixels (to the uint8 storage), and a window reads them at the right place."""
    pack = MapPack.open(pack_path)
    b = pack.manifest.bounds_en
    g = pack.manifest.structure_gsds_m[0]
    centre = np.array([b[0] + 60 * g + 0.25 * g, b[3] - 80 * g])
    win = pack.structure_window(0, centre, 20 * g)
    assert win is not None and win.gsd_m == g and win.channels.shape == (N_ORIENT, 41, 41)
    col, row = round((win.left_e_m - b[0]) / g), round((b[3] - win.top_n_m) / g)
    assert (col, row) == (40, 60)
    size = round((b[2] - b[0]) / g)
    full = structure_channels(gray_at(crop, b, size))  # the pack: the same pixels as JPEG
    inner = (slice(None), slice(4, -4), slice(4, -4))
    diff = np.abs(win.channels[inner] - full[:, row:row + 41, col:col + 41][inner])
    assert diff.mean() < 0.005 and diff.max() < 0.04  # uint8 storage, JPEG
    outside = pack.structure_window(0, np.array([b[0] - 10 * g, b[3]]), 5 * g)
    assert outside.channels[:, :, :5].max() == 0  # left of the map: zeros


def test_encoder_mismatch_is_refused(pack_path):
    with pytest.raises(SkyfixError, match="opencv-rootsift-v1.*xfeat-v1"):
        MapPack.open(pack_path, encoder_id="xfeat-v1")
    assert "xfeat-v1" in verify_pack(pack_path, encoder_id="xfeat-v1")[0]
    assert verify_pack(pack_path, encoder_id=ENC.id) == []


def test_pack_info(pack_path):
    info = pack_info(MapPack.open(pack_path, verify=False))
    assert info.shards == 0 and info.area_km2 == pytest.approx(0.21**2, rel=1e-3)
    assert info.tiles_per_level == (25, 4) and info.crs == "EPSG:31256"
    w, s, e, n = info.bounds_lonlat
    assert 16.30 < w < e < 16.32 and 48.18 < s < n < 48.19
    assert info.size_bytes > 1e6


def test_the_maps_stated_error_is_kept_and_checked(pack_path, crop, tmp_path):
    """A pack built without one states no georeferencing error (0); a stated one is kept
    in the manifest and shown by `maps info`; an impossible one is refused in one line,
    at build time and in a re-sealed manifest."""
    assert pack_info(MapPack.open(pack_path, verify=False)).georef_sigma_m == 0.0
    with pytest.raises(SkyfixError, match="georeferencing sigma must be 0..10000 m"):
        build_pack([crop], tmp_path / "neg", georef_sigma_m=-1.0, progress=False)
    stated = tmp_path / "stated"
    shutil.copytree(pack_path, stated)
    m = json.loads((stated / "manifest.json").read_text())
    m["georef_sigma_m"] = 2.5
    m["manifest_sha256"] = manifest_digest(m)
    (stated / "manifest.json").write_text(json.dumps(m))
    assert pack_info(MapPack.open(stated)).georef_sigma_m == 2.5
    m["georef_sigma_m"] = float("nan")
    m["manifest_sha256"] = manifest_digest(m)
    (stated / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SkyfixError, match="georef_sigma_m nan must be 0..10000 metres"):
        MapPack.open(stated)


def test_bad_inputs_are_one_line_errors(crop, tmp_path):
    plain = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=1,
                           dtype="uint8") as dst:
            dst.write(np.full((1, 64, 64), 7, np.uint8))
    with pytest.raises(SkyfixError, match="plain.tif: no georeferencing"):
        build_pack([plain], tmp_path / "p1", progress=False)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(SkyfixError, match="junk.tif: not a readable raster"):
        build_pack([junk], tmp_path / "p2", progress=False)
    with pytest.raises(SkyfixError, match="nope.tif: no such file"):
        build_pack([tmp_path / "nope.tif"], tmp_path / "p3", progress=False)
    empty = write_crop(crop, tmp_path / "empty.tif", 0, 0, 200, nodata=0)
    with rasterio.open(empty, "r+") as dst:
        dst.write(np.zeros((3, 200, 200), np.uint8))
    with pytest.raises(SkyfixError, match="empty.tif: no valid pixels"):
        build_pack([empty], tmp_path / "p4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "junk.tif", "plain.tif"]


def test_existing_output_needs_force(crop, pack_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SkyfixError, match="exists and is not empty"):
        build_pack([crop], out, tile_px=256, progress=False)
    with pytest.raises(SkyfixError, match="holds no map pack"):
        build_pack([crop], out, tile_px=256, progress=False, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    shutil.rmtree(out)
    shutil.copytree(pack_path, out)
    small = write_crop(crop, tmp_path / "small.tif", 0, 0, 300)
    build_pack([small], out, gsds_m=[0.3], tile_px=128, codebook_k=8, force=True,
               progress=False)
    assert MapPack.open(out).manifest.sources == ("small.tif",)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_geographic_input_is_reprojected_to_utm(crop, tmp_path):
    geo = tmp_path / "geo.tif"
    with rasterio.open(write_crop(crop, tmp_path / "small.tif", 100, 100, 400)) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                              *src.bounds)
        dst = np.zeros((3, h, w), np.uint8)
        reproject(src.read(), dst, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs="EPSG:4326", resampling=Resampling.bilinear)
    with rasterio.open(geo, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=t) as out:
        out.write(dst)
    pack = MapPack.open(build_pack([geo], tmp_path / "p", tile_px=256, codebook_k=16,
                                   progress=False))
    assert pack.manifest.crs_epsg == 32633  # Vienna, 16.3 deg E
    assert 0.2 < pack.levels[0] < 0.4 and pack.n_tiles >= 4
    e, n = pack.tile_center_en.mean(0)
    assert 590_000 < e < 610_000 and 5_330_000 < n < 5_350_000


def test_two_inputs_in_two_crs_are_mosaicked(crop, tmp_path):
    west = write_crop(crop, tmp_path / "west.tif", 0, 0, 400)  # 0..400 of 700 px
    east_31256 = write_crop(crop, tmp_path / "e.tif", 300, 300, 400)
    east = tmp_path / "east_utm.tif"
    with rasterio.open(east_31256) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:32633", src.width, src.height,
                                              *src.bounds)
        data = np.zeros((3, h, w), np.uint8)
        reproject(src.read(), data, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs="EPSG:32633", resampling=Resampling.bilinear)
    with rasterio.open(east, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=t, nodata=0) as out:
        out.write(data)
    pack = MapPack.open(build_pack([west, east], tmp_path / "p", gsds_m=[0.6], tile_px=128,
                                   codebook_k=16, progress=False))
    with rasterio.open(crop) as c, rasterio.open(west) as wsrc:
        assert pack.manifest.crs_epsg == 31256
        b = pack.manifest.bounds_en
        assert b[0] == pytest.approx(wsrc.bounds.left) and b[3] == pytest.approx(wsrc.bounds.top)
        # the reprojected half's bounding box grows by a few metres (grid rotation)
        assert b[2] == pytest.approx(c.bounds.left + 700 * 0.3, abs=6.0)
        assert b[1] == pytest.approx(c.bounds.top - 700 * 0.3, abs=6.0)
    with rasterio.open(pack.path / "ortho.tif") as o:
        assert o.res[0] == pytest.approx(0.3, rel=0.02)
        mask = o.dataset_mask()
        # north-east corner is in neither input; the south-east block is all from `east`
        assert mask[:100, -100:].max() == 0 and mask[-150:-50, -150:-50].min() == 255
        assert mask[50:150, 50:150].min() == 255


def test_naip_4_band_with_nodata(tmp_path):
    from conftest import shared_file

    naip = shared_file(NAIP)
    enc = RootSiftEncoder(max_features=500)  # fewer features: a faster test
    pack = MapPack.open(build_pack([naip], tmp_path / "naip", enc, tile_px=256, codebook_k=8,
                                   progress=False))
    assert pack.manifest.crs_epsg == 26914 and pack.levels == (5.0, 10.0)
    assert pack.manifest.tile_count[0] == 7 * 5
    with rasterio.open(pack.path / "ortho.tif") as o:
        assert o.count == 3 and o.bounds == pytest.approx((485900, 5205627, 490570, 5209247))
    en, desc = pack.tile_features(0)
    b = pack.tile_bounds_en[0]
    assert len(en) > 100 and np.all((en[:, 0] > b[0]) & (en[:, 1] < b[3]))
    assert verify_pack(pack.path) == []


def test_north_is_up_in_keypoint_offsets(tmp_path):
    """Texture only in the image's top-right quadrant lands north-east of the tile centre."""
    img = np.full((3, 256, 256), 40, np.uint8)
    rng = np.random.default_rng(0)
    img[:, 20:108, 148:236] = rng.integers(0, 255, (88, 88), dtype=np.uint8)[None]
    path = tmp_path / "synthetic.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(5e5, 5.3e6, 1, 1)
                       ) as dst:
        dst.write(img)
    pack = MapPack.open(build_pack([path], tmp_path / "p", gsds_m=[1.0], tile_px=256,
                                   codebook_k=4, progress=False))
    en, _ = pack.tile_features(0)
    assert pack.tile_center_en[0] == pytest.approx((5e5 + 128, 5.3e6 - 128))
    # textured square: columns 148..236 (east of centre), rows 20..108 (north of centre)
    assert len(en) > 10
    assert en[:, 0].min() > 5e5 + 143 and en[:, 0].max() < 5e5 + 241
    assert en[:, 1].max() < 5.3e6 - 15 and en[:, 1].min() > 5.3e6 - 113


VIENNA_DEM = "vienna_ortho_2023_30cm/44_2_dgm.tif"


def _bilinear(path: Path, east: np.ndarray, north: np.ndarray) -> np.ndarray:
    """Bilinear height of the DEM GeoTIFF at map points (an independent reference)."""
    with rasterio.open(path) as src:
        z = src.read(1).astype(np.float64)
        col, row = ~src.transform * (east, north)
    x, y = np.asarray(col) - 0.5, np.asarray(row) - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return ((z[y0, x0] * (1 - fx) + z[y0, x0 + 1] * fx) * (1 - fy)
            + (z[y0 + 1, x0] * (1 - fx) + z[y0 + 1, x0 + 1] * fx) * fy)


def test_real_vienna_dem_is_resampled_into_the_pack(crop, tmp_path):
    from conftest import shared_file

    dem = shared_file(VIENNA_DEM)
    pack = MapPack.open(build_pack([crop], tmp_path / "p", gsds_m=[0.6], tile_px=256,
                                   codebook_k=8, dem=dem, progress=False))
    m = pack.manifest
    assert m.dem_gsd_m == pytest.approx(0.9, rel=1e-3)  # 1 m DEM on a 0.3 m grid: 3 px
    assert "dem.npy" in m.files and m.build["dem_source"] == "44_2_dgm.tif"
    assert pack.dem.shape == (234, 234) and pack.dem.dtype == np.float32  # small: in memory
    rng = np.random.default_rng(0)
    w, s, e, n = m.bounds_en
    east, north = rng.uniform(w + 2, e - 2, 500), rng.uniform(s + 2, n - 2, 500)
    z = pack.terrain_m(east, north)
    assert np.all(np.isfinite(z)) and 23 < z.min() and z.max() < 37
    # resampled twice (0.9 m grid, then the lookup): within a few cm of the source DEM
    assert np.abs(z - _bilinear(dem, east, north)).max() < 0.15
    assert np.isnan(pack.terrain_m(w - 5, n)) and pack.terrain_m(east[:3], north[0]).shape == (3,)
    assert verify_pack(pack.path) == []
    (pack.path / "dem.npy").write_bytes((pack.path / "dem.npy").read_bytes()[:-4] + b"\0\0\0\0")
    assert verify_pack(pack.path) == ["dem.npy does not match its manifest (sha256 mismatch)"]


def test_synthetic_dem_plane_holes_and_coverage(crop, tmp_path):
    with rasterio.open(crop) as c:
        left, top = c.bounds.left, c.bounds.top
    # a 2 m DEM over the west 100 m of the map only: z = 100 + 0.01 E' - 0.02 N' (E', N'
    # metres from the map's north-west corner), with a nodata hole
    cols, rows = 50, 110
    e_c = (np.arange(cols) + 0.5) * 2.0
    n_c = -(np.arange(rows) + 0.5) * 2.0
    z = (100 + 0.01 * e_c[None, :] - 0.02 * n_c[:, None]).astype(np.float32)
    z[40:45, 20:25] = -9999
    dem = tmp_path / "dem.tif"
    with rasterio.open(dem, "w", driver="GTiff", width=cols, height=rows, count=1,
                       dtype="float32", crs="EPSG:31256", nodata=-9999,
                       transform=from_origin(left, top, 2.0, 2.0)) as dst:
        dst.write(z[None])
    pack = MapPack.open(build_pack([crop], tmp_path / "p", gsds_m=[0.6], tile_px=256,
                                   codebook_k=8, dem=dem, progress=False))
    assert pack.manifest.dem_gsd_m == pytest.approx(2.1, rel=1e-3)  # 7 x 0.3 m
    de, dn = np.meshgrid(np.linspace(3, 95, 20), np.linspace(-3, -75, 20))
    got = pack.terrain_m(left + de, top + dn)
    assert got == pytest.approx(100 + 0.01 * de - 0.02 * dn, abs=0.01)  # GDAL bilinear
    assert np.isnan(pack.terrain_m(left + 45.0, top - 85.0))  # in the hole
    assert np.isnan(pack.terrain_m(left + 150.0, top - 50.0))  # east of the DEM
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", driver="GTiff", width=cols, height=rows, count=1,
                       dtype="float32", crs="EPSG:31256",
                       transform=from_origin(left + 5000, top, 2.0, 2.0)) as dst:
        dst.write(z[None])
    with pytest.raises(SkyfixError, match="far.tif: DEM does not overlap the orthophoto"):
        build_pack([crop], tmp_path / "p2", gsds_m=[0.6], tile_px=256, dem=far, progress=False)
    assert not (tmp_path / "p2").exists() and not (tmp_path / ".p2.partial").exists()


class Interrupt(Exception):
    pass


def test_interrupted_build_resumes(crop, tmp_path, caplog):
    small = write_crop(crop, tmp_path / "small.tif", 200, 200, 300)
    args = dict(gsds_m=[0.3], tile_px=64, codebook_k=8, progress=False)
    ref = MapPack.open(build_pack([small], tmp_path / "ref", **args))
    assert ref.n_tiles == 81  # 9 x 9 at stride 32: chunks of 64 + 17 tiles

    def stop_after_first_chunk(p):
        if p.done > p.resumed:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_pack([small], tmp_path / "out", **args, on_progress=stop_after_first_chunk)
    partial = tmp_path / ".out.partial"
    assert sorted(p.name for p in partial.glob("chunk_*")) == ["chunk_00000.npz"]
    assert not (tmp_path / "out").exists()
    seen = []
    pack = MapPack.open(build_pack([small], tmp_path / "out", **args, on_progress=seen.append))
    assert seen[0].resumed == 64 and seen[-1].done == seen[-1].total == 81
    assert "resuming the interrupted build" in caplog.text
    for name in ("tiles.npy", "keypoints.npy", "local_descriptors.npy", "descriptors.npy"):
        assert np.array_equal(np.load(pack.path / name), np.load(ref.path / name)), name
    assert not partial.exists() and verify_pack(pack.path) == []
    # other parameters: the interrupted build is not reused
    with pytest.raises(Interrupt):
        build_pack([small], tmp_path / "o2", **{**args, "codebook_k": 4},
                   on_progress=stop_after_first_chunk)
    caplog.clear()
    seen.clear()
    build_pack([small], tmp_path / "o2", **args, on_progress=seen.append)
    assert seen[0].resumed == 0 and "starting over" in caplog.text


def test_more_bad_inputs(crop, tmp_path):
    wide = tmp_path / "wide.tif"  # 64 x 64 px over 10 x 5 degrees
    with rasterio.open(wide, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(10.0, 50.0, 10 / 64, 5 / 64)
                       ) as dst:
        dst.write(np.full((1, 64, 64), 9, np.uint8))
    with pytest.raises(SkyfixError, match="wide.tif: geographic CRS covering lon 10.00..20.00"
                                          ".*too large for one UTM zone"):
        build_pack([wide], tmp_path / "p1", progress=False)
    tiled = write_crop(crop, tmp_path / "tiled.tif", 0, 0, 512, tiled=True, blockxsize=128,
                       blockysize=128, compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(tiled.read_bytes()[: tiled.stat().st_size // 2])
    with pytest.raises(SkyfixError, match=r"cut.tif: (read failed|not a readable raster)"):
        build_pack([cut], tmp_path / "p2", progress=False)
    with pytest.raises(SkyfixError, match="nodem.tif: no such file"):
        build_pack([crop], tmp_path / "p3", dem=tmp_path / "nodem.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "tiled.tif", "wide.tif"]
