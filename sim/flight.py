"""Synthetic flights: camera frames rendered from an orthophoto along a lawn-mower path,
with the MAVLink telemetry an ArduPilot copter would log and the true pose per frame.

Output (the recorded-flight layout that skyfix.runtime.io.sources.RecordedFlight reads):
flight.json, camera.yaml, frames/NNNNNN.jpg + frames.csv, telemetry.tlog, truth.csv.

Approximation, stated once: rendering and truth treat the map grid (easting, northing)
as the local NED frame (east = easting, north = northing, metres = metres). Grid
convergence and the projection's scale factor (a fraction of a degree and < 0.1 % over
a city-sized map in a local transverse Mercator) and the Earth's curvature are ignored;
the localiser is scored in the same map grid, so the frames and the truth agree exactly.
"""

from __future__ import annotations

import csv
import json
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as crs_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from tqdm import tqdm

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84, R_ned_body, mount_rotation
from skyfix.sim.imu import ImuSpec
from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower, write_tlog

FLIGHT_FORMAT = "skyfix-flight/1"
MAX_FRAMES = 1_000_000  # frames a simulated flight may render
AGL_RANGE_M = (60.0, 3000.0)
_MIN_RAY_DOWN = 0.02  # rays less than ~1.1 deg below the horizon count as missing the map
_MAX_WINDOW_PX = 4096  # per side of one source read; coarser reads beyond that


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
        ods = stack.enter_context(_open_raster(ortho, "ortho"))
        if not ods.crs.is_projected or abs(ods.crs.linear_units_factor[1] - 1.0) > 1e-9:
            raise SkyfixError(f"ortho {ortho} is in {ods.crs.to_string()}: the map must be in a "
                              f"projected metric CRS (e.g. UTM), not geographic coordinates")
        crs, bounds = ods.crs, tuple(float(v) for v in ods.bounds)
        src_ds = ods
        if render_from is not None:
            render_from = Path(render_from).absolute()
            src_ds = stack.enter_context(_open_raster(render_from, "render-from raster"))
            _check_overlap(src_ds, crs, bounds, f"render-from raster {render_from}")
        source = _Source(src_ds, crs, stack)
        terrain = _Terrain.flat()
        if dem is not None:
            dem = Path(dem).absolute()
            with _open_raster(dem, "DEM") as dds:
                _check_overlap(dds, crs, bounds, f"DEM {dem}")
                terrain = _Terrain.read(dds, crs, bounds)

        cam = spec.camera
        rng = np.random.default_rng(spec.seed)
        corners = _ground_offsets(cam, spec.agl_m)
        plan = plan_lawnmower(bounds, float(np.hypot(*corners.T).max()),
                              float(np.ptp(corners[:, 1])), spec.speed_mps,
                              spec.speed_mps * spec.duration_s + 1.0, rng)
        e0, n0 = plan.sample(np.zeros(1))[:2]
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
        looks = _Photometric(spec)
        R_body_cam = mount_rotation(*spec.mount_error_deg)
        files = []
        for i in tqdm(range(n_frames), desc="sim flight", unit="frame", disable=not progress):
            R_ned_cam = R_ned_body(*truth.rpy_rad[i]) @ R_body_cam
            de, dn, hit = _ground_hits(xy, R_ned_cam, truth.en_m[i], truth.alt_amsl_m[i],
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
    lat, lon = _to_lla(crs, truth.en_m)
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_ns", "lat_deg", "lon_deg", "east_m", "north_m", "alt_amsl_m", "agl_m",
                    "roll_deg", "pitch_deg", "yaw_deg", "vn_mps", "ve_mps", "vd_mps"])
        rpy = np.degrees(truth.rpy_rad)
        for i in range(n_frames):
            w.writerow([int(frame_ns[i]), f"{lat[i]:.9f}", f"{lon[i]:.9f}",
                        *(f"{v:.4f}" for v in (*truth.en_m[i], truth.alt_amsl_m[i], agl[i])),
                        *(f"{v:.6f}" for v in (*rpy[i], *truth.vel_ned_mps[i]))])
    home_lat, home_lon = _to_lla(crs, np.array([[e0[0], n0[0]]]))
    write_tlog(out / "telemetry.tlog", traj, start_ns, spec.duration_s,
               lambda en: _to_lla(crs, en), home_ground, spec.attitude_noise_deg,
               spec.yaw_noise_deg, spec.gnss_sigma_m, np.random.default_rng([spec.seed, 3]),
               ImuSpec(rate_hz=spec.imu_hz))
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
    with the flight's photometric model of `spec` (camera, noise, appearance change).
    Use as a context manager (it keeps the raster open)."""

    def __init__(self, ortho: Path, spec: FlightSpec = FlightSpec()) -> None:
        self.spec = spec
        self._stack = ExitStack()
        ds = self._stack.enter_context(_open_raster(Path(ortho), "ortho"))
        if not ds.crs.is_projected:
            self._stack.close()
            raise SkyfixError(f"ortho {ortho} is not in a projected metric CRS (e.g. UTM)")
        self.crs = ds.crs
        self.bounds_en = tuple(float(v) for v in ds.bounds)
        self._source = _Source(ds, ds.crs, self._stack)
        self._xy = spec.camera.pixel_rays().astype(np.float32)
        self._looks = _Photometric(spec)
        self._R_body_cam = mount_rotation(*spec.mount_error_deg)

    def render(self, en_m: np.ndarray, alt_amsl_m: float, rpy_rad: np.ndarray,
               index: int = 0) -> np.ndarray:
        R_ned_cam = R_ned_body(*rpy_rad) @ self._R_body_cam
        en = np.asarray(en_m, np.float64)
        de, dn, hit = _ground_hits(self._xy, R_ned_cam, en, float(alt_amsl_m), _Terrain.flat())
        image, valid = self._source.render(en, de, dn, hit)
        return self._looks.apply(image, valid, index)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PoseRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _open_raster(path: Path, what: str) -> rasterio.DatasetReader:
    if not path.is_file():
        raise SkyfixError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise SkyfixError(f"{what} {path} is not a readable raster ({exc})") from None
    if ds.crs is None or ds.transform.is_identity:
        ds.close()
        raise SkyfixError(f"{what} {path} has no georeferencing (no CRS or geotransform)")
    return ds


def _check_overlap(ds: rasterio.DatasetReader, crs, bounds: tuple, what: str) -> None:
    b = transform_bounds(ds.crs, crs, *ds.bounds) if ds.crs != crs else tuple(ds.bounds)
    if b[0] >= bounds[2] or b[2] <= bounds[0] or b[1] >= bounds[3] or b[3] <= bounds[1]:
        raise SkyfixError(f"{what} does not overlap the ortho")


def _to_lla(crs, en: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N] lat_deg, [N] lon_deg) of [N, 2] map points."""
    lon, lat = crs_transform(crs, WGS84, en[:, 0].tolist(), en[:, 1].tolist())
    return np.asarray(lat), np.asarray(lon)


