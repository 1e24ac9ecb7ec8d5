"""Replay of flights as they come off the aircraft, on real-format files: a folder of
DJI-style survey photos (JPEG + EXIF GPS/time/focal length + DJI XMP) written from a
flight rendered over the bundled real orthophoto, localised from the pixels alone, and
the same frames with a MAVLink tlog and an OpenCV camera file; then the real recorded
flights in ../shared/data (cuav CMAC frames + tlog, ZR10 photos + GPS track)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from conftest import shared_file
from PIL import Image
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.sources import open_inputs
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.sim.flight import FlightSpec, simulate_flight


def _dms(deg: float) -> tuple[float, float, float]:
    d = abs(deg)
    return (float(int(d)), float(int(d * 60 % 60)), round(d * 3600 % 60, 4))


def write_dji_folder(flight: Path, out: Path) -> None:
    """Each frame of a sim flight as a DJI-style JPEG: DateTimeOriginal + SubSec, EXIF GPS
    from the true track, FocalLengthIn35mmFilm, and an XMP packet with drone-dji
    RelativeAltitude and Flight*Degree from the telemetry the aircraft logged."""
    out.mkdir(parents=True)
    log = TelemetryLog.from_tlog(flight / "telemetry.tlog")
    with open(flight / "truth.csv", newline="") as f:
        truth = {int(r["t_ns"]): r for r in csv.DictReader(f)}
    cam = cv2.FileStorage(str(flight / "camera.yaml"), cv2.FILE_STORAGE_READ)
    fx, w, h = cam.getNode("camera_matrix").mat()[0, 0], 640, 480
    f35 = int(round(fx * np.hypot(36, 24) / np.hypot(w, h)))
    with open(flight / "frames.csv", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            t = int(row["t_ns"])
            tel, tr = log.at(t), truth[t]
            when = datetime.fromtimestamp(t // 10**9, timezone.utc)
            exif = Image.Exif()
            ifd = exif.get_ifd(0x8769)
            ifd[36867] = when.strftime("%Y:%m:%d %H:%M:%S")
            ifd[37521] = f"{t % 10**9 // 10**7:02d}"
            ifd[36881] = "+00:00"
            ifd[41989] = f35
            gps = exif.get_ifd(0x8825)
            lat, lon = float(tr["lat_deg"]), float(tr["lon_deg"])
            gps.update({1: "N" if lat >= 0 else "S", 2: _dms(lat),
                        3: "E" if lon >= 0 else "W", 4: _dms(lon), 6: float(tr["alt_amsl_m"])})
            roll, pitch, yaw = np.degrees([tel.roll_rad, tel.pitch_rad, tel.yaw_rad])
            xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                   '1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:drone-dji="http://www.'
                   f'dji.com/drone-dji/1.0/" drone-dji:RelativeAltitude="+{tel.agl_m:.2f}" '
                   f'drone-dji:FlightRollDegree="{roll:+.2f}" '
                   f'drone-dji:FlightPitchDegree="{pitch:+.2f}" '
                   f'drone-dji:FlightYawDegree="{yaw:+.2f}"/></rdf:RDF></x:xmpmeta>')
            image = Image.open(flight / row["file"])
            image.save(out / f"DJI_{i + 1:04d}.JPG", exif=exif, xmp=xmp.encode(), quality=95)


def _crop_around_flight(ortho: Path, flight: Path, out: Path, margin_m: float = 120.0) -> Path:
    """The part of the orthophoto within `margin_m` of the flight (a small, quick pack)."""
    truth = np.genfromtxt(flight / "truth.csv", delimiter=",", names=True)
    with rasterio.open(ortho) as src:
        t = src.transform
        c0 = max(0, int((truth["east_m"].min() - margin_m - t.c) / t.a))
        c1 = min(src.width, int((truth["east_m"].max() + margin_m - t.c) / t.a) + 1)
        r0 = max(0, int((truth["north_m"].max() + margin_m - t.f) / t.e))
        r1 = min(src.height, int((truth["north_m"].min() - margin_m - t.f) / t.e) + 1)
        crop = rasterio.Affine(t.a, 0.0, t.c + c0 * t.a, 0.0, t.e, t.f + r0 * t.e)
        profile = src.profile | {"width": c1 - c0, "height": r1 - r0, "transform": crop}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=Window(c0, r0, c1 - c0, r1 - r0)))
    return out


@pytest.fixture(scope="module")
def dji(tmp_path_factory, ortho_path):
    root = tmp_path_factory.mktemp("dji")
    spec = FlightSpec(agl_m=120.0, duration_s=8.0, fps=2.0, seed=5)
    simulate_flight(ortho_path, root / "flight", spec, progress=False)
    build_pack([_crop_around_flight(ortho_path, root / "flight", root / "crop.tif")],
               root / "pack", progress=False)
    write_dji_folder(root / "flight", root / "photos")
    return root


def test_dji_photo_folder_localises_from_the_pixels_alone(dji):
    proc = subprocess.run([sys.executable, "-m", "skyfix.runtime.apps.cli", "replay", "--frames",
                           str(dji / "photos"), "--map", str(dji / "pack"), "--out",
                           str(dji / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((dji / "out" / "report.json").read_text())
    assert report["frames"] == 16 and report["reference"] == "EXIF GPS" and report["scored"]
    # The camera is only guessed from EXIF (integer 35 mm focal length, no distortion).
    assert report["availability"] >= 0.5
    assert report["fix_cep95_m"] <= 10.0 and report["gross_errors"] == 0
    assert report["fix_cross_track_rms_m"] is not None
    with open(dji / "out" / "trajectory.csv", newline="") as f:
        assert {r["prior"] for r in csv.DictReader(f)} <= {"none", "filter"}  # never GNSS


def test_kml_and_gpx_hold_the_estimate(dji):
    out = dji / "out"
    if not (out / "estimate.gpx").is_file():
        pytest.skip("the DJI replay test did not run first")
    gpx = ET.parse(out / "estimate.gpx").getroot()
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    pts = gpx.findall(".//g:trkpt", ns)
    assert len(pts) >= 30  # 10 Hz over most of 8 s
    lat = np.array([float(p.get("lat")) for p in pts])
    lon = np.array([float(p.get("lon")) for p in pts])
    assert (abs(lat - 48.185) < 0.01).all() and (abs(lon - 16.31) < 0.02).all()  # Schoenbrunn
    times = [datetime.fromisoformat(p.find("g:time", ns).text.replace("Z", "+00:00"))
             for p in pts]
    assert times == sorted(times) and len(set(times)) == len(times)
    kml = ET.parse(out / "estimate.kml").getroot()
    coords = kml.findall(".//{http://www.opengis.net/kml/2.2}coordinates")
    assert len(coords) == 2 and len(coords[0].text.split()) == len(pts)


def test_tlog_and_camera_file_with_an_offset_clock(dji):
    """The same photos with the aircraft's tlog and calibrated camera; the camera clock is
    3 s behind the log and --time-offset puts it right. The log's GNSS may serve as the
    search prior here (gnss_off_at far away), and is also the reference."""
    flight = dji / "flight"
    with open(flight / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    times = dji / "times.csv"
    with open(times, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "t_ns"])
        w.writerows([f"DJI_{i + 1:04d}.JPG", int(r["t_ns"]) - 3 * 10**9]
                    for i, r in enumerate(rows))
    inputs = open_inputs(frames=dji / "photos", frame_times=times,
                         telemetry=flight / "telemetry.tlog", camera=flight / "camera.yaml",
                         time_offset_s=3.0)
    assert inputs.reference == "log GNSS" and inputs.camera.dist[0] == pytest.approx(-0.08)
    assert inputs.frames.frame_times_ns[0] == int(rows[0]["t_ns"])
    result = replay(inputs, dji / "pack", dji / "out_tlog", Config(), 1e6, progress=False)
    assert result.report.availability >= 0.8 and result.report.fix_cep95_m <= 5.0
    with open(dji / "out_tlog" / "trajectory.csv", newline="") as f:
        assert "gnss" in {r["prior"] for r in csv.DictReader(f)}


def test_no_reference_still_writes_the_estimate(dji, tmp_path):
    """Photos with attitude and height but no GPS: replay writes everything, unscored."""
    photos = tmp_path / "nogps"
    photos.mkdir()
    for p in sorted((dji / "photos").iterdir())[:3]:
        im = Image.open(p)
        exif = im.getexif()
        del exif[0x8825]
        im.save(photos / p.name, exif=exif, xmp=im.info["xmp"], quality=95)
    with pytest.raises(SkyfixError, match="no GPS"):
        open_inputs(frames=photos)  # EXIF alone gives no position -> asks for a log
    inputs = open_inputs(frames=photos, telemetry=dji / "flight" / "telemetry.tlog")
    no_ref = replace(inputs, truth=None, reference="none")
    result = replay(no_ref, dji / "pack", tmp_path / "out", Config(), 0.0, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["scored"] is False and report["reference"] == "none"
    assert report["fix_cep50_m"] is None and report["frames"] == 3
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files)


# --- Shared real recordings (skipped without ../shared/data) ----------------------------

def test_cuav_frames_align_with_the_tlog():
    """ArduPlane CMAC flight: frame times from the file names, the Pi camera's intrinsics
    and distortion from the cuav JSON, a plausible attitude and height at every frame."""
    root = shared_file("cuav_cmac_2018-08-05")
    inputs = open_inputs(frames=root / "images", telemetry=root / "flight.tlog",
                         camera=root / "camera_params_PiCamV2_half.json")
    t = inputs.frames.frame_times_ns
    assert len(t) == 18 and (np.diff(t) > 0.5e9).all() and (np.diff(t) < 1.0e9).all()
    assert t[0] == 1533430844_800_000_000  # 2018080501004480Z = 01:00:44.80 UTC
    cam = inputs.camera
    assert (cam.width, cam.height) == (1640, 1232) and cam.fx == pytest.approx(1329.49, abs=0.01)
    assert cam.dist[0] == pytest.approx(0.1664, abs=1e-4) and cam.dist[4] < -0.6
    with open(root / "frames_from_tlog.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    for ti, row in zip(t, listed, strict=True):
        tel = inputs.telemetry.at(int(ti))
        assert tel is not None
        assert abs(np.degrees(tel.roll_rad)) < 30 and abs(np.degrees(tel.pitch_rad)) < 20
        yaw = np.degrees(tel.yaw_rad) % 360
        assert abs((yaw - float(row["yaw_deg"]) + 180) % 360 - 180) < 2.0  # ~NNW
        assert tel.agl_m == pytest.approx(float(row["rel_alt_home_m"]), abs=0.5)
    assert inputs.reference == "log GNSS"
    assert inputs.truth.covers(t).all()


def test_zr10_photos_with_a_gps_track():
    """PX4 survey photos (EXIF time, 1 s resolution, zero EXIF GPS) with the GPS track CSV
    as telemetry: every frame has a position ~70 m above take-off and a course heading."""
    root = shared_file("zr10_px4_survey_2026-01-13")
    with pytest.raises(SkyfixError, match="no GPS"):
        open_inputs(frames=root / "images")  # the camera had no receiver
    inputs = open_inputs(frames=root / "images", telemetry=root / "gps_utc_from_ulog.csv")
    t = inputs.frames.frame_times_ns
    assert len(t) == 91 and (np.diff(t) > 0).all()
    cam = inputs.camera  # first guess from FocalLengthIn35mmFilm
    assert (cam.width, cam.height) == (2560, 1440) and cam.fx > 0
    agl = np.array([inputs.telemetry.at(int(ti)).agl_m for ti in t])
    assert np.median(agl) == pytest.approx(70.0, abs=3.0)
    with open(root / "frames_gt.csv", newline="") as f:
        gt = list(csv.DictReader(f))
    ref = inputs.truth.at(t)  # (lon, lat) of the log's GNSS at each frame
    err_m = np.hypot((ref[:, 1] - [float(r["lat"]) for r in gt]) * 111_320,
                     (ref[:, 0] - [float(r["lon"]) for r in gt]) * 111_320 * 0.968)
    assert np.median(err_m) < 10.0  # frames_gt is the same track at +0.5 s
