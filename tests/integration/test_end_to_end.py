"""The whole chain on real-format data: a flight rendered from the bundled real
orthophoto, a map pack built from it, a replay from the pixels alone."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from pymavlink import mavutil

from skyfix.maps.manifest import MANIFEST, manifest_digest
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.types import Fix
from skyfix.sim.flight import FlightSpec, simulate_flight

REPORT_KEYS = {"frames", "fixes", "availability", "fix_cep50_m", "fix_cep95_m", "est_cep50_m",
               "est_cep95_m", "max_err_m", "gross_errors", "integrity_violations",
               "claims_beyond_3sigma", "frame_latency_p50_ms", "frame_latency_p95_ms"}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, ortho_path, ortho_pack):
    root = tmp_path_factory.mktemp("e2e")
    spec = FlightSpec(agl_m=120.0, duration_s=20.0, fps=2.0, seed=3)
    simulate_flight(ortho_path, root / "flight", spec, progress=False)
    result = replay(root / "flight", ortho_pack, root / "out", Config(), 0.0, progress=False)
    return root, result


def test_report_meets_the_foundation_targets(replayed):
    root, result = replayed
    report = json.loads((root / "out" / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["frames"] == 40
    assert report["availability"] >= 0.8
    assert report["gross_errors"] == 0
    assert report["integrity_violations"] == 0 and report["claims_beyond_3sigma"] == 0
    assert report["est_cep95_m"] <= 10.0
    assert report["fix_cep95_m"] <= 5.0
    assert result.report.fixes == report["fixes"]


def test_first_fix_comes_from_a_global_search_not_from_gnss(replayed):
    root, _ = replayed
    with open(root / "out" / "trajectory.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["prior"] == "none"
    assert {r["prior"] for r in rows} <= {"none", "filter"}


def test_gps_input_stream_decodes_and_tracks_the_truth(replayed):
    root, _ = replayed
    conn = mavutil.mavlink_connection(str(root / "out" / "gps_input.tlog"),
                                      dialect="ardupilotmega")
    msgs = []
    while (m := conn.recv_match(type="GPS_INPUT")) is not None:
        msgs.append(m)
    assert len(msgs) >= 150  # 10 Hz over most of 20 s
    t = np.array([m._timestamp for m in msgs])
    assert np.diff(t).max() < 0.215  # ArduPilot's health rule
    truth = np.genfromtxt(root / "flight" / "truth.csv", delimiter=",", names=True)
    fixed = [m for m in msgs if m.fix_type == 3]
    assert len(fixed) >= 0.8 * len(msgs)
    lat = np.interp([m._timestamp for m in fixed], truth["t_ns"] * 1e-9, truth["lat_deg"])
    lon = np.interp([m._timestamp for m in fixed], truth["t_ns"] * 1e-9, truth["lon_deg"])
    err_m = np.hypot((np.array([m.lat for m in fixed]) * 1e-7 - lat) * 111_200,
                     (np.array([m.lon for m in fixed]) * 1e-7 - lon) * 111_200
                     * np.cos(np.radians(lat)))
    assert np.percentile(err_m, 95) < 10.0
    assert all(m.horiz_accuracy > 0 and m.gps_id == Config().output.gps_id for m in fixed)


def test_outputs_are_written(replayed):
    root, result = replayed
    for path in result.files:
        assert path.is_file() and path.stat().st_size > 0, path
    assert (root / "out" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    geo = json.loads((root / "out" / "trajectory.geojson").read_text())
    lon, lat = geo["features"][0]["geometry"]["coordinates"][0]
    assert 16.30 < lon < 16.32 and 48.18 < lat < 48.19  # Schoenbrunn


def _gps_inputs(path) -> dict[int, object]:
    conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega")
    out = {}
    while (m := conn.recv_match(type="GPS_INPUT")) is not None:
        out[m.time_usec] = m
    return out


def test_a_map_stated_off_by_3_m_makes_every_claim_carry_it(replayed, ortho_pack):
    """The same flight on the same pack whose manifest states a 3 m georeferencing error
    (a survey-built map, say): every fix and the filter are as before (the error is one
    bias shared by all fixes, not noise in each), and every message sent claims it on top:
    sigma' = sqrt(sigma^2 + 3^2)."""
    root, result = replayed
    stated = root / "pack_3m"
    shutil.copytree(ortho_pack, stated)
    manifest = json.loads((stated / MANIFEST).read_text())
    manifest["georef_sigma_m"] = 3.0
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (stated / MANIFEST).write_text(json.dumps(manifest))
    again = replay(root / "flight", stated, root / "out_3m", Config(), 0.0, progress=False)
    fixes = [(r.t_ns, r.result.east_m, r.result.north_m) for r in result.frames
             if isinstance(r.result, Fix)]
    assert fixes and fixes == [(r.t_ns, r.result.east_m, r.result.north_m)
                               for r in again.frames if isinstance(r.result, Fix)]
    before = _gps_inputs(root / "out" / "gps_input.tlog")
    after = _gps_inputs(root / "out_3m" / "gps_input.tlog")
    both = [t for t in before if t in after and before[t].fix_type == 3 == after[t].fix_type]
    assert len(both) >= 100
    for t in both:
        assert (after[t].lat, after[t].lon) == (before[t].lat, before[t].lon)
        assert after[t].horiz_accuracy == pytest.approx(
            np.hypot(before[t].horiz_accuracy, 3.0), rel=1e-3)
