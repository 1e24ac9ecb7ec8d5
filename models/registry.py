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

ENCODER_NAMES = ("rootsift", "xfeat", "xfeat-xd")
DEFAULTS = EncoderConfig()
DEFAULT_VIEW_PX = RectifyConfig().max_view_px


def make_encoder(name: str, cfg: EncoderConfig = DEFAULTS,
                 view_px: int = DEFAULT_VIEW_PX) -> Encoder:
    """The encoder called `name` set up as `cfg` says, for views of at most `view_px` a
    side (rectify.max_view_px): "rootsift", "xfeat" (XFeat as published) or "xfeat-xd"
    (XFeat with skyfix's cross-date head, `skyfix models train`: cfg.trained_model, or the
    shipped weights)."""
    if name == "rootsift":
        return RootSiftEncoder()
    if name in ("xfeat", "xfeat-xd"):
        from skyfix.models.xfeat import DEFAULT_MODEL, XFeatEncoder

        model = DEFAULT_MODEL if name == "xfeat" else trained_weights(cfg)
        return XFeatEncoder(max_features=cfg.max_features, model_path=model,
                            backend=cfg.backend,
                            backend_opts=backend_options(cfg, model, view_px))
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
    from skyfix.runtime.backends.tensorrt import DEFAULT_CACHE_DIR
    from skyfix.runtime.backends.trt_profile import view_profile

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
        if _id_of(name, cfg) == encoder_id:
            return make_encoder(name, cfg, view_px)
    raise SkyfixError(f"map pack encoder {encoder_id!r} is not one this skyfix provides "
                      f"({', '.join(_id_of(n, cfg) for n in ENCODER_NAMES)}): a pack built "
                      "with weights of your own needs encoder.trained_model set to them")


def trained_weights(cfg: EncoderConfig = DEFAULTS) -> Path:
    """The ONNX file of the cross-date encoder "xfeat-xd": cfg.trained_model, or the
    shipped weights (skyfix.models.xfeat.XD_MODEL)."""
    from skyfix.models.xfeat import XD_MODEL

    if not cfg.trained_model:
        return XD_MODEL
    path = Path(cfg.trained_model).expanduser()
    if not path.is_file():
        raise SkyfixError(f"encoder.trained_model {path}: no such file")
    return path


def _id_of(name: str, cfg: EncoderConfig) -> str:
    """An encoder's id; the trained one's is in its manifest (read only when asked)."""
    from skyfix.models.xfeat import XFEAT_ID

    if name == "rootsift":
        return RootSiftEncoder.id
    if name == "xfeat":
        return XFEAT_ID
    from skyfix.models.manifest import load_manifest

    return load_manifest(trained_weights(cfg), verify=False).model_id
