"""Evaluation metrics: Game4Loc's retrieval protocol and metric-fix accuracy.

Retrieval (one query image against a gallery of map tiles), as Game4Loc
(GTA-UAV, AAAI 2025) evaluates it. Each query's gallery is ranked by
descending similarity; with d_i the distance in metres between the query's
centre and the centre of its i-th ranked tile (i = 1..K; planar for GTA-UAV's
game-map metres, ellipsoidal for latitude/longitude as in UAV-VisLoc):

    Recall@K    share of all queries whose best-ranked positive tile is among the
                first K (a query with no positive counts as a miss)
    Recall@1%   Game4Loc's "Recall@top1": the cumulative match curve read at
                index round(0.01 * G), i.e. within the first round(0.01 * G) + 1
    AP          mean over queries that have >= 1 positive of
                (1 / P) * sum over the positives' ranks r of (positives in top r) / r
                (average precision of the ranking, as sklearn computes it)
    SDM@K       mean over queries of
                sum_i (K - i + 1) * exp(-s * d_i) / sum_i (K - i + 1),  s = 0.001 / m
    Dis@K       mean over queries of (1 / K) * sum_i d_i, in metres

Recall and AP are fractions in [0, 1] here (Game4Loc prints them x 100).
Ties in similarity are ranked by gallery index (lower first), so results never
depend on a sort's whims.

Fix accuracy (horizontal position error of metric fixes or filter estimates):
median, mean, P90 and the share of errors within 5 / 10 / 20 / 50 m.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import geodesic_distance_m

SDM_SCALE_PER_M = 0.001  # Game4Loc's s in exp(-s * d)
RECALL_KS = (1, 5, 10)
SDM_KS = (1, 3, 5)
DIS_KS = (1, 3, 5)
FIX_THRESHOLDS_M = (5.0, 10.0, 20.0, 50.0)
QUERY_CHUNK = 256  # queries ranked at once (bounds the [chunk, G] rank matrix)
Distance = Literal["planar", "geodesic"]


@dataclass(frozen=True)
class RetrievalMetrics:
    """Game4Loc's retrieval metrics over `queries` queries and a gallery of `gallery` tiles.

    `recall[j]` is Recall@`recall_ks[j]`, `sdm[j]` is SDM@`sdm_ks[j]`, `dis_m[j]` is
    Dis@`dis_ks[j]` in metres; recall, AP and recall_top1pct are fractions.
    """

    queries: int
    gallery: int
    recall_ks: tuple[int, ...]
    recall: tuple[float, ...]
    recall_top1pct: float
    ap: float
    sdm_ks: tuple[int, ...]
    sdm: tuple[float, ...]
    dis_ks: tuple[int, ...]
    dis_m: tuple[float, ...]

    def recall_at(self, k: int) -> float:
        return _pick(self.recall_ks, self.recall, k, "Recall")

    def sdm_at(self, k: int) -> float:
        return _pick(self.sdm_ks, self.sdm, k, "SDM")

    def dis_at_m(self, k: int) -> float:
        return _pick(self.dis_ks, self.dis_m, k, "Dis")

    def summary(self) -> str:
        """One line in Game4Loc's order (Recall and AP in percent)."""
        parts = [f"Recall@{k}: {100 * v:.2f}" for k, v in zip(self.recall_ks, self.recall,
                                                               strict=True)]
        parts += [f"Recall@top1%: {100 * self.recall_top1pct:.2f}", f"AP: {100 * self.ap:.2f}"]
        parts += [f"SDM@{k}: {v:.4f}" for k, v in zip(self.sdm_ks, self.sdm, strict=True)]
        parts += [f"Dis@{k}: {v:.1f} m" for k, v in zip(self.dis_ks, self.dis_m, strict=True)]
        return " - ".join(parts)


@dataclass(frozen=True)
class FixMetrics:
    """Horizontal error statistics of `count` fixes (metres; `within_*` are fractions)."""

    count: int
    median_m: float
    mean_m: float
    p90_m: float
    max_m: float
    within_5m: float
    within_10m: float
    within_20m: float
    within_50m: float


def _pick(ks: tuple[int, ...], values: tuple[float, ...], k: int, what: str) -> float:
    if k not in ks:
        raise SkyfixError(f"{what}@{k} was not computed (computed: {', '.join(map(str, ks))})")
    return values[ks.index(k)]


def rank_gallery(scores: np.ndarray) -> np.ndarray:
    """[Q, G] int64 gallery indices, best first, from [Q, G] similarities (ties: lower index)."""
    return np.argsort(-np.asarray(scores, np.float64), axis=1, kind="stable")


def _check_ks(ks: Sequence[int], gallery: int, what: str) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    for k in out:
        if k < 1 or k > gallery:
            raise SkyfixError(f"{what}@{k} needs 1 <= K <= gallery size {gallery}")
    return out


