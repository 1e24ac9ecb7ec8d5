"""Packs whose hashes match but whose content is absurd (re-sealed: files changed, then
the manifest's hashes recomputed) are refused with one line, and a pack truncated while in
use gives an error, not SIGBUS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import small_pack

from skyfix.maps.manifest import MANIFEST, manifest_digest
from skyfix.maps.pack import MapPack, verify_pack
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return small_pack(tmp_path_factory.mktemp("trust"), 300)


def reseal(folder: Path, manifest_edit=None) -> None:
    """Recompute every file hash and the manifest's own digest, as an attacker would."""
    m = json.loads((folder / MANIFEST).read_text())
    if manifest_edit:
        manifest_edit(m)
    m["files"] = {name: file_sha256(folder / name) for name in m["files"]}
    m["manifest_sha256"] = manifest_digest(m)
    (folder / MANIFEST).write_text(json.dumps(m))


def spoil_array(name: str, change):
    def edit(folder: Path) -> None:
        a = np.load(folder / name)
        change(a)
        np.save(folder / name, a)
        reseal(folder)
    return edit


def _centre_nan(t):
    t["center_en"][3] = np.nan


def _centre_far(t):
    t["center_en"][3] += 1e7
    t["bounds_en"][3] += 1e7


def _manifest(change):
    def edit(folder: Path) -> None:
        reseal(folder, change)
    return edit


CASES = {
    "NaN tile centre": spoil_array("tiles.npy", _centre_nan),
    "tile 10000 km away": spoil_array("tiles.npy", _centre_far),
    "negative feature count": spoil_array("tiles.npy", lambda t: t["feat_count"].__setitem__(
        0, -5)),
    "NaN keypoint": spoil_array("keypoints.npy", lambda a: a.__setitem__((0, 0), np.nan)),
    "keypoint 1e6 m off": spoil_array("keypoints.npy", lambda a: a.__setitem__((1, 1), 1e6)),
    "inf local descriptor": spoil_array("local_descriptors.npy",
                                        lambda a: a.__setitem__((2, 2), np.inf)),
    "NaN global descriptor": spoil_array("descriptors.npy",
                                         lambda a: a.__setitem__((0, 0), np.nan)),
    "scaled global descriptors": spoil_array("descriptors.npy", lambda a: a.__imul__(3.0)),
    "NaN codebook": spoil_array("codebook.npy", lambda a: a.__setitem__((0, 0), np.nan)),
    "zero GSD": _manifest(lambda m: m.__setitem__("gsds_m", [0.0, 0.6])),
    "inverted bounds": _manifest(lambda m: m.__setitem__("bounds_en", [1, 1, 0, 0])),
    "absurd tile size": _manifest(lambda m: m.__setitem__("tile_px", 10**9)),
    "deeply nested build": _manifest(lambda m: m.__setitem__("build", {})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resealed_absurd_pack_is_refused_in_one_line(pack, tmp_path, case, capfd):
    bad = tmp_path / "pack"
    shutil.copytree(pack, bad)
    CASES[case](bad)
    if case == "deeply nested build":  # written by hand: json cannot write it
        text = (bad / MANIFEST).read_text()
        (bad / MANIFEST).write_text(text.replace('"build": {}', '"build": '
                                                 + "[" * 100_000 + "]" * 100_000))
    with pytest.raises(SkyfixError) as err:
        MapPack.open(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert verify_pack(bad)
    assert main(["maps", "verify", str(bad)]) == 2
    assert len(capfd.readouterr().err.strip().splitlines()) == 1


def test_the_intact_pack_passes_every_content_check(pack):
    assert verify_pack(pack) == []
    MapPack.open(pack)


TRUNCATE = """
import os, sys
from pathlib import Path
from skyfix.maps.pack import MapPack
from skyfix.maps.index import search
from skyfix.runtime.core.errors import SkyfixError
pack = MapPack.open(Path(sys.argv[1]), in_ram_max_bytes=0)
query = pack.descriptors[0].copy()
os.truncate(Path(sys.argv[1]) / sys.argv[2], 200)
try:
    if sys.argv[2] == "descriptors.npy":
        search(pack, query, 0, 3)
    else:
        pack.tile_features(pack.n_tiles - 1)
except SkyfixError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("name", ["keypoints.npy", "local_descriptors.npy", "descriptors.npy"])
def test_a_pack_truncated_in_use_is_an_error_not_sigbus(pack, tmp_path, name):
    bad = tmp_path / "pack"
    shutil.copytree(pack, bad)
    proc = subprocess.run([sys.executable, "-c", TRUNCATE, str(bad), name],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1500:])  # -7 would be SIGBUS
    assert f"refused: map pack {bad}: {name} was truncated" in proc.stdout
