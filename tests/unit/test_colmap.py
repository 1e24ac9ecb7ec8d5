"""pycolmap loaded the way skyfix loads it leaves zlib and PNG writing working."""

import subprocess
import sys

import pytest

pytest.importorskip("pycolmap", reason="the survey extra (pip install 'skyfix[survey]') is "
                                       "not installed")

# a fresh interpreter: zlib, Pillow and OpenCV not loaded before pycolmap
SCRIPT = """
from skyfix.runtime.core.colmap import load_pycolmap
load_pycolmap("this test")
import zlib
import cv2
import numpy as np
import PIL.Image
a = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
assert zlib.decompress(zlib.compress(a.tobytes())) == a.tobytes()
PIL.Image.fromarray(a).save(OUT + "/pil.png")
assert cv2.imwrite(OUT + "/cv2.png", a)
assert (np.asarray(PIL.Image.open(OUT + "/cv2.png")) == a[:, :, ::-1]).all()
print("ok")
"""


def test_zlib_and_png_writers_work_after_pycolmap(tmp_path):
    # the replay writes its plot (a PNG) after the navigator loaded pycolmap: with the
    # pycolmap wheel's own zlib bound first, that write aborted the process
    run = subprocess.run([sys.executable, "-c", f"OUT = {str(tmp_path)!r}\n{SCRIPT}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
