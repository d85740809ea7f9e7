"""`dyt-edge export`: ONNX graphs whose dispatch really skips work, validated, with metadata.

Exports are expensive (a few seconds each with tiny models), so each is made once per module and
several tests read it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dyt_edge import artifacts
from dyt_edge.cli import main
from dyt_edge.config import VARIANTS
from dyt_edge.model import build_model

from .helpers import (assert_one_line_error, cli, controlled_model, mixed_batch,
                       randomize_dyt, saved, tiny_config)

ATOL = 1e-4
BATCHES = (1, 2, 7, 32)


def leftovers(directory: Path) -> list[str]:
    """Temporary / staging files an export must never leave behind."""
    return [p.name for p in directory.rglob("*")
            if p.name.startswith(".") or p.name.endswith(".tmp")]


# -- models and checkpoints ---------------------------------------------------------------------

def published_checkpoint(path: Path, model) -> Path:
    """The published DyT layout: {'model', 'optimizer', 'epoch', 'scaler', 'args'}, args an
    argparse.Namespace holding an easydict.EasyDict."""
    easydict = pytest.importorskip("easydict")
    args = argparse.Namespace(
        model="vit_base_patch16_224", ffn_num=8, nb_classes=5, output_dir=Path("out"),
        num_heads=model.config.num_heads,  # width 32 is no standard timm width
        tuning_config=easydict.EasyDict(ffn_adapt=True, ffn_option="parallel",
                                        ffn_adapter_layernorm_option="none",
                                        ffn_adapter_init_option="lora",
                                        ffn_adapter_scalar="0.5", ffn_num=8, d_model=32))
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 9, "scaler": {"scale": 65536.0}, "args": args}, path)
    return path


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_matches_pytorch(run, model, mode: str, batches=BATCHES, capacity=None) -> None:
    """`run(images) -> (logits, masks)` equals the PyTorch model at every batch size."""
    model.set_dispatch(mode, capacity=capacity)
    for b in batches:
        x = mixed_batch(b, seed=b)
        with torch.no_grad():
            ref, ref_masks = model(x, return_masks=True)
        logits, masks = run(x.numpy())
        diff = float(np.abs(logits - ref.numpy()).max())
        assert diff <= ATOL, f"batch {b}: max diff {diff} (atol {ATOL})"
        assert np.array_equal(masks, ref_masks.numpy()), f"batch {b}: masks differ"


def ops_of(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


class Export:
    """One CLI export: its checkpoint, model (same weights), artifact directory, CLI output."""

    def __init__(self, tmp: Path, model, name: str, *extra: str,
                 published: bool = False):
        self.model = model
        self.ckpt = (published_checkpoint(tmp / f"{name}.pth", model) if published
                     else saved(tmp, model, name))
        self.out = tmp / "out" / name
        code = main(["export", str(self.ckpt), "-o", str(self.out), *extra])
        self.code = code
        self.manifest = json.loads((self.out / artifacts.MANIFEST_NAME).read_text()) \
            if code == 0 else None

    @property
    def onnx(self) -> Path:
        return self.out / "model.onnx"


@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def published(tmp_mod):
    torch.manual_seed(0)
    # Published checkpoints do not store the head count; width 32 is no standard timm width,
    # so the args say it.
    model = randomize_dyt(build_model(tiny_config()), seed=2, gate_std=0.5)
    exp = Export(tmp_mod, model, "checkpoint-9", published=True)
    assert exp.code == 0
    return exp


@pytest.fixture(scope="module")
def published_topk(tmp_mod, published):
    """The same published checkpoint exported with --dispatch topk (per-image TopK)."""
    exp = Export(tmp_mod, published.model, "checkpoint-9-topk", "--dispatch", "topk",
                 published=True)
    assert exp.code == 0
    return exp


@pytest.fixture(scope="module")
def variant_exports(tmp_mod):
    """One export per variant besides `mlp` (the published checkpoint's), and the MoE adapter:
    attn_mlp with the MoE adapter, layer as OpenVINO IR, attn as ONNX."""
    torch.manual_seed(1)
    out = {}
    for variant, kind, extra in [("attn", "adapter", ()), ("attn_mlp", "moe", ()),
                                 ("layer", "adapter", ("--format", "openvino"))]:
        exp = Export(tmp_mod, controlled_model(variant, kind, depth=2), f"{variant}-{kind}", *extra)
        assert exp.code == 0, (variant, kind)
        out[(variant, kind)] = exp
    return out


# -- the published checkpoint, default export ---------------------------------------------------

def test_published_checkpoint_runs_at_every_batch_size(published):
    sess = ort_session(published.onnx)
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "masks"]
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), published.model, "pack")


def test_published_default_export_packs_with_nonzero_gathernd_scatternd(published):
    assert published.manifest["dispatch"]["mode"] == "pack"
    ops = ops_of(published.onnx)
    assert {"NonZero", "GatherND", "ScatterND"} <= ops and "TopK" not in ops
    report = published.manifest["graph_report"]
    assert len(report["dispatchers"]) == 3
    for d in report["dispatchers"]:
        assert d["mode"] == "pack" and d["k"] is None
        assert d["ops"]["NonZero"] == 1 and d["ops"]["GatherND"] >= 1 and d["ops"]["ScatterND"] == 1
        assert d["gate_fp32"]
        assert d["gate_bias"] == d["name"].replace(".mlp", ".mlp_token_select.mlp_head.bias")
    assert report["gate_fp32"]
    assert all(check["ok"] for check in report["tensorrt"])


def test_published_topk_export_dispatches_with_topk_gathernd_scatternd(published_topk):
    sess = ort_session(published_topk.onnx)
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), published_topk.model,
                           "topk")
    proto = onnx.load(str(published_topk.onnx))
    assert {"TopK", "GatherND", "ScatterND"} <= {n.op_type for n in proto.graph.node}
    report = published_topk.manifest["graph_report"]
    assert len(report["dispatchers"]) == 3
    for d in report["dispatchers"]:
        assert d["mode"] == "topk" and d["k"] is None and d["k_bound"] == 17
        assert d["ops"]["TopK"] == 1 and d["ops"]["GatherND"] >= 1 and d["ops"]["ScatterND"] == 1
        assert d["gate_fp32"] and d["topk_sorted"]
        assert d["gate_bias"] == d["name"].replace(".mlp", ".mlp_token_select.mlp_head.bias")
    assert report["gate_fp32"]
    assert all(check["ok"] for check in report["tensorrt"])


def test_published_export_is_one_file_with_a_dynamic_batch_and_default_opset(published):
    proto = onnx.load(str(published.onnx), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert 18 <= opset <= 20 and published.manifest["opset"] == opset
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert sorted(p.name for p in published.out.iterdir()) == ["dyt_edge.json", "model.onnx"]
    assert leftovers(published.out.parent) == []


def test_published_export_manifest_and_metadata(published):
    from dyt_edge._version import __version__
    from dyt_edge.checkpoint import file_sha256

    m = published.manifest
    assert m["dyt_edge_version"] == __version__ and m["schema"] == "dyt-edge.manifest"
    assert m["schema_version"] == 2
    assert m["format"] == "onnx"
    assert m["source"]["path"] == str(published.ckpt.resolve())
    assert m["source"]["sha256"] == file_sha256(published.ckpt)
    assert m["source"]["layout"] == "full"
    assert m["model"] == json.loads(json.dumps(
        tiny_config(adapter_scale=0.5).to_dict()))
    assert m["variant"] == "mlp"
    assert m["dispatch"] == {"mode": "pack", "capacity": None, "capacity_slots": None,
                             "dispatchers": ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]}
    assert m["batch"] == "dynamic"
    assert m["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert m["inputs"] == [{"name": "images", "dtype": "float", "shape": ["batch", 3, 32, 32]}]
    assert [o["name"] for o in m["outputs"]] == ["logits", "masks"]
    assert m["outputs"][1]["shape"] == ["batch", 3, 16] and m["outputs"][1]["dtype"] == "bool"
    assert m["validation"]["passed"] and m["validation"]["max_diff"] <= ATOL
    names = [c["name"] for c in m["validation"]["cases"]]
    assert names == ["batch 1", "batch 8 (mixed counts)", "no patch token active",
                     "all patch tokens active"]
    assert [c["skipped"] for c in m["validation"]["cases"]] == [None] * 4
    none, every = m["validation"]["cases"][2], m["validation"]["cases"][3]
    assert set(none["active_per_image"]) == {0} and set(every["active_per_image"]) == {48}
    assert m["files"]["onnx"]["sha256"] == file_sha256(published.onnx)

    meta = {p.key: p.value for p in onnx.load(str(published.onnx)).metadata_props}
    assert meta["dyt_edge.version"] == __version__
    assert meta["dyt_edge.source.sha256"] == m["source"]["sha256"]
    assert json.loads(meta["dyt_edge.config"]) == m["model"]
    assert meta["dyt_edge.dispatch"] == "pack" and meta["dyt_edge.variant"] == "mlp"
    assert meta["dyt_edge.opset"] == str(m["opset"]) and meta["dyt_edge.batch"] == "dynamic"
    assert json.loads(meta["dyt_edge.preprocessing"]) == m["preprocessing"]
    assert json.loads(meta["dyt_edge.input"])["name"] == "images"
    assert [o["name"] for o in json.loads(meta["dyt_edge.outputs"])] == ["logits", "masks"]
    assert meta["dyt_edge.validation"].startswith("passed: max diff")


def test_latest_artifact_is_found(published, tmp_mod, capsys):
    art = artifacts.find_latest_artifact(tmp_mod / "out", kind="onnx")
    assert art.file("onnx").exists()
    resolved, picked = artifacts.resolve_artifact(published.onnx)
    assert resolved.path == published.out and not picked
    assert "mlp" in resolved.summary()


# -- every variant, the MoE adapter, OpenVINO ----------------------------------------------------

@pytest.mark.parametrize("variant,kind", [("mlp", "adapter"), ("attn", "adapter"),
                                          ("attn_mlp", "moe"), ("layer", "adapter")])
def test_every_variant_exports_and_matches(request, variant, kind):
    exp = (request.getfixturevalue("published") if variant == "mlp"
           else request.getfixturevalue("variant_exports")[(variant, kind)])
    sess = ort_session(exp.onnx)
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), exp.model, "pack")
    # the default (pack): every dispatcher packs the batch's active tokens (NonZero); attention
    # sub-blocks pad only their core per image, with no TopK
    report = exp.manifest["graph_report"]
    assert len(report["dispatchers"]) == exp.model.config.num_dispatchers
    for d in report["dispatchers"]:
        assert {"NonZero", "ScatterND"} <= {op for op, n in d["ops"].items() if n}, d
        assert d["mode"] == "pack" and not d["ops"].get("TopK"), d
    assert "TopK" not in ops_of(exp.onnx)
    v = exp.manifest["validation"]
    assert v["passed"]
    counts = v["cases"][1]["active_per_image"]
    assert len(set(counts)) > 1  # a batch with mixed active counts was validated


def test_openvino_ir_runs_and_matches(variant_exports):
    from dyt_edge.exporters.openvino.ir import OpenVinoRunner, read_rt_info

    exp = variant_exports[("layer", "adapter")]
    assert sorted(p.name for p in exp.out.iterdir()) == ["dyt_edge.json", "model.bin",
                                                         "model.onnx", "model.xml"]
    assert exp.manifest["format"] == "openvino"
    assert set(exp.manifest["files"]) == {"openvino", "openvino_weights", "onnx"}
    ov = exp.manifest["openvino"]
    assert ov["compress_to_fp16"] is False and ov["validation"]["passed"]
    assert any("INFERENCE_PRECISION_HINT=f32" in n for n in ov["validation"]["notes"])
    assert [c["skipped"] for c in ov["validation"]["cases"]] == [None] * 4
    runner = OpenVinoRunner(exp.out / "model.xml", exp.model.config.dispatcher_names)
    assert runner.precision() == "f32"
    assert_matches_pytorch(runner.run, exp.model, "pack", batches=(1, 2, 7))
    rt = read_rt_info(exp.out / "model.xml")
    onnx_meta = {p.key: p.value for p in onnx.load(str(exp.onnx)).metadata_props}
    assert rt == onnx_meta
    art, picked = artifacts.resolve_artifact(exp.out, kind="openvino")
    assert art.file("openvino").name == "model.xml" and not picked


# -- other dispatch modes, opsets, static batch --------------------------------------------------

@pytest.fixture(scope="module")
def pack_export(tmp_mod):
    torch.manual_seed(2)
    model = randomize_dyt(build_model(tiny_config(depth=2)), seed=2, gate_std=0.5)
    exp = Export(tmp_mod, model, "pack", "--dispatch", "pack")
    assert exp.code == 0
    return exp


def test_pack_uses_nonzero(pack_export):
    ops = ops_of(pack_export.onnx)
    assert "NonZero" in ops and "ScatterND" in ops and "TopK" not in ops
    assert all(d["mode"] == "pack" and d["ops"]["NonZero"] == 1
               for d in pack_export.manifest["graph_report"]["dispatchers"])
    sess = ort_session(pack_export.onnx)
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), pack_export.model, "pack")


def test_capacity_exports_static_k_and_reports_overflow(tmp_mod):
    torch.manual_seed(3)
    model = randomize_dyt(build_model(tiny_config(variant="attn", depth=2)), seed=3,
                          gate_std=0.5)
    exp = Export(tmp_mod, model, "capacity", "--dispatch", "capacity", "--capacity", "0.5")
    assert exp.code == 0
    slots = math.ceil(0.5 * 16)
    proto = onnx.load(str(exp.onnx))
    report = exp.manifest["graph_report"]
    for d in report["dispatchers"]:
        assert d["mode"] == "capacity" and d["k"] == slots + 1  # + the CLS slot
    assert exp.manifest["dispatch"]["capacity_slots"] == [slots] * 2
    assert {"TopK", "GatherND", "ScatterND"} <= {n.op_type for n in proto.graph.node}
    v = exp.manifest["validation"]
    assert v["passed"]
    assert v["cases"][3]["overflow_images"] == 1  # every gate open: 16 active > 8 slots
    assert v["cases"][2]["overflow_images"] == 0
    sess = ort_session(exp.onnx)
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), exp.model, "capacity",
                           capacity=0.5)


def test_static_batch_and_opset_20(tmp_mod):
    torch.manual_seed(4)
    model = randomize_dyt(build_model(tiny_config(depth=1)), seed=4, gate_std=0.5)
    exp = Export(tmp_mod, model, "static", "--batch", "3",
                 "--opset", "20", "--no-simplify")
    assert exp.code == 0
    proto = onnx.load(str(exp.onnx))
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 20
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert exp.manifest["batch"] == 3 and exp.manifest["simplify"]["requested"] is False
    assert [c["batch"] for c in exp.manifest["validation"]["cases"]] == [3, 3, 3]
    sess = ort_session(exp.onnx)
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), exp.model, "pack",
                           batches=(3,))


def test_default_output_dir_and_reexport_replaces_the_artifact(tmp_path, capsys,
                                                               monkeypatch):
    torch.manual_seed(5)
    model = randomize_dyt(build_model(tiny_config(depth=1)), seed=5)
    ckpt = saved(tmp_path, model, "again")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli(capsys, "export", ckpt, "--dispatch", "complete")
    assert code == 0, err
    out = tmp_path / "dyt-edge-out" / "again"  # the default: dyt-edge-out/<checkpoint stem>/
    first = json.loads((out / "dyt_edge.json").read_text())
    assert first["dispatch"]["mode"] == "complete"
    assert not ({"TopK", "GatherND", "ScatterND", "NonZero"} & ops_of(out / "model.onnx"))
    assert "complete" in stdout and "max diff" in stdout
    (out / "model.onnx").rename(out / "old.onnx")  # a stale file the swap must remove
    code, stdout, err = cli(capsys, "export", ckpt, "-o", "dyt-edge-out/again", "--no-validate")
    assert code == 0, err
    second = json.loads((out / "dyt_edge.json").read_text())
    assert second["dispatch"]["mode"] == "pack" and second["validation"] is None
    assert second["created"] > first["created"]
    assert sorted(p.name for p in out.iterdir()) == ["dyt_edge.json", "model.onnx"]
    assert leftovers(tmp_path) == []
    latest = artifacts.find_latest_artifact()  # relative to the working directory
    assert latest.path.resolve() == out.resolve()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mask", "complete"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_modes_for_every_variant(tmp_path, variant, mode):
    exp = Export(tmp_path, controlled_model(variant, depth=2), f"{variant}-{mode}",
                 "--dispatch", mode)
    assert exp.code == 0
    sess = ort_session(exp.onnx)
    assert_matches_pytorch(lambda x: sess.run(None, {"images": x}), exp.model, mode)


# -- validation failures ------------------------------------------------------------------------

def test_validation_mismatch_fails_with_max_diff_and_writes_nothing(tmp_path, capsys,
                                                                   monkeypatch):
    from dyt_edge.runtimes.ort_runtime import OrtModel

    real_run = OrtModel.run

    def skewed(self, images, overrides=None):
        logits, masks = real_run(self, images, overrides)
        return logits + 3e-3, masks

    monkeypatch.setattr(OrtModel, "run", skewed)
    ckpt = saved(tmp_path, randomize_dyt(build_model(tiny_config(depth=1)), seed=1), "bad")
    out = tmp_path / "nested" / "bad-out"
    code, stdout, err = cli(capsys, "export", ckpt, "-o", out, "--no-simplify")
    line = assert_one_line_error(code, err, "max diff 3.0", "(atol 0.0001)")
    assert "validation" in line
    assert "FAILED" in stdout  # the case table is printed before the error
    assert not out.exists() and not (tmp_path / "nested").exists()
    assert leftovers(tmp_path) == []


def test_near_tie_flips_are_excused_real_flips_fail():
    from dyt_edge.exporters.validation import _compare

    names = ["blocks.0.mlp", "blocks.1.mlp"]
    ref_masks = np.zeros((2, 2, 4), bool)
    gate = np.full((2, 2, 4), 1.0, np.float32)
    gate[0, 0, 1] = 2e-5                         # image 0: a rounding tie in the first layer
    masks = ref_masks.copy()
    masks[0, 0, 1] = True                        # flipped at the tie ...
    masks[0, 1, :] = True                        # ... and everything after it diverges
    masks[1, 1, 2] = True                        # image 1: a real flip (|logit| = 1)
    logits = np.zeros((2, 5), np.float32)
    logits[0] += 0.5                             # the tie image's logits moved: excused
    diff, mism, ties, excluded, failures = _compare(
        "case", "PyTorch", logits, masks, np.zeros((2, 5), np.float32), ref_masks, gate, names,
        1e-4, 1e-3)
    assert excluded == [0] and ties == 1 and mism == 6 and diff == 0.0  # image 1 only
    assert len(failures) == 1 and "image 1" in failures[0] and "blocks.1.mlp" in failures[0]


# -- bad input: one line, non-zero exit, nothing written ----------------------------------------

@pytest.fixture
def tiny_ckpt(tmp_path):
    return saved(tmp_path, randomize_dyt(build_model(tiny_config(depth=1)), seed=1), "tiny")


@pytest.mark.parametrize("args,needles,code", [
    (["--format", "onnxx"], ["unknown format 'onnxx'", "did you mean 'onnx'"], 2),
    (["--format", "tensorrt"], ["unknown format", "onnx, openvino"], 2),
    (["--dispatch", "topkk"], ["unknown dispatch mode 'topkk'", "did you mean 'topk'"], 2),
    (["--dispatch", "capacity", "--capacity", "0"], ["outside (0, 1]"], 2),
    (["--dispatch", "capacity", "--capacity", "1.5"], ["outside (0, 1]"], 2),
    (["--dispatch", "capacity"], ["needs --capacity"], 2),
    (["--capacity", "0.5"], ["--capacity applies to --dispatch capacity only"], 2),
    (["--opset", "17"], ["opset 17", "18 and 20", "ReduceMax"], 2),
    (["--opset", "21"], ["opset 21", "TensorRT 10.0/10.1"], 2),
    (["--batch", "many"], ["--batch must be 'dynamic' or a positive integer"], 2),
    (["--batch", "0"], ["--batch must be positive"], 2),
    (["--atol", "0"], ["--atol must be positive"], 2),
])
def test_bad_options(capsys, tiny_ckpt, tmp_path, args, needles, code):
    out = tmp_path / "out"
    got, _, err = cli(capsys, "export", tiny_ckpt, "-o", out, *args)
    assert_one_line_error(got, err, *needles)
    assert got == code
    assert not out.exists() and leftovers(tmp_path) == []


def test_output_path_problems(capsys, tiny_ckpt, tmp_path, monkeypatch):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    code, _, err = cli(capsys, "export", tiny_ckpt, "-o", afile / "sub")
    assert_one_line_error(code, err, "a-file", "is a file")
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "export", tiny_ckpt, "-o", foreign)
    assert_one_line_error(code, err, "not a dyt-edge artifact", "refusing",
                          f"-o {foreign / 'model.onnx'} to write the model beside its files")
    assert (foreign / "notes.txt").read_text() == "mine"
    # Not writable (as root every directory is writable, so the check itself is exercised).
    real_access = os.access
    monkeypatch.setattr(artifacts.os, "access",
                        lambda path, mode, **k: False if mode & os.W_OK else
                        real_access(path, mode, **k))
    code, _, err = cli(capsys, "export", tiny_ckpt, "-o", tmp_path / "ro" / "out")
    assert_one_line_error(code, err, "not writable")
    assert not (tmp_path / "ro").exists()


def test_write_failure_leaves_nothing(capsys, tiny_ckpt, tmp_path, monkeypatch):
    from dyt_edge.exporters import pipeline

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.artifacts, "atomic_write_bytes", full_disk)
    out = tmp_path / "deep" / "out"
    code, _, err = cli(capsys, "export", tiny_ckpt, "-o", out, "--no-validate",
                       "--no-simplify")
    assert_one_line_error(code, err, "No space left on device")
    assert not (tmp_path / "deep").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("make,needles", [
    (lambda d: d / "missing.pth", ["missing.pth", "does not exist"]),
    (lambda d: d, ["directory"]),
    (lambda d: (d / "notes.pth").write_text("not weights\n" * 20) and d / "notes.pth",
     ["notes.pth"]),
])
def test_checkpoint_errors(capsys, tmp_path, make, needles):
    path = make(tmp_path)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", path, "-o", out)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_missing_adapter_scale_is_asked_for(capsys, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(build_model(tiny_config()).state_dict(), path)
    code, _, err = cli(capsys, "export", path, "-o", tmp_path / "out")
    assert_one_line_error(code, err, "--num-heads")  # width 32: no standard head count
    code, _, err = cli(capsys, "export", path, "-o", tmp_path / "out", "--num-heads", "2")
    assert_one_line_error(code, err, "--adapter-scale")
    assert not (tmp_path / "out").exists()


# -- -o as a model file name ---------------------------------------------------------------------

def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def hashes(directory: Path) -> dict[str, str]:
    return {n: artifacts.file_sha256(directory / n) for n in files_in(directory)}


def checkpoint_and_user_dir(tmp_path: Path, seed: int, directory: str, user_file: str,
                            text: str):
    """A tiny model, its checkpoint, and a directory already holding one file of the user's."""
    model = randomize_dyt(build_model(tiny_config(depth=1)), seed=seed)
    ckpt = saved(tmp_path, model, "tiny")
    out = tmp_path / directory
    out.mkdir()
    (out / user_file).write_text(text)
    return model, ckpt, out


@pytest.mark.parametrize("name", ["model.onnx", "resnet.onnx"])
def test_o_names_the_model_file_in_a_directory_of_other_files(capsys, tmp_path, name):
    model, ckpt, out = checkpoint_and_user_dir(tmp_path, 1, "project", "notes.txt", "mine")
    code, stdout, err = cli(capsys, "export", ckpt, "-o", out / name, "--no-simplify")
    assert code == 0, err
    assert files_in(out) == sorted(["notes.txt", name, artifacts.MANIFEST_NAME])
    assert (out / "notes.txt").read_text() == "mine"
    m = json.loads((out / artifacts.MANIFEST_NAME).read_text())
    assert m["files"]["onnx"]["path"] == name
    assert m["files"]["onnx"]["sha256"] == artifacts.file_sha256(out / name)
    assert m["output"] == {"mode": "file", "name": name}
    art = artifacts.load_artifact(out / name)
    assert art.path == out and art.file() == out / name
    from dyt_edge.runtimes import open_runtime

    x = mixed_batch(4).numpy()
    with open_runtime("onnxruntime", art) as rt:
        res = rt.run(x)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x))
    assert float(np.abs(res.logits - ref.numpy()).max()) <= ATOL
    # a directory written this way is never replaced as a whole
    code, _, err = cli(capsys, "export", ckpt, "-o", out, "--no-validate")
    assert_one_line_error(code, err, "beside other files", f"-o {out / name}")
    assert (out / "notes.txt").read_text() == "mine" and (out / name).exists()
    # ... and holds one artifact: another model name is refused
    code, _, err = cli(capsys, "export", ckpt, "-o", out / "other.onnx", "--no-validate")
    assert_one_line_error(code, err, "already holds a dyt-edge artifact", f"-o {out / name}")
    assert files_in(out) == sorted(["notes.txt", name, artifacts.MANIFEST_NAME])
    assert leftovers(tmp_path) == []


