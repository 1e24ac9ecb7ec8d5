"""The inference runner base class and the backend registry.

A runner wraps one model file on one backend. `Runner.infer(feeds)` checks the
feeds against the model's declared inputs (names, rank, static dims, dtype)
and raises a one-line `SkyfixError` on a mismatch; backends implement only
`_infer`. Backends are registered by name and imported on first use, so that
`import skyfix.runtime.backends` never imports onnxruntime or TensorRT, and a
missing backend is reported, never installed.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyfix.runtime.core.errors import SkyfixError


@dataclass(frozen=True)
class TensorSpec:
    """A declared model tensor. `shape`: int for a static dim, None for a dynamic one."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {np.dtype(self.dtype).name}"


class Runner(ABC):
    """Base class: subclasses set `inputs`/`outputs` and implement `_infer`.

    `provider` says what actually executes the model (e.g. "CPUExecutionProvider",
    "CUDAExecutionProvider", "TensorRT 10.3 fp16 on Orin").
    """

    backend: str = "base"
    provider: str = "unknown"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model. `feeds`: input name -> array; returns output name -> array."""
        self.check_feeds(feeds)
        return self._infer(feeds)

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend's own inference on checked feeds."""

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """Raise SkyfixError (one line) unless `feeds` matches the declared inputs."""
        declared = {spec.name: spec for spec in self.inputs}
        missing = sorted(set(declared) - set(feeds))
        unexpected = sorted(set(feeds) - set(declared))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected input(s) {', '.join(unexpected)}")
            raise SkyfixError(f"{self.backend}: {'; '.join(parts)} "
                              f"(model inputs: {', '.join(declared)})")
        for name, spec in declared.items():
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                raise SkyfixError(f"{self.backend}: input {name} must be a numpy array, "
                                  f"got {type(value).__name__}")
            if value.ndim != len(spec.shape):
                raise SkyfixError(f"{self.backend}: input {name} has rank {value.ndim} "
                                  f"{list(value.shape)}, expected {spec.describe()}")
            for axis, (got, want) in enumerate(zip(value.shape, spec.shape, strict=True)):
                if want is not None and got != want:
                    raise SkyfixError(f"{self.backend}: input {name} dim {axis} is {got}, "
                                      f"expected {spec.describe()}")
            if value.dtype != spec.dtype:
                raise SkyfixError(f"{self.backend}: input {name} has dtype {value.dtype}, "
                                  f"expected {spec.describe()}")

    def close(self) -> None:  # noqa: B027 - backends without resources keep this no-op
        """Release backend resources (device memory, sessions)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = "; ".join(s.describe() for s in self.inputs)
        return f"<{type(self).__name__} {self.backend} on {self.provider}: {ins}>"


_REGISTRY: dict[str, str] = {
    "onnxruntime": "skyfix.runtime.backends.onnxruntime:OnnxRuntimeRunner",
    "tensorrt": "skyfix.runtime.backends.tensorrt:TensorRTRunner",
}


def available_backends() -> tuple[str, ...]:
    """Registered backend names (registered, not necessarily installed)."""
    return tuple(_REGISTRY)


def register_backend(name: str, target: str) -> None:
    """Register `name` -> "module:Class" (imported on first `get_runner(name, ...)`)."""
    if ":" not in target:
        raise ValueError(f"backend target must be 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def get_runner(name: str, model_path: str | Path, **opts: object) -> Runner:
    """A runner for `model_path` on backend `name` ("onnxruntime", "tensorrt")."""
    target = _REGISTRY.get(name)
    if target is None:
        raise SkyfixError(f"unknown inference backend {name!r} "
                          f"(choose from {', '.join(_REGISTRY)})")
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)(Path(model_path), **opts)


_ONNX_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def onnx_type_to_dtype(type_str: str) -> np.dtype:
    """numpy dtype of an ONNX Runtime type string such as "tensor(float)"."""
    if type_str not in _ONNX_DTYPES:
        raise SkyfixError(f"unsupported ONNX tensor type {type_str}")
    return np.dtype(_ONNX_DTYPES[type_str])


def static_dim(dim: object) -> int | None:
    """An int for a static dim; None for symbolic (str), unknown (None) or -1 dims."""
    return dim if isinstance(dim, int) and dim >= 0 else None
