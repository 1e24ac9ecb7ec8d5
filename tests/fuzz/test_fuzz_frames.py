"""Fuzzing frame decoding: truncated and mutated JPEG/PNG files of the bundled real
orthophoto, zero-size files, and in-memory images of the wrong dtype, channel count or
size, or full of NaN, through the frame readers, `to_gray`, `rectify` and the daemon's
vision thread. Each ends as a frame, a SkyfixError, or a counted drop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from fuzz_support import START_NS, fuzz, offline_daemon
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rasterio.windows import Window

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import RectifyConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Frame, Telemetry, UnreadableFrame
from skyfix.runtime.io.camera_source import valid_image
from skyfix.runtime.io.sources import ImageFolder
from skyfix.runtime.nav.rectify import rectify, to_gray
from skyfix.sim.sample import sample_ortho

CAMERA = CameraModel(160, 120, 150.0, 150.0, 79.5, 59.5)
LEVEL = Telemetry(START_NS, 0.02, -0.03, 0.4, 80.0, 300.0)


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    """A 160 x 120 patch of the bundled real orthophoto, encoded as JPEG and PNG."""
    with rasterio.open(sample_ortho()) as src:
        rgb = src.read((1, 2, 3), window=Window(300, 300, 160, 120))
    bgr = np.ascontiguousarray(np.moveaxis(rgb, 0, -1)[:, :, ::-1])
    return {ext: cv2.imencode(ext, bgr)[1].tobytes() for ext in (".jpg", ".png")}


def read_folder(folder: Path):
    """Open the folder and read every frame: (frames, drops), or None when refused."""
    try:
        images = ImageFolder.open(folder)
    except SkyfixError as exc:
        assert "\n" not in str(exc)
        return None
    frames, drops = [], []
    for item in images.frames():
        if isinstance(item, Frame):
            frames.append(item)
        else:
            assert isinstance(item, UnreadableFrame) and item.reason
            drops.append(item.index)
    assert len(frames) + len(drops) == len(images.frame_files)
    return frames, drops


@fuzz(40)
@given(ext=st.sampled_from([".jpg", ".png"]), data=st.data())
def test_truncated_and_mutated_image_files(encoded, tmp_path_factory, ext, data):
    blob = bytearray(encoded[ext])
    for p in data.draw(st.lists(st.integers(0, len(blob) - 1), max_size=6)):
        blob[p] = data.draw(st.integers(0, 255))
    blob = blob[:data.draw(st.integers(0, len(blob)))]
    folder = tmp_path_factory.mktemp("frames")
    (folder / f"cam_20260101120000{ext}").write_bytes(encoded[ext])  # one good frame
    (folder / f"cam_20260101120001{ext}").write_bytes(bytes(blob))
    result = read_folder(folder)
    if result is None:
        return
    frames, drops = result
    assert 0 in [f.index for f in frames]  # the good frame still comes through
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
        gray = to_gray(f.image)
        assert gray.shape == f.image.shape[:2] and gray.dtype == np.uint8


def test_zero_size_and_non_image_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "cam_20260101120000.jpg").write_bytes(b"")
    with pytest.raises(SkyfixError, match="not a readable image") as exc:
        ImageFolder.open(tmp_path)
    assert "\n" not in str(exc.value)


images = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64,
                                np.bool_]),
               hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=24)),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3)),
               elements=st.sampled_from([np.nan, np.inf, -np.inf, 0.5])),
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 24), st.integers(0, 24),
                                   st.integers(0, 6))),
)


@fuzz(150)
@given(image=images)
def test_to_gray_gives_uint8_gray_or_refuses(image):
    try:
        gray = to_gray(image)
    except SkyfixError as exc:
        assert "\n" not in str(exc)
        assert not valid_image(image)  # the daemon never hands such a frame on
        return
    assert gray.dtype == np.uint8 and gray.shape == image.shape[:2]


@fuzz(60)
@given(image=st.one_of(images, hnp.arrays(np.uint8, st.sampled_from(
    [(120, 160, 3), (120, 160), (120, 160, 4), (240, 320, 3), (119, 160, 3)]))),
    roll=st.floats(-4, 4) | st.just(np.nan), agl=st.floats(-10, 500) | st.just(np.nan))
def test_rectify_makes_a_view_or_nothing(image, roll, agl):
    tel = Telemetry(START_NS, roll, LEVEL.pitch_rad, LEVEL.yaw_rad, agl, 300.0)
    try:
        view = rectify(Frame(0, START_NS, image), tel, CAMERA, 0.5, RectifyConfig())
    except SkyfixError as exc:
        assert "\n" not in str(exc)
        return
    if view is not None:
        assert view.image.dtype == np.uint8 and view.image.shape == view.mask.shape
        assert np.isfinite(view.footprint_m).all()


def test_vision_thread_counts_bad_frames_and_keeps_running():
    """Frames of every bad kind through the daemon's vision thread: each counted as a
    bad frame, none raises, the thread is still alive afterwards."""
    daemon = offline_daemon()
    bad = [np.zeros((0, 0, 3), np.uint8), np.zeros((120, 160, 2), np.uint8),
           np.full((120, 160, 3), np.nan, np.float32), np.zeros((120, 160, 3), np.float64),
           np.zeros(5, np.uint8), np.zeros((8, 8, 3), np.uint8), "not an array"]
    stop = threading.Event()
    thread = threading.Thread(target=daemon._guard, args=(daemon._vision_loop, stop))
    thread.start()
    try:
        for i, image in enumerate(bad):
            daemon.queue.put(Frame(i, time.time_ns(), image))  # type: ignore[arg-type]
            deadline = time.monotonic() + 5.0
            while daemon.stats.frames <= i and time.monotonic() < deadline:
                time.sleep(0.01)
        assert thread.is_alive() and not stop.is_set()
    finally:
        stop.set()
        thread.join(5.0)
    s = daemon.stats  # every frame dropped and counted, whichever check caught it
    dropped = (s.bad_frames + getattr(s, "frozen_frames", 0)
               + getattr(s, "mis_stamped_frames", 0))
    assert s.frames == len(bad) and dropped == len(bad)
    assert daemon.stats.frame_errors == 0