def test_openvino_file_name_then_reexport_as_onnx(capsys, tmp_path, monkeypatch):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    model, ckpt, out = checkpoint_and_user_dir(tmp_path, 3, "serve", "config.yaml",
                                               "user: file\n")
    code, _, err = cli(capsys, "export", ckpt, "--format", "openvino", "-o", out / "net.xml",
                       "--no-simplify")
    assert code == 0, err
    assert files_in(out) == sorted(["config.yaml", "net.xml", "net.bin", "net.onnx",
                                    artifacts.MANIFEST_NAME])
    m = json.loads((out / artifacts.MANIFEST_NAME).read_text())
    assert {k: v["path"] for k, v in m["files"].items()} == {
        "onnx": "net.onnx", "openvino": "net.xml", "openvino_weights": "net.bin"}
    x = mixed_batch(3).numpy()
    with open_runtime("openvino", out) as rt:
        ov_logits = rt.run(x).logits
    built = build_artifact(out, "openvino", precision="fp32")
    assert built.path == out / "openvino-fp32"
    assert load_files(built.path) == {"openvino": "model.xml", "openvino_weights": "model.bin"}
    b = artifacts.load_artifact(built.path).manifest
    assert b["build"]["source_ir"] == "export net.xml" and b["output"] == {"mode": "directory"}
    with open_runtime("openvino", built.path) as rt:
        np.testing.assert_allclose(rt.run(x).logits, ov_logits, atol=1e-5)
    # A rebuild replaces its own directory (the export's "file" mode is not inherited).
    build_artifact(out, "openvino", precision="fp32")

    # Re-exported as ONNX under the same name: the old IR files go, nothing else does.
    before = artifacts.file_sha256(out / "net.onnx")
    code, _, err = cli(capsys, "export", ckpt, "-o", out / "net.onnx", "--no-validate",
                       "--dispatch", "complete")
    assert code == 0, err
    assert files_in(out) == sorted(["config.yaml", "net.onnx", "openvino-fp32",
                                    artifacts.MANIFEST_NAME])
    m = json.loads((out / artifacts.MANIFEST_NAME).read_text())
    assert set(m["files"]) == {"onnx"} and artifacts.file_sha256(out / "net.onnx") != before
    assert any("replaced the dyt-edge artifact" in n and "net.bin, net.xml" in n
               for n in m["notes"])
    assert (out / "config.yaml").read_text() == "user: file\n"
    assert leftovers(tmp_path) == []


