"""Tile features of a map pack, computed in chunks on disk so a build can stop and resume.

    ortho.tif --tile specs--> chunk_00000.npz, chunk_00001.npz, ... (CHUNK_TILES tiles each)
    chunks --merge (streamed)--> tiles.npy, keypoints.npy, local_descriptors.npy (+ a sample
    for the codebook) --VLAD (+ the encoder's embedding) per tile (streamed)--> descriptors.npy

A chunk file appears (atomic rename) only once all its tiles are done; a resumed build keeps
the chunk files it finds and computes only the missing ones. Nothing holds more than one
chunk of features in memory: merged arrays are written with plain sequential writes after
an .npy header (no memory map, whose touched pages would count as resident memory).

Keypoint pixel (u, v) of a tile (OpenCV: pixel centres at integers) lies at (east, north) =
centre + ((u + 0.5 - tile_px/2) * gsd, (tile_px/2 - v - 0.5) * gsd): image y points down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import rasterio
from rasterio.errors import RasterioError
from tqdm import tqdm

from skyfix.maps.pack import TILE_DTYPE
from skyfix.maps.pixels import read_level
from skyfix.models.features import Encoder, global_descriptor
from skyfix.runtime.core.errors import SkyfixError

if TYPE_CHECKING:
    from skyfix.maps.build import Grid

CHUNK_TILES = 64  # tiles per chunk file (the unit of resumption)
MIN_VALID_FRACTION = 0.5  # tiles with less imagery than this are skipped
MASK_ERODE_PX = 5  # no keypoints this close to nodata (descriptors would see it)
PARAMS = "params.json"  # in the partial folder: what the interrupted build was building
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSpec:
    """One tile to cut: top-left corner (x0, y0) in pixels of its level's grid."""

    level: int
    gsd_m: float
    x0: float
    y0: float
    min_valid: float = 0.5  # least share of imagery in the tile's part inside the map


@dataclass(frozen=True)
class BuildProgress:
    """Reported after each chunk: tiles done of `total`, `resumed` of them found on disk."""

    done: int
    total: int
    resumed: int


def _starts(extent_px: float, tile_px: int, stride: float) -> list[float]:
    """Tile origins along one axis: every `stride`, the last one flush with the edge."""
    if extent_px <= tile_px:
        return [0.0]
    n = math.ceil((extent_px - tile_px) / stride - 1e-9) + 1
    return [min(i * stride, extent_px - tile_px) for i in range(n)]


def tile_count(grid: Grid, gsds: Sequence[float], tile_px: int, overlap: float) -> int:
    """How many tiles `tile_specs` would make (counted without making them)."""
    stride = max(1.0, tile_px * (1.0 - overlap))

    def starts(extent_px: float) -> int:  # len(_starts(extent_px, tile_px, stride))
        return 1 if extent_px <= tile_px else math.ceil((extent_px - tile_px) / stride
                                                        - 1e-9) + 1

    return sum(starts(grid.height / (g / grid.gsd_m)) * starts(grid.width / (g / grid.gsd_m))
               for g in gsds)


def tile_specs(grid: Grid, gsds: Sequence[float], tile_px: int, overlap: float,
               min_valid: float = MIN_VALID_FRACTION) -> list[TileSpec]:
    """All tiles of all levels, level by level, row by row. A level smaller than a tile is
    one tile (the whole map)."""
    stride = max(1.0, tile_px * (1.0 - overlap))
    specs = []
    for level, g in enumerate(gsds):
        scale = g / grid.gsd_m
        for y0 in _starts(grid.height / scale, tile_px, stride):
            specs.extend(TileSpec(level, g, x0, y0, min_valid)
                         for x0 in _starts(grid.width / scale, tile_px, stride))
    return specs


def _adapt(ds: rasterio.DatasetReader, s: TileSpec, scale: float, tile_px: int,
           valid: np.ndarray) -> TileSpec | None:
    """`s` moved (at most a quarter tile, staying inside the map) towards the centroid of
    its imagery, when that gives it enough imagery; None otherwise."""
    ys, xs = np.nonzero(valid)
    if not len(xs):
        return None
    room_x = max(0.0, ds.width / scale - tile_px)
    room_y = max(0.0, ds.height / scale - tile_px)
    step = tile_px / 4
    x0 = min(max(s.x0 + float(np.clip(xs.mean() + 0.5 - tile_px / 2, -step, step)), 0.0),
             room_x)
    y0 = min(max(s.y0 + float(np.clip(ys.mean() + 0.5 - tile_px / 2, -step, step)), 0.0),
             room_y)
    if (round(x0), round(y0)) == (round(s.x0), round(s.y0)):
        return None
    return TileSpec(s.level, s.gsd_m, float(round(x0)), float(round(y0)), s.min_valid)


