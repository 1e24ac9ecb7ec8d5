"""Ray (the `scale` extra) on a local 2-CPU cluster: a distributed map build equals the
single-machine build file for file; a fleet replay of short sim flights."""

from __future__ import annotations

import csv
import json

import pytest
import rasterio
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.maps.distributed import build_pack_ray, ray_session
from skyfix.maps.manifest import MANIFEST
from skyfix.runtime.apps.fleet import SUMMARY_CSV, SUMMARY_JSON, fleet_replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.files import file_sha256
from skyfix.sim.flight import FlightSpec, simulate_flight

pytest.importorskip("ray", reason="ray is not installed (pip install 'skyfix[scale]')")


@pytest.fixture(scope="module")
def cluster():
    with ray_session(None, workers=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def crop(tmp_path_factory, ortho_path):
    root = tmp_path_factory.mktemp("ray")
    with rasterio.open(ortho_path) as src:
        win = Window(300, 300, 640, 640)
        profile = {**src.profile, "width": 640, "height": 640,
                   "transform": src.window_transform(win)}
        with rasterio.open(root / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=win))
    return root / "crop.tif"


def test_ray_build_is_identical_file_for_file(cluster, crop, tmp_path):
    kwargs = dict(tile_px=256, gsds_m=[0.3], index_min_tiles=0, progress=False)
    build_pack([crop], tmp_path / "local", **kwargs)
    build_pack_ray([crop], tmp_path / "ray", **kwargs)
    local = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert local == sorted(p.name for p in (tmp_path / "ray").iterdir())
    assert "index_l0.faiss" in local  # the FAISS index is part of the comparison
    for name in local:
        if name != MANIFEST:
            digest = file_sha256(tmp_path / "local" / name)
            assert digest == file_sha256(tmp_path / "ray" / name), name
    a = json.loads((tmp_path / "local" / MANIFEST).read_text())
    b = json.loads((tmp_path / "ray" / MANIFEST).read_text())
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= {"created_utc", "manifest_sha256"}
    assert a["files"] == b["files"] and len(a["files"]) == len(local) - 1


def test_ray_build_with_xfeat_equals_the_local_build(cluster, crop, tmp_path):
    """The ONNX Runtime session does not travel: each worker makes its own XFeat."""
    from skyfix.models.registry import make_encoder

    kwargs = dict(tile_px=256, gsds_m=[0.3], progress=False)
    build_pack([crop], tmp_path / "local", make_encoder("xfeat"), **kwargs)
    build_pack_ray([crop], tmp_path / "ray", encoder=make_encoder("xfeat"), **kwargs)
    a = json.loads((tmp_path / "local" / MANIFEST).read_text())
    b = json.loads((tmp_path / "ray" / MANIFEST).read_text())
    assert a["encoder_id"] == b["encoder_id"] and a["tile_count"] == b["tile_count"]
    for name in ("tiles.npy", "keypoints.npy", "local_descriptors.npy"):
        assert a["files"][name] == b["files"][name], name


def test_fleet_replay_writes_reports_and_a_summary(cluster, ortho_path, tmp_path):
    flights = []
    for name, agl, seed in (("low", 90.0, 3), ("high", 150.0, 5)):
        spec = FlightSpec(agl_m=agl, duration_s=5.0, fps=2.0, seed=seed)
        simulate_flight(ortho_path, tmp_path / name, spec, progress=False)
        flights.append(tmp_path / name)
    flights.append(tmp_path / "missing")
    build_pack([ortho_path], tmp_path / "pack", gsds_m=[0.6], progress=False)
    summary = fleet_replay(flights, tmp_path / "pack", tmp_path / "out", Config(),
                           use_ray=True, terrain_labels={"low": "urban"}, progress=False)
    runs = {r.name: r for r in summary.flights}
    assert runs["missing"].report is None and "missing" in runs["missing"].error
    for name in ("low", "high"):
        assert (tmp_path / "out" / name / "report.json").is_file()
        assert runs[name].report.fixes >= 6
        assert runs[name].report.fix_cep95_m < 10.0
    assert runs["low"].altitude_band == "0-100 m" and runs["high"].altitude_band == "100-200 m"
    assert runs["low"].terrain == "urban" and runs["high"].terrain == "unknown"
    body = json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())
    keys = {(g["kind"], g["key"]) for g in body["groups"]}
    assert {("flight", "low"), ("flight", "high"), ("altitude", "0-100 m"),
            ("altitude", "100-200 m"), ("terrain", "urban"), ("terrain", "unknown")} <= keys
    with open(tmp_path / "out" / SUMMARY_CSV, newline="") as f:
        rows = {(r["kind"], r["key"]): r for r in csv.DictReader(f)}
    high = json.loads((tmp_path / "out" / "high" / "report.json").read_text())
    assert float(rows[("flight", "high")]["fix_cep50_m"]) == pytest.approx(
        high["fix_cep50_m"], abs=0.01)
    assert int(rows[("terrain", "unknown")]["flights"]) == 2  # "high" and the failed one


def test_a_worker_makes_its_own_xfeat_session_once():
    from skyfix.maps.distributed import _worker_encoder, encoder_recipe
    from skyfix.models.registry import make_encoder

    driver = make_encoder("xfeat")
    recipe = encoder_recipe(driver, threads=1)
    worker = _worker_encoder(recipe)
    assert worker is not driver and worker.runner is not driver.runner
    assert worker is _worker_encoder(recipe)  # one session per worker process
    assert worker.backend_opts == {"provider": "cpu", "intra_op_threads": 1}
    assert (worker.max_features, worker.nms_size, worker.model_path) == (
        driver.max_features, driver.nms_size, driver.model_path)
