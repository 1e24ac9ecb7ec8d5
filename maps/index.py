"""Tile retrieval: exact cosine search over one level's global descriptors.

Small packs (thousands of tiles) are searched exactly with one matrix-vector product;
an approximate index (FAISS) for very large packs can replace `_scores` later without
changing `search`.
"""

from __future__ import annotations

import numpy as np

from skyfix.maps.pack import MapPack
from skyfix.runtime.errors import SkyfixError
from skyfix.runtime.types import TileHit


def in_window(pack: MapPack, centre_en: np.ndarray, cov_en: np.ndarray) -> np.ndarray:
    """[T] bool: tiles inside the search window.

    `centre_en`: [2] float64 map (E, N); `cov_en`: [2, 2] window covariance, already scaled
    so that the window is the ellipse d^T cov^-1 d <= 1. A tile is inside when its centre
    lies in the ellipse, or when the ellipse centre lies inside the tile's bounds (so a
    degenerate, e.g. all-zero, covariance still selects the tiles under the centre).
    """
    centre = np.asarray(centre_en, np.float64).reshape(2)
    cov = np.asarray(cov_en, np.float64).reshape(2, 2)
    b = pack.tile_bounds_en
    inside = ((b[:, 0] <= centre[0]) & (centre[0] <= b[:, 2])
              & (b[:, 1] <= centre[1]) & (centre[1] <= b[:, 3]))
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(centre))):
        return inside & np.all(np.isfinite(centre))
    try:
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))  # fails unless positive definite
    except np.linalg.LinAlgError:
        return inside
    d = pack.tile_center_en - centre  # [T, 2]
    z = np.linalg.solve(chol, d.T)  # L z = d  ->  |z|^2 = d^T cov^-1 d
    return inside | ((z**2).sum(0) <= 1.0)


def search(pack: MapPack, query: np.ndarray, level: int, top_k: int,
           window: tuple[np.ndarray, np.ndarray] | None = None) -> list[TileHit]:
    """The `top_k` tiles of `level` most similar to `query`, best first.

    `query`: [K * D] float32 global descriptor (`pack.global_descriptor`); `window`:
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
    keep = pack.tile_level == level
    if window is not None:
        keep &= in_window(pack, *window)
    ids = np.flatnonzero(keep)
    if not len(ids):
        return []
    scores = _scores(pack, ids, q)
    if len(ids) > top_k:
        part = np.argpartition(-scores, top_k - 1)[:top_k]
        ids, scores = ids[part], scores[part]
    order = np.lexsort((ids, -scores))  # best score first, ties by tile id
    return [TileHit(int(ids[i]), level, float(scores[i])) for i in order]


def _scores(pack: MapPack, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[n] cosine similarity of tiles `ids` to query `q` (tile descriptors are unit norm)."""
    norm = float(np.linalg.norm(q))
    if norm == 0 or not np.isfinite(norm):
        return np.zeros(len(ids), np.float32)
    return (np.asarray(pack.descriptors[ids], np.float32) @ (q / norm)).astype(np.float32)
