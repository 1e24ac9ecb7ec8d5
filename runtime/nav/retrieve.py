"""Retrieval: which map tiles a frame is matched against.

Three modes, chosen from the prior (where the navigator believes the aircraft is):

    tracking  the prior window fits inside one tile: the `tracking_k` tiles whose
              centres lie nearest the predicted position (most overlap with the
              view); appearance adds nothing a 2-D position prior does not know
    window    a wider prior (filter after a gap, or the aircraft's own GNSS): the
              `top_k` tiles inside the window ellipse by global-descriptor similarity
    global    no prior (start-up, lost for `global_after_s`, filter reset after
              divergence): the `top_k` tiles of the whole level by similarity

The caller re-ranks the candidates by local matching (runtime/nav/match.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from skyfix.maps.index import window_ids
from skyfix.maps.tilemap import TileMap
from skyfix.runtime.core.config import RetrieveConfig
from skyfix.runtime.core.types import TileHit

PriorSource = Literal["filter", "gnss", "none"]


@dataclass(frozen=True)
class Prior:
    """Where to search: centre (E, N) map metres and a [2, 2] window covariance (m^2)
    such that points with d^T cov^-1 d <= 1 are inside."""

    centre_en: np.ndarray
    window_cov: np.ndarray
    source: PriorSource


NO_PRIOR = Prior(np.zeros(2), np.zeros((2, 2)), "none")


def window_prior(centre_en: np.ndarray, cov_en_m2: np.ndarray, source: PriorSource,
                 cfg: RetrieveConfig) -> Prior:
    """The search window for a position estimate with covariance `cov_en_m2`:
    `window_sigma` standard deviations plus `window_margin_m`."""
    window = cfg.window_sigma**2 * np.asarray(cov_en_m2) + cfg.window_margin_m**2 * np.eye(2)
    return Prior(np.asarray(centre_en, np.float64), window, source)


def retrieve(pack: TileMap, query: np.ndarray, level: int, prior: Prior,
             cfg: RetrieveConfig) -> list[TileHit]:
    """Candidate tiles of `level` for a view with global descriptor `query`, best first."""
    if prior.source == "none":
        return pack.search(query, level, cfg.top_k)
    tile_half = 0.5 * pack.tile_px * pack.levels[level]
    radius = float(np.sqrt(np.linalg.eigvalsh(prior.window_cov).max()))
    if radius <= tile_half:
        return _nearest_tiles(pack, level, prior, cfg.tracking_k)
    return pack.search(query, level, cfg.top_k, (prior.centre_en, prior.window_cov))


def _nearest_tiles(pack: TileMap, level: int, prior: Prior, k: int) -> list[TileHit]:
    ids = window_ids(pack, prior.centre_en, prior.window_cov)
    ids = ids[pack.tile_levels(ids) == level]
    ids, dist = pack.nearest_first(ids, prior.centre_en)
    return [TileHit(int(i), level, float(-d)) for i, d in zip(ids[:k], dist[:k], strict=True)]
