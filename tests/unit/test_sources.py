"""Frame sources and replay inputs: image folders (times from EXIF, names or a CSV),
videos with a start time, camera files, and the one-line errors for bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.logs import read_image_meta
from skyfix.runtime.io.sources import (
    ImageFolder,
    VideoFrames,
    camera_from_exif,
    fit_camera,
    load_camera,
    open_inputs,
)


def _plain(path, size=(64, 48)):
    Image.new("RGB", size, (10, 20, 30)).save(path)


def test_times_from_file_names(tmp_path):
    for name in ("2018080501004550Z.jpg", "2018080501004480Z.jpg"):
        _plain(tmp_path / name)
    folder = ImageFolder.open(tmp_path)
    assert [p.name for p in folder.frame_files] == ["2018080501004480Z.jpg",
                                                    "2018080501004550Z.jpg"]
    assert folder.frame_times_ns.tolist() == [1533430844_800_000_000, 1533430845_500_000_000]
    frames = list(folder.frames())
    assert frames[0].image.shape == (48, 64, 3) and frames[1].t_ns == folder.frame_times_ns[1]


def test_times_from_exif_and_from_a_csv(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769).update({36867: "2024:05:06 12:30:15", 37521: "5"})
    Image.new("RGB", (32, 32)).save(tmp_path / "IMG_1.jpg", exif=exif)
    assert ImageFolder.open(tmp_path).frame_times_ns[0] == 1714998615_500_000_000
    csv_path = tmp_path / "times.csv"
    csv_path.write_text("filename,utc_unix_s\nIMG_1.jpg,1700000000.25\n")
    assert ImageFolder.open(tmp_path, csv_path).frame_times_ns[0] == 1700000000_250_000_000
    csv_path.write_text("filename,utc_unix_s\nother.jpg,1700000001\n")
    with pytest.raises(SkyfixError, match="no time for IMG_1.jpg"):
        ImageFolder.open(tmp_path, csv_path)


def test_bad_image_folders_give_one_clear_line(tmp_path):
    with pytest.raises(SkyfixError, match="no images"):
        ImageFolder.open(tmp_path)
    with pytest.raises(SkyfixError, match="image folder not found"):
        ImageFolder.open(tmp_path / "missing")
    _plain(tmp_path / "photo.jpg")
    with pytest.raises(SkyfixError, match="photo.jpg: no capture time.*--frame-times"):
        ImageFolder.open(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SkyfixError, match="not a readable image"):
        ImageFolder.open(tmp_path)


def test_video_frames_at_the_requested_rate(tmp_path):
    path = tmp_path / "v.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(20):
        out.write(np.full((48, 64, 3), i * 10, np.uint8))
    out.release()
    vid = VideoFrames.open(path, "2024-05-06T12:00:00Z", max_fps=2.0)
    frames = list(vid.frames())
    assert len(frames) == len(vid.frame_times_ns) == 4
    t0 = 1714996800 * 10**9
    assert [f.t_ns - t0 for f in frames] == pytest.approx([0, 5e8, 1e9, 1.5e9], abs=2e6)
    assert abs(int(frames[1].image.mean()) - 50) <= 3  # the 6th frame of the file
    with pytest.raises(SkyfixError, match="not an ISO 8601"):
        VideoFrames.open(path, "noon")


def test_cuav_json_camera_and_scaling(tmp_path):
    path = tmp_path / "cam.json"
    path.write_text(json.dumps({"K": [[1329.5, 0, 810], [0, 1329.3, 618.5], [0, 0, 1]],
                                "D": [[0.166, -0.223, -0.004, 0.002, -0.608]],
                                "xresolution": 1640, "yresolution": 1232}))
    cam = load_camera(path)
    assert (cam.width, cam.fx, cam.cy, cam.dist[4]) == (1640, 1329.5, 618.5, -0.608)
    half = fit_camera(cam, 820, 616, "x")
    assert half.fx == pytest.approx(664.75) and half.dist == cam.dist
    with pytest.raises(SkyfixError, match="frames are 800x500"):
        fit_camera(cam, 800, 500, "x")
    path.write_text('{"K": [1, 2]}')
    with pytest.raises(SkyfixError, match="cam.json"):
        load_camera(path)


def test_camera_first_guess_from_exif(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[41989] = 24  # 24 mm equivalent: 84 deg diagonal field of view
    Image.new("RGB", (4000, 3000)).save(tmp_path / "a.jpg", exif=exif)
    cam = camera_from_exif(read_image_meta(tmp_path / "a.jpg"), "a.jpg")
    diag_fov = 2 * np.degrees(np.arctan(np.hypot(4000, 3000) / 2 / cam.fx))
    assert diag_fov == pytest.approx(84.1, abs=0.2) and cam.cx == pytest.approx(1999.5)
    _plain(tmp_path / "b.jpg")
    with pytest.raises(SkyfixError, match="pass --camera"):
        camera_from_exif(read_image_meta(tmp_path / "b.jpg"), "b.jpg")


def test_inputs_need_one_source_and_overlapping_clocks(tmp_path):
    with pytest.raises(SkyfixError, match="exactly one"):
        open_inputs()
    for name in ("2018080501004480Z.jpg",):
        _plain(tmp_path / name)
    track = tmp_path / "gps.csv"
    track.write_text("unix_s,lat,lon,alt_msl\n1600000000,1.0,2.0,3\n1600000001,1.0001,2.0,3\n")
    CameraModel.from_fov(64, 48, 60.0).save(tmp_path / "cam.yaml")
    with pytest.raises(SkyfixError, match="do not overlap.*--time-offset"):
        open_inputs(frames=tmp_path, telemetry=track, camera=tmp_path / "cam.yaml")
    ok = open_inputs(frames=tmp_path, telemetry=track, camera=tmp_path / "cam.yaml",
                     time_offset_s=1600000000.5 - 1533430844.8)
    assert abs(ok.frames.frame_times_ns[0] - 1600000000_500_000_000) < 1000
    assert ok.telemetry.at(int(ok.frames.frame_times_ns[0])) is not None