def _encode_chunk(ds: rasterio.DatasetReader, grid: Grid, specs: Sequence[TileSpec],
                  tile_px: int, encoder: Encoder) -> dict[str, np.ndarray]:
    """{"tiles": [t] TILE_DTYPE (ids and offsets local to the chunk), "keypoints": [f, 2]
    float32 offsets from tile centres, "local": [f, D] float16, "embedding": [t, G] float32
    (G = encoder.embedding_dim, may be 0)}, strongest keypoint first."""
    left, top, half = grid.transform.c, grid.transform.f, tile_px / 2
    rows, kps, descs, embs, offset = [], [], [], [], 0
    kernel = np.ones((MASK_ERODE_PX, MASK_ERODE_PX), np.uint8)
    dim, skipped, shifted = 0, [], 0
    for s in specs:
        scale = s.gsd_m / grid.gsd_m
        gray, valid, inside = read_level(ds, s.x0, s.y0, scale, tile_px, tile_px)
        frac = float(valid.sum()) / max(inside, 1)
        if frac < s.min_valid:
            moved = _adapt(ds, s, scale, tile_px, valid)
            if moved is not None:
                gray2, valid2, inside2 = read_level(ds, moved.x0, moved.y0, scale,
                                                    tile_px, tile_px)
                if float(valid2.sum()) / max(inside2, 1) >= s.min_valid:
                    s, gray, valid, inside = moved, gray2, valid2, inside2
                    frac, shifted = float(valid.sum()) / max(inside, 1), shifted + 1
        if frac < s.min_valid:
            if valid.any():
                skipped.append((s.level, float(valid.sum()) * s.gsd_m**2))
            continue
        mask = None if valid.all() else cv2.erode(valid.astype(np.uint8), kernel) > 0
        f = encoder.extract(gray, mask)
        dim = f.descriptors.shape[1]
        order = np.argsort(-f.scores, kind="stable")
        uv, g = f.keypoints[order].astype(np.float64), s.gsd_m
        kps.append(np.stack([(uv[:, 0] + 0.5 - half) * g, (half - uv[:, 1] - 0.5) * g],
                            1).astype(np.float32))
        descs.append(f.descriptors[order].astype(np.float16))
        if encoder.embedding_dim:
            embs.append(f.embedding)
        min_e, max_n = left + s.x0 * g, top - s.y0 * g
        max_e, min_n = min_e + tile_px * g, max_n - tile_px * g
        rows.append((len(rows), s.level, g, ((min_e + max_e) / 2, (min_n + max_n) / 2),
                     (min_e, min_n, max_e, max_n), offset, len(order), frac))
        offset += len(order)
    return {"tiles": np.array(rows, TILE_DTYPE),
            "keypoints": np.concatenate(kps) if kps else np.zeros((0, 2), np.float32),
            "local": np.concatenate(descs) if descs else np.zeros((0, dim), np.float16),
            "embedding": np.array(embs, np.float32).reshape(len(rows), encoder.embedding_dim),
            "skipped": np.array(skipped, np.float64).reshape(-1, 2),
            "shifted": np.array(shifted, np.int64)}


def tile_usage(chunks: Sequence[Path], n_levels: int) -> dict[str, int | list]:
    """Per level: tiles moved off a ragged edge, tiles left out for too little imagery and
    the imagery (m2) only those held, from the chunk files."""
    shifted, n_skip, area = 0, [0] * n_levels, [0.0] * n_levels
    for p in chunks:
        with np.load(p, allow_pickle=False) as z:
            if "skipped" not in z:
                continue
            shifted += int(z["shifted"])
            for level, m2 in z["skipped"]:
                n_skip[int(level)] += 1
                area[int(level)] += float(m2)
    return {"tiles_shifted": shifted, "tiles_skipped": n_skip,
            "skipped_imagery_m2": [round(a, 1) for a in area]}


def extract_chunks(ortho: Path, grid: Grid, specs: Sequence[TileSpec], tile_px: int,
                   encoder: Encoder, work: Path, progress: bool,
                   on_progress: Callable[[BuildProgress], None] | None = None) -> list[Path]:
    """Compute every chunk of `specs` not yet in `work`; return all chunk paths in order."""
    groups = [specs[i:i + CHUNK_TILES] for i in range(0, len(specs), CHUNK_TILES)]
    paths = [work / f"chunk_{i:05d}.npz" for i in range(len(groups))]
    resumed = sum(len(g) for g, p in zip(groups, paths, strict=True) if p.is_file())
    done = resumed
    with rasterio.open(ortho) as ds, tqdm(total=len(specs), initial=resumed, desc="map tiles",
                                          unit="tile", disable=not progress) as bar:
        if on_progress is not None:
            on_progress(BuildProgress(done, len(specs), resumed))
        for group, path in zip(groups, paths, strict=True):
            if path.is_file():
                continue
            try:
                arrays = _encode_chunk(ds, grid, group, tile_px, encoder)
            except RasterioError as e:
                raise SkyfixError(f"{ortho.name}: read failed ({e})") from None
            part = path.with_name(path.stem + ".part.npz")
            np.savez(part, **arrays)
            os.replace(part, path)
            done += len(group)
            bar.update(len(group))
            if on_progress is not None:
                on_progress(BuildProgress(done, len(specs), resumed))
    return paths


