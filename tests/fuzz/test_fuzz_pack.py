"""Fuzzing map pack loading on a real pack (built from a crop of the bundled Vienna
orthophoto): flipped bytes anywhere, manifest values replaced by anything JSON can hold
(re-signed so they get past the checksum), and .npy files swapped for arrays of other
shapes and dtypes or with damaged headers (with hashes made to match). Opening ends as a
MapPack or a one-line SkyfixError naming the pack."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import small_pack
from fuzz_support import fuzz
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skyfix.maps.manifest import MANIFEST, manifest_digest
from skyfix.maps.pack import PACK_FILES, MapPack, verify_pack
from skyfix.runtime.core.errors import SkyfixError

NPY_FILES = [n for n in PACK_FILES if n.endswith(".npy")]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return small_pack(tmp_path_factory.mktemp("fuzz_pack"), 400)


def copy(pack: Path, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("p") / "pack"
    shutil.copytree(pack, dst)
    return dst


def open_or_refuse(path: Path, verify: bool = True) -> MapPack | None:
    try:
        opened = MapPack.open(path, verify=verify)
    except SkyfixError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith(f"map pack {path}: ")
        return None
    assert opened.n_tiles == len(opened.tile_center_en) == opened.descriptors.shape[0]
    return opened


def resign(path: Path, manifest: dict, name: str | None = None) -> None:
    """Write `manifest` with `name`'s current hash and a matching manifest_sha256."""
    from skyfix.maps.pack import file_sha256

    if name is not None and isinstance(manifest.get("files"), dict):
        manifest["files"][name] = file_sha256(path / name)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_the_unmodified_pack_opens(pack):
    assert open_or_refuse(pack) is not None and verify_pack(pack) == []


@fuzz(25)
@given(name=st.sampled_from([*PACK_FILES, MANIFEST]), data=st.data())
def test_flipped_bytes_are_refused_and_named(pack, tmp_path_factory, name, data):
    path = copy(pack, tmp_path_factory)
    buf = bytearray((path / name).read_bytes())
    for p in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=4,
                                unique=True)):
        buf[p] ^= data.draw(st.integers(1, 255))
    (path / name).write_bytes(bytes(buf))
    with pytest.raises(SkyfixError, match=name.replace(".", r"\.")) as exc:
        MapPack.open(path)
    assert "\n" not in str(exc.value)
    if name != MANIFEST:  # without re-hashing: a structural error or a pack, never a crash
        open_or_refuse(path, verify=False)


@fuzz(60)
@given(data=st.data())
def test_resigned_manifest_with_any_values(pack, tmp_path_factory, data):
    path = copy(pack, tmp_path_factory)
    manifest = json.loads((path / MANIFEST).read_text())
    keys = sorted(k for k in manifest if k not in ("format", "manifest_sha256"))
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()):
            manifest[key] = data.draw(json_values)
        else:
            del manifest[key]
    resign(path, manifest)
    open_or_refuse(path)


def damaged_npy(data, original: bytes) -> bytes:
    draw = data.draw
    kind = draw(st.sampled_from(["array", "header", "truncated"]))
    if kind == "array":  # a well-formed .npy of another dtype / shape (maybe structured)
        dtype = draw(st.sampled_from(["<f4", "<f2", "<f8", "<i4", "|u1", ">f4",
                                      [("id", "<i4"), ("x", "<f8")]]))
        arr = draw(hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=3,
                                                                 max_side=5)))
        out = io.BytesIO()
        np.save(out, arr, allow_pickle=False)
        return out.getvalue()
    buf = bytearray(original)
    if kind == "header":  # damage inside the text header (dtype, shape, order)
        for p in draw(st.lists(st.integers(8, min(127, len(buf) - 1)), min_size=1, max_size=3)):
            buf[p] = draw(st.integers(32, 126))
        return bytes(buf)
    return bytes(buf[:draw(st.integers(0, len(buf) - 1))])


@fuzz(60)
@given(name=st.sampled_from(NPY_FILES), data=st.data())
def test_npy_files_with_matching_hashes_but_wrong_content(pack, tmp_path_factory, name, data):
    path = copy(pack, tmp_path_factory)
    (path / name).write_bytes(damaged_npy(data, (path / name).read_bytes()))
    resign(path, json.loads((path / MANIFEST).read_text()), name)
    opened = open_or_refuse(path)
    if opened is not None:  # only possible when the array is still what the pack needs
        for t in range(opened.n_tiles):
            en, desc = opened.tile_features(t)
            assert len(en) == len(desc)
