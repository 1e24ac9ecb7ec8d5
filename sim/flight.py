"""Synthetic flights: camera frames rendered from an orthophoto along a lawn-mower path,
with the MAVLink telemetry an ArduPilot copter would log and the true pose per frame.

Output (the recorded-flight layout that skyfix.runtime.io.sources.RecordedFlight reads):
flight.json, camera.yaml, frames/NNNNNN.jpg + frames.csv, telemetry.tlog, truth.csv.

Frames: the trajectory is planned, rendered and written to truth.csv in the map grid
(east = easting, north = northing, metres = metres; yaw and velocities about grid north).
The telemetry is about true north, as an autopilot reports it: grid north lies the grid
convergence (runtime/core/geo.grid_convergence_deg, at the map's centre) east of true
north, about a degree on a UTM map away from its central meridian. The projection's scale
factor (< 0.1 % over a city-sized map) and the Earth's curvature are ignored.
"""

from __future__ import annotations

import csv
import json
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_ned_body, grid_convergence_deg, mount_rotation
from skyfix.sim.imu import ImuSpec
from skyfix.sim.render import (
    MapSource,
    Photometric,
    Terrain,
    check_overlap,
    ground_hits,
    ground_offsets,
    open_raster,
    to_lla,
)
from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower, write_tlog

FLIGHT_FORMAT = "skyfix-flight/1"
MAX_FRAMES = 1_000_000  # frames a simulated flight may render
AGL_RANGE_M = (60.0, 3000.0)


@dataclass(frozen=True)
class FlightSpec:
    """What to fly and how the sensors err. Angles in degrees, lengths in metres."""

    agl_m: float = 120.0  # height above the ground at home, 60..3000 m
    duration_s: float = 60.0
    fps: float = 2.0  # camera frame rate
    speed_mps: float = 10.0
    seed: int = 1
    camera: CameraModel = CameraModel.from_fov(640, 480, 70.0, dist=(-0.08, 0.02, 0.0, 0.0, 0.0))
    wobble_deg: float = 3.0  # peak true roll/pitch excursion of the airframe
    attitude_noise_deg: float = 0.3  # 1-sigma error of the reported roll/pitch
    yaw_noise_deg: float = 1.0  # 1-sigma error of the reported yaw
    photometric: bool = True  # per-flight gain/offset/gamma + small per-frame jitter
    blur_px: float = 0.0  # gaussian blur sigma, pixels
    noise_sigma: float = 2.0  # additive pixel noise, uint8 levels
    gnss_sigma_m: float = 1.5  # horizontal 1-sigma error of GPS_RAW_INT vs truth
    start_unix_s: float = 1767225600.0  # 2026-01-01T00:00:00Z
    # The true camera mount differs from the nominal nadir mount by this rotation (roll,
    # pitch, yaw about body axes, see skyfix.runtime.core.geo.mount_rotation).
    mount_error_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    camera_time_offset_s: float = 0.0  # frame time stamps minus true capture times
    imu_hz: float = 100.0  # SCALED_IMU rate (noise, bias and drift: sim/imu.py ImuSpec)
    alt_bias_m: float = 0.0  # the autopilot's reported altitude minus the true one


@dataclass(frozen=True)
class FlightSummary:
    """`map_bounds_en` / `track_bounds_en`: (min E, min N, max E, max N) map metres."""

    out: Path
    frames: int
    duration_s: float
    map_bounds_en: tuple[float, float, float, float]
    track_bounds_en: tuple[float, float, float, float]


