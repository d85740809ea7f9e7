"""GPU profiles (what each supported GPU and TensorRT can do) and GPU detection
(runtimes/tensorrt/gpus.py)."""

from __future__ import annotations

import pytest

from dyt_edge.runtimes.tensorrt import gpus
from dyt_edge.runtimes.tensorrt.gpus import GPUS, DetectedGpu


def test_profiles_know_what_each_gpu_and_tensorrt_can_do():
    v100, t4 = GPUS["v100"], GPUS["t4"]
    assert (v100.compute_capability, v100.sm, v100.architecture) == ((7, 0), "sm_70", "Volta")
    assert v100.fp16_tensor_cores and not v100.int8_tensor_cores
    assert v100.majors == (10,) and v100.cuda_majors == (12,) and v100.python_max == (3, 12)
    assert v100.package == "tensorrt-cu12>=10.0,<10.5"
    assert (t4.compute_capability, t4.sm, t4.architecture) == ((7, 5), "sm_75", "Turing")
    assert t4.int8_tensor_cores and t4.majors == (10, 11) and t4.cuda_majors == (12, 13)
    assert t4.package == "tensorrt-cu12>=10.0"
    for p in GPUS.values():  # every other profile: Turing or newer, both majors
        assert p.compute_capability >= (7, 5) or p.key == "v100"


@pytest.mark.parametrize("name, cc, key", [
    ("Tesla T4", (7, 5), "t4"), ("Tesla V100-SXM2-16GB", (7, 0), "v100"),
    ("Tesla V100-PCIE-32GB", (7, 0), "v100"), ("NVIDIA A10G", (8, 6), "a10"),
    ("NVIDIA A10", (8, 6), "a10"), ("NVIDIA A100-SXM4-80GB", (8, 0), "a100"),
    ("NVIDIA L4", (8, 9), "l4"), ("NVIDIA H100 80GB HBM3", (9, 0), "h100"),
    ("NVIDIA RTX A6000", (8, 6), "sm_86"), ("Tesla T4", (8, 6), "sm_86"),
])
def test_detected_names_map_onto_profiles(name, cc, key):
    assert DetectedGpu(0, name, cc).profile.key == key


def test_nvidia_smi_rows_are_parsed():
    text = ("0, Tesla T4, 7.5, 15360, 550.54.15\n"
            "1, NVIDIA A100-SXM4-80GB, 8.0, 81920, 550.54.15\n"
            "garbage line\n")
    found = gpus.parse_nvidia_smi(text)
    assert [(g.index, g.name, g.compute_capability, g.memory_mib) for g in found] == [
        (0, "Tesla T4", (7, 5), 15360), (1, "NVIDIA A100-SXM4-80GB", (8, 0), 81920)]
    assert [g.profile.key for g in found] == ["t4", "a100"]
