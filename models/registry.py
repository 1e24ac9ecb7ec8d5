"""Encoders by name, and the encoder a map pack was built with.

A pack records its encoder's id; the runtime builds the same encoder from that id
(so a flight can never match frames with one encoder against tiles of another),
with the backend and threads of the run's configuration.
"""

from __future__ import annotations

from skyfix.models.features import Encoder, RootSiftEncoder
from skyfix.runtime.core.config import EncoderConfig
from skyfix.runtime.core.errors import SkyfixError

ENCODER_NAMES = ("rootsift", "xfeat", "xfeat-xd")
DEFAULTS = EncoderConfig()


def make_encoder(name: str, cfg: EncoderConfig = DEFAULTS) -> Encoder:
    """The encoder called `name` set up as `cfg` says: "rootsift", "xfeat" (XFeat as
    published) or "xfeat-xd" (XFeat with skyfix's cross-date head, `skyfix models train`)."""
    if name == "rootsift":
        return RootSiftEncoder()
    if name in ("xfeat", "xfeat-xd"):
        from skyfix.models.xfeat import DEFAULT_MODEL, XD_MODEL, XFeatEncoder

        opts: dict = {"provider": cfg.provider} if cfg.backend == "onnxruntime" else {}
        if cfg.threads and cfg.backend == "onnxruntime":
            opts["intra_op_threads"] = cfg.threads
        return XFeatEncoder(max_features=cfg.max_features,
                            model_path=DEFAULT_MODEL if name == "xfeat" else XD_MODEL,
                            backend=cfg.backend, backend_opts=opts)
    raise SkyfixError(f"unknown encoder {name!r} (choose from {', '.join(ENCODER_NAMES)})")


def encoder_for_id(encoder_id: str, cfg: EncoderConfig = DEFAULTS) -> Encoder:
    """The encoder whose `id` is `encoder_id` (as recorded in a map pack's manifest)."""
    for name in ENCODER_NAMES:
        if _id_of(name) == encoder_id:
            return make_encoder(name, cfg)
    raise SkyfixError(f"map pack encoder {encoder_id!r} is not one this skyfix provides "
                      f"({', '.join(_id_of(n) for n in ENCODER_NAMES)})")


def _id_of(name: str) -> str:
    """An encoder's id; the trained one's is in its manifest (read only when asked)."""
    from skyfix.models.xfeat import XD_MODEL, XFEAT_ID

    if name == "rootsift":
        return RootSiftEncoder.id
    if name == "xfeat":
        return XFEAT_ID
    from skyfix.models.manifest import load_manifest

    return load_manifest(XD_MODEL, verify=False).model_id
