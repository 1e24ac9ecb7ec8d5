"""Build a map pack from one or more orthophoto GeoTIFFs (layout: see skyfix.maps.pack).

    inputs --check georeferencing--> pack CRS + grid --mosaic--> ortho.tif
    ortho.tif --tiles per level--> local features --sample--> codebook --VLAD--> descriptors

Pack CRS: the first input's CRS when projected in metres, else the UTM zone (WGS 84, EPSG
326xx/327xx) of the area's centre. Every input is warped (WarpedVRT) onto one north-up grid
at the finest input resolution, the first input winning where they overlap (like
rasterio.merge); an input already on that grid is copied exactly. Imagery that is not
8-bit is stretched to 0..255 (0.5/99.5 percentiles of its valid pixels).

Tiles are read from the written ortho.tif, so a crop of it at match time shows the pixels
the features came from. Keypoint pixel (u, v) of a tile (OpenCV: pixel centres at
integers) lies at (east, north) = centre + ((u + 0.5 - tile_px/2) * gsd,
(tile_px/2 - v - 0.5) * gsd): image y points down, northing up.

The pack is written into a hidden temporary folder next to `out` and renamed into place at
the end, so an interrupted build never leaves a pack that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from tqdm import tqdm

from skyfix.maps.pack import FORMAT, MANIFEST, TILE_DTYPE, Manifest, file_sha256
from skyfix.models.features import Encoder, RootSiftEncoder, fit_codebook, vlad
from skyfix.runtime.errors import SkyfixError

DEFAULT_ENCODER = RootSiftEncoder()
SEED = 0  # codebook sample and k-means
CODEBOOK_SAMPLES = 50_000  # at most this many local descriptors go into k-means
MIN_VALID_FRACTION = 0.5  # tiles with less imagery than this are skipped
JPEG_QUALITY = 90
BLOCK_PX = 1024  # mosaic is written in blocks of this size
MASK_ERODE_PX = 5  # no keypoints this close to nodata (descriptors would see it)


@dataclass(frozen=True)
class Grid:
    """The pack's raster grid: north-up, square pixels of `gsd_m` metres."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def gsd_m(self) -> float:
        return float(self.transform.a)

    @property
    def bounds_en(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f - self.height * self.gsd_m, t.c + self.width * self.gsd_m, t.f)


@dataclass(frozen=True)
class _Source:
    path: Path
    ds: rasterio.DatasetReader
    bands: tuple[int, ...]  # 1-based: (r, g, b) or (gray,)
    stretch: tuple[float, float] | None  # (lo, hi) mapped to 0..255; None for uint8


