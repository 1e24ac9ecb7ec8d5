"""Argument types and small helpers shared by the command modules."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from skyfix.runtime.core.errors import SkyfixError


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def output_file(path: Path) -> Path:
    """`path` as a file to write later: its folder made now, so that an unusable path
    fails before the work rather than after it."""
    if path.is_dir():
        raise SkyfixError(f"--out {path} is a folder: give the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def pair(text: str) -> tuple[float, float]:
    try:
        start, duration = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers A:B, got {text!r}") from None
    return start, duration


def size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def add_pack_options(p: argparse.ArgumentParser) -> None:
    """The map-pack options of every command that builds a pack (maps build, maps fetch
    --build); `pack_options` turns them into build_pack's arguments."""
    from skyfix.maps.build import DEFAULT_ENCODER_NAME
    from skyfix.models.registry import ENCODER_NAMES

    p.add_argument("--encoder", choices=ENCODER_NAMES, default=DEFAULT_ENCODER_NAME,
                   help="local-feature encoder the runtime will match with (default "
                        f"{DEFAULT_ENCODER_NAME})")
    p.add_argument("--trained-model", type=Path, metavar="ONNX",
                   help="with --encoder xfeat-xd: weights of your own (skyfix models train); "
                        "fly the pack with encoder.trained_model set to the same file")
    p.add_argument("--georef-sigma", type=float, default=0.0, metavar="M",
                   help="the orthophoto's stated 1-sigma horizontal error against the world, "
                        "metres; every position flown on the pack claims it (default 0: not "
                        "stated)")
    p.add_argument("--sign-key", type=Path, metavar="PEM",
                   help="sign the manifest with this Ed25519 private key (manifest.json.sig)")
    p.add_argument("--min-valid", type=float, default=0.5, metavar="FRACTION",
                   help="least share of imagery in a tile (default 0.5); ragged drone orthos"
                        " may want less")
    p.add_argument("--index-min-tiles", type=int, metavar="N",
                   help="build a FAISS index for levels with at least N tiles (default 5000)")


def pack_options(a: argparse.Namespace) -> dict:
    """build_pack's keyword arguments from the options of `add_pack_options`."""
    from skyfix.maps.build import INDEX_MIN_TILES
    from skyfix.models.registry import DEFAULTS, make_encoder

    if a.trained_model is not None and a.encoder != "xfeat-xd":
        raise SkyfixError("--trained-model goes with --encoder xfeat-xd")
    cfg = replace(DEFAULTS, trained_model=trained_model_option(a.trained_model))
    return dict(encoder=make_encoder(a.encoder, cfg), georef_sigma_m=a.georef_sigma,
                sign_key=a.sign_key, min_valid_fraction=a.min_valid,
                index_min_tiles=INDEX_MIN_TILES if a.index_min_tiles is None
                else a.index_min_tiles)


def trained_model_option(path: Path | None) -> str:
    """--trained-model as encoder.trained_model ("" when not given); a missing file is one
    line naming the option, said before any work starts."""
    if path is None:
        return ""
    if not path.is_file():
        raise SkyfixError(f"--trained-model {path}: no such file")
    return str(path)


def log_to_stderr(verbose: bool = False) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
