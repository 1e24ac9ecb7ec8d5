"""Provenance of packs and models: an Ed25519 signature over the manifest, made at build
time and checked at load when a trusted key is configured. A re-sealed pack (files
changed, hashes recomputed) passes its hashes but not the signature."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import small_pack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skyfix.maps.build import build_pack
from skyfix.maps.manifest import MANIFEST, manifest_digest
from skyfix.maps.pack import MapPack, verify_pack
from skyfix.maps.trusted import open_pack_and_encoder
from skyfix.models.features import RootSiftEncoder
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(signed pack, its public key, another public key, the unsigned pack)."""
    root = tmp_path_factory.mktemp("provenance")
    unsigned = small_pack(root, 300)
    private, public = key_pair(root, "maker")
    _, stranger = key_pair(root, "stranger")
    pack = build_pack([root / "crop.tif"], root / "signed", RootSiftEncoder(), tile_px=256,
                      progress=False, sign_key=private)
    return pack, public, stranger, unsigned


def trusting(key: Path) -> Config:
    cfg = Config()
    return replace(cfg, trust=replace(cfg.trust, public_key=str(key)))


def test_a_signed_pack_loads_with_its_key_and_without_any(signed):
    pack, public, _, _ = signed
    assert (pack / "manifest.json.sig").is_file()
    MapPack.open(pack, trusted_key=public)
    MapPack.open(pack)  # no key configured: hashes only
    assert open_pack_and_encoder(pack, trusting(public))[0].n_tiles > 0
    assert main(["maps", "verify", str(pack), "--trusted-key", str(public)]) == 0


def test_unsigned_or_foreign_packs_are_refused_when_a_key_is_trusted(signed, capfd):
    pack, public, stranger, unsigned = signed
    with pytest.raises(SkyfixError, match="not signed"):
        open_pack_and_encoder(unsigned, trusting(public))
    with pytest.raises(SkyfixError, match="not signed by the trusted key"):
        MapPack.open(pack, trusted_key=stranger)
    assert main(["maps", "verify", str(pack), "--trusted-key", str(stranger)]) == 2
    assert len(capfd.readouterr().err.strip().splitlines()) == 1


def test_a_resealed_pack_passes_its_hashes_but_not_the_signature(signed, tmp_path):
    """Every tile moved 60 m east, hashes and manifest digest recomputed: `maps verify`
    without a key finds nothing wrong; with the trusted key it is refused."""
    pack, public, _, _ = signed
    bad = tmp_path / "pack"
    shutil.copytree(pack, bad)
    tiles = np.load(bad / "tiles.npy")
    tiles["center_en"][:, 0] += 60.0
    tiles["bounds_en"][:, [0, 2]] += 60.0
    np.save(bad / "tiles.npy", tiles)
    m = json.loads((bad / MANIFEST).read_text())
    m["files"] = {name: file_sha256(bad / name) for name in m["files"]}
    m["manifest_sha256"] = manifest_digest(m)
    (bad / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    assert verify_pack(bad) == []  # hashes and contents are consistent
    with pytest.raises(SkyfixError, match="not signed by the trusted key") as err:
        open_pack_and_encoder(bad, trusting(public))
    assert "\n" not in str(err.value)


def test_maps_sign_signs_an_existing_pack_and_a_bad_key_is_one_line(signed, tmp_path, capfd):
    _, _, _, unsigned = signed
    copy = tmp_path / "pack"
    shutil.copytree(unsigned, copy)
    private, public = key_pair(tmp_path, "late")
    assert main(["maps", "sign", str(copy), "--key", str(private)]) == 0
    MapPack.open(copy, trusted_key=public)
    (tmp_path / "junk.pem").write_text("not a key")
    capfd.readouterr()
    assert main(["maps", "sign", str(copy), "--key", str(tmp_path / "junk.pem")]) == 2
    assert main(["maps", "verify", str(copy), "--trusted-key", str(private)]) == 2
    assert len(capfd.readouterr().err.strip().splitlines()) == 2


def test_a_model_is_checked_against_the_trusted_key(tmp_path, capfd):
    from skyfix.models.manifest import check_model_signature, manifest_path
    from skyfix.models.xfeat import DEFAULT_MODEL

    model = tmp_path / DEFAULT_MODEL.name
    shutil.copy(DEFAULT_MODEL, model)
    shutil.copy(manifest_path(DEFAULT_MODEL), manifest_path(model))
    private, public = key_pair(tmp_path, "models")
    with pytest.raises(SkyfixError, match="not signed"):
        check_model_signature(model, public)
    assert main(["models", "sign", str(model), "--key", str(private)]) == 0
    check_model_signature(model, public)
    manifest_path(model).write_text(manifest_path(model).read_text().replace("}", " }", 1))
    with pytest.raises(SkyfixError, match="not signed by the trusted key"):
        check_model_signature(model, public)
