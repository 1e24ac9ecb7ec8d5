"""Sharded map packs: cut from a real pack (searches agree with the plain pack) and a
synthetic region (lazy loading within the memory budget, coarse-first global search)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.maps.index import search, window_ids
from skyfix.maps.pack import MapPack, pack_info
from skyfix.maps.shard_write import shard_pack, synthetic_region, write_shards
from skyfix.maps.shards import SHARDS_MANIFEST, ShardedPack, open_map_pack
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError


@pytest.fixture(scope="module")
def packs(tmp_path_factory, ortho_path):
    """(plain pack, sharded pack path) of a 900 x 900 px crop of the bundled orthophoto."""
    root = tmp_path_factory.mktemp("shards")
    with rasterio.open(ortho_path) as src:
        win = Window(300, 300, 900, 900)
        profile = {**src.profile, "width": 900, "height": 900,
                   "transform": src.window_transform(win)}
        with rasterio.open(root / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=win))
    build_pack([root / "crop.tif"], root / "pack", tile_px=256, progress=False)
    shard_pack(root / "pack", root / "sharded", 60.0, progress=False)
    return MapPack.open(root / "pack"), root / "sharded"


def _where(pack_or_sharded, hits):
    out = []
    for h in hits:
        if isinstance(pack_or_sharded, ShardedPack):
            shard, local = pack_or_sharded.locate(h.tile_id)
            out.append((*shard.tile_center_en[local], h.level, h.score))
        else:
            out.append((*pack_or_sharded.tile_center_en[h.tile_id], h.level, h.score))
    return np.array(out)


def test_sharded_pack_keeps_every_tile_and_its_features(packs):
    pack, path = packs
    sharded = ShardedPack.open(path)
    assert len(sharded.manifest.shards) > 4
    assert sharded.n_tiles == pack.n_tiles
    assert {p.split("/")[-1] for p in sharded.manifest.files} >= {
        "tiles.npy", "descriptors.npy", "keypoints.npy", "local_descriptors.npy",
        "codebook.npy", "coarse.npy", "ortho.tif"}
    for sid in range(sharded.n_tiles):
        shard, local = sharded.locate(sid)
        i = int(np.flatnonzero((pack.tile_center_en == shard.tile_center_en[local]).all(1)
                               & (pack.tile_level == shard.tile_level[local]))[0])
        en_a, d_a = pack.tile_features(i)
        en_b, d_b = sharded.tile_features(sid)
        np.testing.assert_array_equal(en_a, en_b)
        np.testing.assert_array_equal(d_a, d_b)


def test_window_search_matches_the_plain_pack(packs):
    pack, path = packs
    sharded = ShardedPack.open(path, budget_bytes=1 << 20)
    rng = np.random.default_rng(4)
    for _ in range(30):
        i = int(rng.integers(pack.n_tiles))
        level = int(pack.tile_level[i])
        q = np.asarray(pack.descriptors[int(rng.integers(pack.n_tiles))])
        window = (pack.tile_center_en[i] + rng.normal(size=2) * 30, np.eye(2) * 70.0**2)
        a = _where(pack, search(pack, q, level, 5, window))
        b = _where(sharded, sharded.search(q, level, 5, window))
        assert a.shape == b.shape and len(a)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_global_search_finds_the_tile_through_the_coarse_index(packs):
    pack, path = packs
    sharded = ShardedPack.open(path)
    for i in range(0, pack.n_tiles, 3):
        hit = sharded.search(np.asarray(pack.descriptors[i]), int(pack.tile_level[i]), 1,
                             probe=3)[0]
        shard, local = sharded.locate(hit.tile_id)
        np.testing.assert_array_equal(shard.tile_center_en[local], pack.tile_center_en[i])


def test_a_tampered_shard_is_refused_when_loaded(packs, tmp_path):
    _, path = packs
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    name = json.loads((copy / SHARDS_MANIFEST).read_text())["shards"][2]["name"]
    with open(copy / name / "descriptors.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    sharded = ShardedPack.open(copy)
    sharded.shard(0)
    with pytest.raises(SkyfixError, match="sha256 mismatch"):
        sharded.shard(2)
    raw = json.loads((copy / SHARDS_MANIFEST).read_text())
    raw["cell_m"] = 1.0
    (copy / SHARDS_MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(SkyfixError, match="checksum"):
        ShardedPack.open(copy)


def test_region_pack_stays_within_its_memory_budget(tmp_path):
    manifest, blocks = synthetic_region(300_000, dim=16, tile_m=10.0, seed=2)
    write_shards(blocks, tmp_path / "region", manifest, np.zeros((1, 16), np.float32), 500.0,
                 progress=False)
    info = json.loads((tmp_path / "region" / SHARDS_MANIFEST).read_text())
    assert len(info["shards"]) >= 100
    biggest = max(s["resident_bytes"] for s in info["shards"])
    budget = 4 * biggest
    sharded = ShardedPack.open(tmp_path / "region", budget_bytes=budget, verify=False)
    truth = np.concatenate([b.descriptors for b in blocks()])
    centres = np.concatenate([b.tiles["center_en"] for b in blocks()])
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(40):
        i = int(rng.integers(len(truth)))
        hits = sharded.search(truth[i], 0, 1, window=(centres[i], np.eye(2) * 40.0**2))
        shard, local = sharded.locate(hits[0].tile_id)
        assert (shard.tile_center_en[local] == centres[i]).all()
        hits = sharded.search(truth[i], 0, 1, probe=4)
        shard, local = sharded.locate(hits[0].tile_id)
        found += bool((shard.tile_center_en[local] == centres[i]).all())
        assert sharded.resident_bytes <= budget
    assert found >= 36  # coarse-first search misses only tiles near a shard border
    assert sharded.loads > 4  # shards were evicted and reloaded, not all kept
    with pytest.raises(SkyfixError, match="memory budget"):
        ShardedPack.open(tmp_path / "region", budget_bytes=biggest - 1)


def test_a_window_larger_than_the_budget_is_warned_once(tmp_path, caplog):
    """A budget that cannot hold one frame's search window still works (shards are
    reloaded), but the log says so, once, naming the key to raise."""
    manifest, blocks = synthetic_region(20_000, dim=16, tile_m=10.0, seed=3)
    write_shards(blocks, tmp_path / "region", manifest, np.zeros((1, 16), np.float32), 500.0,
                 progress=False)
    info = json.loads((tmp_path / "region" / SHARDS_MANIFEST).read_text())
    biggest = max(s["resident_bytes"] for s in info["shards"])
    centre = np.concatenate([b.tiles["center_en"] for b in blocks()]).mean(0)
    roomy = ShardedPack.open(tmp_path / "region", budget_bytes=64 * biggest, verify=False)
    roomy.tiles_near(centre, 300.0, 300.0)
    assert roomy.over_budget_windows == 0
    tight = ShardedPack.open(tmp_path / "region", budget_bytes=biggest, verify=False)
    with caplog.at_level(logging.WARNING, logger="skyfix.maps"):
        for _ in range(3):
            ids = tight.tiles_near(centre, 300.0, 300.0)
    assert len(ids) == len(roomy.tiles_near(centre, 300.0, 300.0)) > 0
    assert tight.over_budget_windows == 3
    warned = [r for r in caplog.records if "daemon.map_budget_mb" in r.getMessage()]
    assert len(warned) == 1


def test_the_tile_map_surface_answers_as_the_plain_pack(packs):
    pack, path = packs
    sharded = ShardedPack.open(path, budget_bytes=1 << 20)
    # the same tiles under other ids: compare by centre
    order_a = np.lexsort(pack.tile_center_en.T[::-1])
    ids = np.arange(sharded.n_tiles)
    order_b = np.lexsort(sharded.tile_centers(ids).T[::-1])
    np.testing.assert_array_equal(pack.tile_center_en[order_a],
                                  sharded.tile_centers(ids[order_b]))
    np.testing.assert_array_equal(pack.tile_bounds_en[order_a], sharded.tile_bounds(order_b))
    np.testing.assert_array_equal(pack.tile_level[order_a], sharded.tile_levels(order_b))
    np.testing.assert_allclose(sharded.centre_en, pack.centre_en, atol=1e-6)
    assert len(sharded.structure) == len(pack.structure) > 0 and sharded.dem is None
    cov = np.diag([40.0, 25.0]) ** 2
    for centre in pack.tile_center_en[::7]:
        a, b = window_ids(pack, centre, cov), window_ids(sharded, centre, cov)
        a = pack.nearest_first(a[pack.tile_levels(a) == 0], centre + 3.0)[0]
        b = sharded.nearest_first(b[sharded.tile_levels(b) == 0], centre + 3.0)[0]
        assert len(a)
        np.testing.assert_array_equal(pack.tile_centers(a), sharded.tile_centers(b))
        w_a, w_b = pack.structure_window(0, centre, 50.0), sharded.structure_window(0, centre,
                                                                                    50.0)
        np.testing.assert_array_equal(w_a.channels, w_b.channels)
    with pytest.raises(IndexError):
        sharded.tile_centers(np.array([sharded.n_tiles]))


def test_sharded_packs_are_signed_verified_and_refused_unsigned(packs, tmp_path, capfd):
    from test_provenance import key_pair, trusting

    from skyfix.maps.trusted import open_pack_and_encoder
    from skyfix.runtime.apps.cli import main

    _, path = packs
    private, public = key_pair(tmp_path, "maker")
    copy = tmp_path / "sharded"
    shutil.copytree(path, copy)
    with pytest.raises(SkyfixError, match="not signed"):
        open_pack_and_encoder(copy, trusting(public))
    assert main(["maps", "sign", str(copy), "--key", str(private)]) == 0
    assert (copy / (SHARDS_MANIFEST + ".sig")).is_file()
    pack = open_map_pack(copy, 64 << 20, trusted_key=public)
    assert isinstance(pack, ShardedPack) and pack.budget_bytes == 64 << 20
    # the pack is signed, but its encoder's model (the shipped XFeat) is not: refused too
    with pytest.raises(SkyfixError, match=r"model .*xfeat\.onnx: not signed"):
        open_pack_and_encoder(copy, trusting(public))
    pack, _ = open_pack_and_encoder(copy, Config())
    assert isinstance(pack, ShardedPack)
    assert pack.budget_bytes == Config().daemon.map_budget_mb << 20
    assert main(["maps", "verify", str(copy), "--trusted-key", str(public)]) == 0
    victim = copy / pack.manifest.shards[-1].name / "keypoints.npy"
    victim.write_bytes(victim.read_bytes()[:-8] + b"\x00" * 8)
    capfd.readouterr()
    assert main(["maps", "verify", str(copy)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keypoints.npy does not match its manifest" in err[0], err


def test_maps_info_reads_a_sharded_pack(packs, capsys):
    plain, sharded = packs
    assert main(["maps", "info", str(sharded)]) == 0
    out = {k.strip(): v.strip() for k, v in (line.split(": ", 1) for line in
                                              capsys.readouterr().out.strip().splitlines())}
    info = pack_info(plain)
    assert int(out["shards"]) == ShardedPack.open(sharded).shard_count > 1
    assert out["tiles_per_level"] == str(info.tiles_per_level)
    assert out["encoder_id"] == info.encoder_id and info.shards == 0
