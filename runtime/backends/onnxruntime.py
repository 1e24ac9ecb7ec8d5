"""ONNX Runtime runner: CPU by default, CUDA when asked for and actually active.

onnxruntime-gpu lists CUDA/TensorRT providers even when their libraries cannot
load and then silently runs on CPU, so after creating the session this runner
reads `session.get_providers()` and reports what really runs in `.provider`.

    provider="cpu"   CPUExecutionProvider only (the default)
    provider="cuda"  CUDA demanded: SkyfixError if the session does not run on it
    provider="auto"  CUDA when it loads, otherwise CPU with a logged warning
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from skyfix.runtime.backends.base import Runner, TensorSpec, onnx_type_to_dtype, static_dim
from skyfix.runtime.core.errors import SkyfixError

log = logging.getLogger(__name__)

ProviderChoice = Literal["cpu", "cuda", "auto"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def default_threads() -> int:
    """Intra-op threads: the cores this process may use, at most 4 (small convnets
    stop scaling there and the rest of the pipeline needs a core too)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class OnnxRuntimeRunner(Runner):
    """One ONNX model in one onnxruntime InferenceSession."""

    backend = "onnxruntime"

    def __init__(self, model_path: Path, provider: ProviderChoice = "cpu",
                 intra_op_threads: int | None = None, device_id: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SkyfixError("onnxruntime is not installed: pip install onnxruntime "
                              "(or onnxruntime-gpu for CUDA)") from None
        if provider not in ("cpu", "cuda", "auto"):
            raise SkyfixError(f"unknown onnxruntime provider {provider!r} "
                              "(choose cpu, cuda or auto)")
        model_path = Path(model_path)
        if not model_path.exists():
            raise SkyfixError(f"model file not found: {model_path}")
        available = ort.get_available_providers()
        if provider == "cuda" and CUDA not in available:
            raise SkyfixError(f"CUDA was requested but onnxruntime {ort.__version__} has no "
                              f"CUDAExecutionProvider (available: {', '.join(available)}); "
                              "install onnxruntime-gpu or use provider=cpu")
        providers: list = [CPU]
        if provider in ("cuda", "auto") and CUDA in available:
            providers = [(CUDA, {"device_id": device_id}), CPU]

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads sleep instead of spinning: the MAVLink threads share these
        # cores (measured on 2 busy cores: XFeat 640x480 70 ms wall vs 82 ms spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # provider load failures are reported below
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SkyfixError(f"onnxruntime cannot load {model_path.name}: {first}") from None

        active = self.session.get_providers()
        self.active_providers: tuple[str, ...] = tuple(active)
        self.provider = active[0]
        self.intra_op_threads = options.intra_op_num_threads
        if provider in ("cuda", "auto") and CUDA in available and CUDA not in active:
            message = ("CUDAExecutionProvider is listed by onnxruntime but did not load "
                       "(CUDA/cuDNN libraries missing or mismatched); running on "
                       f"{self.provider}")
            if provider == "cuda":
                raise SkyfixError(f"CUDA was requested but is not active: {message}")
            log.warning(message)
        elif provider == "auto" and self.provider == CPU:
            log.info("onnxruntime has no CUDA provider here; running on CPU")

        self.model_path = model_path
        self.inputs = tuple(
            TensorSpec(i.name, tuple(static_dim(d) for d in i.shape), onnx_type_to_dtype(i.type))
            for i in self.session.get_inputs())
        self.outputs = tuple(
            TensorSpec(o.name, tuple(static_dim(d) for d in o.shape), onnx_type_to_dtype(o.type))
            for o in self.session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
