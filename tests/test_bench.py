"""`dyt-edge bench` end to end (:mod:`dyt_edge.bench.run`): the result and its JSON, the
complete-model baseline and its cache, the activation measured on DATA, and bad input. The
statistics, the plan of runs, the timer and the activation arithmetic have their own test
modules (test_bench_stats, test_bench_plan, test_bench_timer, test_bench_activation).

One tiny export (OpenVINO IR + ONNX, no validation, to keep it quick) is made for the module and
benchmarked for a few hundredths of a second per batch size: these tests check what is measured
and how it is reported, never how fast anything is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_edge import artifacts
from dyt_edge.bench import MIN_ITERATIONS, SCHEMA, SCHEMA_VERSION, bench_artifact

from .helpers import assert_one_line_error, cli, controlled_model, saved

FAST = dict(duration=0.05, warmup=0.01, threads=1)


# -- a tiny export and real images --------------------------------------------------------------

def _images(kind: str, n: int = 12) -> np.ndarray:
    """uint8 [n, 32, 32, 3]: dark images keep no patch token, bright ones keep all, half-bright
    ones (left half lit) keep half; ``mixed`` cycles dark, bright, half."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        k = kind if kind != "mixed" else ("dark", "bright", "half")[i % 3]
        if k == "bright":
            x[i] = 255
        elif k == "half":
            x[i, :, :16] = 255
    return x


