"""Open a map pack and its encoder as the configuration trusts them: with
`trust.public_key` set, the pack's manifest (shards.json for a sharded pack) and the
encoder model's manifest must both be signed by that key (`runtime.core.provenance`);
without it, hashes only (a sharded pack's shards are hashed as they are loaded)."""

from __future__ import annotations

from pathlib import Path

from skyfix.maps.shards import open_map_pack
from skyfix.maps.tilemap import TileMap
from skyfix.models.features import Encoder
from skyfix.models.manifest import check_model_signature
from skyfix.models.registry import encoder_for_id
from skyfix.runtime.core.config import Config


def open_pack_and_encoder(pack_path: Path, cfg: Config) -> tuple[TileMap, Encoder]:
    """The pack at `pack_path`, plain or sharded (shards loaded lazily within
    `daemon.map_budget_mb`), verified, and signature-checked when a trusted key is
    configured, and the encoder it was built with (its model signature-checked too)."""
    key = Path(cfg.trust.public_key) if cfg.trust.public_key else None
    pack = open_map_pack(Path(pack_path), cfg.daemon.map_budget_mb << 20, trusted_key=key)
    encoder = encoder_for_id(pack.encoder_id, cfg.encoder,
                             cfg.rectify.max_view_px)
    model_path = getattr(encoder, "model_path", None)
    if key is not None and model_path is not None:
        check_model_signature(Path(model_path), key)
    return pack, encoder
