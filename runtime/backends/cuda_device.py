"""CUDA device memory and a stream for the TensorRT runner: cuda-python's runtime
bindings (`cuda.bindings.runtime`, or the older `cuda.cudart`), or pycuda where that is
what is installed. Both are imported only when a device is opened."""

from __future__ import annotations

from typing import Any

import numpy as np

from skyfix.runtime.core.errors import SkyfixError


class _CudaPython:
    """Device buffers and a stream through cuda-python's runtime bindings."""

    def __init__(self, device_id: int) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self._check(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        props = self._check(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
        name = props.name
        self.gpu_name = (name.decode(errors="replace") if isinstance(name, bytes)
                         else str(name)).strip("\x00 ")

    def _check(self, result: tuple, what: str) -> Any:
        err, *rest = result
        if int(err) != 0:
            raise SkyfixError(f"CUDA error in {what}: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def htod(self, dst: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, host.ctypes.data, host.nbytes, kind,
                                            self.stream), "cudaMemcpyAsync H2D")

    def dtoh(self, host: np.ndarray, src: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, src, host.nbytes, kind,
                                            self.stream), "cudaMemcpyAsync D2H")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


class _PyCuda:
    """The same operations through pycuda (only when that is what is installed)."""

    def __init__(self, device_id: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        device = cuda.Device(device_id)
        self.gpu_name = device.name()
        self.context = device.retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()
        self._allocations: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(max(nbytes, 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def htod(self, dst: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, host, self.stream)

    def dtoh(self, host: np.ndarray, src: int) -> None:
        self.cuda.memcpy_dtoh_async(host, src, self.stream)

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.context.pop()


def open_device(device_id: int = 0) -> CudaDevice:
    """CUDA memory/stream helper: cuda-python if importable, else pycuda, else SkyfixError."""
    try:
        return _CudaPython(device_id)
    except ImportError:
        pass
    try:
        return _PyCuda(device_id)
    except ImportError:
        raise SkyfixError("TensorRT needs CUDA bindings: pip install cuda-python "
                          "(or have pycuda installed)") from None


CudaDevice = _CudaPython | _PyCuda
