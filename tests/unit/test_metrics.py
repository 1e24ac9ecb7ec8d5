"""Game4Loc's retrieval protocol and the fix metrics on a small worked example.

Gallery (metres): g0 (0, 0), g1 (100, 0), g2 (0, 200), g3 (300, 400).

query 0 at (0, 0), scores [0.9, 0.8, 0.1, 0.5], positives {1, 2}
    ranking g0, g1, g3, g2; distances 0, 100, 500, 200
    first positive at rank 2; AP = (1/2 + 2/4) / 2 = 0.5
query 1 at (300, 0), scores [0.2, 0.3, 0.4, 0.1], positives {2}
    ranking g2, g1, g0, g3; distances sqrt(300^2 + 200^2) = 360.555, 200, 300, 400
    first positive at rank 1; AP = 1
query 2 at (0, 0), all scores 0.5 (a tie: gallery order), no positive
    ranking g0, g1, g2, g3; distances 0, 100, 200, 500
    counts as a miss for Recall, is left out of AP
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from skyfix.models import metrics
from skyfix.models.metrics import (
    fix_errors_m,
    fix_metrics,
    rank_gallery,
    retrieval_metrics,
)
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import geodesic_distance_m

GALLERY = np.array([[0, 0], [100, 0], [0, 200], [300, 400]], float)
QUERIES = np.array([[0, 0], [300, 0], [0, 0]], float)
SCORES = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.4, 0.1], [0.5, 0.5, 0.5, 0.5]])
POSITIVES = [[1, 2], [2], []]
D1 = math.sqrt(300**2 + 200**2)  # query 1 to g2


def e(d_m: float) -> float:
    return math.exp(-0.001 * d_m)


@pytest.fixture(scope="module")
def m():
    return retrieval_metrics(SCORES, POSITIVES, QUERIES, GALLERY, recall_ks=(1, 2, 4),
                             sdm_ks=(1, 3), dis_ks=(1, 3))


def test_ranking_breaks_ties_by_gallery_index():
    assert rank_gallery(SCORES).tolist() == [[0, 1, 3, 2], [2, 1, 0, 3], [0, 1, 2, 3]]


def test_recall_counts_queries_without_positives_as_misses(m):
    assert m.recall_at(1) == pytest.approx(1 / 3)  # only query 1
    assert m.recall_at(2) == pytest.approx(2 / 3)  # queries 0 and 1
    assert m.recall_at(4) == pytest.approx(2 / 3)  # query 2 never hits
    # G = 4: Game4Loc reads the match curve at index round(0.04) = 0, i.e. Recall@1
    assert m.recall_top1pct == pytest.approx(1 / 3)


def test_ap_averages_over_queries_with_positives(m):
    assert m.ap == pytest.approx((0.5 + 1.0) / 2)


def test_sdm_weights_k_minus_i_plus_1(m):
    sdm1 = (e(0) + e(D1) + e(0)) / 3
    q0 = (3 * e(0) + 2 * e(100) + 1 * e(500)) / 6
    q1 = (3 * e(D1) + 2 * e(200) + 1 * e(300)) / 6
    q2 = (3 * e(0) + 2 * e(100) + 1 * e(200)) / 6
    assert m.sdm_at(1) == pytest.approx(sdm1)
    assert m.sdm_at(3) == pytest.approx((q0 + q1 + q2) / 3)


def test_dis_is_mean_metres_of_top_k(m):
    assert m.dis_at_m(1) == pytest.approx((0 + D1 + 0) / 3)
    q0, q1, q2 = (0 + 100 + 500) / 3, (D1 + 200 + 300) / 3, (0 + 100 + 200) / 3
    assert m.dis_at_m(3) == pytest.approx((q0 + q1 + q2) / 3)
    assert "Dis@3" in m.summary() and "AP: 75.00" in m.summary()


def test_perfect_retrieval_scores_one():
    scores = np.eye(4)
    r = retrieval_metrics(scores, [[0], [1], [2], [3]], GALLERY, GALLERY, recall_ks=(1,),
                          sdm_ks=(1,), dis_ks=(1,))
    assert r.recall_at(1) == 1.0 and r.ap == 1.0 and r.sdm_at(1) == 1.0 and r.dis_at_m(1) == 0


def test_bad_inputs_are_one_line_errors():
    def run(scores=SCORES, positives=POSITIVES, queries=QUERIES, ks=(1,)):
        return retrieval_metrics(scores, positives, queries, GALLERY, recall_ks=ks,
                                 sdm_ks=(1,), dis_ks=(1,))

    with pytest.raises(SkyfixError, match="gallery size 4"):
        run(ks=(5,))
    with pytest.raises(SkyfixError, match="out of range"):
        run(positives=[[4], [], []])
    with pytest.raises(SkyfixError, match="positive lists"):
        run(positives=POSITIVES[:2])
    with pytest.raises(SkyfixError, match="query_loc"):
        run(queries=QUERIES[:2])
    with pytest.raises(SkyfixError, match="not computed"):
        run().recall_at(5)
    with pytest.raises(SkyfixError, match="non-finite"):
        run(scores=np.where(SCORES > 0.85, np.nan, SCORES))


def test_results_do_not_depend_on_query_chunking(m, monkeypatch):
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 1)
    again = retrieval_metrics(SCORES, POSITIVES, QUERIES, GALLERY, recall_ks=(1, 2, 4),
                              sdm_ks=(1, 3), dis_ks=(1, 3))
    assert again == m


def test_gallery_mask_ranks_other_sites_last():
    # query 0 may only be ranked among g2, g3: g3 (0.5) then g2 (0.1); positive g2 at rank 2
    mask = np.array([[False, False, True, True]] + [[True] * 4] * 2)
    r = retrieval_metrics(SCORES, POSITIVES, QUERIES, GALLERY, gallery_mask=mask,
                          recall_ks=(1, 2), sdm_ks=(1,), dis_ks=(1,))
    assert r.recall_at(1) == pytest.approx(1 / 3) and r.recall_at(2) == pytest.approx(2 / 3)
    assert r.ap == pytest.approx((1 / 2 + 1) / 2)
    assert r.dis_at_m(1) == pytest.approx((500 + D1 + 0) / 3)  # query 0 now tops at g3


def test_vincenty_reproduces_the_published_example():
    # Vincenty (1975) / Geoscience Australia: Flinders Peak to Buninyong, 54 972.271 m
    def dms(d, m, s):
        return -(abs(d) + m / 60 + s / 3600) if d < 0 else d + m / 60 + s / 3600

    flinders = (dms(-37, 57, 3.72030), dms(144, 25, 29.52440))
    buninyong = (dms(-37, 39, 10.15610), dms(143, 55, 35.38390))
    assert geodesic_distance_m(*flinders, *buninyong) == pytest.approx(54972.271, abs=1e-3)
    # one degree of longitude on the equator: a * pi / 180
    assert geodesic_distance_m(0, 10, 0, 11) == pytest.approx(6378137 * math.pi / 180)
    assert geodesic_distance_m(45, 7, 45, 7) == 0.0


def test_geodesic_metrics_for_lat_lon_datasets():
    # UAV-VisLoc style: one query at the equator, tiles 0.001 deg east and 0.002 deg north
    gallery = np.array([[0.0, 0.001], [0.002, 0.0]])
    r = retrieval_metrics(np.array([[0.2, 0.9]]), [[0]], np.array([[0.0, 0.0]]), gallery,
                          distance="geodesic", recall_ks=(1, 2), sdm_ks=(2,), dis_ks=(2,))
    d_east = geodesic_distance_m(0, 0, 0, 0.001)  # 111.32 m
    d_north = geodesic_distance_m(0, 0, 0.002, 0)  # 221.15 m
    assert d_east == pytest.approx(111.32, abs=0.01) and d_north == pytest.approx(221.15, abs=0.01)
    assert r.recall_at(1) == 0 and r.recall_at(2) == 1 and r.ap == 0.5
    assert r.dis_at_m(2) == pytest.approx((d_north + d_east) / 2)
    assert r.sdm_at(2) == pytest.approx((2 * e(d_north) + e(d_east)) / 3)


def test_fix_metrics_worked_example():
    # errors 1, 3, 7, 12, 60 m: median 7, mean 83 / 5, P90 at position 0.9 * 4 = 3.6
    # between 12 and 60: 12 + 0.6 * 48 = 40.8
    f = fix_metrics([1, 3, 7, 12, 60])
    assert (f.count, f.median_m, f.max_m) == (5, 7.0, 60.0)
    assert f.mean_m == pytest.approx(16.6)
    assert f.p90_m == pytest.approx(40.8)
    assert (f.within_5m, f.within_10m, f.within_20m, f.within_50m) == (0.4, 0.6, 0.8, 0.8)


def test_fix_errors_from_positions():
    err = fix_errors_m([[3, 4], [0, 0]], [[0, 0], [0, 10]])
    assert err.tolist() == [5.0, 10.0]
    with pytest.raises(SkyfixError, match="empty"):
        fix_metrics([])
    with pytest.raises(SkyfixError, match="finite"):
        fix_metrics([1.0, float("nan")])