def build_pack(orthos: Sequence[Path], out: Path, encoder: Encoder = DEFAULT_ENCODER,
               gsds_m: Sequence[float] | None = None, tile_px: int = 512, overlap: float = 0.5,
               codebook_k: int = 32, force: bool = False, progress: bool = True) -> Path:
    """Write the map pack of `orthos` to the folder `out` and return `out`.

    `gsds_m`: ground resolution of each level, metres/pixel (default: native, 2 x native);
    `overlap`: share of a tile shared with its neighbour (stride = tile_px * (1 - overlap)).
    `force` replaces an existing pack at `out` (never a non-empty folder that is no pack).
    Raises SkyfixError (one line) for unusable input.
    """
    out, paths = Path(out), [Path(p) for p in orthos]
    _check_args(paths, gsds_m, tile_px, overlap, codebook_k)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        grid = _write_ortho(paths, tmp / "ortho.tif", progress)
        gsds = tuple(float(g) for g in gsds_m) if gsds_m else (grid.gsd_m, 2 * grid.gsd_m)
        tiles, keypoints, local = _extract_tiles(tmp / "ortho.tif", grid, gsds, tile_px,
                                                 overlap, encoder, progress)
        codebook = _fit_codebook(local, codebook_k, paths)
        local32, ends = local.astype(np.float32), tiles["feat_offset"] + tiles["feat_count"]
        descriptors = np.stack([vlad(local32[a:b], codebook)
                                for a, b in zip(tiles["feat_offset"], ends, strict=True)])
        _build_overviews(tmp / "ortho.tif")
        arrays = {"tiles.npy": tiles, "keypoints.npy": keypoints,
                  "local_descriptors.npy": local, "descriptors.npy": descriptors,
                  "codebook.npy": codebook}
        for name, array in arrays.items():
            np.save(tmp / name, array, allow_pickle=False)
        files = {n: file_sha256(tmp / n) for n in [*arrays, "ortho.tif"]}
        manifest = Manifest(
            format=FORMAT, crs_wkt=grid.crs.to_wkt(), crs_epsg=grid.crs.to_epsg(),
            bounds_en=grid.bounds_en, gsds_m=gsds, tile_px=int(tile_px), overlap=float(overlap),
            tile_count=tuple(int((tiles["level"] == i).sum()) for i in range(len(gsds))),
            encoder_id=encoder.id, encoder_sha256=encoder.sha256, local_dim=int(local.shape[1]),
            codebook_k=int(codebook_k), n_features=len(keypoints),
            sources=tuple(p.name for p in paths),
            build={"seed": SEED, "codebook_samples": min(CODEBOOK_SAMPLES, len(local)),
                   "min_valid_fraction": MIN_VALID_FRACTION, "mask_erode_px": MASK_ERODE_PX,
                   "ortho_gsd_m": grid.gsd_m, "ortho_size_px": [grid.width, grid.height],
                   "ortho_compression": f"JPEG q{JPEG_QUALITY}",
                   "level_resampling": "average (coarser), nearest (native), bilinear (finer)"},
            files=files, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        _commit(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_args(paths: list[Path], gsds_m: Sequence[float] | None, tile_px: int,
                overlap: float, codebook_k: int) -> None:
    if not paths:
        raise SkyfixError("no orthophoto given")
    for p in paths:
        if not p.exists():
            raise SkyfixError(f"{p}: no such file")
    if gsds_m is not None and (not len(gsds_m) or len(set(gsds_m)) != len(gsds_m)
                               or not all(math.isfinite(g) and g > 0 for g in gsds_m)):
        raise SkyfixError(f"ground resolutions must be distinct positive numbers, got {gsds_m}")
    if not 32 <= tile_px <= 8192:
        raise SkyfixError(f"tile size must be 32..8192 px, got {tile_px}")
    if not 0.0 <= overlap <= 0.9:
        raise SkyfixError(f"tile overlap must be 0..0.9, got {overlap}")
    if codebook_k < 1:
        raise SkyfixError(f"codebook size must be at least 1, got {codebook_k}")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SkyfixError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise SkyfixError(f"{out}: output folder exists and is not empty"
                              " (force / --force replaces a map pack)")
        if not (out / MANIFEST).is_file():
            raise SkyfixError(f"{out}: output folder is not empty and holds no map pack;"
                              " refusing to replace it even with force")


def _commit(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished `tmp` to `out`, moving an old pack aside first."""
    if not out.exists():
        os.replace(tmp, out)
        return
    _check_out(out, force)
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / "pack")
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _open_sources(paths: list[Path], stack: ExitStack) -> list[_Source]:
    sources = []
    for p in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = stack.enter_context(rasterio.open(p))
        except RasterioError as e:
            raise SkyfixError(f"{p}: not a readable raster ({_line(e)})") from None
        if ds.crs is None or ds.transform.is_identity:
            raise SkyfixError(f"{p}: no georeferencing (CRS/geotransform missing)")
        color = [i + 1 for i, c in enumerate(ds.colorinterp) if c != ColorInterp.alpha]
        bands = tuple(color[:3]) if len(color) >= 3 else tuple(color[:1])
        if not bands:
            raise SkyfixError(f"{p}: no image bands")
        try:
            stretch = None if ds.dtypes[bands[0] - 1] == "uint8" else _stretch(ds, bands)
        except RasterioError as e:
            raise SkyfixError(f"{p}: read failed ({_line(e)})") from None
        sources.append(_Source(p, ds, bands, stretch))
    return sources


def _stretch(ds: rasterio.DatasetReader, bands: tuple[int, ...]) -> tuple[float, float]:
    """0.5/99.5 percentiles of the valid pixels of a decimated read."""
    scale = max(1.0, max(ds.width, ds.height) / 1024)
    shape = (len(bands), max(1, int(ds.height / scale)), max(1, int(ds.width / scale)))
    values = ds.read(bands, out_shape=shape, masked=True).compressed().astype(np.float64)
    values = values[np.isfinite(values)]
    lo, hi = np.percentile(values, [0.5, 99.5]) if len(values) else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-6))


def _pack_crs(sources: list[_Source]) -> CRS:
    """The first input's CRS if projected in metres, else the UTM zone of the centre."""
    first = sources[0].ds.crs
    try:
        if first.is_projected and abs(first.linear_units_factor[1] - 1.0) < 1e-9:
            return first
    except CRSError:
        pass
    boxes = [transform_bounds(s.ds.crs, "EPSG:4326", *s.ds.bounds) for s in sources]
    lon = (min(b[0] for b in boxes) + max(b[2] for b in boxes)) / 2
    lat = (min(b[1] for b in boxes) + max(b[3] for b in boxes)) / 2
    zone = min(60, max(1, int((lon + 180.0) // 6) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _grid(sources: list[_Source], crs: CRS) -> tuple[Grid, list[tuple[float, ...]]]:
    """The common grid, and each source's bounds in the pack CRS."""
    res, boxes = [], []
    for s in sources:
        t = s.ds.transform
        if s.ds.crs == crs and t.b == 0 and t.d == 0:
            res.append(min(abs(t.a), abs(t.e)))
            boxes.append(tuple(s.ds.bounds))
        else:
            with WarpedVRT(s.ds, crs=crs) as v:
                res.append(min(abs(v.transform.a), abs(v.transform.e)))
                boxes.append(tuple(v.bounds))
    gsd = min(res)
    w, s_, e, n = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                   max(b[2] for b in boxes), max(b[3] for b in boxes))
    width = max(1, math.ceil((e - w) / gsd - 1e-6))
    height = max(1, math.ceil((n - s_) / gsd - 1e-6))
    return Grid(crs, Affine(gsd, 0.0, w, 0.0, -gsd, n), width, height), boxes


def _aligned(ds: rasterio.DatasetReader, grid: Grid) -> bool:
    """True when the source's pixels are grid pixels (then copied without resampling)."""
    t, g = ds.transform, grid.gsd_m
    col, row = (t.c - grid.transform.c) / g, (grid.transform.f - t.f) / g
    return (ds.crs == grid.crs and t.b == 0 and t.d == 0 and abs(t.a - g) < 1e-9 * g
            and abs(t.e + g) < 1e-9 * g and abs(col - round(col)) < 1e-6
            and abs(row - round(row)) < 1e-6)


def _write_ortho(paths: list[Path], dst_path: Path, progress: bool) -> Grid:
    """Mosaic the inputs onto the pack grid as a uint8 JPEG GeoTIFF with an internal mask."""
    with ExitStack() as stack:
        sources = _open_sources(paths, stack)
        grid, boxes = _grid(sources, _pack_crs(sources))
        count = 3 if any(len(s.bands) == 3 for s in sources) else 1
        vrts = [stack.enter_context(WarpedVRT(
            s.ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
            resampling=Resampling.nearest if _aligned(s.ds, grid) else Resampling.bilinear,
            add_alpha=ColorInterp.alpha not in s.ds.colorinterp)) for s in sources]
        profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=count,
                       dtype="uint8", crs=grid.crs, transform=grid.transform, tiled=True,
                       blockxsize=256, blockysize=256, compress="JPEG", interleave="pixel",
                       jpeg_quality=JPEG_QUALITY, photometric="YCBCR" if count == 3 else None)
        left, top, g = grid.transform.c, grid.transform.f, grid.gsd_m
        spans = [((b[0] - left) / g, (top - b[3]) / g, (b[2] - left) / g, (top - b[1]) / g)
                 for b in boxes]  # each source's (col0, row0, col1, row1) on the grid
        seen = [False] * len(sources)
        windows = [Window(c, r, min(BLOCK_PX, grid.width - c), min(BLOCK_PX, grid.height - r))
                   for r in range(0, grid.height, BLOCK_PX) for c in range(0, grid.width, BLOCK_PX)]
        profile = {k: v for k, v in profile.items() if v is not None}
        with rasterio.open(dst_path, "w", **profile) as dst:
            for win in tqdm(windows, desc="mosaic", unit="block", disable=not progress,
                            leave=False):
                data = np.zeros((count, win.height, win.width), np.uint8)
                valid = np.zeros((win.height, win.width), bool)
                for i, (s, v, sp) in enumerate(zip(sources, vrts, spans, strict=True)):
                    if (sp[2] <= win.col_off or sp[0] >= win.col_off + win.width
                            or sp[3] <= win.row_off or sp[1] >= win.row_off + win.height):
                        continue
                    try:
                        m = v.dataset_mask(window=win) > 0
                        new = m & ~valid
                        px = (_to_uint8(v.read(s.bands, window=win), s.stretch)
                              if new.any() else None)
                    except RasterioError as e:
                        raise SkyfixError(f"{s.path}: read failed ({_line(e)})") from None
                    seen[i] |= bool(m.any())
                    if px is not None:
                        data[:, new] = px[:, new] if len(px) == count else px[0][new]
                        valid |= new
                dst.write(data, window=win)
                dst.write_mask(valid.astype(np.uint8) * 255, window=win)
        for s, ok in zip(sources, seen, strict=True):
            if not ok:
                raise SkyfixError(f"{s.path}: no valid pixels (all nodata or masked)")
    return grid


def _to_uint8(px: np.ndarray, stretch: tuple[float, float] | None) -> np.ndarray:
    if stretch is None:
        return px
    lo, hi = stretch
    scaled = (px.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)


def _build_overviews(path: Path) -> None:
    with rasterio.open(path, "r+") as ds:
        factors = [2**i for i in range(1, 30) if max(ds.width, ds.height) / 2**i >= 128]
        if factors:
            ds.build_overviews(factors, Resampling.average)
            ds.update_tags(ns="rio_overview", resampling="average")


def _starts(extent_px: float, tile_px: int, stride: float) -> list[float]:
    """Tile origins along one axis: every `stride`, the last one flush with the edge."""
    if extent_px <= tile_px:
        return [0.0]
    n = math.ceil((extent_px - tile_px) / stride - 1e-9) + 1
    return [min(i * stride, extent_px - tile_px) for i in range(n)]


def _read_tile(ds: rasterio.DatasetReader, x0: float, y0: float, scale: float,
               tile_px: int) -> tuple[np.ndarray, np.ndarray]:
    """([tile_px, tile_px] uint8 gray, [tile_px, tile_px] bool valid) of the tile whose
    top-left corner is level pixel (x0, y0); one level pixel = `scale` ortho pixels."""
    cols = min(tile_px, math.floor(ds.width / scale - x0 + 1e-6))
    rows = min(tile_px, math.floor(ds.height / scale - y0 + 1e-6))
    win = Window(x0 * scale, y0 * scale, cols * scale, rows * scale)
    resampling = (Resampling.nearest if abs(scale - 1) < 1e-9
                  else Resampling.average if scale > 1 else Resampling.bilinear)
    px = ds.read(window=win, out_shape=(ds.count, rows, cols), resampling=resampling)
    mask = ds.dataset_mask(window=win, out_shape=(rows, cols), resampling=Resampling.nearest)
    gray = np.zeros((tile_px, tile_px), np.uint8)
    valid = np.zeros((tile_px, tile_px), bool)
    gray[:rows, :cols] = (cv2.cvtColor(np.ascontiguousarray(px.transpose(1, 2, 0)),
                                       cv2.COLOR_RGB2GRAY) if ds.count == 3 else px[0])
    valid[:rows, :cols] = mask > 0
    return gray, valid


def _extract_tiles(ortho: Path, grid: Grid, gsds: tuple[float, ...], tile_px: int,
                   overlap: float, encoder: Encoder, progress: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([T] TILE_DTYPE, [F, 2] float32 offsets from tile centres, [F, D] float16)."""
    stride = max(1.0, tile_px * (1.0 - overlap))
    specs = []
    for level, g in enumerate(gsds):
        scale = g / grid.gsd_m
        for y0 in _starts(grid.height / scale, tile_px, stride):
            specs.extend((level, g, x0, y0) for x0 in _starts(grid.width / scale, tile_px, stride))
    left, top, half = grid.transform.c, grid.transform.f, tile_px / 2
    rows, kps, descs, offset = [], [], [], 0
    kernel = np.ones((MASK_ERODE_PX, MASK_ERODE_PX), np.uint8)
    with rasterio.open(ortho) as ds:
        for level, g, x0, y0 in tqdm(specs, desc="map tiles", unit="tile", disable=not progress):
            gray, valid = _read_tile(ds, x0, y0, g / grid.gsd_m, tile_px)
            frac = float(valid.mean())
            if frac < MIN_VALID_FRACTION:
                continue
            mask = None if frac == 1.0 else cv2.erode(valid.astype(np.uint8), kernel) > 0
            f = encoder.extract(gray, mask)
            order = np.argsort(-f.scores, kind="stable")
            uv = f.keypoints[order].astype(np.float64)
            kps.append(np.stack([(uv[:, 0] + 0.5 - half) * g, (half - uv[:, 1] - 0.5) * g],
                                1).astype(np.float32))
            descs.append(f.descriptors[order].astype(np.float16))
            min_e, max_n = left + x0 * g, top - y0 * g
            max_e, min_n = min_e + tile_px * g, max_n - tile_px * g
            rows.append((len(rows), level, g, ((min_e + max_e) / 2, (min_n + max_n) / 2),
                         (min_e, min_n, max_e, max_n), offset, len(order), frac))
            offset += len(order)
    if not rows:
        raise SkyfixError(f"{ortho.name}: no tile has {MIN_VALID_FRACTION:.0%} valid pixels")
    return np.array(rows, TILE_DTYPE), np.concatenate(kps), np.concatenate(descs)


def _fit_codebook(local: np.ndarray, k: int, paths: list[Path]) -> np.ndarray:
    """[k, D] float32 k-means codebook of a seeded sample of [F, D] local descriptors."""
    if len(local) < k:
        names = ", ".join(str(p) for p in paths)
        raise SkyfixError(f"{names}: only {len(local)} local features found, the codebook needs"
                          f" at least {k} (image too small or without texture)")
    rng = np.random.default_rng(SEED)
    pick = np.sort(rng.choice(len(local), CODEBOOK_SAMPLES, replace=False)) \
        if len(local) > CODEBOOK_SAMPLES else np.arange(len(local))
    return fit_codebook(np.asarray(local[pick], np.float32), k, seed=SEED)


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
