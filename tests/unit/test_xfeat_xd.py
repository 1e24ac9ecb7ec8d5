"""The shipped cross-date encoder (models/weights/xfeat-xd.onnx) through the registry, with
no torch; packs of another encoder refused; models without XFeat's outputs refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import rasterio
from conftest import weights_of_ones_own
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.maps.pack import MapPack
from skyfix.models.manifest import load_manifest, manifest_path
from skyfix.models.registry import encoder_for_id, make_encoder
from skyfix.models.xfeat import DEFAULT_MODEL, XD_MODEL, XFEAT_ID, XFeatEncoder
from skyfix.runtime.core.config import EncoderConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256
from skyfix.sim.sample import sample_ortho


def test_shipped_model_and_its_manifest():
    manifest = load_manifest(XD_MODEL)  # sha256 verified
    assert manifest.model_id == "skyfix-xd-v2" and manifest.sha256 == file_sha256(XD_MODEL)
    assert [t.name for t in manifest.outputs] == ["descriptors", "keypoint_logits",
                                                  "reliability", "global"]
    assert manifest.descriptor_dim == 64 and manifest.global_dim == 256
    assert XD_MODEL.stat().st_size < 8_000_000
    trained = [d for d in manifest.training_data if d["split"] == "train"]
    assert trained and all(("public domain" in d["licence"] or "CC BY 4.0" in d["licence"])
                           for d in trained), "shipped weights from data that may not ship"
    assert len(manifest.source["git_commit"]) == 40


def test_registry_loads_it_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from skyfix.models.registry import make_encoder\n"
            "e = make_encoder('xfeat-xd')\n"
            "f = e.extract(np.random.default_rng(0).integers(0, 255, (96, 128), np.uint8))\n"
            "print(e.id, f.descriptors.shape[1], len(f) > 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["skyfix-xd-v2", "64", "True"]


def test_same_keypoints_as_xfeat_other_descriptors(ortho):
    """XFeat's keypoint head is kept (it reads the pixels alone): every place XFeat detects
    a keypoint, and no other. The trained layers change the descriptors, and the
    reliability that ranks the keypoints for the top-k cut."""
    gray = cv2.cvtColor(ortho[0], cv2.COLOR_BGR2GRAY)[200:680, 300:940]
    base = XFeatEncoder(max_features=100_000).extract(gray)
    xd = XFeatEncoder(max_features=100_000, model_path=XD_MODEL).extract(gray)
    assert len(base) > 1000
    assert np.array_equal(np.unique(xd.keypoints, axis=0), np.unique(base.keypoints, axis=0))
    same = np.all(xd.keypoints[:, None] == base.keypoints[None], axis=2)
    i, j = np.nonzero(same)
    cosine = np.sum(xd.descriptors[i] * base.descriptors[j], axis=1)
    assert 0.3 < np.median(cosine) < 0.999


@pytest.fixture(scope="module")
def xfeat_pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("xfeat_pack")
    return build_pack([_crop(root / "crop.tif", 400, 500, 256)], root / "pack",
                      make_encoder("xfeat"), tile_px=256, progress=False)


def _crop(dst, x: int, y: int, size: int):
    """A size x size GeoTIFF crop of the bundled orthophoto at pixel (x, y), written to dst."""
    with rasterio.open(sample_ortho()) as src:
        win = Window(x, y, size, size)
        profile = dict(driver="GTiff", width=size, height=size, count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(win))
        data = src.read(window=win)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def test_pack_of_another_encoder_is_refused(xfeat_pack):
    xd = encoder_for_id("skyfix-xd-v2")
    assert xd.id == "skyfix-xd-v2" and xd.model_path == XD_MODEL
    assert encoder_for_id(XFEAT_ID).model_path == DEFAULT_MODEL
    with pytest.raises(SkyfixError, match="built with encoder 'xfeat-onnx-v1'") as exc:
        MapPack.open(xfeat_pack, encoder_id=xd.id)
    assert "\n" not in str(exc.value)
    assert MapPack.open(xfeat_pack, encoder_id=XFEAT_ID).manifest.encoder_id == XFEAT_ID


def test_a_model_without_xfeat_outputs_is_refused(tmp_path):
    model = tmp_path / "other.onnx"
    shutil.copy(DEFAULT_MODEL, model)
    raw = json.loads(manifest_path(DEFAULT_MODEL).read_text())
    raw["outputs"][0]["name"] = "features"
    manifest_path(model).write_text(json.dumps(raw))
    with pytest.raises(SkyfixError, match="does not have XFeat's outputs") as exc:
        XFeatEncoder(model_path=model)
    assert "\n" not in str(exc.value)


def test_an_xd_pack_carries_the_embedding_beside_vlad(tmp_path):
    """The trained network's global embedding goes into each tile's descriptor, after the
    VLAD; a view described the same way finds its tile; a view without one is refused."""
    xd = make_encoder("xfeat-xd")
    pack = MapPack.open(build_pack([_crop(tmp_path / "crop.tif", 300, 400, 512)],
                                   tmp_path / "pack", xd, tile_px=256, progress=False),
                        encoder_id=xd.id)
    m = pack.manifest
    assert xd.embedding_dim == 256 and m.embedding_dim == 256
    assert pack.descriptors.shape[1] == m.codebook_k * m.local_dim + 256 == m.global_dim
    assert np.allclose(np.linalg.norm(pack.descriptors, axis=1), 1, atol=1e-4)
    ids = np.flatnonzero(pack.tile_levels(np.arange(m.tile_count[0] + m.tile_count[1])) == 0)
    assert len(ids) == 9
    hits = 0
    for tile in ids:
        e0, n0, e1, n1 = pack.tile_bounds(np.array([tile]))[0]
        shift = 0.1 * (e1 - e0)  # a view a tenth of a tile off the tile
        view = pack.map_image(m.gsds_m[0], (e0 + shift, n0 - shift, e1 + shift, n1 - shift))
        f = xd.extract(view.gray, view.valid)
        assert f.embedding is not None and abs(np.linalg.norm(f.embedding) - 1) < 1e-5
        q = pack.global_descriptor(f.descriptors, f.embedding)
        hits += int(ids[np.argmax(pack.descriptors[ids] @ q)] == tile)
    assert hits >= 8
    with pytest.raises(SkyfixError, match="256-d embedding") as exc:
        pack.global_descriptor(f.descriptors)
    assert "\n" not in str(exc.value)
    # the plain XFeat encoder has no embedding, its packs none
    assert make_encoder("xfeat").embedding_dim == 0


def test_weights_of_ones_own_through_encoder_trained_model(tmp_path):
    """encoder.trained_model names the weights xfeat-xd runs; a pack of them opens only
    with that key set; a missing file is one line."""
    model = weights_of_ones_own(tmp_path / "mine", "mine-v1")
    mine = EncoderConfig(trained_model=str(model))
    enc = make_encoder("xfeat-xd", mine)
    assert enc.id == "mine-v1" and enc.model_path == model
    assert encoder_for_id("mine-v1", mine).model_path == model
    assert encoder_for_id("skyfix-xd-v2").model_path == XD_MODEL  # the default: shipped
    with pytest.raises(SkyfixError, match="encoder.trained_model") as exc:
        encoder_for_id("mine-v1")
    assert "\n" not in str(exc.value)
    with pytest.raises(SkyfixError, match="no such file") as exc:
        make_encoder("xfeat-xd", EncoderConfig(trained_model=str(tmp_path / "gone.onnx")))
    assert "\n" not in str(exc.value)