def load_files(directory: Path) -> dict[str, str]:
    return {k: v["path"] for k, v in artifacts.load_artifact(directory).manifest["files"].items()}


@pytest.mark.parametrize("fmt,name,needles", [
    ("onnx", "x.xml", ["writes a model file ending in .onnx", "-o {d}/x.onnx",
                       "--format openvino"]),
    ("openvino", "x.onnx", ["--format openvino writes an .xml IR", "-o {d}/x.xml"]),
    ("onnx", "x.bin", ["OpenVINO weights file", "-o {d}/x.onnx"]),
    ("openvino", "x.bin", ["OpenVINO weights file", "-o {d}/x.xml"]),
    ("onnx", "x.json", ["manifest", "-o {d}/x.onnx"]),
    ("onnx", "x.engine", ["TensorRT engine", "dyt-edge build --target tensorrt"]),
])
def test_o_with_a_suffix_the_format_does_not_write(capsys, tiny_ckpt, tmp_path, fmt, name,
                                                    needles):
    d = tmp_path / "out"
    code, _, err = cli(capsys, "export", tiny_ckpt, "--format", fmt, "-o", d / name)
    assert_one_line_error(code, err, *(n.format(d=d) for n in needles))
    assert code == 2 and not d.exists()


def test_o_file_name_refuses_to_overwrite_a_file_that_is_not_ours(capsys, tiny_ckpt,
                                                                   tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"someone else's model")
    code, _, err = cli(capsys, "export", tiny_ckpt, "-o", d / "model.onnx")
    assert_one_line_error(code, err, f"{d / 'model.onnx'} already exists",
                          "not part of a dyt-edge artifact")
    # OpenVINO writes the ONNX beside the IR: that name is checked too
    code, _, err = cli(capsys, "export", tiny_ckpt, "-f", "openvino", "-o", d / "model.xml")
    assert_one_line_error(code, err, "model.onnx already exists")
    assert files_in(d) == ["model.onnx"] and (d / "model.onnx").read_bytes().startswith(b"some")


