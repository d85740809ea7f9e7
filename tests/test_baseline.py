"""The complete-model baseline bench compares a DyT build with (dyt_edge/baseline.py)."""

from __future__ import annotations

import json
import types

from dyt_edge.artifacts import MANIFEST_NAME


def test_bench_baseline_engine_uses_the_same_gpu_profile_and_workspace(monkeypatch, tmp_path):
    """bench's complete-model baseline of a TensorRT build is built with the DyT engine's GPU,
    batch profile and workspace (the build itself is replaced: this checks the arguments)."""
    from dyt_edge import baseline, build
    from dyt_edge.artifacts import Artifact, new_manifest

    seen = {}

    def fake_build(exported, target, **kwargs):
        seen.update(kwargs, target=target)
        out = kwargs["output"]
        out.mkdir(parents=True)
        m = new_manifest(files={}, model={"img_size": 32},
                         build={"target": target, "precision": kwargs["precision"]})
        (out / MANIFEST_NAME).write_text(json.dumps(m))
        return types.SimpleNamespace(artifact=Artifact(out, m), manifest=m, path=out)

    monkeypatch.setattr(build, "build_artifact", fake_build)
    dyt = Artifact(tmp_path / "dyt", new_manifest(model={"img_size": 32}, build={
        "target": "tensorrt", "precision": "fp16", "gpu": {"profile": "t4"},
        "batch": {"min": 1, "opt": 4, "max": 16, "static": False}, "workspace_gib": 2.0,
        "tensorrt": {"version": "10.4.0"}}))
    exported = Artifact(tmp_path / "baseline", new_manifest(
        files={"onnx": {"path": "model.onnx", "sha256": "ab"}}, model={"img_size": 32}))
    exported.path.mkdir()
    got = baseline._baseline_build(dyt, exported, dyt.info.build, None, None, None,
                                   lambda m: None, None)
    assert seen == {"target": "tensorrt", "precision": "fp16", "gpu": "t4", "batch": "1:4:16",
                    "workspace": 2.0, "output": exported.path / "tensorrt-fp16",
                    "progress": None}
    assert got.manifest["baseline"]["tensorrt"]["version"] == "10.4.0"
