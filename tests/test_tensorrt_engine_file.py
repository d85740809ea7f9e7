"""The engine record checked before an engine loads: an engine runs only on the GPU model and
TensorRT version that built it (runtimes/tensorrt/engine_file.py)."""

from __future__ import annotations

from dyt_edge.runtimes.tensorrt import engine_file

from .fakes.gpus import A2, A10, T4, V100
from .fakes.tensorrt import engine_record


def test_an_engine_on_another_gpu_or_tensorrt_is_refused():
    meta = engine_record()
    assert engine_file.check_engine_metadata(meta, T4, "10.4.0") == ([], [])
    assert engine_file.check_engine_metadata(meta, T4, "10.4.0.26") == ([], [])
    problems, _ = engine_file.check_engine_metadata(meta, T4, "10.5.0")
    assert problems == [("the engine was built with TensorRT 10.4.0, this is TensorRT 10.5.0 "
                         "(an engine only loads in the TensorRT version that built it)")]
    problems, _ = engine_file.check_engine_metadata(meta, A10, "10.4.0")
    assert "built for Tesla T4 (compute capability 7.5), this GPU is NVIDIA A10G (8.6)" in \
        problems[0]
    problems, _ = engine_file.check_engine_metadata(meta, None, "10.4.0")
    assert "no NVIDIA GPU found" in problems[0]
    both, _ = engine_file.check_engine_metadata(meta, V100, "11.0.0")
    assert len(both) == 2
    same_cc = engine_record(A10)
    problems, warnings = engine_file.check_engine_metadata(same_cc, A2, "10.4.0")
    assert "same compute capability 8.6" in problems[0] and not warnings
    problems, warnings = engine_file.check_engine_metadata(same_cc, A2, "10.4.0",
                                                     allow_gpu_model_mismatch=True)
    assert not problems and "may run slower" in warnings[0]
    assert engine_file.check_engine_metadata({"format": "x"}, T4, "10.4.0")[0]


def test_the_record_has_the_common_header_and_version_1_records_still_load():
    meta = engine_record()
    assert meta["schema"] == "dyt-edge.tensorrt-engine"
    assert meta["schema_version"] == engine_file.METADATA_SCHEMA
    legacy = {k: v for k, v in meta.items() if k not in ("schema", "schema_version")}
    legacy.update(format=engine_file.LEGACY_FORMAT, schema=1)
    assert engine_file.record_version(legacy) == 1
    assert engine_file.check_engine_metadata(legacy, T4, "10.4.0") == ([], [])
    newer = {**meta, "schema_version": engine_file.METADATA_SCHEMA + 1}
    problems, _ = engine_file.check_engine_metadata(newer, T4, "10.4.0")
    assert problems == [f"engine record schema {engine_file.METADATA_SCHEMA + 1} is newer than "
                        f"this dyt-edge reads ({engine_file.METADATA_SCHEMA})"]
