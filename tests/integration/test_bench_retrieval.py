"""`skyfix bench retrieval` end to end on small sets cut from the bundled Vienna orthophoto:
two map images (the second a distractor), views of the first on another "date"; a set
whose images carry their own georeference (one place, two dates) makes one map."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from skyfix.runtime.apps.cli import main


def _write_set(root, pairs: dict[str, tuple[np.ndarray, np.ndarray]], ext: str,
               georef: Affine | None = None):
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    rows = ["id,a,b"]
    for pid, (a, b) in pairs.items():
        for side, image in (("A", a), ("B", b)):
            path = root / side / f"{pid}.{ext}"
            if georef is None:
                cv2.imwrite(str(path), image)
                continue
            h, w = image.shape[:2]
            with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3,
                               dtype="uint8", crs=CRS.from_epsg(32633), transform=georef) as ds:
                ds.write(image[:, :, ::-1].transpose(2, 0, 1))
        rows.append(f"{pid},A/{pid}.{ext},B/{pid}.{ext}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    (root / "meta.json").write_text(json.dumps({"gsd_m": 0.3, "rgb_bands": [1, 2, 3],
                                                "registered": True, "licence": "CC BY 4.0"}))
    return root


@pytest.fixture()
def sets(ortho, tmp_path):
    image, _ = ortho
    a = np.ascontiguousarray(image[100:868, 100:868])
    other = np.ascontiguousarray(image[850:1618, 850:1618])
    later = cv2.convertScaleAbs(a, alpha=0.8, beta=30)  # another "date": other brightness
    rows = _write_set(tmp_path / "two_places", {"p1": (a, later),
                                                  "far": (other, cv2.flip(other, 0))}, "png")
    series = _write_set(tmp_path / "one_place", {"d1": (a, later), "d2": (later, a)}, "tif",
                        Affine(0.3, 0, 600_000.0, 0, -0.3, 5_340_000.0))
    return rows, series


def test_bench_retrieval_ranks_every_tile_of_the_sets_maps(sets, tmp_path):
    rows, series = sets
    out = tmp_path / "bench" / "retrieval.json"
    code = main(["bench", "retrieval", "--pairs", str(rows), str(series), "--views", "3",
                 "--method", "rootsift", "--method", "xfeat-xd", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "retrieval" and "loadavg_1m_start" in report["machine"]
    plain = report["methods"]["rootsift"]
    two, one = plain["sets"]["two_places"], plain["sets"]["one_place"]
    # two 768 px map images a tile (512 px) apart: 2 x 2 tiles each at a stride of 256 px,
    # and 2 x 2 more at the edges facing the gap (half imagery, the least a tile may hold)
    assert two["map_images"] == 2 and two["tiles"] == 12 and two["views"] == 6
    # own georeference, one place: the two dates make one map of 2 x 2 tiles
    assert one["map_images"] == 2 and one["tiles"] == 4 and one["views"] == 6
    assert 1 <= two["positives_per_view"] <= 4
    # views of the map's places on another "date" (brighter; mirrored) among the tiles
    assert two["descriptor"]["recall@5"] >= 50 and one["descriptor"]["recall@1"] >= 50
    assert "vlad" not in two  # no embedding: the descriptor is the VLAD
    xd = report["methods"]["xfeat-xd"]["sets"]["two_places"]
    assert {"descriptor", "vlad", "embedding"} <= set(xd)
    assert set(xd["descriptor"]) >= {"recall@1", "recall@5", "recall@10", "ap", "sdm@1",
                                     "dis@1_m"}
    assert "recall@10" not in one["descriptor"]  # 4 tiles: Recall@K for K up to 4 only
    overall = report["methods"]["xfeat-xd"]["overall"]
    assert overall["views"] == 12 and 0 <= overall["descriptor"]["recall@1"] <= 100


def test_bench_retrieval_bad_input_is_one_line(tmp_path, capsys):
    code = main(["bench", "retrieval", "--pairs", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skyfix: error: pair set") and "\n" not in err
