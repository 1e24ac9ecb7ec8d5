"""Rendering camera frames from an orthophoto: rays of a posed camera intersected with
the ground (flat, or a DEM by fixed-point iteration), the map sampled there, and the
camera's photometric model (appearance change, blur, noise). Used by the sim flights
(sim/flight.py) and the live simulators' cameras."""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as crs_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84

if TYPE_CHECKING:
    from skyfix.sim.flight import FlightSpec

_MIN_RAY_DOWN = 0.02  # rays less than ~1.1 deg below the horizon count as missing the map
_MAX_WINDOW_PX = 4096  # per side of one source read; coarser reads beyond that


def open_raster(path: Path, what: str) -> rasterio.DatasetReader:
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


def check_overlap(ds: rasterio.DatasetReader, crs, bounds: tuple, what: str) -> None:
    b = transform_bounds(ds.crs, crs, *ds.bounds) if ds.crs != crs else tuple(ds.bounds)
    if b[0] >= bounds[2] or b[2] <= bounds[0] or b[1] >= bounds[3] or b[3] <= bounds[1]:
        raise SkyfixError(f"{what} does not overlap the ortho")


def to_lla(crs, en: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N] lat_deg, [N] lon_deg) of [N, 2] map points."""
    lon, lat = crs_transform(crs, WGS84, en[:, 0].tolist(), en[:, 1].tolist())
    return np.asarray(lat), np.asarray(lon)


def ground_offsets(cam: CameraModel, agl_m: float) -> np.ndarray:
    """[4, 2] (along-track, cross-track) metres of the image corners, level camera."""
    px = np.array([[0, 0], [cam.width - 1, 0], [cam.width - 1, cam.height - 1],
                   [0, cam.height - 1]], np.float64).reshape(-1, 1, 2)
    xy = cv2.undistortPoints(px, cam.K, cam.dist_array).reshape(-1, 2)
    return np.stack([-xy[:, 1], xy[:, 0]], -1) * agl_m  # image up = forward, right = right


def ground_hits(xy: np.ndarray, R_ned_cam: np.ndarray, en_m: np.ndarray, alt_amsl_m: float,
                 terrain: Terrain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
class Terrain:
    """Ground heights AMSL: flat 0 m, or a DEM grid `grid` [H, W] float32 on `transform`."""

    grid: np.ndarray | None
    transform: rasterio.Affine | None

    @classmethod
    def flat(cls) -> Terrain:
        return cls(None, None)

    @classmethod
    def read(cls, ds: rasterio.DatasetReader, crs, bounds: tuple) -> Terrain:
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


class MapSource:
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


class Photometric:
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
