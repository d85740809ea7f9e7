"""benchmarks/vs_pytorch.py: its arithmetic, and one run end to end on a tiny model (the real
run takes minutes on ViT-B; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vs_pytorch():
    return _load("vs_pytorch")


def test_ratios_are_to_the_faster_pytorch_setting_per_round(vs_pytorch):
    per_round = {"pytorch fp32": [4.0, 4.0, 4.0], "pytorch bf16": [8.0, 6.0, 10.0],
                 "openvino int8": [16.0, 18.0, 20.0]}
    peaks = {"f32": 100.0, "bf16": 400.0, "int8": 800.0}
    out = vs_pytorch.summarize(per_round, flops_per_image=10e9, peaks=peaks)
    assert out["openvino int8"]["best_pytorch"] == "pytorch bf16"
    # per round 16/8, 18/6, 20/10 -> 2, 3, 2 -> median 2
    assert out["openvino int8"]["vs_best_pytorch"] == pytest.approx(2.0)
    assert out["pytorch fp32"]["vs_best_pytorch"] == pytest.approx(0.5)
    # 18 img/s x 10 GFLOP (multiply-adds) x 2 ops = 360 GOP/s, of an int8 peak of 800
    assert out["openvino int8"]["gops"] == pytest.approx(360.0)
    assert out["openvino int8"]["of_peak"] == pytest.approx(0.45)
    assert out["pytorch bf16"]["precision"] == "bf16"


@pytest.mark.parametrize("name, precision", [
    ("pytorch fp32", "f32"), ("pytorch bf16", "bf16"), ("openvino f32", "f32"),
    ("openvino bf16 gates-bf16", "bf16"), ("openvino int8", "int8"),
    ("openvino int8 f32-rest", "int8")])
def test_main_precision(vs_pytorch, name, precision):
    assert vs_pytorch.main_precision(name) == precision


def test_best_peaks_take_the_best_library_and_run(vs_pytorch):
    runs = [{"openvino": {"f32": 100.0, "int8": 700.0}, "pytorch": {"f32": 120.0}},
            {"openvino": {"f32": 110.0, "int8": 650.0}, "pytorch": {"f32": 90.0}}]
    assert vs_pytorch.best_peaks(runs) == {"f32": 120.0, "int8": 700.0}


def test_tiny_run_end_to_end(vs_pytorch, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert vs_pytorch.main(["--tiny", "--work", str(tmp_path / "work"), "--rounds", "1",
                            "--chunk", "0.05", "--batches", "1,2", "--images", "8",
                            "--calib-images", "8", "--threads", "1", "--profile",
                            "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    names = {"pytorch fp32", "pytorch bf16", "openvino f32", "openvino int8"}
    bf16 = "BF16" in record["describe"]["openvino f32"]["capabilities"]
    if bf16:
        names |= {"openvino bf16", "openvino bf16 gates-bf16", "openvino int8 f32-rest"}
    for b in ("1", "2"):
        rows = record["results"][b]
        assert set(rows) == names
        assert all(r["img_s"] > 0 and r["gops"] > 0 for r in rows.values())
        assert 0 < record["activation"][b]["mean"] < 1
    described = record["describe"]
    assert described["openvino int8"]["precision_in_effect"] == \
        f"int8 (float parts {'bf16' if bf16 else 'f32'})"
    if bf16:
        assert described["openvino int8 f32-rest"]["precision_in_effect"] == \
            "int8 (float parts f32)"
        assert described["openvino bf16"]["gate_path"].startswith("f32")
        assert described["openvino bf16 gates-bf16"]["gate_path"] == "bf16"
    assert set(record["peaks"]["best"]) >= {"f32", "int8"} | ({"bf16"} if bf16 else set())
    profiled = {"openvino int8"} | ({"openvino bf16"} if bf16 else set())
    assert set(record["profile"]) == profiled
    for name in profiled:
        for b in ("1", "2"):
            prof = record["profile"][name][b]
            rows = prof["nodes"]
            assert rows and all(r["us"] > 0 and 0 < r["share"] <= 1 for r in rows)
            assert prof["call_wall_us"] > 0 and prof["nodes_total_us"] >= rows[0]["us"]
    table = capsys.readouterr().out
    assert "| openvino int8 |" in table and "Matrix-multiply peaks" in table
    assert "openvino int8, batch 2, time by node type" in table
    # the table can be printed again from the JSON
    assert vs_pytorch.main(["--markdown", str(out)]) == 0
    again = capsys.readouterr().out.strip()
    assert again.startswith("| model |") and again in table
    # a second run reuses the files it made, a changed setting makes them again
    said = []
    vs_pytorch.prepare_files(tmp_path / "work", vs_pytorch.model_config(True), 0.5, 8, 8,
                             said.append)
    assert said and said[0].startswith("reusing")
    assert not vs_pytorch.same_files(tmp_path / "work", vs_pytorch.model_config(True), 0.4, 8, 8)


def test_int8_levers_reuses_the_files_and_reports_every_variant(vs_pytorch, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # int8_levers imports vs_pytorch
    levers = _load("int8_levers")
    out = tmp_path / "levers.json"
    assert levers.main(["--tiny", "--work", str(tmp_path / "work"), "--rounds", "1",
                        "--chunk", "0.05", "--batches", "1", "--calib-images", "8",
                        "--threads", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["results"]["1"]
    for variant in levers.VARIANTS:
        assert f"int8 {variant}" in rows and rows[f"int8 {variant}"]["img_s"] > 0
    assert record["quantizers"]["float-attention"] < record["quantizers"]["default"]
    assert record["agreement_vs_f32"]["f32 DyT"] == {"top1": 1.0, "gate_flips": 0.0}
    assert "| int8 no-smoothquant float-attention |" in capsys.readouterr().out


def test_static_batch_times_both_shapes_of_both_precisions(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # static_batch imports vs_pytorch
    static = _load("static_batch")
    out = tmp_path / "static.json"
    argv = ["--tiny", "--work", str(tmp_path / "work"), "--rounds", "1", "--chunk", "0.05",
            "--batches", "2", "--calib-images", "8", "--threads", "1", "--json", str(out)]
    assert static.main(argv) == 0
    record = json.loads(out.read_text())
    floats = record["float_precision"]
    rows = record["results"]["2"]
    assert set(rows) == {f"{floats} dynamic", f"{floats} static", "int8 dynamic",
                         "int8 static"}
    assert all(r["img_s"] > 0 for r in rows.values())
    assert rows["int8 dynamic"]["vs_dynamic"] == 1.0
    from dyt_edge.artifacts import load_artifact

    built = load_artifact(tmp_path / "work" / "export-static-b2" / "openvino-int8")
    assert built.info.batch == 2 and built.info.build.precision == "int8"
    assert "| int8 static |" in capsys.readouterr().out
    assert static.main(argv) == 0  # the second run reuses the static export
    assert "reusing the static batch-2 export" in capsys.readouterr().err