def test_o_file_name_failure_keeps_the_previous_artifact(capsys, tiny_ckpt, tmp_path,
                                                          monkeypatch):
    from dyt_edge.exporters import pipeline

    d = tmp_path / "out"
    code, _, err = cli(capsys, "export", tiny_ckpt, "-o", d / "m.onnx", "--no-validate",
                       "--no-simplify")
    assert code == 0, err
    (d / "keep.txt").write_text("mine")
    before = hashes(d)
    mode = artifacts.load_artifact(d).manifest["dispatch"]["mode"]
    assert mode != "complete"

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.artifacts, "atomic_write_bytes", full_disk)
        code, _, err = cli(capsys, "export", tiny_ckpt, "-o", d / "m.onnx", "--no-validate",
                           "--no-simplify", "--dispatch", "complete")
    assert_one_line_error(code, err, "No space left on device")
    assert hashes(d) == before and leftovers(tmp_path) == []

    # A rename failing half-way through the swap puts the old files back.
    real_replace = artifacts.os.replace

    def no_manifest(src, dst, *a, **k):
        if Path(dst).name == artifacts.MANIFEST_NAME and Path(dst).parent == d:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(artifacts.os, "replace", no_manifest)
        code, _, err = cli(capsys, "export", tiny_ckpt, "-o", d / "m.onnx", "--no-validate",
                           "--no-simplify", "--dispatch", "complete")
    assert_one_line_error(code, err, "Input/output error")
    assert hashes(d) == before and leftovers(tmp_path) == []
    assert artifacts.load_artifact(d).manifest["dispatch"]["mode"] == mode