def _check_loc(loc: np.ndarray, n: int, what: str) -> np.ndarray:
    arr = np.asarray(loc, np.float64)
    if arr.shape != (n, 2):
        raise SkyfixError(f"{what} must be [{n}, 2], got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise SkyfixError(f"{what} contains non-finite coordinates")
    return arr


def _ranked_distances_m(q_loc: np.ndarray, g_loc: np.ndarray, top: np.ndarray,
                        distance: Distance) -> np.ndarray:
    """[Q, K] distances from each query to its K best-ranked tiles (`top` [Q, K])."""
    g = g_loc[top]  # [Q, K, 2]
    if distance == "planar":
        return np.linalg.norm(g - q_loc[:, None, :], axis=2)
    return geodesic_distance_m(q_loc[:, None, 0], q_loc[:, None, 1], g[..., 0], g[..., 1])


def retrieval_metrics(scores: np.ndarray, positives: Sequence[Sequence[int]],
                      query_loc: np.ndarray, gallery_loc: np.ndarray,
                      distance: Distance = "planar", gallery_mask: np.ndarray | None = None,
                      recall_ks: Sequence[int] = RECALL_KS, sdm_ks: Sequence[int] = SDM_KS,
                      dis_ks: Sequence[int] = DIS_KS,
                      sdm_scale_per_m: float = SDM_SCALE_PER_M) -> RetrievalMetrics:
    """Game4Loc's protocol for a [Q, G] similarity matrix (higher = more alike).

    positives: for each query, the gallery indices that count as correct
    (GTA-UAV: the IoU positives of the pair JSON). query_loc [Q, 2] and
    gallery_loc [G, 2] are the centres: (x, y) metres in one plane for
    `distance="planar"` (GTA-UAV), (lat, lon) degrees for `"geodesic"`
    (UAV-VisLoc). gallery_mask [Q, G] bool, optional: tiles a query may be
    ranked against (UAV-VisLoc ranks each query among its own site's tiles);
    masked-out tiles rank last. (Game4Loc multiplies the scores by the mask
    instead, which ranks them at similarity 0; with L2-normalised descriptors
    the two differ only when a same-site tile has negative similarity.)
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise SkyfixError(f"scores must be a non-empty [Q, G] matrix, got {list(scores.shape)}")
    if not np.isfinite(scores).all():
        raise SkyfixError("scores contain non-finite values")
    if distance not in ("planar", "geodesic"):
        raise SkyfixError(f"distance must be 'planar' or 'geodesic', got {distance!r}")
    n_q, n_g = scores.shape
    if len(positives) != n_q:
        raise SkyfixError(f"{len(positives)} positive lists for {n_q} queries")
    q_loc = _check_loc(query_loc, n_q, "query_loc")
    g_loc = _check_loc(gallery_loc, n_g, "gallery_loc")
    recall_ks = _check_ks(recall_ks, n_g, "Recall")
    sdm_ks = _check_ks(sdm_ks, n_g, "SDM")
    dis_ks = _check_ks(dis_ks, n_g, "Dis")
    if gallery_mask is not None:
        mask = np.asarray(gallery_mask, bool)
        if mask.shape != scores.shape:
            raise SkyfixError(f"gallery_mask must be {list(scores.shape)}, got "
                              f"{list(mask.shape)}")
        scores = np.where(mask, scores.astype(np.float64), -np.inf)

    first_hit = np.full(n_q, n_g)  # 0-based rank of each query's first positive
    aps: list[float] = []
    k_max = max((*sdm_ks, *dis_ks))
    d = np.empty((n_q, k_max))  # d[q, i]: metres from query q to its i-th ranked tile
    ranks = np.arange(1, n_g + 1)
    for lo in range(0, n_q, QUERY_CHUNK):
        hi = min(lo + QUERY_CHUNK, n_q)
        order = rank_gallery(scores[lo:hi])  # [C, G]
        d[lo:hi] = _ranked_distances_m(q_loc[lo:hi], g_loc, order[:, :k_max], distance)
        for q in range(lo, hi):
            idx = np.asarray(list(positives[q]), np.int64)
            if idx.size == 0:
                continue
            if idx.min() < 0 or idx.max() >= n_g:
                raise SkyfixError(f"query {q}: positive index out of range 0..{n_g - 1}")
            is_pos = np.isin(order[q - lo], idx)  # [G] in rank order
            first_hit[q] = int(is_pos.argmax())
            aps.append(float(np.mean((np.cumsum(is_pos) / ranks)[is_pos])))

    recall = tuple(float(np.mean(first_hit < k)) for k in recall_ks)
    top1pct_index = min(round(n_g * 0.01), n_g - 1)
    recall_top1pct = float(np.mean(first_hit <= top1pct_index))
    ap = float(np.mean(aps)) if aps else 0.0
    sdm = []
    for k in sdm_ks:
        w = (k - np.arange(k)).astype(np.float64)  # K - i + 1 for i = 1..K
        sdm.append(float(np.mean((np.exp(-sdm_scale_per_m * d[:, :k]) @ w) / w.sum())))
    dis = tuple(float(np.mean(d[:, :k].mean(axis=1))) for k in dis_ks)
    return RetrievalMetrics(n_q, n_g, recall_ks, recall, recall_top1pct, ap, sdm_ks,
                            tuple(sdm), dis_ks, dis)


def fix_metrics(errors_m: np.ndarray | Sequence[float]) -> FixMetrics:
    """Statistics of [N] horizontal errors in metres (P90: linear interpolation)."""
    err = np.asarray(errors_m, np.float64).ravel()
    if err.size == 0:
        raise SkyfixError("no fixes to score (empty error list)")
    if not np.isfinite(err).all() or (err < 0).any():
        raise SkyfixError("fix errors must be finite, non-negative metres")
    within = [float(np.mean(err <= t)) for t in FIX_THRESHOLDS_M]
    return FixMetrics(int(err.size), float(np.median(err)), float(err.mean()),
                      float(np.percentile(err, 90)), float(err.max()), *within)


def fix_errors_m(estimate_xy_m: np.ndarray, truth_xy_m: np.ndarray) -> np.ndarray:
    """[N] horizontal distances in metres between [N, 2] estimates and [N, 2] truths."""
    est = np.asarray(estimate_xy_m, np.float64)
    truth = np.asarray(truth_xy_m, np.float64)
    if est.ndim != 2 or est.shape[1] != 2 or est.shape != truth.shape:
        raise SkyfixError(f"estimates {list(est.shape)} and truths {list(truth.shape)} must "
                          "both be [N, 2] metres")
    return np.linalg.norm(est - truth, axis=1)
