"""Tile retrieval: cosine search over one level's global descriptors.

- Prior-window search (an ellipse from the filter's covariance): tiles near the window are
  found through the pack's east-sorted tile centres (`MapPack.tiles_near`), tested exactly
  against the ellipse, and scored exactly (one small matrix-vector product).
- Global search (no prior): the level's FAISS IVF index when the pack has one (built at
  pack time for levels with at least `index_min_tiles` tiles), else exact over the level.

IVF index: inner product on the unit-norm descriptors (= cosine), `nlist` ~ sqrt(n)
lists (at most n / 39, faiss's training minimum), trained with faiss's seeded k-means
on at most TRAIN_PER_LIST points per list; `nprobe` = max(NPROBE_MIN, NPROBE_SHARE of nlist)
lists are searched, so a small index (nlist <= NPROBE_MIN) is searched exhaustively and
returns what exact search returns. One query at a time is searched on SEARCH_THREADS
OpenMP threads (faiss's setting is per process): on a small busy CPU, more threads only
add waiting (measured p95 0.7 ms on 1 thread vs 57 ms on 2, 1e5 tiles, 2 loaded cores).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import TileHit

if TYPE_CHECKING:
    from skyfix.maps.pack import MapPack
    from skyfix.maps.tilemap import TileMap

NPROBE_MIN = 16
NPROBE_SHARE = 0.08
SEARCH_THREADS = 1
TRAIN_PER_LIST = 64
ADD_BATCH = 8192  # descriptors read and added per step


def _inside(centers: np.ndarray, bounds: np.ndarray, centre: np.ndarray,
            cov: np.ndarray) -> np.ndarray:
    """[n] bool for tiles with [n, 2] `centers` and [n, 4] `bounds` (see `in_window`)."""
    inside = ((bounds[:, 0] <= centre[0]) & (centre[0] <= bounds[:, 2])
              & (bounds[:, 1] <= centre[1]) & (centre[1] <= bounds[:, 3]))
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(centre))):
        return inside & np.all(np.isfinite(centre))
    try:
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))  # fails unless positive definite
    except np.linalg.LinAlgError:
        return inside
    z = np.linalg.solve(chol, (centers - centre).T)  # L z = d  ->  |z|^2 = d^T cov^-1 d
    return inside | ((z**2).sum(0) <= 1.0)


def in_window(pack: MapPack, centre_en: np.ndarray, cov_en: np.ndarray) -> np.ndarray:
    """[T] bool: tiles inside the search window.

    `centre_en`: [2] float64 map (E, N); `cov_en`: [2, 2] window covariance, already scaled
    so that the window is the ellipse d^T cov^-1 d <= 1. A tile is inside when its centre
    lies in the ellipse, or when the ellipse centre lies inside the tile's bounds (so a
    degenerate, e.g. all-zero, covariance still selects the tiles under the centre).
    """
    centre = np.asarray(centre_en, np.float64).reshape(2)
    cov = np.asarray(cov_en, np.float64).reshape(2, 2)
    return _inside(pack.tile_center_en, pack.tile_bounds_en, centre, cov)


def window_ids(pack: TileMap, centre_en: np.ndarray, cov_en: np.ndarray) -> np.ndarray:
    """[n] int64 ascending ids of the tiles `in_window` selects, without touching every tile."""
    centre = np.asarray(centre_en, np.float64).reshape(2)
    cov = np.asarray(cov_en, np.float64).reshape(2, 2)
    if not np.all(np.isfinite(centre)):
        return np.zeros(0, np.int64)
    half = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else (0, 0)
    ids = pack.tiles_near(centre, float(half[0]), float(half[1]))
    return ids[_inside(pack.tile_centers(ids), pack.tile_bounds(ids), centre, cov)]


def search(pack: MapPack, query: np.ndarray, level: int, top_k: int,
           window: tuple[np.ndarray, np.ndarray] | None = None) -> list[TileHit]:
    """The `top_k` tiles of `level` most similar to `query`, best first.

    `query`: [K * D + G] float32 global descriptor (`pack.global_descriptor`); `window`:
    (centre_en [2] float64, cov_en [2, 2]) as in `in_window`, or None to search the whole
    level. Score = cosine similarity. Empty list when no tile is inside the window.
    """
    if not 0 <= level < len(pack.levels):
        raise SkyfixError(f"map pack {pack.path} has levels 0..{len(pack.levels) - 1},"
                          f" not {level}")
    q = np.asarray(query, np.float32).reshape(-1)
    if q.shape[0] != pack.descriptors.shape[1]:
        raise SkyfixError(f"query descriptor has {q.shape[0]} values, map pack {pack.path}"
                          f" has {pack.descriptors.shape[1]}")
    if top_k <= 0:
        return []
    norm = float(np.linalg.norm(q))
    if window is None and level in pack.indexes and norm > 0 and np.isfinite(norm):
        ids, scores = _faiss_search(pack, level, q / norm, top_k)
    else:
        if window is None:
            ids = np.flatnonzero(pack.tile_level == level)
        else:
            ids = window_ids(pack, *window)
            ids = ids[pack.tile_level[ids] == level]
        if not len(ids):
            return []
        scores = _scores(pack, ids, q, norm)
    if len(ids) > top_k:
        part = np.argpartition(-scores, top_k - 1)[:top_k]
        ids, scores = ids[part], scores[part]
    order = np.lexsort((ids, -scores))  # best score first, ties by tile id
    return [TileHit(int(ids[i]), level, float(scores[i])) for i in order]


def _scores(pack: MapPack, ids: np.ndarray, q: np.ndarray, norm: float) -> np.ndarray:
    """[n] cosine similarity of tiles `ids` (ascending) to query `q` (tile descriptors are
    unit norm). A contiguous id range (a whole level) is read as a slice, without a copy."""
    if norm == 0 or not np.isfinite(norm):
        return np.zeros(len(ids), np.float32)
    pack.check_files()  # a memory-mapped descriptors.npy truncated in use: an error, no SIGBUS
    rows = (pack.descriptors[ids[0]:ids[-1] + 1] if ids[-1] - ids[0] + 1 == len(ids)
            else pack.descriptors[ids])
    return (np.asarray(rows, np.float32) @ (q / norm)).astype(np.float32)


def _faiss_search(pack: MapPack, level: int, q: np.ndarray, top_k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(SEARCH_THREADS)
    index = pack.indexes[level]
    index.nprobe = max(1, pack.manifest.index_nprobe)
    scores, ids = index.search(q[None].astype(np.float32), top_k)
    keep = ids[0] >= 0
    return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)


def ivf_lists(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for an IVF index over `n` descriptors."""
    nlist = max(1, min(round(math.sqrt(n)), n // 39))
    return nlist, min(nlist, max(NPROBE_MIN, math.ceil(NPROBE_SHARE * nlist)))


def write_index(descriptors: Path, ids: np.ndarray, dst: Path, seed: int = 0) -> int:
    """Build an IVF-flat inner-product index over rows `ids` ([n] int64, ascending) of the
    [T, dim] float32 .npy file `descriptors` and write it (faiss serialisation) to `dst`.
    Rows are read in batches, so only the index itself is held in memory. Returns nprobe."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    mat = np.load(descriptors, mmap_mode="r")
    dim, n = int(mat.shape[1]), len(ids)
    nlist, nprobe = ivf_lists(n)
    rng = np.random.default_rng(seed)
    train_ids = np.sort(rng.choice(ids, min(n, TRAIN_PER_LIST * nlist), replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # tiny levels: no "too few points" warning
    index.train(np.ascontiguousarray(mat[train_ids], np.float32))
    for a in range(0, n, ADD_BATCH):
        batch = ids[a:a + ADD_BATCH]
        index.add_with_ids(np.ascontiguousarray(mat[batch], np.float32), batch.astype(np.int64))
    del mat
    faiss.write_index(index, str(dst))
    return nprobe

