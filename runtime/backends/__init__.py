"""skyfix.runtime.backends: inference runners, registered by name and imported lazily.

    runner = get_runner("onnxruntime", path, provider="cpu")
    outputs = runner.infer({"image": x})      # input names, ranks, dims, dtypes checked
    runner.provider                           # what actually executes the model
"""

from skyfix.runtime.backends.base import (
    Runner,
    TensorSpec,
    available_backends,
    get_runner,
    register_backend,
)

__all__ = ["Runner", "TensorSpec", "available_backends", "get_runner", "register_backend"]
