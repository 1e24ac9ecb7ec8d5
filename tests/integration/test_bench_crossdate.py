"""`skyfix bench crossdate` end to end on a small two-date set cut from the bundled Vienna
orthophoto (date b: the same place with a brightness change; a pair whose b is another
place, which nothing can place), plus a broken pair."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import weights_of_ones_own

from skyfix.runtime.apps.cli import main


@pytest.fixture()
def pair_set(ortho, tmp_path):
    image, _ = ortho
    a = np.ascontiguousarray(image[200:712, 300:812])
    b = cv2.convertScaleAbs(a, alpha=0.8, beta=30)  # another "date": other brightness
    root = tmp_path / "vienna_pairs"
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    cv2.imwrite(str(root / "A" / "p1.png"), a)
    cv2.imwrite(str(root / "B" / "p1.png"), b)
    cv2.imwrite(str(root / "B" / "small.png"), b[:400, :400])
    cv2.imwrite(str(root / "B" / "elsewhere.png"), image[1100:1612, 1100:1612])
    (root / "pairs.csv").write_text("id,a,b\np1,A/p1.png,B/p1.png\nbad,A/p1.png,B/small.png\n"
                                    "other,A/p1.png,B/elsewhere.png\n")
    (root / "meta.json").write_text(json.dumps({"gsd_m": None, "rgb_bands": [1, 2, 3],
                                                "registered": True, "licence": "CC BY 4.0"}))
    return root


def test_bench_crossdate_runs_the_product_and_reports(pair_set, tmp_path, capsys):
    out = tmp_path / "bench" / "crossdate.json"
    code = main(["bench", "crossdate", "--pairs", str(pair_set), "--views", "3",
                 "--method", "rootsift", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped pair vienna_pairs/bad: images differ in size (512x512 vs 400x400)" in err
    report = json.loads(out.read_text())
    assert report["skipped_pairs"] == ["vienna_pairs/bad: images differ in size"
                                       " (512x512 vs 400x400)"]
    assert "loadavg_1m_start" in report["machine"]
    s = report["methods"]["rootsift"]["sets"]["vienna_pairs"]
    assert s["views"] == 6 and s["pairs"] == 2 and s["gsd_assumed"] and s["gsd_m"] == 0.5
    # same place, brightness changed: every view placed within 3 px; views of another
    # place: not one accepted, and the features cannot match them at the "true" place
    assert s["placed"] == 3 and s["accepted"] == 3 and s["wrong"] == 0
    assert s["median_err_px"] < 3
    assert s["overconfident"] == 0  # each error within 5 of the fix's claimed sigmas
    assert s["reachable_pct"] == 50.0 and s["placed_of_reachable_pct"] == 100.0
    assert report["methods"]["rootsift"]["overall"]["placed"] == 3
    # each view's outcome, to look into: the other place's views name why they failed
    views = report["methods"]["rootsift"]["per_view"]
    assert len(views) == 6 and {v["pair"] for v in views} == {"p1", "other"}
    assert all(v["accepted"] and v["err_px"] < 3 and v["sigma_px"] > 0
               for v in views if v["pair"] == "p1")
    assert all(not v["accepted"] and v["err_px"] is None and v["reason"] and v["detail"]
               for v in views if v["pair"] == "other")


def test_bench_crossdate_bad_input_is_one_line(tmp_path, capsys):
    code = main(["bench", "crossdate", "--pairs", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x.json")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skyfix: error: pair set") and "\n" not in err


def test_bench_crossdate_rebuilds_a_kept_pack_of_other_weights(pair_set, tmp_path, capsys):
    """Packs are kept between runs; one built by other weights (here: a RootSIFT pack where
    the XFeat one belongs, as after retraining the encoder) is rebuilt, not refused."""
    import shutil

    out = tmp_path / "bench" / "crossdate.json"
    args = ["bench", "crossdate", "--pairs", str(pair_set), "--views", "2", "--out", str(out)]
    assert main([*args, "--method", "rootsift"]) == 0
    kept = tmp_path / "bench" / "crossdate-work" / "vienna_pairs" / "p1"
    shutil.copytree(kept / "pack-rootsift", kept / "pack-xfeat")
    capsys.readouterr()
    assert main([*args, "--method", "xfeat"]) == 0
    report = json.loads(out.read_text())
    assert report["methods"]["xfeat"]["sets"]["vienna_pairs"]["placed"] == 2
    assert json.loads((kept / "pack-xfeat" / "manifest.json").read_text())["encoder_id"] \
        == "xfeat-onnx-v1"


def test_bench_crossdate_runs_weights_of_ones_own(pair_set, tmp_path, capsys):
    """--trained-model: method xfeat-xd builds its packs with those weights and the
    localiser flies them (their id, not the shipped one's); a missing file, or weights
    for a method that does not take them, are one line."""
    model = weights_of_ones_own(tmp_path / "mine", "mine-v1")
    out = tmp_path / "bench" / "crossdate.json"
    args = ["bench", "crossdate", "--pairs", str(pair_set), "--views", "2", "--out", str(out),
            "--method", "xfeat-xd"]
    assert main([*args, "--trained-model", str(model)]) == 0
    kept = tmp_path / "bench" / "crossdate-work" / "vienna_pairs" / "p1" / "pack-xfeat-xd"
    assert json.loads((kept / "manifest.json").read_text())["encoder_id"] == "mine-v1"
    report = json.loads(out.read_text())
    assert report["methods"]["xfeat-xd"]["sets"]["vienna_pairs"]["placed"] == 2
    capsys.readouterr()
    for bad, said in (([*args, "--trained-model", str(tmp_path / "gone.onnx")],
                       f"--trained-model {tmp_path / 'gone.onnx'}: no such file"),  # before
                      # any set is read
                      ([*args[:-1], "xfeat", "--trained-model", str(model)],
                       "--trained-model is for method xfeat-xd")):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"skyfix: error: {said}") and "\n" not in err
