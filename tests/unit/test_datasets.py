"""UAV-VisLoc and GTA-UAV loaders on small fixtures written in the datasets' own formats."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_bounds
from rasterio.windows import Window

from skyfix.models.datasets import (
    gta_positive_indices,
    gta_tile_centre_m,
    list_visloc_flights,
    load_gta_pairs,
    load_gta_tiles,
    load_visloc_flight,
    parse_gta_tile,
)
from skyfix.models.metrics import retrieval_metrics
from skyfix.runtime.core.errors import SkyfixError

# site 01: a 400 x 300 px satellite image spanning these corners
LT_LAT, LT_LON, RB_LAT, RB_LON = 29.80, 115.50, 29.79, 115.52
HEADER = "num,filename,date,lat,lon,height,Omega,Kappa,Phi1,Phi2"
ROWS = [
    "1,01_0001.JPG,2022-09-06 10:01:02,29.7975,115.505,453.1,0.5,-1.2,88.9,91.0",
    "2,01_0002.JPG,2022-09-06 10:01:05,29.7925,115.515,452.7,0.4,-1.1,89.0,90.8",
]


def write_visloc(root, rows=ROWS, header=HEADER, range_name="satellite_coordinates_range.csv"):
    site = root / "01"
    (site / "drone").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for row in rows:
        name = row.split(",")[1]
        cv2.imwrite(str(site / "drone" / name), rng.integers(0, 255, (48, 64, 3), np.uint8))
    (site / "01.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / range_name).write_text(
        "mapname,LT_lat_map,LT_lon_map,RB_lat_map,RB_lon_map,region\n"
        f"satellite01.tif,{LT_LAT},{LT_LON},{RB_LAT},{RB_LON},Test-1\n")
    img = np.zeros((3, 300, 400), np.uint8)
    img[:, 70:80, 95:105] = 255  # a white marker around (col 100, row 75) = frame 1
    with rasterio.open(site / "satellite01.tif", "w", driver="GTiff", width=400, height=300,
                       count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_bounds(LT_LON, RB_LAT, RB_LON, LT_LAT, 400, 300)) as dst:
        dst.write(img)
    return root


def test_visloc_flight_loads_frames_and_satellite(tmp_path):
    root = write_visloc(tmp_path)
    assert list_visloc_flights(root) == ("01",)
    flight = load_visloc_flight(root, "01")
    f1, f2 = flight.frames
    assert (f1.num, f1.date, f1.lat_deg, f1.lon_deg, f1.height_m) == (
        1, "2022-09-06 10:01:02", 29.7975, 115.505, 453.1)
    assert (f1.omega_deg, f1.kappa_deg, f1.phi1_deg, f1.phi2_deg) == (0.5, -1.2, 88.9, 91.0)
    assert f2.image_path.is_file() and cv2.imread(str(f2.image_path)).shape == (48, 64, 3)
    sat = flight.satellite
    assert (sat.width_px, sat.height_px, sat.region) == (400, 300, "Test-1")
    # frame 1 is a quarter across (lon 115.505) and a quarter down (lat 29.7975)
    col, row = sat.pixel_of(f1.lat_deg, f1.lon_deg)
    assert (col, row) == pytest.approx((100.0, 75.0))
    with rasterio.open(sat.path) as src:
        patch = src.read(1, window=Window(int(col) - 2, int(row) - 2, 4, 4))
        assert patch.min() == 255  # the GeoTIFF's marker is where the frame's position says
        assert src.xy(row, col, offset="ul") == pytest.approx((f1.lon_deg, f1.lat_deg))
    assert sat.contains(f2.lat_deg, f2.lon_deg) and not sat.contains(29.81, 115.505)


def test_visloc_range_file_with_the_downloads_space_in_its_name(tmp_path):
    root = write_visloc(tmp_path, range_name="satellite_ coordinates_range.csv")
    assert load_visloc_flight(root, "01").satellite.region == "Test-1"


@pytest.mark.parametrize("change, message", [
    (dict(header=HEADER.replace(",Phi2", "")), "missing column(s) Phi2"),
    (dict(rows=[ROWS[0].replace("29.7975", "north")]), "line 2: lat 'north' is not a number"),
    (dict(rows=[ROWS[0].replace("29.7975", "97.5")]), "line 2: lat/lon"),
    (dict(rows=[ROWS[0], ROWS[1] + ",7"]), "line 3: more fields than the header's 10"),
])
def test_visloc_malformed_csv_is_one_line_error(tmp_path, change, message):
    root = write_visloc(tmp_path, **change)
    with pytest.raises(SkyfixError, match=None) as info:
        load_visloc_flight(root, "01")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_visloc_missing_pieces_are_named(tmp_path):
    root = write_visloc(tmp_path)
    (root / "01" / "drone" / "01_0002.JPG").unlink()
    with pytest.raises(SkyfixError, match="line 3: image not found"):
        load_visloc_flight(root, "01")
    assert len(load_visloc_flight(root, "01", check_images=False).frames) == 2
    (root / "01" / "satellite01.tif").write_bytes(b"not a tiff")
    with pytest.raises(SkyfixError, match="not a readable GeoTIFF"):
        load_visloc_flight(root, "01", check_images=False)
    (root / "satellite_coordinates_range.csv").write_text(
        "mapname,LT_lat_map,LT_lon_map,RB_lat_map,RB_lon_map,region\n")
    with pytest.raises(SkyfixError, match="no row for satellite01.tif"):
        load_visloc_flight(root, "01")


# ---------------------------------------------------------------- GTA-UAV

TILES = ["4_0_6_13.png", "5_0_12_27.png", "5_0_13_27.png", "6_128_30_50.png"]


def entry(name, loc, pos, semi):
    def lists(kind, names):
        return {f"pair_{kind}_sate_img_list": names,
                f"pair_{kind}_sate_weight_list": [0.45] * len(names),
                f"pair_{kind}_sate_loc_x_y_list": [list(gta_tile_centre_m(
                    *(int(v) for v in n[:-4].split("_")))) for n in names]}
    return {"drone_img_dir": "drone/images", "drone_img_name": name, "drone_loc_x_y": loc,
            "sate_img_dir": "satellite", **lists("pos", pos), **lists("pos_semipos", semi),
            "drone_metadata": {"height": 494.7, "cam_yaw": 85.0}}


def write_gta(root, entries=None):
    (root / "drone" / "images").mkdir(parents=True)
    (root / "satellite").mkdir()
    rng = np.random.default_rng(2)
    for name in TILES:
        cv2.imwrite(str(root / "satellite" / name), rng.integers(0, 255, (256, 256, 3), np.uint8))
    entries = entries if entries is not None else [
        entry("500_0001_0000025682.png", [4472.2, 9460.9], ["4_0_6_13.png"],
              ["4_0_6_13.png", "5_0_12_27.png", "5_0_13_27.png"]),
        entry("300_0002_0000000007.png", [5366.8, 8792.8], ["6_128_30_50.png"],
              ["6_128_30_50.png"]),
    ]
    for e in entries:
        cv2.imwrite(str(root / "drone" / "images" / e["drone_img_name"]),
                    rng.integers(0, 255, (96, 128, 3), np.uint8))
    (root / "same-area-drone2sate-test.json").write_text(json.dumps(entries, indent=4))
    return root


def test_gta_tile_centres_match_the_published_example():
    # the GTA-UAV README pairs drone 500_0001_0000025682 with these tiles and centres
    assert gta_tile_centre_m(4, 0, 6, 13) == pytest.approx((4492.8, 9331.2))
    assert gta_tile_centre_m(5, 0, 12, 27) == pytest.approx((4320.0, 9504.0))
    assert gta_tile_centre_m(5, 0, 13, 27) == pytest.approx((4665.6, 9504.0))
    # offset 128 of 256 px shifts a zoom-6 tile (384 px of 0.45 m) by half a tile
    t = parse_gta_tile("satellite/6_128_30_50.png")
    assert (t.zoom, t.offset, t.x, t.y) == (6, 128, 30, 50)
    assert t.centre_xy_m == pytest.approx((384 * 31 * 0.45, 384 * 51 * 0.45))
    with pytest.raises(SkyfixError, match="is not"):
        parse_gta_tile("6_30_50.png")


def test_gta_pairs_feed_the_retrieval_metrics(tmp_path):
    root = write_gta(tmp_path)
    tiles = load_gta_tiles(root)
    queries = load_gta_pairs(root, "same-area-drone2sate-test.json")
    assert [t.name for t in tiles] == sorted(TILES)
    q0 = queries[0]
    assert q0.image_path.is_file() and q0.height_m == 494.7 and q0.loc_xy_m == (4472.2, 9460.9)
    assert [p.tile for p in q0.semi_positives] == ["4_0_6_13.png", "5_0_12_27.png",
                                                   "5_0_13_27.png"]
    pos = gta_positive_indices(queries, tiles)
    assert pos == [[0], [3]]
    assert gta_positive_indices(queries, tiles, semi=True)[0] == [0, 1, 2]
    # score tiles by closeness to each query's true location: both positives rank first
    q_xy = np.array([q.loc_xy_m for q in queries])
    g_xy = np.array([t.centre_xy_m for t in tiles])
    scores = -np.linalg.norm(q_xy[:, None] - g_xy[None], axis=2)
    m = retrieval_metrics(scores, pos, q_xy, g_xy, recall_ks=(1,), sdm_ks=(1,), dis_ks=(1,))
    assert m.recall_at(1) == 1.0 and m.ap == 1.0


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("drone_loc_x_y"), "missing drone_loc_x_y"),
    (lambda e: e["pair_pos_sate_weight_list"].append(0.5), "must be lists of one length"),
    (lambda e: e.update(pair_pos_sate_weight_list=[1.7]), "not in [0, 1]"),
    (lambda e: e.update(pair_pos_sate_img_list=["4_6_13.png"]), "is not {zoom}"),
    (lambda e: e.update(drone_loc_x_y=[1.0]), "expected [x, y] metres"),
])
def test_gta_malformed_pairs_are_one_line_errors(tmp_path, mutate, message):
    e = entry("500_0001_0000025682.png", [4472.2, 9460.9], ["4_0_6_13.png"], ["4_0_6_13.png"])
    mutate(e)
    root = write_gta(tmp_path, [e])
    with pytest.raises(SkyfixError) as info:
        load_gta_pairs(root, "same-area-drone2sate-test.json")
    assert message in str(info.value) and "entry 0" in str(info.value)


def test_gta_bad_files(tmp_path):
    root = write_gta(tmp_path)
    (root / "bad.json").write_text("{not json")
    with pytest.raises(SkyfixError, match="not valid JSON"):
        load_gta_pairs(root, "bad.json")
    with pytest.raises(SkyfixError, match="pair file not found"):
        load_gta_pairs(root, "missing.json")
    (root / "drone" / "images" / "500_0001_0000025682.png").unlink()
    with pytest.raises(SkyfixError, match="image not found"):
        load_gta_pairs(root, "same-area-drone2sate-test.json")
    queries = load_gta_pairs(root, "same-area-drone2sate-test.json", check_images=False)
    with pytest.raises(SkyfixError, match="not in the gallery"):
        gta_positive_indices(queries, load_gta_tiles(root)[:2])
