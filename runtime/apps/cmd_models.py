"""`skyfix models ...`: export, train, inspect, sign, build engines for, benchmark the encoders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skyfix.runtime.apps import args
from skyfix.runtime.apps.cmd_maps import cmd_sign
from skyfix.runtime.core.errors import SkyfixError


def cmd_models_export(a: argparse.Namespace) -> None:
    from skyfix.models.export import export_xfeat

    path = export_xfeat(a.out, a.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.name}.json")


def cmd_models_train(a: argparse.Namespace) -> None:
    from skyfix.models.train import load_config, train

    result = train(load_config(a.config), progress=not a.quiet, max_minutes=a.max_minutes)
    val = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"trained {result.steps} steps in {result.wall_s:.0f} s (loss {result.loss:.4f}, "
          f"validation {val}): wrote {result.onnx} and {result.onnx.name}.json")


def cmd_models_info(a: argparse.Namespace) -> None:
    from skyfix.models.manifest import load_manifest

    manifest = load_manifest(a.model, verify=True)
    rows = manifest.summary_rows()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:>{width}}: {value}")
    print(f"{'':>{width}}  sha256 of {a.model.name} verified")


def cmd_models_engine(a: argparse.Namespace) -> None:
    from skyfix.models.manifest import load_manifest
    from skyfix.models.registry import engine_options
    from skyfix.runtime.backends import tensorrt as trt_backend
    from skyfix.runtime.backends.trt_profile import image_profile
    from skyfix.runtime.core.config import load_config

    load_manifest(a.model, verify=True)
    cfg = load_config(a.config)  # the engine `skyfix run` with this config loads ...
    opts = engine_options(cfg.encoder, a.model, cfg.rectify.max_view_px)
    (name, profile), = opts["shapes"].items()
    low, opt, high = ((shape[3], shape[2]) for shape in profile)  # ... unless told otherwise
    size = a.size or opt
    shapes = image_profile(name, a.min_size or low, size, a.max_size or high)
    precision = a.precision or opts["precision"]
    cache_dir = a.cache_dir or opts["cache_dir"]
    if precision == "int8" and a.calib is None:
        raise SkyfixError("int8 needs --calib FOLDER of map-tile images")
    feeds = trt_backend.calibration_images(a.calib, name, size) if a.calib else None
    # the runner checks the profile against the graph, then says when TensorRT is absent
    path = trt_backend.build_cached_engine(a.model, precision, shapes, feeds, cache_dir,
                                           opts["input_multiple"])
    print(f"engine: {path}")


def cmd_models_bench(a: argparse.Namespace) -> None:
    import subprocess

    import skyfix.models

    script = Path(skyfix.models.__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    if not script.is_file():
        raise SkyfixError(f"{script} not found: the model benchmark runs from a source checkout")
    args.output_file(a.out)
    cmd = [sys.executable, str(script), "--out", str(a.out), "--runs", str(a.runs),
           "--tiles", str(a.tiles)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SkyfixError(f"model benchmark failed (exit status {code})")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the root parser's subparsers."""
    models = sub.add_parser("models", help="export, inspect, build engines for and benchmark "
                                           "the encoder models")
    mo = models.add_subparsers(dest="models_command", required=True)
    from skyfix.models.xfeat import DEFAULT_MODEL

    e = mo.add_parser("export", help="export XFeat to ONNX + manifest (needs make train-deps)")
    e.add_argument("--out", type=Path, default=DEFAULT_MODEL.parent,
                   help=f"output folder (default: the bundled {DEFAULT_MODEL.parent})")
    e.add_argument("--opset", type=int, default=17)
    e.set_defaults(func=cmd_models_export)
    t = mo.add_parser("train", help="train the cross-date encoder head on XFeat and export it "
                                    "(needs make train-deps; resumes from its checkpoint)")
    t.add_argument("--config", required=True, type=Path, metavar="FILE",
                   help="training config (YAML, e.g. configs/train.yaml)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--max-minutes", type=float, metavar="MIN",
                   help="stop at the first checkpoint after MIN minutes and export what there "
                        "is (running again continues)")
    t.set_defaults(func=cmd_models_train)
    n = mo.add_parser("info", help="a model's manifest, with its sha256 verified")
    n.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL,
                   help="ONNX model (default: the bundled XFeat)")
    n.set_defaults(func=cmd_models_info)
    ms = mo.add_parser("sign", help="sign a model's manifest with an Ed25519 private key")
    ms.add_argument("target", type=Path, metavar="MODEL", help="the .onnx file")
    ms.add_argument("--key", required=True, type=Path, metavar="PEM", help="private key")
    ms.set_defaults(func=cmd_sign)
    g = mo.add_parser("engine", help="build (or find cached) the TensorRT engine of a model: "
                      "by default the one `skyfix run` with --config loads")
    g.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL,
                   help="ONNX model (default: the bundled XFeat)")
    g.add_argument("--config", type=Path,
                   help="YAML configuration: encoder.trt_precision, encoder.engine_cache_dir "
                        "and views up to rectify.max_view_px (defaults otherwise)")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="(default: encoder.trt_precision)")
    g.add_argument("--size", type=args.size,
                   help="optimal input WIDTHxHEIGHT (default: the rectified-view size)")
    g.add_argument("--min-size", type=args.size, help="(default: the model's multiple)")
    g.add_argument("--max-size", type=args.size, help="(default: the rectified-view size)")
    g.add_argument("--calib", type=Path, help="folder of map-tile images for INT8 calibration")
    g.add_argument("--cache-dir", type=Path,
                   help="engine cache (default: encoder.engine_cache_dir)")
    g.set_defaults(func=cmd_models_engine)
    k = mo.add_parser("bench", help="encoder latency/throughput/memory benchmark to JSON")
    k.add_argument("--out", type=Path, default=Path("out/bench/models.json"))
    k.add_argument("--runs", type=int, default=20, help="timed runs per size (default 20)")
    k.add_argument("--tiles", type=int, default=24, help="512 px tiles for map-build speed")
    k.add_argument("--threads", type=int, help="CPU threads (default: skyfix's choice)")
    k.set_defaults(func=cmd_models_bench)
