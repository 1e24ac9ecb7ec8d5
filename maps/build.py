"""Build a map pack from one or more orthophoto GeoTIFFs (layout: see skyfix.maps.pack).

    inputs --check georeferencing--> pack CRS + grid --mosaic--> ortho.tif
    [DEM --resample to the grid--> dem.npy]
    ortho.tif --tiles per level, in chunks (skyfix.maps.tiles)--> local features
    --sample--> codebook --VLAD (+ the encoder's embedding)--> descriptors
    [--levels with many tiles--> FAISS index]
    ortho.tif --per level, block by block--> structure channels (skyfix.maps.structure)

Pack CRS (skyfix.maps.crs): the first input's CRS when its grid metres are ground metres
over the area, else the UTM zone of the area's centre (a Web Mercator input is reprojected).
Every input is warped (WarpedVRT) onto one north-up grid at the finest input resolution,
the first input winning where they overlap (like rasterio.merge); an input already on that
grid is copied exactly. Imagery that is not 8-bit is stretched to 0..255 (0.5/99.5
percentiles of its valid pixels).

Tiles are read from the written ortho.tif, so a crop of it at match time shows the pixels
the features came from. A reprojected input must fit one UTM zone (crs.UTM_MAX_DEG of its
central meridian, |lat| <= 84): a wider area would be distorted.

The pack is written into the hidden folder `.NAME.partial` next to `out` and renamed into
place at the end, so an interrupted build never leaves a pack that looks complete. That
folder keeps the finished mosaic and tile chunks of an interrupted build: a rerun with the
same inputs (path, size, mtime) and parameters resumes there, any other starts over (with
a note); bad input (SkyfixError) removes it. Memory is bounded: streamed mosaic blocks, one
chunk of tiles at a time, GDAL's block cache capped at GDAL_CACHE_MB.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm import tqdm

from skyfix.maps.crs import pack_crs
from skyfix.maps.dem import DEM_FILE, write_dem
from skyfix.maps.fetch import input_credits
from skyfix.maps.index import write_index
from skyfix.maps.manifest import FORMAT, MANIFEST, Manifest
from skyfix.maps.pack import index_file
from skyfix.maps.pixels import ORTHO_FILE
from skyfix.maps.structure import STRUCTURE_FACTOR, structure_file, write_structure
from skyfix.maps.survey_points import SURVEY_POINTS_FILE, SurveyPoints
from skyfix.maps.tiles import (
    CHUNK_TILES,
    MASK_ERODE_PX,
    MIN_VALID_FRACTION,
    PARAMS,
    BuildProgress,
    extract_chunks,
    input_stamp,
    merge_chunks,
    prepare_work,
    tile_count,
    tile_specs,
    tile_usage,
    write_descriptors,
)
from skyfix.models.features import Encoder, fit_codebook
from skyfix.models.registry import make_encoder
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256
from skyfix.runtime.core.provenance import load_private_key, sign_manifest

# the encoder a pack is built with unless told otherwise (skyfix.models.registry name): the
# one that places most views across dates (README, "Matching across dates")
DEFAULT_ENCODER_NAME = "xfeat"
SEED = 0  # codebook sample and k-means
CODEBOOK_SAMPLES = 50_000  # at most this many local descriptors go into k-means
JPEG_QUALITY = 90
BLOCK_PX = 1024  # mosaic is written in blocks of this size
INDEX_MIN_TILES = 5000  # levels with at least this many tiles get a FAISS index
MAX_TILES_UNFORCED = 1_000_000  # more tiles than this only with force=True (--force)
MIN_LEVEL_PX = 32  # an ortho must span at least this many pixels at every level
GDAL_CACHE_MB = 256  # GDAL's default is 5 % of RAM: unbounded for our purpose
ORTHO_DONE = "ortho.done"  # in the partial folder: ortho.tif is complete
log = logging.getLogger(__name__)


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


def build_pack(orthos: Sequence[Path], out: Path, encoder: Encoder | None = None,
               gsds_m: Sequence[float] | None = None, tile_px: int = 512, overlap: float = 0.5,
               codebook_k: int = 32, force: bool = False, progress: bool = True,
               dem: Path | None = None, index_min_tiles: int = INDEX_MIN_TILES,
               on_progress: Callable[[BuildProgress], None] | None = None,
               extract: Callable[..., list[Path]] = extract_chunks,
               min_valid_fraction: float = MIN_VALID_FRACTION,
               sign_key: Path | None = None, georef_sigma_m: float = 0.0,
               survey_points: SurveyPoints | None = None) -> Path:
    """Write the map pack of `orthos` to the folder `out` and return `out`.

    `encoder`: the local features (default: DEFAULT_ENCODER_NAME with its default settings);
    `gsds_m`: ground resolution of each level, metres/pixel (default: native, 2 x native);
    `overlap`: share of a tile shared with its neighbour (stride = tile_px * (1 - overlap)).
    `dem`: terrain model to resample into the pack. `index_min_tiles`: levels with at least
    this many tiles get a FAISS index (0 = every level). `force` replaces an existing pack
    at `out` (never a non-empty folder that is no pack). `on_progress` is called after each
    chunk of tiles. `extract` computes the tile chunks (signature of
    skyfix.maps.tiles.extract_chunks; skyfix.maps.distributed passes a Ray-backed one).
    `min_valid_fraction`: least share of imagery in a tile (of its part inside the map; a
    tile short of it is first moved up to a quarter tile towards its imagery); what is left
    out is logged and counted in the manifest (build.tile_usage).
    `sign_key`: Ed25519 private key (PEM) to sign the manifest with (manifest.json.sig).
    `georef_sigma_m`: the orthophoto's own 1-sigma horizontal error against the world, per
    axis, as its producer states it (0: not stated); every estimate flown on the pack
    claims it on top of the filter's covariance (runtime/nav/filter.estimate_at).
    `survey_points`: the sparse points of the survey the orthophoto was made from
    (`maps survey`), kept in the pack as SURVEY_POINTS_FILE.
    Raises SkyfixError (one line) for unusable input.
    """
    out, paths = Path(out), [Path(p) for p in orthos]
    if sign_key is not None:
        load_private_key(sign_key)  # an unusable key fails now, not after the build
    dem = None if dem is None else Path(dem)
    _check_args(paths, gsds_m, tile_px, overlap, codebook_k, dem, index_min_tiles)
    if not 0.0 < min_valid_fraction <= 1.0:
        raise SkyfixError(f"valid-fraction threshold must be 0..1, got {min_valid_fraction}")
    if not 0.0 <= georef_sigma_m <= 10_000:  # (NaN fails too)
        raise SkyfixError(f"georeferencing sigma must be 0..10000 m, got {georef_sigma_m}")
    _check_out(out, force)
    encoder = make_encoder(DEFAULT_ENCODER_NAME) if encoder is None else encoder
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial"
    params = {"format": FORMAT, "inputs": [input_stamp(p) for p in paths],
              "dem": None if dem is None else input_stamp(dem),
              "encoder": [encoder.id, encoder.sha256, encoder.embedding_dim],
              "gsds_m": None if gsds_m is None else [float(g) for g in gsds_m],
              "tile_px": int(tile_px), "overlap": float(overlap), "codebook_k": int(codebook_k),
              "index_min_tiles": int(index_min_tiles), "chunk_tiles": CHUNK_TILES, "seed": SEED,
              "min_valid_fraction": float(min_valid_fraction)}
    prepare_work(work, params)
    if survey_points is not None:  # listed in the manifest with the files _build makes
        survey_points.save(work / SURVEY_POINTS_FILE)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            manifest = _build(work, paths, dem, encoder, gsds_m, tile_px, overlap, codebook_k,
                              index_min_tiles, progress, on_progress, extract,
                              min_valid_fraction, force)
        manifest = replace(manifest, georef_sigma_m=float(georef_sigma_m))
        (work / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        if sign_key is not None:
            sign_manifest(work / MANIFEST, sign_key)
        _commit(work, out, force)
    except SkyfixError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _build(work: Path, paths: list[Path], dem: Path | None, encoder: Encoder,
           gsds_m: Sequence[float] | None, tile_px: int, overlap: float, codebook_k: int,
           index_min_tiles: int, progress: bool,
           on_progress: Callable[[BuildProgress], None] | None,
           extract: Callable[..., list[Path]] = extract_chunks,
           min_valid: float = MIN_VALID_FRACTION, force: bool = False) -> Manifest:
    """Fill `work` with every pack file (resuming what is there) and return the manifest."""
    ortho = work / ORTHO_FILE
    if (work / ORTHO_DONE).is_file():
        with rasterio.open(ortho) as o:
            grid = Grid(o.crs, o.transform, o.width, o.height)
    else:
        grid = _write_ortho(paths, ortho, progress)
        (work / ORTHO_DONE).write_text("")
    dem_gsd = None if dem is None else write_dem(dem, grid, work / DEM_FILE)
    gsds = tuple(float(g) for g in gsds_m) if gsds_m else (grid.gsd_m, 2 * grid.gsd_m)
    smallest_px = min(grid.width, grid.height) * grid.gsd_m / max(gsds)
    if smallest_px < MIN_LEVEL_PX:
        raise SkyfixError(f"{', '.join(str(p) for p in paths)}: {grid.width}x{grid.height} px is "
                          f"too small for a map pack at {max(gsds):g} m/px (at least "
                          f"{MIN_LEVEL_PX} px per side at every level)")
    n_tiles = tile_count(grid, gsds, tile_px, overlap)
    if n_tiles > MAX_TILES_UNFORCED and not force:
        raise SkyfixError(f"{', '.join(str(p) for p in paths)}: this build would make "
                          f"{n_tiles:,} tiles (more than {MAX_TILES_UNFORCED:,}); check --gsd, "
                          "--tile and --overlap, or pass --force to build it anyway")
    specs = tile_specs(grid, gsds, tile_px, overlap, min_valid)
    chunks = extract(ortho, grid, specs, tile_px, encoder, work, progress, on_progress)
    try:
        tiles, sample = merge_chunks(chunks, work, CODEBOOK_SAMPLES, SEED)
    except SkyfixError as e:
        raise SkyfixError(f"{', '.join(str(p) for p in paths)}: {e}") from None
    n_features = int(tiles["feat_count"].sum())
    usage = tile_usage(chunks, len(gsds))
    for level, (n, m2) in enumerate(zip(usage["tiles_skipped"], usage["skipped_imagery_m2"],
                                        strict=True)):
        if n:
            log.warning("level %d (%.2f m/px): %d tiles left out with less than %.0f%% imagery"
                        " (%.0f m2 of imagery only they held)", level, gsds[level], n,
                        100 * min_valid, m2)
    codebook = _fit_codebook(sample, n_features, codebook_k, paths)
    np.save(work / "codebook.npy", codebook, allow_pickle=False)
    write_descriptors(chunks, codebook, encoder.embedding_dim, work / "descriptors.npy",
                      progress)
    index_levels, nprobe = [], 0
    for level in range(len(gsds)):
        ids = np.flatnonzero(tiles["level"] == level)
        if len(ids) and len(ids) >= index_min_tiles:
            nprobe = write_index(work / "descriptors.npy", ids, work / index_file(level), SEED)
            index_levels.append(level)
    for level, g in enumerate(gsds):
        write_structure(ortho, g, work / structure_file(level))
    _build_overviews(ortho)
    for p in [*chunks, work / ORTHO_DONE, work / PARAMS]:
        p.unlink()
    files = {p.name: file_sha256(p) for p in sorted(work.iterdir()) if p.is_file()}
    return Manifest(
        format=FORMAT, crs_wkt=grid.crs.to_wkt(), crs_epsg=grid.crs.to_epsg(),
        bounds_en=grid.bounds_en, gsds_m=gsds, tile_px=int(tile_px), overlap=float(overlap),
        tile_count=tuple(int((tiles["level"] == i).sum()) for i in range(len(gsds))),
        encoder_id=encoder.id, encoder_sha256=encoder.sha256, local_dim=int(sample.shape[1]),
        codebook_k=int(codebook_k), n_features=n_features,
        sources=tuple(p.name for p in paths),
        build={"seed": SEED, "codebook_samples": len(sample),
               "min_valid_fraction": min_valid, "mask_erode_px": MASK_ERODE_PX,
               "tile_usage": usage,
               "ortho_gsd_m": grid.gsd_m, "ortho_size_px": [grid.width, grid.height],
               "ortho_compression": f"JPEG q{JPEG_QUALITY}",
               "level_resampling": "average (coarser), nearest (native), bilinear (finer)",
               "dem_source": None if dem is None else dem.name,
               "index_min_tiles": int(index_min_tiles), "index": "faiss IVF-flat, inner product",
               "credits": input_credits(paths)},
        files=files, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        dem_gsd_m=dem_gsd, index_levels=tuple(index_levels), index_nprobe=nprobe,
        structure_gsds_m=tuple(g * STRUCTURE_FACTOR for g in gsds),
        embedding_dim=encoder.embedding_dim,
    )


def _check_args(paths: list[Path], gsds_m: Sequence[float] | None, tile_px: int,
                overlap: float, codebook_k: int, dem: Path | None, index_min_tiles: int) -> None:
    if not paths:
        raise SkyfixError("no orthophoto given")
    for p in [*paths, *([dem] if dem is not None else [])]:
        if not p.is_file():
            raise SkyfixError(f"{p}: no such file")
    if index_min_tiles < 0:
        raise SkyfixError(f"index tile threshold must be >= 0, got {index_min_tiles}")
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
        grid, boxes = _grid(sources, pack_crs([s.ds.crs for s in sources],
                                               [tuple(s.ds.bounds) for s in sources],
                                               [str(s.path) for s in sources]))
        count = 3 if any(len(s.bands) == 3 for s in sources) else 1
        # the grid is as fine as the finest input, so a warp never shrinks one: cubic keeps
        # the detail that fine matching needs; bilinear blurs by up to half a pixel where the
        # grids fall half a pixel apart (`make bench-crs`, XFeat on a Web-Mercator copy of
        # the Vienna map: fix CEP95 +14 % over the native map's with bilinear, +6 % cubic)
        vrts = [stack.enter_context(WarpedVRT(
            s.ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
            resampling=Resampling.nearest if _aligned(s.ds, grid) else Resampling.cubic,
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


def _fit_codebook(sample: np.ndarray, n_features: int, k: int, paths: list[Path]
                  ) -> np.ndarray:
    """[k, D] float32 k-means codebook of a seeded [n, D] sample of the local descriptors."""
    if n_features < k:
        names = ", ".join(str(p) for p in paths)
        raise SkyfixError(f"{names}: only {n_features} local features found, the codebook needs"
                          f" at least {k} (image too small or without texture)")
    return fit_codebook(np.asarray(sample, np.float32), k, seed=SEED)


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
