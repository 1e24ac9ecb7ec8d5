"""TensorRT optimisation profiles: the (min, opt, max) shapes of each dynamic input, and
their check against the ONNX graph's declared inputs (through ONNX Runtime on the CPU),
so a bad profile is one line on any machine, not a failed engine build minutes into it.
TensorRT is not needed here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from skyfix.runtime.backends.base import TensorSpec
from skyfix.runtime.core.errors import SkyfixError

# input name -> (min, opt, max) shapes of the optimisation profile
ShapeProfile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

MAX_DIM = 8192  # largest dynamic dim of a profile (rectify.max_view_px's own limit)


def image_profile(input_name: str, min_wh: tuple[int, int], opt_wh: tuple[int, int],
                  max_wh: tuple[int, int]) -> ShapeProfile:
    """Profile for a [1, 1, H, W] image input from (width, height) sizes."""
    sizes = (min_wh, opt_wh, max_wh)
    if any(w0 > w1 or h0 > h1 for (w0, h0), (w1, h1) in zip(sizes[:-1], sizes[1:], strict=True)):
        raise SkyfixError(f"engine sizes must grow min <= opt <= max, got "
                          f"{' / '.join(f'{w}x{h}' for w, h in sizes)}")
    return {input_name: tuple((1, 1, h, w) for w, h in sizes)}


def view_profile(input_name: str, view_px: int, multiple: int) -> ShapeProfile:
    """Profile for north-up views of at most `view_px` a side padded to `multiple`:
    min [1, 1, m, m], opt = max [1, 1, S, S] with S = `view_px` rounded up to m."""
    side = -(-view_px // multiple) * multiple
    return image_profile(input_name, (multiple, multiple), (side, side), (side, side))


def check_profile(inputs: Sequence[TensorSpec], shapes: ShapeProfile, multiple: int = 1) -> None:
    """Raise a one-line SkyfixError unless `shapes` fits the model inputs `inputs`: one
    (min, opt, max) entry per dynamic input and none for an unknown name, each of the
    input's rank, static dims as declared, min <= opt <= max, dynamic dims multiples of
    `multiple` from `multiple` to MAX_DIM."""
    declared = {spec.name: spec for spec in inputs}
    unknown = sorted(set(shapes) - set(declared))
    if unknown:
        raise SkyfixError(f"engine profile names input(s) {', '.join(unknown)} the model does "
                          f"not have (inputs: {', '.join(declared)})")
    for name, spec in declared.items():
        if name not in shapes:
            if None in spec.shape:
                raise SkyfixError(f"input {spec.describe()} has dynamic dims and no engine "
                                  "profile: give shapes={name: (min, opt, max)}")
            continue
        triple = shapes[name]
        if len(triple) != 3 or any(len(s) != len(spec.shape) for s in triple):
            raise SkyfixError(f"engine profile of {name} must be 3 shapes (min, opt, max) of "
                              f"rank {len(spec.shape)} like {spec.describe()}, got {triple}")
        for axis, want in enumerate(spec.shape):
            dims = [s[axis] for s in triple]
            if want is not None:
                if dims != [want] * 3:
                    raise SkyfixError(f"engine profile of {name} dim {axis} (min/opt/max) is "
                                      f"{'/'.join(map(str, dims))}, the model fixes it at "
                                      f"{want} ({spec.describe()})")
                continue
            if not dims[0] <= dims[1] <= dims[2]:
                raise SkyfixError(f"engine profile of {name} dim {axis} must grow min <= opt "
                                  f"<= max, got {'/'.join(map(str, dims))}")
            if dims[0] < multiple or dims[2] > MAX_DIM or any(d % multiple for d in dims):
                raise SkyfixError(f"engine profile of {name} dim {axis} (min/opt/max) is "
                                  f"{'/'.join(map(str, dims))}: each must be a multiple of "
                                  f"{multiple} from {multiple} to {MAX_DIM}")


def check_engine_inputs(onnx_path: Path, shapes: ShapeProfile | None, multiple: int = 1) -> None:
    """`check_profile` against the inputs the ONNX graph at `onnx_path` declares (read by
    ONNX Runtime on the CPU; nothing is run). TensorRT is not needed."""
    from skyfix.runtime.backends.onnxruntime import OnnxRuntimeRunner

    graph = OnnxRuntimeRunner(Path(onnx_path), "cpu", intra_op_threads=1)
    try:
        check_profile(graph.inputs, shapes or {}, multiple)
    finally:
        graph.close()
