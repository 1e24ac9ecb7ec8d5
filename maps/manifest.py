"""The manifest of a map pack (manifest.json): its typed content, its own checksum, and
the reader that refuses a manifest of another format, edited or inconsistent, with the
reason."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from skyfix.maps.pack_checks import manifest_problems

FORMAT = "skyfix-pack/2"  # /2: structure channels for matching across dates
MAX_MANIFEST_BYTES = 16_000_000
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """The typed content of manifest.json (`files`: {file name: sha256 hex})."""

    format: str
    crs_wkt: str
    crs_epsg: int | None
    bounds_en: tuple[float, float, float, float]
    gsds_m: tuple[float, ...]
    tile_px: int
    overlap: float
    tile_count: tuple[int, ...]
    encoder_id: str
    encoder_sha256: str
    local_dim: int
    codebook_k: int
    n_features: int
    sources: tuple[str, ...]
    build: dict[str, Any]
    files: dict[str, str]
    created_utc: str
    dem_gsd_m: float | None = None  # set when the pack holds dem.npy
    index_levels: tuple[int, ...] = ()  # levels with a FAISS index file
    index_nprobe: int = 0  # IVF lists probed per global search
    structure_gsds_m: tuple[float, ...] = ()  # per level: GSD of structure_l{L}.npy (or none)
    georef_sigma_m: float = 0.0  # stated 1-sigma horizontal error of the map against the
    # world, metres, per axis (0: not stated); added to what is claimed, not to each fix
    embedding_dim: int = 0  # the encoder's global embedding in each tile's descriptor (0: none)

    @property
    def global_dim(self) -> int:
        """Length of a tile's global descriptor: VLAD (codebook_k x local_dim), then the
        encoder's embedding (skyfix.models.features.global_descriptor)."""
        return self.codebook_k * self.local_dim + self.embedding_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """Parse and type-check; raises ValueError naming the first bad or missing key."""
        missing = [f.name for f in fields(cls)
                   if f.name not in d and f.default is MISSING]
        if missing:
            raise ValueError(f"missing key {missing[0]!r}")
        try:
            m = cls(
                format=str(d["format"]), crs_wkt=str(d["crs_wkt"]),
                crs_epsg=None if d["crs_epsg"] is None else int(d["crs_epsg"]),
                bounds_en=tuple(float(v) for v in d["bounds_en"]),  # type: ignore[arg-type]
                gsds_m=tuple(float(v) for v in d["gsds_m"]), tile_px=int(d["tile_px"]),
                overlap=float(d["overlap"]), tile_count=tuple(int(v) for v in d["tile_count"]),
                encoder_id=str(d["encoder_id"]), encoder_sha256=str(d["encoder_sha256"]),
                local_dim=int(d["local_dim"]), codebook_k=int(d["codebook_k"]),
                n_features=int(d["n_features"]), sources=tuple(str(s) for s in d["sources"]),
                build=dict(d["build"]), files={str(k): str(v) for k, v in d["files"].items()},
                created_utc=str(d["created_utc"]),
                dem_gsd_m=None if d.get("dem_gsd_m") is None else float(d["dem_gsd_m"]),
                index_levels=tuple(int(v) for v in d.get("index_levels", ())),
                index_nprobe=int(d.get("index_nprobe", 0)),
                structure_gsds_m=tuple(float(v) for v in d.get("structure_gsds_m", ())),
                georef_sigma_m=float(d.get("georef_sigma_m", 0.0)),
                embedding_dim=int(d.get("embedding_dim", 0)),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"a value has the wrong type ({e})") from None
        if len(m.bounds_en) != 4 or len(m.tile_count) != len(m.gsds_m) or not m.gsds_m:
            raise ValueError("bounds_en, gsds_m and tile_count are inconsistent")
        if m.structure_gsds_m and len(m.structure_gsds_m) != len(m.gsds_m):
            raise ValueError("structure_gsds_m and gsds_m are inconsistent")
        return m

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including its own `manifest_sha256`."""
        d = asdict(self)
        d["manifest_sha256"] = manifest_digest(d)
        return d


def manifest_digest(d: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest dict, `manifest_sha256` left out."""
    body = {k: v for k, v in d.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()



def read_manifest(path: Path) -> tuple[Manifest | None, list[str]]:
    """The manifest of the pack at `path`, or None and the reason."""
    if not path.is_dir():
        return None, ["not a map pack (no such folder)"]
    mpath = path / MANIFEST
    if not mpath.is_file():
        return None, [f"not a map pack (no {MANIFEST})"]
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES // 1_000_000} MB")
        raw = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except RecursionError:
        return None, [f"{MANIFEST} is unparsable (nested too deeply)"]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, [f"{MANIFEST} is unparsable ({str(e).splitlines()[0]})"]
    if raw.get("format") != FORMAT:
        return None, [f"{MANIFEST} has format {raw.get('format')!r}; this skyfix reads {FORMAT!r}"
                      " (rebuild the pack with `skyfix maps build`)"]
    try:
        digest = manifest_digest(raw)
    except RecursionError:
        return None, [f"{MANIFEST} is unparsable (nested too deeply)"]
    if raw.get("manifest_sha256") != digest:
        return None, [f"{MANIFEST} does not match its own checksum (edited or corrupt)"]
    try:
        manifest = Manifest.from_dict(raw)
    except (ValueError, RecursionError) as e:
        return None, [f"{MANIFEST} is unparsable ({e})"]
    problems = manifest_problems(manifest)
    return (None, [f"{MANIFEST}: {problems[0]}"]) if problems else (manifest, [])