def simulate_flight(ortho: Path, out: Path, spec: FlightSpec, render_from: Path | None = None,
                    dem: Path | None = None, progress: bool = True) -> FlightSummary:
    """Fly `spec` over `ortho` (its CRS is the flight's map CRS), render frames from
    `render_from` (default: the ortho itself; any CRS, warped on the fly), over the ground
    heights of `dem` (default: flat ground at 0 m AMSL), and write the flight to `out`."""
    ortho, out = Path(ortho).absolute(), Path(out).absolute()
    _check_spec(spec)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SkyfixError(f"output folder {out} exists and is not empty")
    with ExitStack() as stack:
        ods = stack.enter_context(open_raster(ortho, "ortho"))
        if not ods.crs.is_projected or abs(ods.crs.linear_units_factor[1] - 1.0) > 1e-9:
            raise SkyfixError(f"ortho {ortho} is in {ods.crs.to_string()}: the map must be in a "
                              f"projected metric CRS (e.g. UTM), not geographic coordinates")
        crs, bounds = ods.crs, tuple(float(v) for v in ods.bounds)
        src_ds = ods
        if render_from is not None:
            render_from = Path(render_from).absolute()
            src_ds = stack.enter_context(open_raster(render_from, "render-from raster"))
            check_overlap(src_ds, crs, bounds, f"render-from raster {render_from}")
        source = MapSource(src_ds, crs, stack)
        terrain = Terrain.flat()
        if dem is not None:
            dem = Path(dem).absolute()
            with open_raster(dem, "DEM") as dds:
                check_overlap(dds, crs, bounds, f"DEM {dem}")
                terrain = Terrain.read(dds, crs, bounds)

        cam = spec.camera
        rng = np.random.default_rng(spec.seed)
        corners = ground_offsets(cam, spec.agl_m)
        plan = plan_lawnmower(bounds, float(np.hypot(*corners.T).max()),
                              float(np.ptp(corners[:, 1])), spec.speed_mps,
                              spec.speed_mps * spec.duration_s + 1.0, rng)
        e0, n0 = plan.sample(np.zeros(1))[:2]
        grid = np.radians(grid_convergence_deg(crs, *_centre(bounds)))
        home_ground = float(terrain.height(e0, n0)[0])
        traj = Trajectory(plan, Wobble.random(spec.wobble_deg, rng), spec.speed_mps,
                          home_ground + spec.agl_m)

        n_frames = max(1, int(np.floor(spec.duration_s * spec.fps + 1e-9)))
        t_us = np.round(np.arange(n_frames) * 1e6 / spec.fps).astype(np.int64)
        start_ns = int(round(spec.start_unix_s * 1e6)) * 1000
        truth = traj.sample(t_us * 1e-6)
        agl = truth.alt_amsl_m - terrain.height(truth.en_m[:, 0], truth.en_m[:, 1])

        out.mkdir(parents=True, exist_ok=True)
        (out / "frames").mkdir()
        cam.save(out / "camera.yaml")
        xy = cam.pixel_rays().astype(np.float32)  # [H, W, 2] ideal normalised (x/z, y/z)
        looks = Photometric(spec)
        R_body_cam = mount_rotation(*spec.mount_error_deg)
        files = []
        for i in tqdm(range(n_frames), desc="sim flight", unit="frame", disable=not progress):
            R_ned_cam = R_ned_body(*truth.rpy_rad[i]) @ R_body_cam
            de, dn, hit = ground_hits(xy, R_ned_cam, truth.en_m[i], truth.alt_amsl_m[i],
                                       terrain)
            image, valid = source.render(truth.en_m[i], de, dn, hit)
            image = looks.apply(image, valid, i)
            files.append(f"frames/{i:06d}.jpg")
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise SkyfixError(f"frame {files[-1]}: JPEG encoding failed")
            (out / files[-1]).write_bytes(jpeg.tobytes())  # a failed write raises, unlike imwrite

    frame_ns = start_ns + t_us * 1000
    with open(out / "frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "t_ns", "file"])
        stamp_ns = frame_ns + int(round(spec.camera_time_offset_s * 1e9))
        w.writerows([i, int(t), name] for i, (t, name) in enumerate(zip(stamp_ns, files,
                                                                          strict=True)))
    lat, lon = to_lla(crs, truth.en_m)
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_ns", "lat_deg", "lon_deg", "east_m", "north_m", "alt_amsl_m", "agl_m",
                    "roll_deg", "pitch_deg", "yaw_deg", "vn_mps", "ve_mps", "vd_mps"])
        rpy = np.degrees(truth.rpy_rad)
        for i in range(n_frames):
            w.writerow([int(frame_ns[i]), f"{lat[i]:.9f}", f"{lon[i]:.9f}",
                        *(f"{v:.4f}" for v in (*truth.en_m[i], truth.alt_amsl_m[i], agl[i])),
                        *(f"{v:.6f}" for v in (*rpy[i], *truth.vel_ned_mps[i]))])
    home_lat, home_lon = to_lla(crs, np.array([[e0[0], n0[0]]]))
    write_tlog(out / "telemetry.tlog", traj, start_ns, spec.duration_s,
               lambda en: to_lla(crs, en), home_ground, spec.attitude_noise_deg,
               spec.yaw_noise_deg, spec.gnss_sigma_m, np.random.default_rng([spec.seed, 3]),
               ImuSpec(rate_hz=spec.imu_hz), spec.alt_bias_m, grid)
    meta = {
        "format": FLIGHT_FORMAT, "crs": crs.to_wkt(), "ortho": str(ortho),
        "render_from": None if render_from is None else str(render_from),
        "dem": None if dem is None else str(dem),
        "camera": "camera.yaml", "frames": "frames.csv", "telemetry": "telemetry.tlog",
        "truth": "truth.csv", "agl_m": spec.agl_m,
        # Home is where the autopilot armed: on the ground below the start of the track;
        # relative_alt in GLOBAL_POSITION_INT is measured from alt_amsl_m.
        "home": {"lat_deg": float(home_lat[0]), "lon_deg": float(home_lon[0]),
                 "alt_amsl_m": home_ground, "ground_amsl_m": home_ground},
        "spec": {f.name: getattr(spec, f.name) for f in fields(spec) if f.name != "camera"},
    }
    (out / "flight.json").write_text(json.dumps(meta, indent=2) + "\n")
    en = truth.en_m
    track = (float(en[:, 0].min()), float(en[:, 1].min()), float(en[:, 0].max()),
             float(en[:, 1].max()))
    return FlightSummary(out, n_frames, n_frames / spec.fps, bounds, track)


