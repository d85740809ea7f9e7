"""The few CUDA calls the TensorRT runtime needs, through the CUDA *driver* API of
``cuda-python`` (``cuda.bindings.driver``).

Why cuda-python rather than PyTorch CUDA tensors: the pinned ``torch`` (2.14.1, the default
Linux wheels) is a CUDA 13 build compiled for sm_75 and newer, so ``torch.cuda`` cannot run on
a V100 (sm_70), one of the two GPUs this path targets. The driver API has no such limit (it
works on every GPU the installed driver supports, whatever CUDA toolkit built the caller), and
``cuda-bindings`` is already installed as a dependency of ``torch`` on Linux, so nothing new
is pulled in. Device memory, pinned host memory, streams, events and CUDA graphs are all it
takes. Everything runs in the device's *primary* context, the one TensorRT's runtime uses, so
pointers and streams are shared with TensorRT.

Imported lazily (only when a TensorRT runtime is opened or a GPU is detected).
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

import numpy as np

from ...errors import DytEdgeError

INSTALL = 'pip install "cuda-python>=12"'


class CudaError(DytEdgeError):
    """A CUDA driver call failed (or the CUDA driver is not there)."""


def driver_module() -> Any:
    """``cuda.bindings.driver`` (cuda-python >= 12.6), or the older ``cuda.cuda``."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError as exc:
            raise CudaError("cuda-python is not installed (the TensorRT runtime uses it for "
                            "GPU memory and streams)", INSTALL) from exc
    return driver


class Cuda:
    """The primary context of one device, and checked driver calls on it."""

    def __init__(self, index: int = 0) -> None:
        self.drv = drv = driver_module()
        try:
            self.check(drv.cuInit(0), "cuInit")
        except CudaError:
            raise
        except Exception as exc:  # noqa: BLE001 - no libcuda: cuda-python raises its own types
            raise CudaError(f"the NVIDIA driver cannot be loaded ({str(exc)[:200]})",
                            "run on a machine with an NVIDIA GPU and its driver") from exc
        self.index = index
        self.device = self.check(drv.cuDeviceGet(index), "cuDeviceGet")
        self.context = self.check(drv.cuDevicePrimaryCtxRetain(self.device),
                                  "cuDevicePrimaryCtxRetain")
        self.check(drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    # -- results ----------------------------------------------------------------------------
    def check(self, result: Any, what: str = "CUDA call") -> Any:
        """The value(s) of a cuda-python call ``(CUresult, *values)``; :class:`CudaError` on an
        error code."""
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        if err != self.drv.CUresult.CUDA_SUCCESS:
            try:
                _, name = self.drv.cuGetErrorName(err)
                name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception:  # noqa: BLE001
                name = str(err)
            raise CudaError(f"{what} failed: {name}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def make_current(self) -> None:
        self.check(self.drv.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    # -- memory -----------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> int:
        """Device memory (plain ``cuMemAlloc``, never managed memory); its address."""
        return int(self.check(self.drv.cuMemAlloc(max(int(nbytes), 1)), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        if ptr:
            self.check(self.drv.cuMemFree(ptr), "cuMemFree")

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Pinned host memory (async copies need it): ``(address, uint8 view)``."""
        n = max(int(nbytes), 1)
        ptr = int(self.check(self.drv.cuMemHostAlloc(n, 0), "cuMemHostAlloc"))
        view = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)),
                                     shape=(n,))
        return ptr, view

    def host_free(self, ptr: int) -> None:
        if ptr:
            self.check(self.drv.cuMemFreeHost(ptr), "cuMemFreeHost")

    def h2d(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.check(self.drv.cuMemcpyHtoDAsync(dst, src, int(nbytes), stream),
                   "cuMemcpyHtoDAsync")

    def d2h(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.check(self.drv.cuMemcpyDtoHAsync(dst, src, int(nbytes), stream),
                   "cuMemcpyDtoHAsync")

    # -- streams and events -----------------------------------------------------------------
    def stream(self) -> Any:
        return self.check(self.drv.cuStreamCreate(
            int(self.drv.CUstream_flags.CU_STREAM_NON_BLOCKING)), "cuStreamCreate")

    def sync(self, stream: Any) -> None:
        self.check(self.drv.cuStreamSynchronize(stream), "cuStreamSynchronize")

    def destroy_stream(self, stream: Any) -> None:
        self.check(self.drv.cuStreamDestroy(stream), "cuStreamDestroy")

    def event(self) -> Any:
        return self.check(self.drv.cuEventCreate(int(self.drv.CUevent_flags.CU_EVENT_DEFAULT)),
                          "cuEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self.check(self.drv.cuEventRecord(event, stream), "cuEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self.check(self.drv.cuEventSynchronize(end), "cuEventSynchronize")
        return float(self.check(self.drv.cuEventElapsedTime(start, end), "cuEventElapsedTime"))

    def destroy_event(self, event: Any) -> None:
        self.check(self.drv.cuEventDestroy(event), "cuEventDestroy")

    # -- CUDA graphs ------------------------------------------------------------------------
    def begin_capture(self, stream: Any) -> None:
        mode = self.drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self.check(self.drv.cuStreamBeginCapture(stream, mode), "cuStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        return self.check(self.drv.cuStreamEndCapture(stream), "cuStreamEndCapture")

    def instantiate(self, graph: Any) -> Any:
        return self.check(self.drv.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self.check(self.drv.cuGraphLaunch(graph_exec, stream), "cuGraphLaunch")

    def destroy_graph(self, graph: Optional[Any] = None, graph_exec: Optional[Any] = None
                      ) -> None:
        if graph_exec is not None:
            self.check(self.drv.cuGraphExecDestroy(graph_exec), "cuGraphExecDestroy")
        if graph is not None:
            self.check(self.drv.cuGraphDestroy(graph), "cuGraphDestroy")

    def close(self) -> None:
        try:
            self.drv.cuDevicePrimaryCtxRelease(self.device)
        except Exception:  # noqa: BLE001 - closing: nothing to report
            pass


def handle(obj: Any) -> int:
    """The integer value of a cuda-python handle (what TensorRT takes as a stream)."""
    return int(obj)
