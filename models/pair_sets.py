"""Two-date pair sets: the folder format and its reader (used by the cross-date benchmark,
skyfix.sim.pairs, and by training, skyfix.models.train_data).

A pair set is a folder with

    pairs.csv   header `id,a,b`; paths relative to the folder. `a` is the date the map is
                made from, `b` the date the camera sees. Images: any format rasterio reads.
    meta.json   {"gsd_m": float | null, "rgb_bands": [r, g, b] (1-based), "registered": bool,
                 "licence": str, ...}. An unknown gsd_m is taken as DEFAULT_GSD_M (and the
                 set says so); `registered: false` sets are reported apart from the totals.

Images with a georeference in one CRS are co-registered by it, not by their pixel
indices: the pair's grid is the pixels of `a` that `b` covers wholly, and `read_pair`
resamples `b` onto it (NAIP tiles of one quarter-quad differ by a row and by metres in
their origin from year to year). Images without one must be of one size.

`read_pair_set` returns the set and one line per unusable pair (missing file, images of
different size, no common ground, unreadable image); the other pairs stay usable.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from skyfix.runtime.core.errors import SkyfixError

DEFAULT_GSD_M = 0.5
MIN_COMMON_PX = 64  # a georeferenced pair sharing less ground than this is left out


@dataclass(frozen=True)
class Pair:
    """`width` x `height`: the pair's grid, the pixels of `a` from (`col`, `row`) on;
    `b_px`: [2, 3] affine from that grid's pixel indices to `b`'s, row by row (None: the
    same pixels)."""

    id: str
    a: Path
    b: Path
    width: int
    height: int
    col: int = 0
    row: int = 0
    b_px: tuple[float, ...] | None = None


@dataclass(frozen=True)
class PairSet:
    """A read pair set. `gsd_assumed`: meta.json gave no gsd_m and DEFAULT_GSD_M is used."""

    name: str
    path: Path
    gsd_m: float
    gsd_assumed: bool
    rgb_bands: tuple[int, ...]
    registered: bool
    licence: str
    pairs: tuple[Pair, ...]


def _meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SkyfixError(f"pair set {path}: no meta.json") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SkyfixError(f"pair set {path}: meta.json is unparsable ({e})") from None
    if not isinstance(meta, dict):
        raise SkyfixError(f"pair set {path}: meta.json is not a JSON object")
    return meta


@dataclass(frozen=True)
class Grid:
    """An image's pixel grid; `crs` None: it has no georeference."""

    width: int
    height: int
    crs: CRS | None
    transform: Affine


