"""A stand-in for :class:`dyt_edge.runtimes.tensorrt.cuda.Cuda` (:class:`FakeCuda`), and a
driver that cannot be loaded (:func:`no_driver`)."""

from __future__ import annotations

import numpy as np

from dyt_edge.runtimes.tensorrt.cuda import CudaError


class FakeCuda:
    """Stands in for :class:`dyt_edge.runtimes.tensorrt.cuda.Cuda`: "device" memory is numpy
    arrays keyed by fake addresses, streams run synchronously, a capture records the enqueues
    and a launch replays them. Checks the runtime's buffer and call wiring, not CUDA."""

    current: FakeCuda = None

    def __init__(self, index=0):
        FakeCuda.current = self
        self.memory, self.pinned, self.next = {}, {}, 4096
        self.capturing, self.log = None, []

    def _new(self, nbytes, table):
        ptr, self.next = self.next, self.next + int(nbytes) + 4096
        table[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        return ptr

    def view(self, ptr, dtype, shape):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.memory[ptr][:n].view(dtype).reshape(shape)

    def make_current(self):
        pass

    def alloc(self, nbytes):
        return self._new(nbytes, self.memory)

    def free(self, ptr):
        del self.memory[ptr]

    def host_alloc(self, nbytes):
        ptr = self._new(nbytes, self.pinned)
        return ptr, self.pinned[ptr]

    def host_free(self, ptr):
        del self.pinned[ptr]

    def h2d(self, dst, src, nbytes, stream):
        self.log.append(("h2d", nbytes))
        self.memory[dst][:nbytes] = self.pinned[src][:nbytes]

    def d2h(self, dst, src, nbytes, stream):
        self.log.append(("d2h", nbytes))
        self.pinned[dst][:nbytes] = self.memory[src][:nbytes]

    def stream(self):
        return _FakeStream()

    def sync(self, stream):
        self.log.append(("sync",))

    def destroy_stream(self, stream):
        self.log.append(("destroy_stream",))

    def event(self):
        return object()

    def record(self, event, stream):
        pass

    def elapsed_ms(self, start, end):
        return 0.25

    def destroy_event(self, event):
        pass

    def begin_capture(self, stream):
        self.capturing = []

    def end_capture(self, stream):
        graph, self.capturing = self.capturing, None
        if "invalidated" in graph:
            raise CudaError("cuStreamEndCapture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED")
        return graph

    def instantiate(self, graph):
        return list(graph)

    def launch(self, graph_exec, stream):
        self.log.append(("launch",))
        for step in graph_exec:
            step()

    def destroy_graph(self, graph=None, graph_exec=None):
        self.log.append(("destroy_graph",))

    def close(self):
        self.log.append(("close",))


class _FakeStream:
    def __int__(self):
        return 77



def no_driver(self, index=0):
    """``Cuda.__init__`` on a machine without the NVIDIA driver."""
    raise CudaError("the NVIDIA driver cannot be loaded (libcuda.so.1 not found)",
                    "run on a machine with an NVIDIA GPU and its driver")
