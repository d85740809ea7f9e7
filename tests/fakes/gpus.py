"""GPUs the tests pretend to detect (what ``detect_gpus`` would report on those machines)."""

from __future__ import annotations

from dyt_edge.runtimes.tensorrt.gpus import DetectedGpu

T4 = DetectedGpu(0, "Tesla T4", (7, 5), 15360, "CUDA 12.4", "test")
V100 = DetectedGpu(0, "Tesla V100-SXM2-16GB", (7, 0), 16384, "CUDA 12.4", "test")
A10 = DetectedGpu(0, "NVIDIA A10G", (8, 6), 23028, "CUDA 12.4", "test")
A2 = DetectedGpu(0, "NVIDIA A2", (8, 6), 15356, "CUDA 12.4", "test")
"""Same compute capability as :data:`A10`, another GPU model."""
