"""`skyfix maps fetch`: imagery (and terrain) for an area, ready for `maps build`.

    Area + ground resolution --level of the source--> tiles touching the area
    --download (skyfix.maps.download: polite, cached, resumable)--> mosaic in the source CRS
    --warp (skyfix.maps.warp) to the area's metric CRS at the requested GSD-->
    Cloud-Optimised GeoTIFF
    + OUT.fetch.json (source, attribution, terms, level, tile counts, timings)

The output's metadata carries the attribution (TIFFTAG_COPYRIGHT) and terms
(SKYFIX_TERMS); `maps build` copies both into the pack manifest. Tiles the source does
not have (404) are no-data in the mosaic (its internal mask); more than `max_missing` of
them is an error. Output files appear only complete (written under a temporary name,
renamed); the tile cache keeps what was fetched, so a rerun after any failure or kill
downloads only what is missing.

Terrain tiles: Terrarium PNG, h = R * 256 + G + B / 256 - 32768 m; Mapbox terrain-RGB,
h = -10000 + (R * 65536 + G * 256 + B) * 0.1 m. A local DEM file is cut and warped the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.shutil import copy as rio_copy
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from skyfix.maps.area import Area
from skyfix.maps.download import DownloadOptions, DownloadStats, TileCache, download_tiles
from skyfix.maps.tilesource import TileLevel, TileSource
from skyfix.maps.warp import warp_block
from skyfix.runtime.core.errors import SkyfixError

MAX_LEVEL_FALLBACKS = 4  # coarser levels tried when the source lacks the chosen one
MAX_TILES = 250_000  # one request; larger areas are split by the user (or sharded)
JPEG_QUALITY = 90
BLOCK_PX = 1024  # output written in blocks of this size
DEFAULT_OPTIONS = DownloadOptions()
log = logging.getLogger(__name__)
TERRAIN_ENCODINGS = ("terrarium", "terrain-rgb")
ATTRIBUTION_TAG = "TIFFTAG_COPYRIGHT"
TERMS_TAG = "SKYFIX_TERMS"
SOURCE_TAG = "SKYFIX_SOURCE"


@dataclass(frozen=True)
class FetchResult:
    """What a fetch wrote and how it went."""

    path: Path
    record: Path  # OUT.fetch.json
    level: str
    source_res_m: float  # ground metres per source pixel at the area's centre
    gsd_m: float  # of the output
    tiles: DownloadStats
    attribution: str


def input_credits(paths: Sequence[Path]) -> list[dict[str, str]]:
    """Per input: its CRS, and the attribution and terms its metadata carries (written by
    `maps fetch`; TIFFTAG_COPYRIGHT of any GeoTIFF)."""
    out = []
    for p in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as ds:
                tags, crs = ds.tags(), ds.crs
        out.append({"source": p.name, "crs": crs.to_string() if crs else "",
                    "attribution": tags.get(ATTRIBUTION_TAG, ""),
                    "terms": tags.get(TERMS_TAG, ""), "origin": tags.get(SOURCE_TAG, "")})
    return out


def record_path(out: Path) -> Path:
    return out.with_name(out.stem + ".fetch.json")


def fetch_imagery(area: Area, source: TileSource, out: Path, gsd_m: float, cache_dir: Path,
                  opts: DownloadOptions = DEFAULT_OPTIONS, max_missing: float = 0.02,
                  progress: bool = True) -> FetchResult:
    """Fetch `source` over `area` and write an RGB COG at `gsd_m` in `area.crs` to `out`."""
    return _fetch(area, source, Path(out), gsd_m, Path(cache_dir), opts, max_missing,
                  progress, None)


def fetch_dem(area: Area, source: TileSource, encoding: str, out: Path, gsd_m: float,
              cache_dir: Path, opts: DownloadOptions = DEFAULT_OPTIONS,
              max_missing: float = 0.02, progress: bool = True) -> FetchResult:
    """Fetch terrain tiles (`encoding`: terrarium | terrain-rgb) over `area` and write a
    float32 DEM (metres, NaN = unknown) at `gsd_m` in `area.crs` to `out`."""
    if encoding not in TERRAIN_ENCODINGS:
        raise SkyfixError(f"unknown terrain encoding {encoding!r} ({', '.join(TERRAIN_ENCODINGS)})")
    return _fetch(area, source, Path(out), gsd_m, Path(cache_dir), opts, max_missing,
                  progress, encoding)


def dem_from_file(area: Area, dem: Path, out: Path, gsd_m: float) -> Path:
    """Cut a local DEM to `area` and warp it to `area.crs` at `gsd_m` (float32, NaN)."""
    try:
        with rasterio.open(dem) as src:
            if src.crs is None:
                raise SkyfixError(f"{dem}: DEM has no CRS")
            _warp_to_area(src, area, Path(out), gsd_m, {SOURCE_TAG: Path(dem).name},
                          terrain=True)
    except RasterioError as e:
        raise SkyfixError(f"{dem}: DEM is not a readable raster ({_line(e)})") from None
    return Path(out)


def _fetch(area: Area, source: TileSource, out: Path, gsd_m: float, cache_dir: Path,
           opts: DownloadOptions, max_missing: float, progress: bool,
           terrain: str | None) -> FetchResult:
    if not (math.isfinite(gsd_m) and gsd_m > 0):
        raise SkyfixError(f"ground resolution must be positive, got {gsd_m}")
    if not 0 <= max_missing <= 1:
        raise SkyfixError(f"missing-tile share must be 0..1, got {max_missing}")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise SkyfixError(f"{out}: output must be a .tif")
    key_root = hashlib.sha256(source.template.encode()).hexdigest()[:16]
    cache = TileCache(cache_dir / key_root)
    level, cols, rows, fallbacks, probe = _pick_level(source, area, gsd_m, cache, opts)
    n = len(cols) * len(rows)
    keys = {(c, r): f"{level.name}/{c}/{r}" for r in rows for c in cols}
    main = download_tiles([(k, source.url(level, c, r)) for (c, r), k in keys.items()],
                          cache, opts, progress, "dem tiles" if terrain else "map tiles")
    got = probe.downloaded  # probe tiles of the chosen level count as downloaded here
    stats = DownloadStats(main.total, main.cached - got, main.downloaded + got, main.missing,
                          main.retries + probe.retries, main.bytes + probe.bytes,
                          main.seconds + probe.seconds)
    if stats.missing == n:
        raise SkyfixError(f"the source has none of the {n} tiles of this area at level"
                          f" {level.name} (all HTTP 404)")
    if stats.missing > max_missing * n:
        raise SkyfixError(f"{stats.missing} of {n} tiles ({stats.missing / n:.1%}) do not exist"
                          f" at the source, more than the {max_missing:.1%} allowed"
                          " (--max-missing)")
    out.parent.mkdir(parents=True, exist_ok=True)
    lon, lat = area.centre_deg
    if fallbacks:  # the source is coarser than asked: no finer pixels than it has
        gsd_m = max(gsd_m, round(level.ground_res_m(lon, lat), 3))
    meta = {ATTRIBUTION_TAG: source.attribution, TERMS_TAG: source.terms,
            SOURCE_TAG: f"{source.kind}: {source.name}"}
    with tempfile.TemporaryDirectory(prefix=".fetch.", dir=out.parent) as tmp:
        mosaic = Path(tmp) / "mosaic.tif"
        _write_mosaic(cache, keys, cols, rows, level, mosaic, terrain)
        with rasterio.open(mosaic) as src:
            _warp_to_area(src, area, out, gsd_m, meta, terrain=terrain is not None)
    record = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "output": out.name, "kind": "dem" if terrain else "imagery",
        "terrain_encoding": terrain, "source": {"kind": source.kind, "name": source.name},
        "attribution": source.attribution, "terms": source.terms,
        "level": level.name, "source_crs": level.crs.to_string(),
        "source_ground_res_m": level.ground_res_m(lon, lat), "gsd_m": gsd_m,
        "crs": area.crs.to_string(), "crs_wkt": area.crs.to_wkt(),
        "bounds_deg": list(area.bounds_deg), "bounds_en": list(area.bounds_en),
        "area_km2": area.area_km2, "tiles": asdict(stats), "level_fallbacks": fallbacks,
    }
    rec = record_path(out)
    tmp_rec = rec.with_name(rec.name + ".tmp")
    tmp_rec.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp_rec, rec)
    return FetchResult(out, rec, level.name, record["source_ground_res_m"], gsd_m, stats,
                       source.attribution)


def _tile_range(level: TileLevel, area: Area, gsd_m: float) -> tuple[range, range]:
    w, s, e, n = area.bounds_en
    pad = 2 * gsd_m  # the output grid snaps outwards; bilinear needs a neighbour
    box = transform_bounds(area.crs, level.crs, w - pad, s - pad, e + pad, n + pad,
                           densify_pts=21)
    cols, rows = level.tile_range(box)
    if not len(cols) or not len(rows):
        raise SkyfixError("the area lies outside the source's tile grid")
    if len(cols) * len(rows) > MAX_TILES:
        raise SkyfixError(f"{len(cols) * len(rows)} tiles at level {level.name}: more than"
                          f" {MAX_TILES}; fetch a smaller area or a coarser resolution")
    return cols, rows


def _pick_level(source: TileSource, area: Area, gsd_m: float, cache: TileCache,
                opts: DownloadOptions
                ) -> tuple[TileLevel, range, range, int, DownloadStats]:
    """The level for `gsd_m`, or a coarser one when the source has none of the area's
    corner, edge and centre tiles there (services stop at different zooms); with its tile
    columns and rows, and what probing that level fetched."""
    lon, lat = area.centre_deg
    first = source.level_for(gsd_m, area)
    coarser = sorted((lv for lv in source.levels
                      if lv.ground_res_m(lon, lat) >= first.ground_res_m(lon, lat)),
                     key=lambda lv: lv.ground_res_m(lon, lat))
    for tries, level in enumerate(coarser[:MAX_LEVEL_FALLBACKS + 1]):
        cols, rows = _tile_range(level, area, gsd_m)
        probes = {(c, r) for c in (cols[0], cols[len(cols) // 2], cols[-1])
                  for r in (rows[0], rows[len(rows) // 2], rows[-1])}
        jobs = [(f"{level.name}/{c}/{r}", source.url(level, c, r)) for c, r in sorted(probes)]
        probe = download_tiles(jobs, cache, opts, progress=False)
        if any(cache.state(k) == "tile" for k, _ in jobs):
            if tries:
                log.warning("the source has no level %s here; using level %s (%.2f m/px)",
                            first.name, level.name, level.ground_res_m(lon, lat))
            return level, cols, rows, tries, probe
    return (first, *_tile_range(first, area, gsd_m), 0,
            DownloadStats(0, 0, 0, 0, 0, 0, 0.0))


def _decode(data: bytes, terrain: str | None) -> tuple[np.ndarray, np.ndarray]:
    """([C, h, w] uint8 RGB or [1, h, w] float32 metres, [h, w] bool valid) of a tile."""
    with Image.open(io.BytesIO(data)) as im:
        rgba = np.asarray(im.convert("RGBA"))
    valid = rgba[:, :, 3] > 0
    if terrain is None:
        return np.moveaxis(rgba[:, :, :3], -1, 0), valid
    r, g, b = (rgba[:, :, i].astype(np.float64) for i in range(3))
    h = (r * 256 + g + b / 256 - 32768 if terrain == "terrarium"
         else -10000 + (r * 65536 + g * 256 + b) * 0.1)
    return h[None].astype(np.float32), valid


def _write_mosaic(cache: TileCache, keys: dict[tuple[int, int], str], cols: range,
                  rows: range, level: TileLevel, dst: Path, terrain: str | None) -> None:
    """Paste the cached tiles into one GeoTIFF in the source CRS, a row of tiles at a time
    (no-data where a tile is missing or transparent)."""
    px = None
    for k in keys.values():
        if cache.state(k) == "tile":
            with Image.open(cache.path(k)) as im:
                px = im.size[0]
            break
    if px is None:
        raise SkyfixError("no tile in the cache")
    res = level.res * level.tile_px / px  # retina tiles: more pixels, same ground
    x0 = level.origin_xy[0] + cols[0] * level.res * level.tile_px
    y0 = level.origin_xy[1] - rows[0] * level.res * level.tile_px
    count, dtype = (1, "float32") if terrain else (3, "uint8")
    profile = dict(driver="GTiff", width=len(cols) * px, height=len(rows) * px, count=count,
                   dtype=dtype, crs=level.crs, transform=Affine(res, 0, x0, 0, -res, y0),
                   nodata=float("nan") if terrain else None,
                   tiled=True, blockxsize=256 if px % 256 == 0 else 128,
                   blockysize=256 if px % 256 == 0 else 128, BIGTIFF="IF_SAFER")
    with rasterio.open(dst, "w", **profile) as ds:
        for j, r in enumerate(rows):
            strip = np.full((count, px, len(cols) * px), np.nan if terrain else 0, dtype)
            valid = np.zeros((px, len(cols) * px), bool)
            for i, c in enumerate(cols):
                if cache.state(keys[(c, r)]) != "tile":
                    continue
                try:
                    img, ok = _decode(cache.path(keys[(c, r)]).read_bytes(), terrain)
                except OSError as e:
                    raise SkyfixError(f"cached tile {keys[(c, r)]} unreadable ({e});"
                                      " delete it and rerun") from None
                if img.shape[1:] != (px, px):
                    raise SkyfixError(f"tile {keys[(c, r)]} is {img.shape[2]}x{img.shape[1]}"
                                      f" px, the others {px}x{px}")
                if terrain:
                    img[:, ~ok] = np.nan
                strip[:, :, i * px:(i + 1) * px] = img
                valid[:, i * px:(i + 1) * px] = ok
            win = Window(0, j * px, len(cols) * px, px)
            ds.write(strip, window=win)
            if not terrain:  # terrain: NaN is the no-data
                ds.write_mask(valid.astype(np.uint8) * 255, window=win)


def _warp_to_area(src: rasterio.DatasetReader, area: Area, out: Path, gsd_m: float,
                  meta: dict[str, str], terrain: bool) -> None:
    """Warp `src` onto the north-up grid of `area` at `gsd_m` and write a COG to `out`."""
    w, s, e, n = area.bounds_en
    left, top = math.floor(w / gsd_m) * gsd_m, math.ceil(n / gsd_m) * gsd_m
    width = max(1, math.ceil((e - left) / gsd_m - 1e-6))
    height = max(1, math.ceil((top - s) / gsd_m - 1e-6))
    transform = Affine(gsd_m, 0, left, 0, -gsd_m, top)
    tmp = out.with_name(f".{out.name}.warp.tif")
    part = out.with_name(f".{out.name}.part")
    count = 1 if terrain else 3
    profile = dict(driver="GTiff", width=width, height=height, count=count,
                   dtype="float32" if terrain else "uint8", crs=area.crs, transform=transform,
                   tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER",
                   nodata=float("nan") if terrain else None)
    profile = {k: v for k, v in profile.items() if v is not None}
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.update_tags(**meta)
            for r in range(0, height, BLOCK_PX):
                for c in range(0, width, BLOCK_PX):
                    win = Window(c, r, min(BLOCK_PX, width - c), min(BLOCK_PX, height - r))
                    data, valid = warp_block(src, area.crs, transform, win,
                                             list(range(1, count + 1)), terrain)
                    dst.write(data, window=win)
                    if not terrain:
                        dst.write_mask(valid.astype(np.uint8) * 255, window=win)
        opts = (dict(COMPRESS="DEFLATE", PREDICTOR=3) if terrain
                else dict(COMPRESS="JPEG", QUALITY=JPEG_QUALITY))
        rio_copy(tmp, part, driver="COG", BLOCKSIZE=512, OVERVIEWS="AUTO",
                 RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS", **opts)
        os.replace(part, out)
    except RasterioError as e:
        raise SkyfixError(f"{out}: writing failed ({_line(e)})") from None
    finally:
        tmp.unlink(missing_ok=True)
        part.unlink(missing_ok=True)


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