def input_stamp(path: Path) -> list:
    """[absolute path, size, mtime_ns] of an input: a changed file means a new build."""
    st = path.stat()
    return [str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)]


def prepare_work(work: Path, params: dict) -> None:
    """Resume in `work` when it holds an interrupted build of `params`, else start afresh."""
    if work.exists():
        try:
            old = json.loads((work / PARAMS).read_text())
        except (OSError, ValueError):
            old = None
        if old == params:
            done = len(list(work.glob("chunk_*[0-9].npz")))
            log.warning("resuming the interrupted build in %s (%d tile chunks done)", work, done)
            return
        log.warning("starting over: %s holds an interrupted build of other inputs or"
                    " parameters", work)
        shutil.rmtree(work)
    work.mkdir()
    (work / PARAMS).write_text(json.dumps(params, indent=1) + "\n")


def _write_npy(f, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                             "fortran_order": False, "shape": shape})


def merge_chunks(chunks: Sequence[Path], dst: Path, sample_size: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Write tiles.npy, keypoints.npy and local_descriptors.npy into `dst` from `chunks`;
    return ([T] TILE_DTYPE tiles, [min(F, sample_size), D] float32 seeded sample of the
    local descriptors for the codebook). Raises SkyfixError when no tile has features."""
    tables, dim = [], 0
    for p in chunks:
        with np.load(p, allow_pickle=False) as z:
            tables.append(z["tiles"])
            dim = dim or int(z["local"].shape[1])
    n_feat = int(sum(int(t["feat_count"].sum()) for t in tables))
    tiles = np.concatenate(tables) if tables else np.zeros(0, TILE_DTYPE)
    if not len(tiles):
        raise SkyfixError("no tile has enough valid pixels (lower the valid-fraction"
                          " threshold or the tile size)")
    tiles["id"] = np.arange(len(tiles))
    tiles["feat_offset"] = np.concatenate([[0], np.cumsum(tiles["feat_count"])[:-1]])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_feat, sample_size, replace=False)) \
        if n_feat > sample_size else np.arange(n_feat)
    sample, start = [], 0
    with open(dst / "keypoints.npy", "wb") as fk, open(dst / "local_descriptors.npy", "wb") as fl:
        _write_npy(fk, np.dtype(np.float32), (n_feat, 2))
        _write_npy(fl, np.dtype(np.float16), (n_feat, dim))
        for p in chunks:
            with np.load(p, allow_pickle=False) as z:
                kps, local = z["keypoints"], z["local"]
            fk.write(np.ascontiguousarray(kps, np.float32).tobytes())
            fl.write(np.ascontiguousarray(local, np.float16).tobytes())
            a, b = np.searchsorted(pick, [start, start + len(local)])
            sample.append(np.asarray(local[pick[a:b] - start], np.float32))
            start += len(local)
    np.save(dst / "tiles.npy", tiles, allow_pickle=False)
    return tiles, np.concatenate(sample) if sample else np.zeros((0, dim), np.float32)


def write_descriptors(chunks: Sequence[Path], codebook: np.ndarray, embedding_dim: int,
                      dst: Path, progress: bool) -> None:
    """Write [T, K * D + embedding_dim] float32 global descriptors (global_descriptor: VLAD,
    then the encoder's embedding when it has one), tile by tile in chunk order, to `dst`."""
    n = 0
    for p in chunks:
        with np.load(p, allow_pickle=False) as z:
            n += len(z["tiles"])
    with open(dst, "wb") as f, tqdm(total=n, desc="descriptors", unit="tile", leave=False,
                                    disable=not progress) as bar:
        _write_npy(f, np.dtype(np.float32), (n, codebook.size + embedding_dim))
        for p in chunks:
            with np.load(p, allow_pickle=False) as z:
                tiles, local = z["tiles"], z["local"].astype(np.float32)
                embedding = z["embedding"] if embedding_dim else None
            for i, t in enumerate(tiles):
                a = int(t["feat_offset"])
                row = global_descriptor(local[a:a + int(t["feat_count"])], codebook,
                                        None if embedding is None else embedding[i])
                f.write(row.astype(np.float32).tobytes())
            bar.update(len(tiles))
