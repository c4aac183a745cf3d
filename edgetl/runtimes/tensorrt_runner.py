"""TensorRT runner for serialized engines (``.engine`` / ``.plan``), written against the TensorRT 10 Python API.

Deserialises the engine, creates an execution context, binds device buffers by tensor name and enqueues
``execute_async_v3`` on a CUDA stream. One ``run`` is what trtexec calls a query's latency: host-to-device
copy, compute and device-to-host copy, then a stream synchronise. Device memory comes from PyTorch's CUDA
allocator when torch has CUDA, else from ``cuda-python``. Importing this module needs neither.

Engines are specific to the GPU and TensorRT version that built them: build them on the board.
"""

from __future__ import annotations

import numpy as np

from edgetl.errors import InputFileError, MissingDependencyError, ModelError
from edgetl.runtimes.base import Runtime


def _check(result):
    """cuda-python returns (err, value...) tuples; raise on a non-zero error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ModelError(f"CUDA call failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


class _TorchCuda:
    """Device buffers and stream from torch.cuda."""

    def __init__(self, torch) -> None:
        self.torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def empty(self, shape, dtype):
        t = self.torch.empty(tuple(shape), dtype=self.torch.from_numpy(np.zeros(0, dtype)).dtype, device="cuda")
        return t, int(t.data_ptr())

    def h2d(self, dst, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            dst.copy_(self.torch.from_numpy(host), non_blocking=True)

    def d2h(self, src) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            host = src.to("cpu", non_blocking=True)
        self.stream.synchronize()
        return host.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()


class _CudaPython:
    """Device buffers and stream from cuda-python's runtime bindings."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.rt = cudart
        self.stream = _check(cudart.cudaStreamCreate())
        self.buffers: list[int] = []

    @property
    def handle(self) -> int:
        return int(self.stream)

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(_check(self.rt.cudaMalloc(nbytes)))
        self.buffers.append(ptr)
        return (ptr, tuple(shape), np.dtype(dtype)), ptr

    def h2d(self, dst, host: np.ndarray) -> None:
        ptr, _, _ = dst
        self._host_in = np.ascontiguousarray(host)  # keep alive until the copy ran
        _check(self.rt.cudaMemcpyAsync(ptr, self._host_in.ctypes.data, self._host_in.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def d2h(self, src) -> np.ndarray:
        ptr, shape, dtype = src
        host = np.empty(shape, dtype)
        _check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self.synchronize()
        return host

    def synchronize(self) -> None:
        _check(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for p in self.buffers:
            self.rt.cudaFree(p)
        self.buffers = []
        self.rt.cudaStreamDestroy(self.stream)


def _device_memory():
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchCuda(torch)
    except ImportError:
        pass
    try:
        return _CudaPython()
    except ImportError:
        raise MissingDependencyError("cuda-python", "tensorrt",
                                     "CUDA buffers for TensorRT (or a torch build with CUDA)") from None


class TensorRtRunner(Runtime):
    runtime = "tensorrt"

    def __init__(self, artifact, options) -> None:
        super().__init__(artifact, options)
        try:
            import tensorrt as trt
        except ImportError:
            raise MissingDependencyError("tensorrt", "tensorrt", "running TensorRT engines (it ships with "
                                         "JetPack, or NVIDIA's pip index on x86)") from None
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            data = artifact.path.read_bytes()
        except OSError as e:
            raise InputFileError(f"{artifact.path}: cannot read the engine ({e.strerror})") from None
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise InputFileError(f"{artifact.path}: TensorRT {trt.__version__} cannot deserialise this engine; "
                                 "engines only load on the GPU and TensorRT version that built them: rebuild it "
                                 "on this device")
        self.context = self.engine.create_execution_context()
        self.mem = _device_memory()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise ModelError(f"{artifact.path}: edgetl benchmarks single-input classifiers; this engine has "
                             f"{len(self.inputs)} inputs")
        shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self._bound_batch: int | None = None
        self._buffers: dict[str, object] = {}

    def _bind(self, batch: int) -> None:
        trt = self._trt
        name = self.inputs[0]
        shape = (batch, *self.artifact.input_spec.shape)
        if -1 in tuple(self.engine.get_tensor_shape(name)):
            self.context.set_input_shape(name, shape)
        for n in (*self.inputs, *self.outputs):
            dims = tuple(self.context.get_tensor_shape(n))
            buf, ptr = self.mem.empty(dims, trt.nptype(self.engine.get_tensor_dtype(n)))
            self._buffers[n] = buf
            self.context.set_tensor_address(n, ptr)
        self._in_dtype = trt.nptype(self.engine.get_tensor_dtype(name))
        self._bound_batch = batch

    def run(self, batch):
        if self._bound_batch != batch.shape[0]:
            self._bind(batch.shape[0])
        self.mem.h2d(self._buffers[self.inputs[0]], np.ascontiguousarray(batch, dtype=self._in_dtype))
        if not self.context.execute_async_v3(self.mem.handle):
            raise ModelError(f"{self.artifact.name}: TensorRT execute_async_v3 failed (see the TensorRT log)")
        return self.mem.d2h(self._buffers[self.outputs[0]]).astype(np.float32, copy=False)

    def synchronize(self) -> None:
        self.mem.synchronize()

    def describe(self):
        trt = self._trt
        dtypes = {n: str(self.engine.get_tensor_dtype(n)) for n in (*self.inputs, *self.outputs)}
        return {"runtime": "tensorrt", "version": trt.__version__, "threads": None, "precision": "as-built",
                "io_dtypes": dtypes, "memory": type(self.mem).__name__}

    def close(self) -> None:
        self._buffers = {}
        if hasattr(self.mem, "close"):  # _CudaPython frees its buffers; torch's allocator needs nothing
            self.mem.close()
