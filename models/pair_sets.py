"""Two-date pair sets: the folder format and its reader (used by the cross-date benchmark,
skyfix.sim.pairs, and by training, skyfix.models.train_data).

A pair set is a folder with

    pairs.csv   header `id,a,b`; paths relative to the folder. `a` is the date the map is
                made from, `b` the date the camera sees. Images: any format rasterio reads.
    meta.json   {"gsd_m": float | null, "rgb_bands": [r, g, b] (1-based), "registered": bool,
                 "licence": str, ...}. An unknown gsd_m is taken as DEFAULT_GSD_M (and the
                 set says so); `registered: false` sets are reported apart from the totals.

`read_pair_set` returns the set and one line per unusable pair (missing file, images of
different size, unreadable image); the other pairs stay usable.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from skyfix.runtime.core.errors import SkyfixError

DEFAULT_GSD_M = 0.5


@dataclass(frozen=True)
class Pair:
    id: str
    a: Path
    b: Path
    width: int
    height: int


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


def _image_size(path: Path) -> tuple[int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return int(ds.width), int(ds.height)


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
            sa, sb = _image_size(a), _image_size(b)
        except RasterioError as e:
            problems.append(f"{path.name}/{pid}: unreadable image ({str(e).splitlines()[0]})")
            continue
        if sa != sb:
            problems.append(f"{path.name}/{pid}: images differ in size ({sa[0]}x{sa[1]} vs"
                            f" {sb[0]}x{sb[1]})")
            continue
        pairs.append(Pair(pid, a, b, *sa))
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