class PoseRenderer:
    """Renders one camera frame at a time from `ortho` over flat ground at 0 m AMSL, for
    a live simulator: `render(en_m, alt_amsl_m, rpy_rad, index)` -> [H, W, 3] uint8 BGR,
    with the flight's photometric model of `spec` (camera, noise, appearance change); the
    attitude `rpy_rad` is about true north, as a simulator gives it, turned into the map
    grid by `convergence_rad`. Use as a context manager (it keeps the raster open)."""

    def __init__(self, ortho: Path, spec: FlightSpec = FlightSpec()) -> None:
        self.spec = spec
        self._stack = ExitStack()
        ds = self._stack.enter_context(open_raster(Path(ortho), "ortho"))
        if not ds.crs.is_projected:
            self._stack.close()
            raise SkyfixError(f"ortho {ortho} is not in a projected metric CRS (e.g. UTM)")
        self.crs = ds.crs
        self.bounds_en = tuple(float(v) for v in ds.bounds)
        self.convergence_rad = np.radians(grid_convergence_deg(ds.crs, *_centre(self.bounds_en)))
        self._source = MapSource(ds, ds.crs, self._stack)
        self._xy = spec.camera.pixel_rays().astype(np.float32)
        self._looks = Photometric(spec)
        self._R_body_cam = mount_rotation(*spec.mount_error_deg)

    def render(self, en_m: np.ndarray, alt_amsl_m: float, rpy_rad: np.ndarray,
               index: int = 0) -> np.ndarray:
        roll, pitch, yaw = rpy_rad
        R_grid_cam = R_ned_body(roll, pitch, yaw - self.convergence_rad) @ self._R_body_cam
        en = np.asarray(en_m, np.float64)
        de, dn, hit = ground_hits(self._xy, R_grid_cam, en, float(alt_amsl_m), Terrain.flat())
        image, valid = self._source.render(en, de, dn, hit)
        return self._looks.apply(image, valid, index)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PoseRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _centre(bounds: tuple[float, ...]) -> tuple[float, float]:
    """(easting, northing) centre of (west, south, east, north) bounds."""
    return 0.5 * (bounds[0] + bounds[2]), 0.5 * (bounds[1] + bounds[3])


def _check_spec(spec: FlightSpec) -> None:
    lo, hi = AGL_RANGE_M
    if not lo <= spec.agl_m <= hi:
        raise SkyfixError(
            f"height above ground {spec.agl_m:g} m is out of range ({lo:g}..{hi:g} m)")
    for name in ("duration_s", "fps", "speed_mps", "imu_hz"):
        if not getattr(spec, name) > 0:
            raise SkyfixError(f"flight {name} must be positive, got {getattr(spec, name)}")
    if spec.duration_s * spec.fps > MAX_FRAMES or spec.duration_s > 86_400:
        raise SkyfixError(f"a {spec.duration_s:g} s flight at {spec.fps:g} fps is more than "
                          f"{MAX_FRAMES:,} frames or a day: shorten it")
    if min(spec.blur_px, spec.noise_sigma, spec.gnss_sigma_m, spec.attitude_noise_deg,
           spec.yaw_noise_deg, spec.wobble_deg) < 0:
        raise SkyfixError("flight noise, blur and wobble settings must not be negative")
    if len(spec.mount_error_deg) != 3 or max(abs(a) for a in spec.mount_error_deg) > 30:
        raise SkyfixError("mount error must be 3 angles (roll, pitch, yaw) within 30 degrees")
    if abs(spec.camera_time_offset_s) > 5:
        raise SkyfixError("camera time offset must be within 5 s")
