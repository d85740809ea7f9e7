"""`dyt-edge demo`: every CPU target passes on the digits model (slow), and one target failing
gets its row while the run goes on (fast, on a tiny digits-shaped model)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from dyt_edge.checkpoint import save_model
from dyt_edge.cli import app
from dyt_edge.demo import TargetRow, run_demo
from dyt_edge.model import build_model

from .helpers import randomize_dyt, tiny_config


@pytest.fixture(scope="module")
def tiny_digits_model(tmp_path_factory):
    """A tiny model shaped like the digits demo (32x32, patch 4, 10 classes) whose metadata
    says `dyt-edge train` made it from digits: commands then default to the digits data."""
    root = tmp_path_factory.mktemp("demo")
    model = randomize_dyt(build_model(tiny_config(patch_size=4, num_classes=10, depth=2)),
                          gate_std=0.5, gate_bias=0.2)
    path = root / "runs" / "digits-mlp.safetensors"
    save_model(model, path, metadata={"dyt_edge.training": json.dumps({"data": "digits"})})
    return path


def test_a_failing_target_gets_its_row_and_the_run_goes_on(tiny_digits_model, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "runs" / "digits-mlp.safetensors"
    ckpt.parent.mkdir()
    shutil.copy(tiny_digits_model, ckpt)
    messages = []
    result = run_demo(checkpoint=ckpt, out=tmp_path / "out", duration=0.05, warmup=0.01,
                      targets=[("onnxruntime", "fp32"), ("tensorrt", "fp16"),
                               ("openvino", "fp32")], say=messages.append, realistic=False)
    assert not result.trained and any("reusing" in m for m in messages)
    ort, trt, ov = result.rows
    for row in (ort, ov):
        assert row.status == "passed", row
        assert row.agreement == 100.0 and row.delta == 0.0 and row.flips == 0.0
        assert row.images_per_s > 0 and row.speedup > 0 and row.size_mb > 0
    assert trt.status == "failed" and "tensorrt" in trt.error.lower()
    assert not result.passed
    assert json.loads(json.dumps(result.to_dict()))["rows"][1]["status"] == "failed"


def test_the_realistic_size_row_builds_exports_and_benches_a_synthetic_model(tmp_path):
    """The demo's ViT-B/16 row, on a smaller synthetic shape: the model is built, saved and
    exported once, benched against its complete model on OpenVINO, and reused the second time."""
    from dyt_edge.config import DyTConfig, Preprocessing
    from dyt_edge.demo import realistic_row

    cfg = DyTConfig(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3,
                    num_classes=10, adapter_dim=16, adapter_scale=0.1,
                    preprocessing=Preprocessing.vtab(64))
    paths = dict(checkpoint=tmp_path / "runs" / "s.safetensors",
                 data=tmp_path / "runs" / "s.npz", out=tmp_path / "out" / "s")
    messages = []
    row = realistic_row(cfg, duration=0.05, warmup=0.01, say=messages.append, **paths)
    assert row.status == "measured", (row.error, messages)
    assert row.model.startswith("synthetic") and row.accuracy is None
    assert row.speedup > 0 and row.speedup_b1 > 0 and row.flops_ratio > 1.2
    assert row.batched == 8 and row.size_mb > 0
    assert all(p.exists() for p in paths.values())
    assert (paths["out"] / "baseline" / "dyt_edge.json").is_file()  # the complete model
    manifest = json.loads((paths["out"] / "dyt_edge.json").read_text())
    assert manifest["dispatch"]["mode"] == "pack"
    messages.clear()
    again = realistic_row(cfg, duration=0.05, warmup=0.01, say=messages.append, **paths)
    assert again.status == "measured"
    assert any("reusing" in m and "s.safetensors" in m for m in messages), messages
    assert any(m.startswith("export: reusing") for m in messages), messages


def test_rows_render_with_every_column(capsys):
    from rich.console import Console

    from dyt_edge.cli.demo import render
    from dyt_edge.demo import DemoResult

    rows = [TargetRow("openvino", "int8", "passed", size_mb=0.6, accuracy=95.5, delta=-0.3,
                      ms_per_image=1.9, images_per_s=920, speedup=1.2),
            TargetRow("tensorrt", "fp16", "failed", error="TensorRT is not installed"),
            TargetRow("openvino", "fp32", "measured", model="ViT-B/16 (synthetic)", batched=8,
                      size_mb=351.0, ms_per_image=140.0, images_per_s=7.9, speedup=1.45,
                      speedup_b1=1.41)]
    console = Console(width=140, record=True)
    render(DemoResult("c", False, "e", rows, 1.0, {"train": 0.5}), console)
    text = console.export_text()
    for word in ("target", "precision", "status", "size MB", "accuracy", "delta vs PyTorch",
                 "ms/img", "img/s", "speedup b1 / batched", "-0.30 pt", "1.20x", "FAILED",
                 "ViT-B/16 (synthetic)", "1.41x / 1.45x", "measured"):
        assert word in text, word


def test_json_report_has_the_common_header(tmp_path, monkeypatch):
    from dyt_edge.demo import DemoResult
    from dyt_edge.reports import to_json

    result = DemoResult("c", False, "e", [TargetRow("openvino", "fp32", "passed")], 1.0,
                        {"train": 0.5}, created="2026-01-01T00:00:00+00:00")
    monkeypatch.setattr("dyt_edge.demo.run_demo", lambda **_kw: result)
    path = tmp_path / "out" / "demo.json"
    cli = CliRunner().invoke(app, ["demo", "--no-vitb", "--json", str(path)])
    assert cli.exit_code == 0, cli.output
    assert path.read_text() == to_json(result.to_dict())  # the one encoder
    saved = json.loads(path.read_text())
    assert list(saved)[:4] == ["schema", "schema_version", "dyt_edge_version", "created"]
    assert saved["schema"] == "dyt-edge.demo" and saved["schema_version"] == 1
    assert saved["created"] == "2026-01-01T00:00:00+00:00"
    assert saved["passed"] and saved["rows"][0]["target"] == "openvino"
    cli = CliRunner().invoke(app, ["demo", "--no-vitb", "--json", "-"])
    assert cli.exit_code == 0, cli.output
    assert cli.stdout == to_json(result.to_dict())  # the JSON alone on stdout
    assert "dyt-edge demo" in cli.stderr  # the table on stderr


@pytest.fixture
def torch_on_both_cores():
    """PyTorch on both cores, as the CLI runs it (the session keeps it on one for tiny models):
    the demo's ViT-B/16 row builds and calibrates a full-size model in PyTorch."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_passes_every_cpu_target(digits_demo_model, tmp_path, monkeypatch,
                                      torch_on_both_cores):
    """The README's main job, end to end: (the digits model trained once per session, as
    `dyt-edge train` makes it) export, build, validate and bench each CPU target; every target
    passes and INT8 keeps the accuracy."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copy(digits_demo_model[0], tmp_path / "runs" / "digits-mlp.safetensors")
    result = CliRunner().invoke(app, ["demo", "--duration", "0.3", "--json", "demo.json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert not summary["trained"] and summary["passed"]
    vitb = [r for r in summary["rows"] if r["model"] != "digits"]
    assert len(vitb) == 1 and vitb[0]["status"] == "measured" and vitb[0]["speedup"] > 0
    assert vitb[0]["flops_ratio"] > 1.3  # about half the tokens active: the saving is real
    rows = {(r["target"], r["precision"]): r for r in summary["rows"] if r["model"] == "digits"}
    assert {("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "int8")} <= set(rows)
    assert rows[("onnxruntime", "fp32")]["accuracy"] >= 95.0
    int8 = rows[("openvino", "int8")]
    assert int8["delta"] >= -1.0 and int8["agreement"] >= 98.0
    assert (tmp_path / "dyt-edge-out" / "digits-mlp" / "openvino-int8" / "model.xml").is_file()