class Exported:
    def __init__(self, tmp: Path) -> None:
        from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

        torch.manual_seed(0)
        self.tmp = tmp
        self.ckpt = saved(tmp, controlled_model("mlp", depth=2), "tiny")
        # topk, not the default pack: these tests check that a batch is charged its busiest
        # image (K = the batch maximum) where topk pays it
        self.path = export_checkpoint(self.ckpt, tmp / "tiny",
                                      ExportOptions(format="openvino", dispatch="topk",
                                                    validate=False)).path
        self.data = {}
        for kind in ("mixed", "dark", "bright"):
            np.savez(tmp / f"{kind}.npz", images=_images(kind))
            self.data[kind] = str(tmp / f"{kind}.npz")

    def copy(self, name: str, edit=None) -> Path:
        """The export without its baseline, elsewhere, its manifest changed by ``edit``."""
        dst = self.tmp / name
        shutil.copytree(self.path, dst, ignore=shutil.ignore_patterns("baseline"))
        if edit is not None:
            manifest = artifacts.read_manifest(dst)
            edit(manifest)
            artifacts.write_manifest(dst, manifest)
        return dst


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return Exported(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def ov_bench(exp):
    """OpenVINO, throughput hint, batches 1 and 3, on mixed images: creates the baseline."""
    events = []
    result = bench_artifact(exp.path, "openvino", batches=(1, 3), data=exp.data["mixed"],
                            hint="throughput", progress=lambda m, f: events.append((m, f)),
                            **FAST)
    return result, events


TOP_KEYS = {"schema", "schema_version", "dyt_edge_version", "created", "artifact", "target",
            "precision", "settings", "machine", "runtime", "baseline", "activation", "flops",
            "results", "notes"}


def test_result_structure_and_json_schema(ov_bench, exp):
    result, events = ov_bench
    d = json.loads(json.dumps(result.to_dict()))  # plain JSON all the way down
    assert set(d) == TOP_KEYS
    assert (d["schema"], d["schema_version"]) == (SCHEMA, SCHEMA_VERSION)
    assert d["target"] == "openvino" and d["precision"] == "fp32"
    assert d["settings"]["batches"] == [1, 3] and d["settings"]["hint"] == "throughput"
    assert d["settings"]["data"] == exp.data["mixed"] and d["settings"]["images"] == 12
    m = d["machine"]
    assert {"cpu", "cores", "usable_cores", "load_average_before",
            "load_average_after"} <= set(m)
    assert d["runtime"]["dyt"]["target"] == "openvino"
    assert Path(d["runtime"]["complete"]["artifact"]) == exp.path / "baseline"
    assert d["baseline"]["dispatch"] == "complete"
    assert [r["batch"] for r in d["results"]] == [1, 3]
    for r in d["results"]:
        for who in ("dyt", "complete"):
            lat = r[who]["latency_ms"]
            assert {"mean", "p50", "p90", "p95", "p99", "min", "max", "count"} == set(lat)
            assert (lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
                    <= lat["max"])
            assert r[who]["iterations"] >= MIN_ITERATIONS
            assert r[who]["images"] == r[who]["iterations"] * r["batch"]
            assert r[who]["images_per_s"] == pytest.approx(r[who]["images"] / r[who]["wall_s"])
        assert r["speedup"] == pytest.approx(r["dyt"]["images_per_s"]
                                             / r["complete"]["images_per_s"])
        assert r["flops_ratio"] == pytest.approx(d["flops"]["ratio"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["flops_ratio"])
    fractions = [f for _, f in events if f is not None]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_activation_and_flops_come_from_the_runtime_masks_on_data(ov_bench, exp):
    from dyt_edge.config import DyTConfig
    from dyt_edge.flops import model_flops

    d = ov_bench[0].to_dict()
    act = d["activation"]
    # a third of the images keep every patch token, a third half of them, a third none
    assert act["images"] == 12 and act["data"] == exp.data["mixed"]
    assert act["mean"] == pytest.approx(0.5) and act["per_layer"] == pytest.approx([0.5, 0.5])
    assert act["dispatchers"] == ["blocks.0.mlp", "blocks.1.mlp"]
    # each batch of 3 holds a bright image: K is every token; batch 1 computes the mean
    assert act["batch_max"]["3"]["mean"] == pytest.approx(1.0)
    assert act["batch_max"]["1"]["mean"] == pytest.approx(0.5)
    config = DyTConfig.from_dict(artifacts.read_manifest(exp.path)["model"])
    dyt, full = model_flops(config, [0.5, 0.5]), model_flops(config, None)
    assert d["flops"]["dyt_gflops"] == pytest.approx(dyt.gflops)
    assert d["flops"]["complete_gflops"] == pytest.approx(full.gflops)
    assert d["flops"]["ratio"] == pytest.approx(full.total / dyt.total) and d["flops"]["ratio"] > 1
    assert d["results"][1]["batch_max_activation"] == pytest.approx(1.0)
    assert d["results"][1]["computed_gflops"] == pytest.approx(
        model_flops(config, [1.0, 1.0]).gflops)


@pytest.mark.parametrize("kind,rate", [("dark", 0.0), ("bright", 1.0)])
def test_activation_follows_the_data(exp, kind, rate):
    result = bench_artifact(exp.path, "onnxruntime", batches=(2,), data=exp.data[kind],
                            baseline=False, **FAST)
    assert result.activation["mean"] == pytest.approx(rate)
    assert result.result(2).complete is None and result.result(2).speedup is None
    assert result.to_dict()["runtime"]["complete"] is None


def test_baseline_is_created_once_then_reused_and_recreated_when_stale(ov_bench, exp):
    from dyt_edge.baseline import baseline_artifact

    _, events = ov_bench
    notes = [m for m, f in events if f is None]
    assert any(n.startswith("baseline: exporting the complete model") for n in notes), notes
    base_dir = exp.path / "baseline"
    manifest = artifacts.read_manifest(base_dir)
    assert manifest["dispatch"]["mode"] == "complete" and manifest["format"] == "openvino"
    assert manifest["baseline"]["checkpoint_sha256"] == manifest["source"]["sha256"]
    assert manifest["model"] == artifacts.read_manifest(exp.path)["model"]
    # not an export a later command should pick as "the most recent"
    assert all(a.path != base_dir for a in artifacts.find_artifacts(exp.tmp))

    art = artifacts.load_artifact(exp.path)
    log: list[str] = []
    again = baseline_artifact(art, "onnxruntime", log=log.append)  # the openvino one serves
    assert log == [f"baseline: using the cached complete model at {base_dir}"]
    assert again.manifest["created"] == manifest["created"]

    manifest["baseline"]["checkpoint_sha256"] = "0" * 64  # made from another checkpoint
    artifacts.write_manifest(base_dir, manifest)
    log.clear()
    fresh = baseline_artifact(art, "openvino", log=log.append)
    assert log and log[0].startswith("baseline: exporting the complete model")
    assert fresh.manifest["created"] != manifest["created"]
    assert fresh.manifest["baseline"]["checkpoint_sha256"] == art.manifest["source"]["sha256"]


def test_an_export_written_before_resize_mode_gets_its_baseline(exp):
    """A manifest whose preprocessing records no resize_mode / input_size (written by an
    earlier dyt-edge) is the same model as one exported now: its baseline is made, not
    refused as a different model."""
    from dyt_edge.baseline import baseline_artifact

    def old(manifest):
        for record in (manifest["preprocessing"], manifest["model"]["preprocessing"]):
            del record["resize_mode"], record["input_size"]

    copy = exp.copy("before-resize-mode", old)
    base = baseline_artifact(artifacts.load_artifact(copy), "onnxruntime")
    assert base.path == copy / "baseline"
    assert base.manifest["model"]["preprocessing"]["resize_mode"] == "squash"
    assert "resize_mode" not in artifacts.read_manifest(copy)["model"]["preprocessing"]
    # benched on ONNX Runtime first, an OpenVINO export's baseline is OpenVINO too: the same
    # complete model then serves its OpenVINO benches
    assert base.manifest["format"] == "openvino" and "openvino" in base.kinds


def test_a_changed_checkpoint_is_refused(exp):
    from dyt_edge.baseline import BaselineError, baseline_artifact

    other = exp.tmp / "retrained.safetensors"
    other.write_bytes(exp.ckpt.read_bytes() + b"\0")
    copy = exp.copy("changed", lambda m: m["source"].update(path=str(other)))
    with pytest.raises(BaselineError, match="changed since"):
        baseline_artifact(artifacts.load_artifact(copy), "onnxruntime")
    assert not (copy / "baseline").exists()


def test_an_int8_build_gets_the_same_build_of_the_complete_model(ov_bench, exp):
    """The baseline of a build is the baseline export built the same way: same target and
    precision, INT8 calibrated on the recorded data, size and seed; then cached."""
    from dyt_edge.baseline import baseline_artifact
    from dyt_edge.build import build_artifact

    built = build_artifact(exp.path, "openvino", precision="int8", calib=exp.data["mixed"],
                           calib_size=12, calib_seed=3, output=exp.tmp / "int8").artifact
    log: list[str] = []
    base = baseline_artifact(built, "openvino", log=log.append)
    assert base.path == exp.path / "baseline" / "openvino-int8"
    assert log[-1].startswith("baseline: building the complete model (openvino int8, "
                              f"calibrated on {exp.data['mixed']} (12 images, seed 3)")
    assert base.manifest["dispatch"]["mode"] == "complete"
    b, d = base.manifest["build"], built.manifest["build"]
    assert (b["target"], b["precision"]) == ("openvino", "int8")
    for key in ("data", "size", "seed"):
        assert b["calibration"][key] == d["calibration"][key]
    assert b["source_model"]["sha256"] == \
        artifacts.read_manifest(exp.path / "baseline")["files"]["onnx"]["sha256"]
    assert all(a.path != base.path for a in artifacts.find_artifacts(exp.tmp))
    log.clear()
    again = baseline_artifact(built, "openvino", log=log.append)
    assert again.path == base.path and again.manifest["created"] == base.manifest["created"]
    assert log[-1].startswith("baseline: using the cached complete openvino int8 build")


def test_pytorch_baseline_is_the_checkpoint_run_complete(exp):
    result = bench_artifact(exp.path, "pytorch", batches=(3,), data=exp.data["mixed"], **FAST)
    assert result.runtime["complete"]["dispatch"] == "complete"
    assert result.runtime["dyt"]["dispatch"] == "topk"
    assert result.result(3).speedup is not None


# -- the command line ---------------------------------------------------------------------------

def test_cli_prints_the_table_writes_json_and_plots(exp, ov_bench, capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, err = cli(capsys, "bench", exp.path, "--target", "onnxruntime", "--batch",
                            "1,3", "--duration", "0.05", "--warmup", "0.01", "--threads", "1",
                            "--data", exp.data["mixed"], "--json", out, "--plot-dir",
                            tmp_path / "plots")
    assert code == 0, err
    assert "speedup" in stdout and "activation: 50.0%" in stdout
    assert all(f"p{p}" in stdout for p in (50, 90, 95, 99))
    assert "baseline: using the cached complete model" in err
    d = json.loads(out.read_text())
    assert d["schema"] == SCHEMA and [r["batch"] for r in d["results"]] == [1, 3]
    assert d["results"][0]["speedup"] is not None
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["bench_speedup.png", "bench_throughput.png"]


def test_cli_no_baseline_makes_and_times_no_complete_model(exp, capsys):
    """... with ``--json -``: the report alone on stdout, the table on stderr."""
    copy = exp.copy("nobase")
    code, stdout, err = cli(capsys, "bench", copy, "-t", "onnxruntime", "--batch", "2",
                            "--duration", "0.02", "--warmup", "0", "--data", exp.data["mixed"],
                            "--no-baseline", "--json", "-")
    assert code == 0, err
    assert not (copy / "baseline").exists()
    assert "speedup" in err and "p95" in err
    d = json.loads(stdout)
    assert d["baseline"] is None and d["settings"]["baseline"] is False
    assert d["results"][0]["complete"] is None and d["results"][0]["speedup"] is None
    assert d["activation"]["mean"] == pytest.approx(0.5)  # still measured


def _no_openvino(m):
    for k in ("openvino", "openvino_weights"):
        m["files"].pop(k)
    m["format"] = "onnx"


BAD = {
    "batch-not-a-number": (["--batch", "1,x"], None, ("--batch", "1,x")),
    "batch-zero": (["--batch", "0"], None, ("positive",)),
    "batch-negative": (["--batch", "8,-2"], None, ("positive", "-2")),
    "duration-negative": (["--duration", "-1"], None, ("--duration",)),
    "warmup-negative": (["--warmup", "-0.5"], None, ("--warmup",)),
    "images-zero": (["--images", "0"], None, ("--images",)),
    "hint": (["--hint", "fastest"], None, ("hint",)),
    "target-unknown": (["--target", "tensorflow"], None, ("tensorflow",)),
    "target-mismatch": (["--target", "openvino"], _no_openvino, ("OpenVINO",)),
    "precision-unknown": (["--precision", "fp99"], None, ("precision",)),
    "precision-not-built": (["--precision", "int8"], None, ("INT8",)),
    "precision-runtime-cannot": (["--precision", "bf16"], None, ("bf16",)),
    "json-is-a-directory": (["--json", "."], None, ("--json", "directory")),
    "data-missing": (["--data", "/nonexistent/images.npz"], None, ("not found",)),
    "static-batch": (["--batch", "2"], lambda m: m.update(batch=4), ("static batch of 4",)),
    "checkpoint-missing": ([], lambda m: m["source"].update(path="/nonexistent/ckpt.pth"),
                           ("/nonexistent/ckpt.pth", "--no-baseline")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_input_is_one_line(exp, capsys, case):
    extra, edit, needles = BAD[case]
    path = exp.copy(f"bad-{case}", edit) if edit is not None else exp.path
    args = ["bench", path, "--target", "onnxruntime", "--duration", "0.01", "--warmup", "0",
            "--data", exp.data["mixed"], *extra]
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, *needles)


def test_cli_empty_data_directory_is_one_line(exp, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "bench", exp.path, "-t", "onnxruntime", "--data",
                       tmp_path / "empty", "--duration", "0.01")
    assert_one_line_error(code, err, "no images")