def test_o_file_name_into_a_new_directory_and_the_help(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "a" / "b"
    code, stdout, err = cli(capsys, "export", tiny_ckpt, "-o", d / "model.onnx",
                            "--no-validate", "--no-simplify", "--json", "-")
    assert code == 0, err
    manifest = json.loads(stdout)  # stdout holds the JSON alone; the report went to stderr
    assert manifest["files"]["onnx"]["path"] == "model.onnx" and "exported" in err
    assert files_in(d) == sorted(["model.onnx", artifacts.MANIFEST_NAME])
    report = tmp_path / "reports" / "export.json"
    code, stdout, err = cli(capsys, "export", tiny_ckpt, "-o", d / "model.onnx",
                            "--no-validate", "--no-simplify", "--json", report)
    assert code == 0, err
    assert "exported" in stdout and json.loads(report.read_text())["files"]["onnx"] == \
        json.loads((d / artifacts.MANIFEST_NAME).read_text())["files"]["onnx"]
    assert files_in(d) == sorted(["model.onnx", artifacts.MANIFEST_NAME])
    code, stdout, _ = cli(capsys, "export", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "a directory" in text and "out/model.onnx" in text and "out/model.xml" in text


# -- pieces -------------------------------------------------------------------------------------

def test_format_table_refuses_options_by_name():
    from dyt_edge.errors import UsageError
    from dyt_edge.exporters import formats

    narrow = formats.ExportFormat(name="engine", description="", files=(("engine", "x"),),
                                  options=frozenset({"dispatch"}), runtime="", packages=())
    formats.check_options(narrow, {"dispatch": "topk", "opset": None})
    with pytest.raises(UsageError, match="does not take --opset, --batch"):
        formats.check_options(narrow, {"dispatch": "topk", "opset": 18, "batch": "2"})
    table = formats.format_table_markdown()
    assert "`onnx`" in table and "`openvino`" in table and "`--dispatch`" in table
    assert formats.parse_batch("dynamic") is None and formats.parse_batch(" 8 ") == 8


def test_find_latest_artifact(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="no artifact found"):
        artifacts.find_latest_artifact(tmp_path)
    for name, created, kinds in [("a", "2025-01-01T00:00:00+00:00", ["onnx"]),
                                 ("b", "2025-03-01T00:00:00+00:00", ["onnx", "openvino"]),
                                 ("c", "2025-02-01T00:00:00+00:00", ["onnx"])]:
        d = tmp_path / name
        d.mkdir()
        files = {k: {"path": f"model.{k}", "bytes": 1, "sha256": ""} for k in kinds}
        manifest = artifacts.new_manifest(format=kinds[-1], files=files, model={"img_size": 32})
        artifacts.write_manifest(d, {**manifest, "created": created})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / artifacts.MANIFEST_NAME).write_text("{not json")
    assert artifacts.find_latest_artifact(tmp_path).path.name == "b"
    art, picked = artifacts.resolve_artifact(None, kind="onnx", root=tmp_path)
    assert art.path.name == "b" and picked
    (tmp_path / "b" / artifacts.MANIFEST_NAME).unlink()
    assert artifacts.find_latest_artifact(tmp_path, kind="onnx").path.name == "c"
    with pytest.raises(artifacts.ArtifactError, match="no openvino artifact"):
        artifacts.find_latest_artifact(tmp_path, kind="openvino")
    with pytest.raises(artifacts.ArtifactError, match="has no openvino model"):
        artifacts.load_artifact(tmp_path / "c").file("openvino")
    assert artifacts.default_output_dir("runs/checkpoint-9.pth") == \
        Path("dyt-edge-out/checkpoint-9")


def test_staged_directory_swaps_or_leaves_nothing(tmp_path):
    target = tmp_path / "x" / "y" / "art"
    with pytest.raises(RuntimeError):
        with artifacts.staged_directory(target) as staging:
            (staging / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with artifacts.staged_directory(target) as staging:
        artifacts.write_manifest(staging, artifacts.new_manifest(files={}))
    assert (target / artifacts.MANIFEST_NAME).exists()
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (target / artifacts.MANIFEST_NAME).stat().st_mode & 0o777 == 0o666 & ~umask
    assert leftovers(tmp_path) == []


def test_tensorrt_checks_flag_what_the_parser_refuses():
    from onnx import TensorProto, helper

    from dyt_edge.exporters.graph_report import analyze

    k = helper.make_tensor("k", TensorProto.INT64, [1], [4000])
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, sorted=0, name="topk"),
             helper.make_node("ScatterND", ["d", "idx", "u"], ["s"], reduction="add",
                              name="scatter"),
             helper.make_node("Unique", ["x"], ["q"], name="unique")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                     for n in ("x", "d", "u")]
        + [helper.make_tensor_value_info("idx", TensorProto.INT64, None)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("v", "s", "q")],
        [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    report = analyze(model)
    old, new = report.tensorrt
    assert not old.ok and not new.ok
    text = " ".join(old.issues)
    for needle in ("opset 21", "sorted=0", "K=4000", "reduction=add", "Unique"):
        assert needle in text, needle
    assert not any("opset" in i for i in new.issues)
    assert "no 'masks' output" in report.notes[0]


def test_metadata_tail_merges_into_the_model():
    from onnx import TensorProto, helper

    from dyt_edge.exporters.pipeline import _metadata_tail

    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    base = helper.make_model(graph)
    data = base.SerializeToString() + _metadata_tail({"k1": "v1", "k2": "v2"})
    merged = onnx.load_from_string(data)
    assert {p.key: p.value for p in merged.metadata_props} == {"k1": "v1", "k2": "v2"}
    assert merged.graph.node[0].op_type == "Identity"
    onnx.checker.check_model(merged)


def test_nothing_phones_home(tmp_path, published):
    """ONNX Runtime (1DS) and OpenVINO (openvino-telemetry) collect usage data by default; with
    dyt_edge.exporters imported first, neither writes its client id nor queues events."""
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import sys, numpy as np\n"
        "import dyt_edge.exporters\n"
        "import onnxruntime as ort\n"
        "from dyt_edge.runtimes.backends import import_openvino\n"
        f"s = ort.InferenceSession({str(published.onnx)!r}, providers=['CPUExecutionProvider'])\n"
        "s.run(None, {'images': np.zeros((1, 3, 32, 32), np.float32)})\n"
        "ov = import_openvino()\n"
        f"ov.convert_model({str(published.onnx)!r})\n"
        "assert sys.modules['openvino_telemetry'] is None\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(home.rglob("*")) == [], list(home.rglob("*"))


def test_help_stays_light():
    code = ("import sys; from dyt_edge.exporters import formats; import dyt_edge.artifacts; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'onnx', 'onnxruntime', "
            "'openvino')))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_simplify_falls_back_to_onnxslim_then_to_the_original(monkeypatch):
    from dyt_edge.exporters import simplify as simp
    from dyt_edge.exporters.torch_onnx import export_onnx, tidy_graph
    from dyt_edge.exporters.validation import generated_images

    model = randomize_dyt(build_model(tiny_config(depth=1)), seed=1)  # gate bias exactly 0
    names = model.config.dispatcher_names
    proto, _ = export_onnx(model, opset=18)
    tidy_graph(proto, names)
    x = generated_images(2, 3, 32)

    def broken(_model):
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(simp._RUNNERS, "onnxsim", broken)
    kept, result, runner = simp.simplify(proto, names, x)
    assert result.tool == "onnxslim" and runner is not None
    assert result.attempts[0]["reason"].startswith("failed (RuntimeError: simulated crash")
    assert not any(p.key.startswith("onnxsim") for p in kept.metadata_props)
    gate = kept.graph.initializer
    assert any(t.name == "blocks.0.mlp_token_select.mlp_head.bias" for t in gate)
    runner.close()

    monkeypatch.setitem(simp._RUNNERS, "onnxslim", broken)
    kept, result, runner = simp.simplify(proto, names, x)
    assert kept is proto and result.tool is None and runner is None
    assert "kept the unsimplified graph" in result.summary()
