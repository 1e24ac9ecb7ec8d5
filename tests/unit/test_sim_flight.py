"""Synthetic flights (sim/flight.py, sim/trajectory.py): output layout, telemetry, and
that a map point lands in the rendered frame exactly where the true pose projects it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from pymavlink import mavutil
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_BODY_CAM_NADIR, R_ned_body
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.render import Terrain, ground_hits
from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower

SMALL_CAM = CameraModel.from_fov(320, 240, 70.0, dist=(-0.08, 0.02, 0.0, 0.0, 0.0))
CLEAN = dict(photometric=False, noise_sigma=0.0)  # pixels exactly as the geometry makes them
UTM33 = CRS.from_epsg(32633)
DOT_ORIGIN = (600000.0, 5340000.0)  # top-left corner (E, N) of the dots raster
DOT_RES_M, DOT_PX, DOT_EVERY_PX, DOT_HALF_PX = 0.25, 1600, 48, 2
DOT_BACKGROUND = 40


def small_spec(**kw) -> FlightSpec:
    return FlightSpec(**{"duration_s": 10.0, "fps": 1.0, "camera": SMALL_CAM, **kw})


def write_raster(path: Path, data: np.ndarray, crs: CRS | None, transform) -> Path:
    """`data`: [C, H, W] array written as a GeoTIFF (no georeferencing when crs is None)."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def dot_centres_en() -> np.ndarray:
    """[M, 2] map (E, N) of the dot centres in the dots raster."""
    idx = np.arange(DOT_EVERY_PX // 2, DOT_PX, DOT_EVERY_PX) + 0.5  # pixel centres
    cc, rr = np.meshgrid(idx, idx)
    return np.stack([DOT_ORIGIN[0] + cc.ravel() * DOT_RES_M,
                     DOT_ORIGIN[1] - rr.ravel() * DOT_RES_M], -1)


@pytest.fixture(scope="module")
def dots_tif(tmp_path_factory) -> Path:
    img = np.full((DOT_PX, DOT_PX), DOT_BACKGROUND, np.uint8)
    for c in np.arange(DOT_EVERY_PX // 2, DOT_PX, DOT_EVERY_PX):
        for r in np.arange(DOT_EVERY_PX // 2, DOT_PX, DOT_EVERY_PX):
            img[r - DOT_HALF_PX:r + DOT_HALF_PX + 1, c - DOT_HALF_PX:c + DOT_HALF_PX + 1] = 255
    path = tmp_path_factory.mktemp("dots") / "dots.tif"
    return write_raster(path, img[None], UTM33, from_origin(*DOT_ORIGIN, DOT_RES_M, DOT_RES_M))


def read_truth(out: Path) -> list[dict[str, float]]:
    with open(out / "truth.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def project(row: dict[str, float], cam: CameraModel, en: np.ndarray, h: np.ndarray) -> np.ndarray:
    """[M, 2] pixels of ground points (E, N, h AMSL) seen from the true pose in `row`
    (NaN behind the camera); independent of the renderer: OpenCV's projectPoints."""
    R_ned_cam = R_ned_body(*np.radians([row["roll_deg"], row["pitch_deg"], row["yaw_deg"]]))
    R_ned_cam = R_ned_cam @ R_BODY_CAM_NADIR
    p_ned = np.stack([en[:, 1] - row["north_m"], en[:, 0] - row["east_m"],
                      row["alt_amsl_m"] - h], -1)
    p_cam = p_ned @ R_ned_cam  # = (R_ned_cam.T @ p_ned.T).T
    px, _ = cv2.projectPoints(p_cam, np.zeros(3), np.zeros(3), cam.K, cam.dist_array)
    px = px.reshape(-1, 2)
    px[p_cam[:, 2] <= 0] = np.nan
    return px


def dot_offsets(out: Path, cam: CameraModel, ground_m=lambda en: np.zeros(len(en))) -> np.ndarray:
    """[K, 2] rendered dot centroid minus projected dot centre, pixels, over all frames."""
    en = dot_centres_en()
    offsets = []
    for i, row in enumerate(read_truth(out)):
        gray = cv2.imread(str(out / "frames" / f"{i:06d}.jpg"), cv2.IMREAD_GRAYSCALE)
        w = np.clip(gray.astype(np.float64) - DOT_BACKGROUND - 10, 0, None)
        for u, v in project(row, cam, en, ground_m(en)):
            if not (8 <= u < cam.width - 8 and 8 <= v < cam.height - 8):
                continue
            u0, v0 = int(round(u)), int(round(v))
            patch = w[v0 - 5:v0 + 6, u0 - 5:u0 + 6]
            assert patch.sum() > 200, f"frame {i}: no dot near projected ({u:.1f}, {v:.1f})"
            gy, gx = np.mgrid[v0 - 5:v0 + 6, u0 - 5:u0 + 6]
            offsets.append([(gx * patch).sum() / patch.sum() - u,
                            (gy * patch).sum() / patch.sum() - v])
    return np.asarray(offsets)


@pytest.fixture(scope="module")
def vienna_flight(ortho_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("vienna") / "flight"
    return simulate_flight(ortho_path, out, small_spec(), progress=False)


def test_output_folder_is_complete_and_consistent(vienna_flight, ortho_path):
    out = vienna_flight.out
    meta = json.loads((out / "flight.json").read_text())
    assert meta["format"] == "skyfix-flight/1" and meta["ortho"] == str(ortho_path.absolute())
    assert (meta["render_from"], meta["dem"]) == (None, None)
    assert CRS.from_wkt(meta["crs"]) == CRS.from_epsg(31256)
    assert {"camera", "frames", "telemetry", "truth"} <= meta.keys() and meta["agl_m"] == 120
    assert "camera" not in meta["spec"] and meta["spec"]["seed"] == 1
    assert CameraModel.load(out / meta["camera"]) == SMALL_CAM
    with open(out / "frames.csv", newline="") as f:
        frames = list(csv.DictReader(f))
    truth = read_truth(out)
    assert len(frames) == len(truth) == vienna_flight.frames == 10
    t = np.array([int(r["t_ns"]) for r in frames])
    assert np.array_equal(t, [int(r["t_ns"]) for r in truth])
    assert t[0] == 1767225600 * 10**9 and np.all(np.diff(t) == 10**9)
    for r in frames:
        img = cv2.imread(str(out / r["file"]))
        assert img.shape == (240, 320, 3)
        assert (img.max(axis=2) > 0).mean() > 0.97  # the footprint stays on the map
    en = np.array([[r["east_m"], r["north_m"]] for r in truth])
    b = vienna_flight.map_bounds_en
    assert np.all((en > b[:2]) & (en < b[2:]))
    v = np.array([[r["vn_mps"], r["ve_mps"], r["vd_mps"]] for r in truth])
    assert np.allclose(np.hypot(v[:, 0], v[:, 1]), 10.0) and np.all(v[:, 2] == 0)
    step = np.hypot(*np.diff(en, axis=0).T)
    assert np.all((step <= 10.0 + 1e-3) & (step > 9.0))  # constant speed, gentle turns
    assert all(r["agl_m"] == 120 and r["alt_amsl_m"] == 120 for r in truth)
    assert all(abs(r["roll_deg"]) <= 3 and abs(r["pitch_deg"]) <= 3 for r in truth)
    flight = RecordedFlight.open(out)  # the reader of this layout agrees
    assert len(flight.frame_files) == 10 and flight.truth is not None


def test_telemetry_log(vienna_flight):
    out = vienna_flight.out
    truth = read_truth(out)
    conn = mavutil.mavlink_connection(str(out / "telemetry.tlog"), dialect="ardupilotmega")
    msgs: dict[str, list] = {}
    last_t = 0.0
    t0 = 1767225600.0
    while (m := conn.recv_match()) is not None:
        assert m._timestamp >= last_t and m.get_srcSystem() == 1 and m.get_srcComponent() == 1
        last_t = m._timestamp
        if hasattr(m, "time_boot_ms"):
            assert abs(m.time_boot_ms - (m._timestamp - t0) * 1000) < 1.0
        msgs.setdefault(m.get_type(), []).append(m)
    rates = {"HEARTBEAT": 1, "SYSTEM_TIME": 1, "ATTITUDE": 25, "GLOBAL_POSITION_INT": 10,
             "GPS_RAW_INT": 5, "SCALED_IMU": 100}
    for kind, hz in rates.items():
        assert abs(len(msgs.get(kind, [])) - 10 * hz) <= 1, kind
    hb = msgs["HEARTBEAT"][0]
    assert (hb.type, hb.autopilot) == (2, 3) and hb.base_mode & 128
    assert all(abs(m.time_unix_usec - m._timestamp * 1e6) < 2 for m in msgs["SYSTEM_TIME"])
    by_t = {round(m._timestamp, 3): m for m in msgs["GLOBAL_POSITION_INT"]}
    att_t = np.array([m._timestamp for m in msgs["ATTITUDE"]])
    att = np.array([[m.roll, m.pitch, m.yaw] for m in msgs["ATTITUDE"]])
    for row in truth:
        t = row["t_ns"] * 1e-9
        g = by_t[round(t, 3)]
        assert abs(g.lat * 1e-7 - row["lat_deg"]) < 1e-7
        assert abs(g.lon * 1e-7 - row["lon_deg"]) < 1e-7
        assert abs(g.relative_alt - row["agl_m"] * 1000) <= 1 and abs(g.alt - 120000) <= 1
        assert abs(g.vx - row["vn_mps"] * 100) <= 1 and abs(g.vy - row["ve_mps"] * 100) <= 1
        assert abs((g.hdg / 100 - row["yaw_deg"] + 180) % 360 - 180) < 0.02
        i = int(np.argmin(abs(att_t - t)))
        d = np.degrees(att[i]) - [row["roll_deg"], row["pitch_deg"], row["yaw_deg"]]
        d[2] = (d[2] + 180) % 360 - 180
        assert np.all(abs(d) < [1.5, 1.5, 5.0]), d
    for m in msgs["GPS_RAW_INT"]:
        assert (m.fix_type, m.satellites_visible, m.eph) == (3, 14, 80)
        row = min(truth, key=lambda r: abs(r["t_ns"] * 1e-9 - m._timestamp))
        dn = (m.lat * 1e-7 - row["lat_deg"]) * 111_200
        assert abs(dn) < 10 + 12  # 1.5 m noise, up to 1 s (10 m) from the nearest frame
    imu = msgs["SCALED_IMU"]
    acc = np.array([[m.xacc, m.yacc, m.zacc] for m in imu], np.float64)
    assert np.all((np.linalg.norm(acc, axis=1) > 950) & (np.linalg.norm(acc, axis=1) < 1300))
    assert np.all(acc[:, 2] < -900)  # gravity along body +z down reads -1 g
    yaw_rate = np.array([m.yawspeed for m in msgs["ATTITUDE"]])
    zgyro = np.array([m.zgyro for m in imu])[::4] * 1e-3  # 100 Hz IMU, 25 Hz ATTITUDE
    assert np.allclose(zgyro, yaw_rate, atol=0.05)  # IMU noise 0.01 rad/s a sample + bias


def test_dots_land_where_the_true_pose_projects_them(dots_tif, tmp_path):
    spec = small_spec(duration_s=6.0, **CLEAN)
    simulate_flight(dots_tif, tmp_path / "f", spec, progress=False)
    off = dot_offsets(tmp_path / "f", SMALL_CAM)
    assert len(off) > 300
    err = np.hypot(*off.T)
    assert np.median(err) < 0.25 and err.max() < 1.0, (np.median(err), err.max())


def test_dem_ground_and_constant_altitude(dots_tif, tmp_path):
    E0, N0 = DOT_ORIGIN

    def plane(en):  # terrain: a tilted plane, 8 % east, 5 % south
        return 300.0 + 0.08 * (en[:, 0] - E0) - 0.05 * (en[:, 1] - N0)

    res, n = 5.0, 160
    centres = (np.arange(n) + 0.5) * res
    ee, nn = np.meshgrid(E0 - 200 + centres, N0 + 200 - centres)
    z = plane(np.stack([ee.ravel(), nn.ravel()], -1)).reshape(n, n).astype(np.float32)
    dem = write_raster(tmp_path / "dem.tif", z[None], UTM33,
                       from_origin(E0 - 200, N0 + 200, res, res))
    spec = small_spec(duration_s=6.0, **CLEAN)
    s = simulate_flight(dots_tif, tmp_path / "f", spec, dem=dem, progress=False)
    truth = read_truth(s.out)
    en = np.array([[r["east_m"], r["north_m"]] for r in truth])
    home = json.loads((s.out / "flight.json").read_text())["home"]
    assert home["ground_amsl_m"] == pytest.approx(plane(en[:1])[0], abs=1e-3)
    alt = np.array([r["alt_amsl_m"] for r in truth])
    assert np.allclose(alt, home["ground_amsl_m"] + 120.0, atol=1e-3)
    assert np.allclose([r["agl_m"] for r in truth], alt - plane(en), atol=0.01)
    assert np.ptp([r["agl_m"] for r in truth]) > 1.0  # AGL varies over the slope
    err = np.hypot(*dot_offsets(s.out, SMALL_CAM, plane).T)
    assert np.median(err) < 0.25 and err.max() < 1.0, (np.median(err), err.max())


def test_render_from_another_crs(dots_tif, tmp_path):
    with rasterio.open(dots_tif) as src:
        dst_crs = CRS.from_epsg(3857)
        tf, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height,
                                               *src.bounds)
        warped = np.zeros((1, h, w), np.uint8)
        reproject(src.read(), warped, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=tf, dst_crs=dst_crs, resampling=Resampling.bilinear)
    other = write_raster(tmp_path / "dots_3857.tif", warped, dst_crs, tf)
    s = simulate_flight(dots_tif, tmp_path / "f", small_spec(duration_s=3.0, **CLEAN),
                        render_from=other, progress=False)
    assert json.loads((s.out / "flight.json").read_text())["render_from"] == str(other)
    err = np.hypot(*dot_offsets(s.out, SMALL_CAM).T)
    assert np.median(err) < 0.35 and err.max() < 1.0, (np.median(err), err.max())


def test_coarse_frames_average_the_map_instead_of_aliasing(tmp_path):
    board = (np.indices((2000, 2000)).sum(0) % 2 * 255).astype(np.uint8)  # 1-px checkerboard
    tif = write_raster(tmp_path / "board.tif", board[None], UTM33,
                       from_origin(*DOT_ORIGIN, DOT_RES_M, DOT_RES_M))
    cam = CameraModel.from_fov(160, 120, 70.0)
    s = simulate_flight(tif, tmp_path / "f", small_spec(duration_s=2.0, agl_m=200.0,
                                                        camera=cam, **CLEAN), progress=False)
    img = cv2.imread(str(s.out / "frames" / "000000.jpg"), cv2.IMREAD_GRAYSCALE)
    assert abs(img.mean() - 127.5) < 5 and img.std() < 6  # gsd 1.75 m vs 0.25 m map


def test_footprint_larger_than_the_map_flies_about_the_centre(ortho_path, tmp_path):
    s = simulate_flight(ortho_path, tmp_path / "f", small_spec(duration_s=4.0, agl_m=3000.0),
                        progress=False)
    b = s.map_bounds_en
    centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    en = np.array([[r["east_m"], r["north_m"]] for r in read_truth(s.out)])
    assert np.all(np.hypot(*(en - centre).T) < 80)
    img = cv2.imread(str(s.out / "frames" / "000000.jpg"))
    lit = img.max(axis=2) > 0
    assert 0.005 < lit.mean() < 0.1 and not lit[0, 0]  # a small map in a black frame


def test_same_seed_same_flight(ortho_path, tmp_path):
    cam = CameraModel.from_fov(160, 120, 70.0)
    runs = [simulate_flight(ortho_path, tmp_path / name, small_spec(duration_s=2.0, camera=cam,
                                                                      seed=seed), progress=False)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    a, b, c = (r.out for r in runs)
    for name in ("truth.csv", "telemetry.tlog", "frames/000001.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "truth.csv").read_bytes() != (c / "truth.csv").read_bytes()


def test_rays_above_the_horizon_miss_the_ground():
    xy = SMALL_CAM.pixel_rays().astype(np.float32)
    R = R_ned_body(0.0, np.radians(75.0), 0.0) @ R_BODY_CAM_NADIR  # nose up: camera looks ahead
    de, dn, hit = ground_hits(xy, R, np.array([0.0, 0.0]), 100.0, Terrain.flat())
    assert 0.2 < hit.mean() < 0.8 and not hit[0].any() and hit[-1].all()  # sky at the top
    ray = np.concatenate([xy, np.ones((*xy.shape[:2], 1))], -1) @ R.T  # [H, W, 3] NED
    expected = 100.0 * np.hypot(ray[..., 0], ray[..., 1]) / ray[..., 2]
    assert np.allclose(np.hypot(de, dn)[hit], expected[hit], rtol=1e-4)
    assert np.allclose(np.arctan2(de, dn)[hit], np.arctan2(ray[..., 1], ray[..., 0])[hit],
                       atol=1e-4)


def test_transparent_render_source_pixels_are_black(dots_tif, tmp_path):
    with rasterio.open(dots_tif) as src:
        grey, profile = src.read(1), src.profile
    frames = []
    for alpha in (0, 255):
        rgba = np.stack([grey, grey, grey, np.full_like(grey, alpha)])
        path = tmp_path / f"rgba{alpha}.tif"
        with rasterio.open(path, "w", **{**profile, "count": 4, "photometric": "RGB",
                                         "alpha": "YES"}) as dst:
            dst.write(rgba)
        with rasterio.open(path) as check:
            assert check.colorinterp[3].name == "alpha"
        s = simulate_flight(dots_tif, tmp_path / f"f{alpha}",
                            small_spec(duration_s=1.0, **CLEAN), render_from=path, progress=False)
        frames.append(cv2.imread(str(s.out / "frames" / "000000.jpg"), cv2.IMREAD_GRAYSCALE))
    assert frames[0].max() < 3 and np.median(frames[1]) == pytest.approx(DOT_BACKGROUND, abs=3)


def test_trajectory_is_smooth_and_matches_geo_rotations():
    rng = np.random.default_rng(3)
    plan = plan_lawnmower((0.0, 0.0, 400.0, 300.0), 60.0, 150.0, 10.0, 2000.0, rng)
    traj = Trajectory(plan, Wobble.random(3.0, rng), 10.0, 120.0)
    st = traj.sample(np.arange(0.0, 190.0, 0.02))
    assert np.all((st.en_m > [60 - 1e-6, 60 - 1e-6]) & (st.en_m < [340 + 1e-6, 240 + 1e-6]))
    dv = np.abs(np.diff(st.vel_ned_mps, axis=0))
    assert dv.max() < 10.0 * np.radians(20.0) * 0.02 * 1.01  # yaw rate <= 20 deg/s
    assert np.abs(st.rpy_rad[:, :2]).max() <= np.radians(3.0) + 1e-12
    assert np.allclose(np.diff(st.en_m, axis=0), st.vel_ned_mps[:-1, 1::-1] * 0.02, atol=0.05)
    for k in (0, 500, 4000):
        assert np.allclose(st.R_ned_body()[k], R_ned_body(*st.rpy_rad[k]))
    still = Trajectory(plan, Wobble.random(0.0, rng), 10.0, 120.0).sample(np.array([1.0]))
    assert np.allclose(still.specific_force_body_mps2()[0], [0, 0, -9.80665])


def test_bad_input_raises_one_line_errors(ortho_path, tmp_path):
    def fails(match: str, **kw):
        args = dict(ortho=ortho_path, out=tmp_path / "o", spec=small_spec(duration_s=1.0),
                    progress=False) | kw
        with pytest.raises(SkyfixError, match=match) as exc:
            simulate_flight(**args)
        assert "\n" not in str(exc.value)

    fails("not found", ortho=tmp_path / "nope.tif")
    plain = write_raster(tmp_path / "plain.tif", np.zeros((3, 64, 64), np.uint8), None, None)
    fails("georeferenc", ortho=plain)
    geo = write_raster(tmp_path / "geo.tif", np.zeros((1, 64, 64), np.uint8), CRS.from_epsg(4326),
                       from_origin(16.3, 48.2, 1e-4, 1e-4))
    fails("projected metric CRS", ortho=geo)
    fails("out of range", spec=small_spec(agl_m=30.0))
    fails("out of range", spec=small_spec(agl_m=5000.0))
    far = write_raster(tmp_path / "far.tif", np.zeros((1, 64, 64), np.uint8), CRS.from_epsg(31256),
                       from_origin(50_000, 300_000, 1.0, 1.0))
    fails("does not overlap", render_from=far)
    fails("not found", render_from=tmp_path / "missing.tif")
    (tmp_path / "text.tif").write_text("not an image")
    fails("not a readable raster", ortho=tmp_path / "text.tif")
    fails("does not overlap", dem=far)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    fails("not empty", out=tmp_path / "full")
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_telemetry_is_about_true_north_off_the_central_meridian(dots_tif, tmp_path):
    """The dots map is in UTM 33N 1.3 deg east of its central meridian: grid north lies
    0.99 deg east of true north. The truth is in the grid the frames are rendered in; an
    autopilot reports heading and velocity about true north."""
    from skyfix.runtime.core.geo import grid_convergence_deg

    spec = small_spec(duration_s=6.0, attitude_noise_deg=0.0, yaw_noise_deg=0.0, **CLEAN)
    simulate_flight(dots_tif, tmp_path / "f", spec, progress=False)
    with rasterio.open(dots_tif) as ds:
        b = ds.bounds
    gamma = grid_convergence_deg(UTM33, 0.5 * (b.left + b.right), 0.5 * (b.bottom + b.top))
    assert gamma == pytest.approx(0.99, abs=0.03)
    truth = read_truth(tmp_path / "f")
    conn = mavutil.mavlink_connection(str(tmp_path / "f" / "telemetry.tlog"))
    gpi = {}
    while (m := conn.recv_match(type="GLOBAL_POSITION_INT")) is not None:
        gpi[round(m._timestamp, 3)] = m
    c, s = np.cos(np.radians(gamma)), np.sin(np.radians(gamma))
    for row in truth:
        g = gpi[round(row["t_ns"] * 1e-9, 3)]
        assert (g.hdg / 100 - row["yaw_deg"] - gamma + 180) % 360 - 180 == pytest.approx(
            0.0, abs=0.01)
        vn, ve = row["vn_mps"], row["ve_mps"]
        assert (g.vx, g.vy) == pytest.approx((100 * (c * vn - s * ve), 100 * (s * vn + c * ve)),
                                             abs=1.0)
