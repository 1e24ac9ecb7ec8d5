"""Encoders by name, and the encoder a map pack was built with.

A pack records its encoder's id; the runtime builds the same encoder from that id
(so a flight can never match frames with one encoder against tiles of another),
with the backend of the run's configuration: ONNX Runtime's provider and threads, or
a TensorRT engine of the configured precision for views up to the rectified-view size.
"""

from __future__ import annotations

from pathlib import Path

from skyfix.models.features import Encoder, RootSiftEncoder
from skyfix.runtime.core.config import EncoderConfig, RectifyConfig
from skyfix.runtime.core.errors import SkyfixError

ENCODER_NAMES = ("rootsift", "xfeat")
DEFAULTS = EncoderConfig()
DEFAULT_VIEW_PX = RectifyConfig().max_view_px


def make_encoder(name: str, cfg: EncoderConfig = DEFAULTS,
                 view_px: int = DEFAULT_VIEW_PX) -> Encoder:
    """The encoder called `name` ("rootsift" or "xfeat") set up as `cfg` says, for views
    of at most `view_px` a side (rectify.max_view_px)."""
    if name == "rootsift":
        return RootSiftEncoder()
    if name == "xfeat":
        from skyfix.models.xfeat import DEFAULT_MODEL, XFeatEncoder

        return XFeatEncoder(max_features=cfg.max_features, backend=cfg.backend,
                            backend_opts=backend_options(cfg, DEFAULT_MODEL, view_px))
    raise SkyfixError(f"unknown encoder {name!r} (choose from {', '.join(ENCODER_NAMES)})")


def backend_options(cfg: EncoderConfig, model: Path, view_px: int) -> dict:
    """The runner options `cfg` gives the network `model`: ONNX Runtime's provider and
    threads, or `engine_options` for TensorRT."""
    if cfg.backend == "tensorrt":
        return engine_options(cfg, model, view_px)
    opts: dict = {"provider": cfg.provider}
    if cfg.threads:
        opts["intra_op_threads"] = cfg.threads
    return opts


def engine_options(cfg: EncoderConfig, model: Path, view_px: int) -> dict:
    """TensorRTRunner options of `cfg` for `model`: precision, engine cache folder, the
    profile of views up to `view_px` a side, and the model's input multiple (from its
    manifest)."""
    from skyfix.models.manifest import load_manifest
    from skyfix.runtime.backends.tensorrt import DEFAULT_CACHE_DIR, view_profile

    manifest = load_manifest(model, verify=False)
    multiple = manifest.input_multiple
    return {"precision": cfg.trt_precision,
            "shapes": view_profile(manifest.inputs[0].name, view_px, multiple),
            "cache_dir": Path(cfg.engine_cache_dir) if cfg.engine_cache_dir
            else DEFAULT_CACHE_DIR,
            "input_multiple": multiple}


def encoder_for_id(encoder_id: str, cfg: EncoderConfig = DEFAULTS,
                   view_px: int = DEFAULT_VIEW_PX) -> Encoder:
    """The encoder whose `id` is `encoder_id` (as recorded in a map pack's manifest)."""
    for name in ENCODER_NAMES:
        if _ids()[name] == encoder_id:
            return make_encoder(name, cfg, view_px)
    raise SkyfixError(f"map pack encoder {encoder_id!r} is not one this skyfix provides "
                      f"({', '.join(_ids().values())})")


def _ids() -> dict[str, str]:
    from skyfix.models.xfeat import XFEAT_ID

    return {"rootsift": RootSiftEncoder.id, "xfeat": XFEAT_ID}