def _ground_offsets(cam: CameraModel, agl_m: float) -> np.ndarray:
    """[4, 2] (along-track, cross-track) metres of the image corners, level camera."""
    px = np.array([[0, 0], [cam.width - 1, 0], [cam.width - 1, cam.height - 1],
                   [0, cam.height - 1]], np.float64).reshape(-1, 1, 2)
    xy = cv2.undistortPoints(px, cam.K, cam.dist_array).reshape(-1, 2)
    return np.stack([-xy[:, 1], xy[:, 0]], -1) * agl_m  # image up = forward, right = right


def _ground_hits(xy: np.ndarray, R_ned_cam: np.ndarray, en_m: np.ndarray, alt_amsl_m: float,
                 terrain: _Terrain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersect the rays of [H, W, 2] ideal normalised image points, camera at map
    (E, N) `en_m` and `alt_amsl_m` with attitude `R_ned_cam` [3, 3], with the ground.

    Returns ([H, W] float32 east, north offsets in metres from the camera, [H, W] bool hit).
    Over a DEM the range t along a ray is found by fixed-point iteration
    t <- (alt - h(E + t * ray_east, N + t * ray_north)) / ray_down.
    """
    R = R_ned_cam.astype(np.float32)
    x, y = xy[..., 0], xy[..., 1]
    ray_n = R[0, 0] * x + R[0, 1] * y + R[0, 2]  # ray = R_ned_cam @ (x, y, 1)
    ray_e = R[1, 0] * x + R[1, 1] * y + R[1, 2]
    ray_d = R[2, 0] * x + R[2, 1] * y + R[2, 2]
    hit = ray_d > _MIN_RAY_DOWN  # rays above (or along) the horizon never reach the ground
    inv_down = np.divide(1.0, ray_d, out=np.zeros_like(ray_d), where=hit)
    h0 = terrain.height(np.array([en_m[0]]), np.array([en_m[1]]))[0]
    t = np.float32(alt_amsl_m - h0) * inv_down
    for k in range(0 if terrain.grid is None else 4):  # the last step exact, others fast
        h = terrain.height(ray_e * t, ray_n * t, origin_en=en_m, exact=k == 3)
        t = (np.float32(alt_amsl_m) - h) * inv_down
    hit &= t > 0
    return ray_e * t, ray_n * t, hit


@dataclass(frozen=True)
class _Terrain:
    """Ground heights AMSL: flat 0 m, or a DEM grid `grid` [H, W] float32 on `transform`."""

    grid: np.ndarray | None
    transform: rasterio.Affine | None

    @classmethod
    def flat(cls) -> _Terrain:
        return cls(None, None)

    @classmethod
    def read(cls, ds: rasterio.DatasetReader, crs, bounds: tuple) -> _Terrain:
        with ExitStack() as stack:
            view = ds if ds.crs == crs else stack.enter_context(
                WarpedVRT(ds, crs=crs, resampling=Resampling.bilinear))
            pad = 0.25 * max(bounds[2] - bounds[0], bounds[3] - bounds[1])
            win = view.window(bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad)
            win = win.intersection(Window(0, 0, view.width, view.height))
            shape = (min(int(np.ceil(win.height)), _MAX_WINDOW_PX),
                     min(int(np.ceil(win.width)), _MAX_WINDOW_PX))
            z = view.read(1, window=win, out_shape=shape, masked=True,
                          resampling=Resampling.bilinear).astype(np.float32)
            tf = view.window_transform(win) @ rasterio.Affine.scale(win.width / shape[1],
                                                                    win.height / shape[0])
        if z.mask.all():
            raise SkyfixError("the DEM has no valid heights over the ortho")
        return cls(np.ascontiguousarray(z.filled(float(z.mean()))), tf)

    def height(self, east_m: np.ndarray, north_m: np.ndarray,
               origin_en: np.ndarray = (0.0, 0.0), exact: bool = True) -> np.ndarray:
        """Heights m AMSL (float32, shape of `east_m`) at map points `origin_en` + (east_m,
        north_m); bilinear, edge values beyond the grid. Pass float32 offsets from a nearby
        origin for speed. `exact=False` uses cv2.remap (positions quantised to 1/32 cell)."""
        if self.grid is None:
            return np.zeros(np.shape(east_m), np.float32)
        inv, g = ~self.transform, self.grid
        c0 = inv.a * origin_en[0] + inv.b * origin_en[1] + inv.c - 0.5  # cell-centre coords
        r0 = inv.d * origin_en[0] + inv.e * origin_en[1] + inv.f - 0.5
        c = inv.a * east_m + inv.b * north_m + c0
        r = inv.d * east_m + inv.e * north_m + r0
        if not exact and np.ndim(c) == 2 and max(np.shape(c)) < 32767:
            return cv2.remap(g, c.astype(np.float32), r.astype(np.float32), cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        c = np.clip(c, 0, g.shape[1] - 1.001)
        r = np.clip(r, 0, g.shape[0] - 1.001)
        c_i, r_i = c.astype(np.int32), r.astype(np.int32)
        fc, fr = (c - c_i).astype(np.float32), (r - r_i).astype(np.float32)
        flat, i = g.ravel(), r_i * g.shape[1] + c_i
        top = flat[i] + (flat[i + 1] - flat[i]) * fc
        bottom = flat[i + g.shape[1]] + (flat[i + g.shape[1] + 1] - flat[i + g.shape[1]]) * fc
        return top + (bottom - top) * fr


class _Source:
    """The raster the frames are rendered from, seen in the map CRS, read by windows."""

    def __init__(self, ds: rasterio.DatasetReader, crs, stack: ExitStack) -> None:
        self.view = ds if ds.crs == crs else stack.enter_context(
            WarpedVRT(ds, crs=crs, resampling=Resampling.bilinear))
        self.inv = ~self.view.transform
        self.gsd_m = float(np.sqrt(abs(self.view.transform.determinant)))
        interp = list(ds.colorinterp)
        alpha = [i + 1 for i, c in enumerate(interp) if c.name == "alpha"]
        colour = [i + 1 for i in range(ds.count) if i + 1 not in alpha]
        self.bands = colour[:3] if len(colour) >= 3 else colour[:1]
        self.masked = any(MaskFlags.all_valid not in f for f in ds.mask_flag_enums)

    def render(self, en_m: np.ndarray, de: np.ndarray, dn: np.ndarray, hit: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Sample the source at map points `en_m` + ([H, W] de, [H, W] dn) where `hit`;
        returns ([H, W, 3] uint8 BGR, [H, W] bool valid)."""
        inv, W, H = self.inv, self.view.width, self.view.height
        cc = inv.a * en_m[0] + inv.b * en_m[1] + inv.c  # source pixel (corner convention)
        rc = inv.d * en_m[0] + inv.e * en_m[1] + inv.f  # of the point below the camera
        c = inv.a * de + inv.b * dn  # offsets from there, float32
        r = inv.d * de + inv.e * dn
        inside = hit & (c >= -cc) & (c <= W - cc) & (r >= -rc) & (r <= H - rc)
        if not inside.any():
            return np.zeros((*de.shape, 3), np.uint8), inside
        # Finest ground sampling distance of the frame -> decimation of the source read, so
        # a frame far coarser than the map averages source pixels instead of aliasing.
        step = np.hypot(np.diff(de[::4, ::4], axis=1), np.diff(dn[::4, ::4], axis=1)) / 4
        ok = inside[::4, ::4][:, 1:] & inside[::4, ::4][:, :-1]
        gsd = float(step[ok].min()) if ok.any() else self.gsd_m
        ratio = gsd / self.gsd_m
        ci, ri = c[inside], r[inside]
        c0 = max(int(np.floor(cc + ci.min())) - 2, 0)
        c1 = min(int(np.ceil(cc + ci.max())) + 2, W)
        r0 = max(int(np.floor(rc + ri.min())) - 2, 0)
        r1 = min(int(np.ceil(rc + ri.max())) + 2, H)
        dec = max(1.0, np.floor(ratio), (c1 - c0) / _MAX_WINDOW_PX, (r1 - r0) / _MAX_WINDOW_PX)
        shape = (max(1, int(np.ceil((r1 - r0) / dec))), max(1, int(np.ceil((c1 - c0) / dec))))
        win = Window(c0, r0, c1 - c0, r1 - r0)
        rs = Resampling.average if dec > 1 else Resampling.nearest
        img = self.view.read(self.bands, window=win, out_shape=(len(self.bands), *shape),
                             resampling=rs)
        img = np.ascontiguousarray(np.moveaxis(img, 0, -1)[..., ::-1])  # RGB -> BGR
        if img.dtype != np.uint8:
            img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX,
                                cv2.CV_8U)
        if img.shape[2] == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        sx, sy = (c1 - c0) / shape[1], (r1 - r0) / shape[0]
        left = gsd / (self.gsd_m * min(sx, sy))  # coarser still after decimation: pre-blur
        if left > 1.2:
            img = cv2.GaussianBlur(img, (0, 0), 0.5 * np.sqrt(left * left - 1))
        mx = c * np.float32(1 / sx) + np.float32((cc - c0) / sx - 0.5)
        my = r * np.float32(1 / sy) + np.float32((rc - r0) / sy - 0.5)
        mx[~inside] = -1e4
        out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
        if self.masked:
            m = self.view.read_masks(self.bands[0], window=win, out_shape=shape)
            inside &= cv2.remap(m, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0) > 0
        return out, inside


