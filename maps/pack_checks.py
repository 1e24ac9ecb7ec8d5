"""Content checks of a map pack, beyond its hashes: values that are finite, in range and
consistent with the manifest and with each other.

Hashes prove the files were not changed by accident; they say nothing when someone
rebuilt the manifest after changing the files. These checks catch what would crash or
mislead the pipeline (NaN tile centres, tiles outside the pack's bounds, keypoints far
outside their tile, descriptors that are not unit vectors); they cannot catch a
consistent shift of everything (the signature of `maps.provenance` is for that).

Every function returns a list of problems (empty: fine), one line each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from skyfix.maps.manifest import Manifest

_CHUNK_ROWS = 1 << 18  # rows checked at a time: bounded memory on memory-mapped arrays


def manifest_problems(m: Manifest) -> list[str]:
    """The manifest's numbers: finite, positive where they must be, in sane ranges."""
    problems = []
    b = m.bounds_en
    if not all(math.isfinite(v) for v in b) or not (b[0] < b[2] and b[1] < b[3]):
        problems.append(f"bounds_en {b} are not finite (min E, min N, max E, max N)")
    if not all(math.isfinite(g) and 0 < g <= 10_000 for g in m.gsds_m):
        problems.append(f"gsds_m {m.gsds_m} must be positive metres per pixel")
    if not 16 <= m.tile_px <= 16384:
        problems.append(f"tile_px {m.tile_px} is outside 16..16384")
    if not (math.isfinite(m.overlap) and 0 <= m.overlap < 1):
        problems.append(f"overlap {m.overlap} is outside 0..1")
    if any(c < 0 for c in m.tile_count) or m.n_features < 0:
        problems.append("tile_count and n_features must not be negative")
    if not (1 <= m.local_dim <= 4096 and 1 <= m.codebook_k <= 65536
            and 0 <= m.embedding_dim <= 4096):
        problems.append(f"local_dim {m.local_dim} / codebook_k {m.codebook_k} / embedding_dim "
                        f"{m.embedding_dim} out of range")
    if m.dem_gsd_m is not None and not (math.isfinite(m.dem_gsd_m) and m.dem_gsd_m > 0):
        problems.append(f"dem_gsd_m {m.dem_gsd_m} must be positive")
    if any(not 0 <= lv < len(m.gsds_m) for lv in m.index_levels) or m.index_nprobe < 0:
        problems.append("index_levels / index_nprobe do not fit the levels")
    if not (math.isfinite(m.georef_sigma_m) and 0 <= m.georef_sigma_m <= 10_000):
        problems.append(f"georef_sigma_m {m.georef_sigma_m} must be 0..10000 metres")
    return problems


def tile_problems(m: Manifest, tiles: np.ndarray) -> list[str]:
    """tiles.npy rows: levels, GSDs, centres and bounds consistent and inside the pack."""
    if not len(tiles):
        return []
    level = tiles["level"].astype(np.int64)
    gsd = np.asarray(m.gsds_m)[np.clip(level, 0, len(m.gsds_m) - 1)]
    centre, bounds = tiles["center_en"], tiles["bounds_en"]
    if not (np.isfinite(centre).all() and np.isfinite(bounds).all()
            and np.isfinite(tiles["gsd_m"]).all()):
        return ["tiles.npy holds non-finite centres, bounds or GSDs"]
    if not np.allclose(tiles["gsd_m"], gsd, rtol=1e-6):
        return ["tiles.npy GSDs differ from the manifest's gsds_m of their levels"]
    width, height = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
    extent = m.tile_px * gsd
    if not ((width > 0) & (height > 0) & (width <= 1.01 * extent)
            & (height <= 1.01 * extent)).all():
        return ["tiles.npy tile bounds do not match tile_px x gsd"]
    inside = ((centre[:, 0] >= bounds[:, 0]) & (centre[:, 0] <= bounds[:, 2])
              & (centre[:, 1] >= bounds[:, 1]) & (centre[:, 1] <= bounds[:, 3]))
    if not inside.all():
        return ["tiles.npy has tile centres outside their own bounds"]
    b = m.bounds_en
    margin = float(extent.max())
    if (bounds[:, 0].min() < b[0] - margin or bounds[:, 1].min() < b[1] - margin
            or bounds[:, 2].max() > b[2] + margin or bounds[:, 3].max() > b[3] + margin):
        return ["tiles.npy has tiles outside the manifest's bounds_en"]
    if (tiles["feat_count"] < 0).any():
        return ["tiles.npy has negative feature counts"]
    vf = tiles["valid_fraction"]
    if not (np.isfinite(vf) & (vf >= 0) & (vf <= 1)).all():
        return ["tiles.npy valid_fraction outside 0..1"]
    return []


def _chunks(a: np.ndarray):
    for start in range(0, len(a), _CHUNK_ROWS):
        yield np.asarray(a[start:start + _CHUNK_ROWS])


def array_problems(m: Manifest, keypoints: np.ndarray, local: np.ndarray,
                   descriptors: np.ndarray, codebook: np.ndarray) -> list[str]:
    """Whole-array scans (chunked): keypoints finite and within a tile of their centre,
    descriptors finite, global descriptors unit vectors (or zero for empty tiles)."""
    if not np.isfinite(codebook).all():
        return ["codebook.npy holds non-finite values"]
    reach = m.tile_px * max(m.gsds_m)  # a keypoint lies within half of this of its centre
    for chunk in _chunks(keypoints):
        if not np.isfinite(chunk).all() or (np.abs(chunk) > reach).any():
            return ["keypoints.npy holds non-finite values or points outside their tile"]
    for chunk in _chunks(local):
        if not np.isfinite(chunk).all():
            return ["local_descriptors.npy holds non-finite values"]
    for chunk in _chunks(descriptors):
        if not np.isfinite(chunk).all():
            return ["descriptors.npy holds non-finite values"]
        norm = np.linalg.norm(chunk.astype(np.float64), axis=1)
        if not ((np.abs(norm - 1) < 1e-3) | (norm == 0)).all():
            return ["descriptors.npy rows are not unit vectors (not descriptors of this build)"]
    return []
