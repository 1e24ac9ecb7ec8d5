"""Who made a map pack or a model: an Ed25519 signature over its manifest.

A manifest lists the sha256 of every file it covers, so a signature over the manifest's
bytes covers them all. The signature sits next to it (`manifest.json` ->
`manifest.json.sig`, 128 hex digits). Hashes alone prove only that nothing changed by
accident: anyone can rebuild a manifest after changing the files ("re-sealing"); only the
holder of the private key can sign one.

Keys are PEM files, e.g. made with OpenSSL:
    openssl genpkey -algorithm ed25519 -out pack-signing.pem      (private: keep it safe)
    openssl pkey -in pack-signing.pem -pubout -out pack-trust.pem  (public: configure it)
"""

from __future__ import annotations

from pathlib import Path

from skyfix.runtime.core.errors import SkyfixError

SIGNATURE_SUFFIX = ".sig"
_MAX_KEY_BYTES = 16_000


def signature_path(manifest: Path) -> Path:
    """Where the signature of `manifest` lives."""
    return manifest.with_name(manifest.name + SIGNATURE_SUFFIX)


def _read_key(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"{what} not found: {path}")
    data = path.read_bytes()[:_MAX_KEY_BYTES + 1]
    if len(data) > _MAX_KEY_BYTES:
        raise SkyfixError(f"{what} {path} is too large to be a key")
    return data


def load_private_key(path: Path):
    """The Ed25519 private key in the PEM file `path` (unencrypted PKCS#8)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(_read_key(path, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise SkyfixError(f"signing key {path}: not an unencrypted PEM private key "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SkyfixError(f"signing key {path}: an Ed25519 key is needed "
                          "(openssl genpkey -algorithm ed25519)")
    return key


def load_public_key(path: Path):
    """The Ed25519 public key in the PEM file `path`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(_read_key(path, "trusted key"))
    except (ValueError, TypeError) as exc:
        raise SkyfixError(f"trusted key {path}: not a PEM public key "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SkyfixError(f"trusted key {path}: an Ed25519 public key is needed")
    return key


def sign_manifest(manifest: Path, private_key: Path) -> Path:
    """Sign the bytes of `manifest` with the key in `private_key`; returns the signature
    file written next to it."""
    key = load_private_key(private_key)
    out = signature_path(manifest)
    out.write_text(key.sign(Path(manifest).read_bytes()).hex() + "\n")
    return out


def check_manifest_signature(manifest: Path, trusted_key: Path, what: str) -> None:
    """Raise a one-line SkyfixError naming `what` unless `manifest` carries a valid
    signature by `trusted_key`."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(trusted_key)
    sig_file = signature_path(manifest)
    if not sig_file.is_file():
        raise SkyfixError(f"{what}: not signed ({sig_file.name} missing) but a trusted key "
                          f"is configured ({trusted_key}); sign it or use a signed one")
    try:
        signature = bytes.fromhex(sig_file.read_text(encoding="ascii", errors="replace")
                                  [:200].strip())
        key.verify(signature, Path(manifest).read_bytes())
    except (ValueError, InvalidSignature):
        raise SkyfixError(f"{what}: {manifest.name} is not signed by the trusted key "
                          f"{trusted_key} (changed after signing, or signed by someone else)"
                          ) from None