class _Photometric:
    """Appearance change: a per-flight gain/offset/gamma/colour cast, per-frame jitter,
    optional blur, additive noise; pixels that miss the map stay black. The noise of a
    frame is a randomly placed crop of one per-flight noise field (fast, deterministic)."""

    _PAD = 64

    def __init__(self, spec: FlightSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 1])
        self.gain = rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3)
        self.offset = rng.uniform(-12.0, 12.0)
        self.gamma = rng.uniform(0.8, 1.25)
        h, w = spec.camera.height + self._PAD, spec.camera.width + self._PAD
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * spec.noise_sigma
        self.noise = np.round(noise).astype(np.int16)

    def apply(self, image: np.ndarray, valid: np.ndarray, index: int) -> np.ndarray:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, 2, index])
        if spec.photometric:
            x = np.arange(256, dtype=np.float64)[:, None] / 255.0
            gain = self.gain * (1 + rng.normal(0, 0.02))
            lut = 255.0 * x**self.gamma * gain + self.offset + rng.normal(0, 2.0)
            image = cv2.LUT(image, np.clip(lut, 0, 255).astype(np.uint8).reshape(256, 1, 3))
        if spec.blur_px > 0:
            image = cv2.GaussianBlur(image, (0, 0), spec.blur_px)
        if spec.noise_sigma > 0:
            dy, dx = rng.integers(0, self._PAD, 2)
            crop = self.noise[dy:dy + image.shape[0], dx:dx + image.shape[1]]
            image = cv2.add(image, crop, dtype=cv2.CV_8U)
        return cv2.bitwise_and(image, image, mask=valid.view(np.uint8))