def image_grid(path: Path) -> Grid:
    """The grid of the image in `path` (RasterioError when it is unreadable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            georef = ds.crs is not None and ds.transform != Affine.identity()
            return Grid(int(ds.width), int(ds.height), ds.crs if georef else None,
                        ds.transform)


def _pair(pid: str, a: Path, b: Path) -> Pair | str:
    """The pair on its grid (module docstring), or why it has none."""
    ga, gb = image_grid(a), image_grid(b)
    if ga.crs is None or gb.crs is None or ga.crs != gb.crs:
        if (ga.width, ga.height) != (gb.width, gb.height):
            return (f"images differ in size ({ga.width}x{ga.height} vs"
                    f" {gb.width}x{gb.height})")
        return Pair(pid, a, b, ga.width, ga.height)
    if (ga.transform, ga.width, ga.height) == (gb.transform, gb.width, gb.height):
        return Pair(pid, a, b, ga.width, ga.height)
    if not (ga.transform.is_rectilinear and gb.transform.is_rectilinear):
        return "rotated georeference"
    a_from_b = ~ga.transform * gb.transform  # b's pixel corners -> a's
    xs, ys = zip(*(a_from_b * c for c in ((0, 0), (gb.width, gb.height))), strict=True)
    col, row = max(0, int(np.ceil(min(xs) - 1e-6))), max(0, int(np.ceil(min(ys) - 1e-6)))
    width = min(ga.width, int(np.floor(max(xs) + 1e-6))) - col
    height = min(ga.height, int(np.floor(max(ys) + 1e-6))) - row
    if min(width, height) < MIN_COMMON_PX:
        return f"the images share less than {MIN_COMMON_PX} px of ground"
    # pixel indices of the grid -> of b (index i is the pixel whose corners are i, i + 1)
    m = (Affine.translation(-0.5, -0.5) * ~gb.transform * ga.transform
         * Affine.translation(col + 0.5, row + 0.5))
    return Pair(pid, a, b, width, height, col, row, tuple(m)[:6])


def read_pair_set(path: Path) -> tuple[PairSet, list[str]]:
    """The pair set in folder `path` and one line for each pair left out.

    Raises SkyfixError (one line) when the folder, pairs.csv or meta.json is unusable."""
    path = Path(path)
    if not path.is_dir():
        raise SkyfixError(f"pair set {path}: no such folder")
    meta = _meta(path)
    gsd = meta.get("gsd_m")
    if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, (int, float))
                            or not np.isfinite(gsd) or gsd <= 0):
        raise SkyfixError(f"pair set {path}: meta.json gsd_m must be a positive number or"
                          f" null, got {gsd!r}")
    bands = meta.get("rgb_bands", [1, 2, 3])
    if (not isinstance(bands, list) or len(bands) not in (1, 3)
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                       for b in bands)):
        raise SkyfixError(f"pair set {path}: meta.json rgb_bands must be 1 or 3 band"
                          f" numbers (1-based), got {bands!r}")
    try:
        with open(path / "pairs.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except FileNotFoundError:
        raise SkyfixError(f"pair set {path}: no pairs.csv") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SkyfixError(f"pair set {path}: pairs.csv is unreadable ({e})") from None
    if not rows or not {"id", "a", "b"} <= set(header):
        raise SkyfixError(f"pair set {path}: pairs.csv needs a header id,a,b and at least"
                          " one row")
    pairs, problems = [], []
    for n, row in enumerate(rows, start=2):
        pid = (row.get("id") or "").strip() or f"line {n}"
        a, b = (path / (row.get("a") or "").strip(), path / (row.get("b") or "").strip())
        missing = [p for p in (a, b) if not p.is_file()]
        if missing:
            problems.append(f"{path.name}/{pid}: {missing[0]} is missing")
            continue
        try:
            pair = _pair(pid, a, b)
        except RasterioError as e:
            problems.append(f"{path.name}/{pid}: unreadable image ({str(e).splitlines()[0]})")
            continue
        if isinstance(pair, str):
            problems.append(f"{path.name}/{pid}: {pair}")
            continue
        pairs.append(pair)
    pset = PairSet(path.name, path, float(gsd) if gsd is not None else DEFAULT_GSD_M,
                   gsd is None, tuple(bands), bool(meta.get("registered", True)),
                   str(meta.get("licence", "")), tuple(pairs))
    return pset, problems


def read_bgr(path: Path, bands: tuple[int, ...]) -> np.ndarray:
    """[H, W, 3] uint8 BGR of an image's `bands` (1-based RGB or one gray band); non-8-bit
    data stretched to 0..255 (0.5 / 99.5 percentiles)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as ds:
                if max(bands) > ds.count:
                    raise SkyfixError(f"{path}: has {ds.count} bands, rgb_bands asks for"
                                      f" band {max(bands)}")
                px = ds.read(list(bands))
        except RasterioError as e:
            raise SkyfixError(f"{path}: unreadable image ({str(e).splitlines()[0]})") from None
    if px.dtype != np.uint8:
        lo, hi = np.percentile(px, [0.5, 99.5])
        px = np.clip((px.astype(np.float64) - lo) * 255.0 / max(hi - lo, 1e-6), 0, 255)
        px = px.astype(np.uint8)
    rgb = np.repeat(px, 3, axis=0) if len(px) == 1 else px
    return np.ascontiguousarray(rgb[::-1].transpose(1, 2, 0))


def read_b(pair: Pair, bands: tuple[int, ...]) -> np.ndarray:
    """Image `b` of `pair` on its grid, [H, W, 3] uint8 BGR (read_bgr; resampled
    bilinearly where its pixels are not the grid's)."""
    b = read_bgr(pair.b, bands)
    if pair.b_px is None:
        return b
    return cv2.warpAffine(b, np.float64(pair.b_px).reshape(2, 3), (pair.width, pair.height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def read_pair(pair: Pair, bands: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images `a` and `b` of `pair` on its grid, [H, W, 3] uint8 BGR each."""
    a = read_bgr(pair.a, bands)[pair.row:pair.row + pair.height,
                                pair.col:pair.col + pair.width]
    return np.ascontiguousarray(a), read_b(pair, bands)
