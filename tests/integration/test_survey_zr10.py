"""Teach and repeat on the real ZR10 survey (../shared/data): the map from every other
flight line (`skyfix maps survey`), the other lines' photos replayed against it without
GNSS and scored against the GPS track (issue 17 targets). SfM runs on the photos scaled to
1024 px (skyfix.maps.survey_sfm.SFM_MAX_PX); about 6-8 minutes on 2 loaded cores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import shared_file

from skyfix.runtime.apps.survey_eval import leave_lines_out

pytestmark = pytest.mark.slow


def test_zr10_leave_lines_out_meets_the_targets(tmp_path):
    root = shared_file("zr10_px4_survey_2026-01-13")
    r = leave_lines_out(root / "images", root / "gps_utc_from_ulog.csv", tmp_path, "even",
                        progress=False)
    assert r.lines >= 8 and r.test_frames >= 30
    report = json.loads((tmp_path / "pack.survey" / "report.json").read_text())
    assert report["georef"]["frames_registered"] == r.survey.georef.frames_registered
    assert r.survey.georef.horizontal_p50_m < 3.0  # the map against the GNSS
    rep = r.report
    assert rep.availability >= 0.80, rep
    assert rep.fix_cep50_m is not None and rep.fix_cep50_m <= 3.0, rep
    assert rep.gross_errors == 0, rep


def test_survey_cli_refuses_photos_without_gnss(tmp_path):
    """One line, no traceback: the ZR10 camera had no GPS receiver."""
    root = shared_file("zr10_px4_survey_2026-01-13")
    p = subprocess.run([sys.executable, "-m", "skyfix.runtime.apps.cli", "maps", "survey",
                        str(root / "images"), "--exif", "--out", str(tmp_path / "pack")],
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "carry no GNSS tags" in p.stderr and "Traceback" not in p.stderr
