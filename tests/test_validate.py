"""`dyt-edge validate` end to end (:mod:`dyt_edge.validate.run` and :mod:`.inputs`): an artifact
on a runtime against the PyTorch reference, with a verdict. The metrics, the checks and the
report's header have their own test modules (test_metrics, test_validate_checks, test_reports).

Two tiny exports are made once for the module (a 10-class model as ONNX + OpenVINO IR, and a
capacity export with a tiny capacity); every test validates on a few dozen held-out digits.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_edge.config import Preprocessing
from dyt_edge.data import load_images
from dyt_edge.model import build_model
from dyt_edge.runtimes import REGISTRY, RunOutput, RuntimeSetupError
from dyt_edge.runtimes.ort_runtime import OrtRuntime
from dyt_edge.validate import PRECISION_THRESHOLDS, SCHEMA_VERSION, validate_artifact

from .helpers import assert_one_line_error, cli, randomize_dyt, tiny_config

SAMPLES = 48


# -- helpers ------------------------------------------------------------------------------------


class SkewedOrt(OrtRuntime):
    """ONNX Runtime with ``SKEW`` added to every image's logits (a deterministic numerical
    defect in the target)."""

    SKEW = np.zeros(10, np.float32)

    def run(self, images):
        out = super().run(images)
        return RunOutput(out.logits + type(self).SKEW[: out.logits.shape[1]], out.masks)


class BrokenSetup(OrtRuntime):
    """A backend whose setup fails with a multi-line message (as native libraries do)."""

    def _load(self):
        raise RuntimeSetupError("cannot compile model.onnx\n  at line 2\n  at line 3",
                                "try\nsomething else")


class FailingBatch(OrtRuntime):
    """ONNX Runtime whose backend raises its own exception type on batch ``FAIL_ON`` (from
    1)."""

    FAIL_ON = 2

    def run(self, images):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == type(self).FAIL_ON:
            raise ValueError("device lost\nmore detail")
        return super().run(images)


def use_runtime(monkeypatch, cls) -> None:
    monkeypatch.setitem(REGISTRY, "onnxruntime", f"{__name__}:{cls.__name__}")


def digits_images(manifest: dict, n: int = SAMPLES):
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    return load_images("digits", pre, split="test", limit=n, seed=0)


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory):
    return tmp_path_factory.mktemp("validate")


def _export(tmp: Path, model, name: str, **options):
    from dyt_edge.checkpoint import save_model
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

    ckpt = save_model(model, tmp / f"{name}.safetensors")
    result = export_checkpoint(ckpt, tmp / "out" / name,
                               ExportOptions(simplify=False, **options))
    return ckpt, result.path


@pytest.fixture(scope="module")
def digits_export(tmp_mod):
    """A 10-class tiny DyT (digits labels apply), exported as ONNX + OpenVINO IR."""
    torch.manual_seed(0)
    model = randomize_dyt(build_model(tiny_config(num_classes=10, depth=2)), seed=2,
                          gate_std=0.5)
    ckpt, path = _export(tmp_mod, model, "tiny10", format="openvino")
    return ckpt, path


@pytest.fixture(scope="module")
def capacity_export(tmp_mod):
    """A capacity export with 2 slots of 16 per dispatcher: most digits overflow."""
    torch.manual_seed(1)
    model = randomize_dyt(build_model(tiny_config(num_classes=10, depth=2)), seed=3,
                          gate_std=0.5)
    ckpt, path = _export(tmp_mod, model, "cap", dispatch="capacity", capacity=0.1)
    return ckpt, path


@pytest.fixture(scope="module")
def passing(digits_export):
    """The default validation of the ONNX model (shared by several tests)."""
    return validate_artifact(digits_export[1], "onnxruntime", data="digits", samples=SAMPLES,
                             batch=16)


# -- verdicts -----------------------------------------------------------------------------------

def test_fp32_onnxruntime_passes_with_no_flips(passing, digits_export):
    r = passing
    m = r.metrics
    assert r.passed and r.precision == "fp32"
    assert m["images"] == SAMPLES and r.data["split"] == "test" and r.data["skipped"] == 0
    assert m["flips"] == 0 and m["images_with_flips"] == 0 and m["top1_agreement_pct"] == 100
    assert m["max_abs_diff"] <= 1e-4 and m["max_abs_diff_unflipped"] == m["max_abs_diff"]
    assert m["decisions"] == SAMPLES * 2 * 16
    assert 0 < m["reference_active_pct"] < 100  # the gates really dispatch
    assert [c.status for c in r.checks] == ["pass"] * 4
    assert [row["name"] for row in r.layers] == ["blocks.0.mlp", "blocks.1.mlp"]
    assert r.reference["target"] == "pytorch" and r.reference["dispatch"] == "pack"
    assert r.capacity is None


def test_labelled_data_reports_accuracy_and_delta(passing, digits_export):
    from dyt_edge import load_model

    m = passing.metrics
    images = digits_images(json.loads((digits_export[1] / "dyt_edge.json").read_text()))
    model = load_model(digits_export[0])
    with torch.no_grad():
        want = 100.0 * float((model(images.images).argmax(1) == images.labels).float().mean())
    assert m["reference_accuracy_pct"] == pytest.approx(want)
    assert m["target_accuracy_pct"] == pytest.approx(want)
    assert m["accuracy_delta_points"] == 0
    drop = next(c for c in passing.checks if c.id == "accuracy_drop")
    assert drop.status == "pass" and drop.value == 0 and drop.threshold == 0.1


def test_openvino_target_on_the_same_artifact(digits_export):
    r = validate_artifact(digits_export[1], "openvino", data="digits", samples=16, batch=8)
    assert r.passed and r.target["target"] == "openvino" and r.metrics["flips"] == 0
    assert r.metrics["max_abs_diff"] <= 1e-4


def test_skewed_logits_fail_on_max_diff_and_overrides_pass(monkeypatch, capsys, digits_export,
                                                          tmp_path):
    use_runtime(monkeypatch, SkewedOrt)
    monkeypatch.setattr(SkewedOrt, "SKEW", np.full(10, 0.01, np.float32))  # argmax unchanged
    code, out, err = cli(capsys, "validate", digits_export[1], "--target", "onnxruntime",
                         "--data", "digits", "--samples", 16, "--json", tmp_path / "r.json")
    line = assert_one_line_error(code, err, "max logit diff (no flipped gate) 1.00e-02",
                                 "<= 1.00e-04")
    assert code == 1 and "FAILED" in out and "FAIL" in out  # the report is printed first
    saved = json.loads((tmp_path / "r.json").read_text())  # and written
    assert saved["passed"] is False and saved["failed_checks"] == ["max_diff"]
    assert "more failed" not in line

    code, out, err = cli(capsys, "validate", digits_export[1], "--target", "onnxruntime",
                         "--data", "digits", "--samples", 16, "--max-diff", "0.05",
                         "--json", "-")
    assert code == 0, err
    assert json.loads(out)["passed"] is True  # stdout holds the JSON alone
    assert "PASSED" in err and "overridden: max_diff" in err


def test_wrong_top1_fails_agreement_and_accuracy(monkeypatch, digits_export):
    use_runtime(monkeypatch, SkewedOrt)
    skew = np.zeros(10, np.float32)
    skew[3] = 100.0  # the target always answers 3
    monkeypatch.setattr(SkewedOrt, "SKEW", skew)
    r = validate_artifact(digits_export[1], "onnxruntime", data="digits", samples=SAMPLES)
    m = r.metrics
    labels = digits_images(json.loads((digits_export[1] / "dyt_edge.json").read_text())).labels
    assert m["target_accuracy_pct"] == pytest.approx(100.0 * float((labels == 3).float().mean()))
    assert m["accuracy_delta_points"] == pytest.approx(
        m["target_accuracy_pct"] - m["reference_accuracy_pct"])
    failed = [c.id for c in r.failed_checks]
    assert "top1_agreement" in failed and "max_diff" in failed
    assert m["flips"] == 0  # logits only: the gates still agree
    # Relaxing every check to its loosest value passes it.
    loose = validate_artifact(digits_export[1], "onnxruntime", data="digits", samples=SAMPLES,
                              thresholds={"max_diff": 1e3, "min_agreement": 0, "max_drop": 100})
    assert loose.passed and loose.thresholds["overridden"] == ["max_diff", "max_drop",
                                                               "min_agreement"]


def test_edited_gate_bias_flips_decisions(tmp_path, digits_export, capsys):
    """A graph whose first gate's bias was moved: its decisions flip, the flips check names
    the dispatcher, and the logits of images without a flip still match."""
    import onnx
    from onnx import numpy_helper

    art = tmp_path / "edited"
    shutil.copytree(digits_export[1], art)
    manifest = json.loads((art / "dyt_edge.json").read_text())
    bias_name = manifest["graph_report"]["dispatchers"][0]["gate_bias"]
    proto = onnx.load(str(art / "model.onnx"))
    init = next(t for t in proto.graph.initializer if t.name == bias_name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.3, bias_name))
    onnx.save(proto, str(art / "model.onnx"))

    code, out, err = cli(capsys, "validate", art, "-t", "onnxruntime", "--data", "digits",
                         "--samples", SAMPLES, "--json", tmp_path / "v.json")
    assert_one_line_error(code, err, "gate decisions flipped")
    assert code == 1
    r = json.loads((tmp_path / "v.json").read_text())
    layers = r["layers"]
    assert layers[0]["flips"] > 0 and layers[0]["target_active_pct"] > layers[0][
        "reference_active_pct"]
    assert r["metrics"]["flips"] == sum(row["flips"] for row in layers)
    assert "gate_flips" in r["failed_checks"]
    assert 0 < r["metrics"]["unflipped_images"] < SAMPLES
    assert r["metrics"]["max_abs_diff_unflipped"] <= 1e-4
    code, out, err = cli(capsys, "validate", art, "-t", "onnxruntime", "--data", "digits",
                         "--samples", SAMPLES, "--max-flips", 100, "--min-agreement", 0,
                         "--max-drop", 100)
    assert code == 0, err


def test_capacity_overflow_is_counted(capacity_export):
    from dyt_edge import load_model

    ckpt, path = capacity_export
    r = validate_artifact(path, "onnxruntime", data="digits", samples=SAMPLES)
    manifest = json.loads((path / "dyt_edge.json").read_text())
    slots = manifest["dispatch"]["capacity_slots"]
    assert slots == [2, 2]
    model = load_model(ckpt)
    model.set_dispatch("mask")
    with torch.no_grad():
        _, masks = model(digits_images(manifest).images, return_masks=True)
    over = masks.sum(-1) > torch.tensor(slots)                       # [N, L]
    cap = r.capacity
    assert cap["slots"] == slots and cap["capacity"] == 0.1
    assert cap["overflow_images"] == int(over.any(1).sum()) > 0
    assert [row["overflow_images"] for row in r.layers] == over.sum(0).tolist()
    assert cap["exact_accuracy_pct"] is not None
    # Reference and target both drop the same tokens: the artifact itself validates.
    assert r.passed and r.reference["dispatch"] == "capacity"
    assert any("lose tokens" in n for n in r.notes)


def test_json_schema(passing, tmp_path):
    from dyt_edge.validate import write_json

    path = write_json(passing, tmp_path / "sub" / "v.json")
    d = json.loads(path.read_text())
    assert set(d) == {"schema", "schema_version", "dyt_edge_version", "created", "passed",
                      "verdict",
                      "failed_checks", "artifact", "target", "reference", "precision", "data",
                      "batch", "thresholds", "metrics", "layers", "capacity", "classes",
                      "checks", "notes", "seconds"}
    if d["classes"] is not None:  # labelled data: per-class rows
        assert set(d["classes"]) == {"relation", "names_from", "accuracy", "rows"}
        assert set(d["classes"]["rows"][0]) == {"index", "name", "images",
                                                "reference_accuracy_pct", "target_accuracy_pct",
                                                "top1_agreement_pct"}
    assert d["schema"] == "dyt-edge.validate" and d["schema_version"] == SCHEMA_VERSION
    assert d["verdict"] == "passed"
    assert set(d["metrics"]) == {
        "images", "classes", "max_abs_diff", "mean_abs_diff", "max_abs_diff_unflipped",
        "unflipped_images", "logit_scale", "top1_agreement_pct", "top1_disagreements",
        "masks_compared", "decisions", "flips", "flip_pct", "images_with_flips",
        "reference_active_pct", "target_active_pct", "reference_accuracy_pct",
        "target_accuracy_pct", "accuracy_delta_points", "rounding"}
    assert set(d["metrics"]["rounding"]) == {"logits", "images", "excluded",
                                             "target_vs_float64"}
    assert d["metrics"]["rounding"]["images"] >= 1
    assert set(d["thresholds"]) == {"precision", "max_diff", "max_diff_rounding", "max_diff_rel",
                                    "min_agreement_pct", "max_flip_pct", "max_drop_points",
                                    "overridden"}
    assert set(d["data"]) >= {"spec", "name", "split", "images", "skipped", "requested",
                              "labelled", "seed"}
    assert set(d["artifact"]) == {"path", "picked", "format", "variant", "dispatch", "build"}
    assert [c["id"] for c in d["checks"]] == ["max_diff", "top1_agreement", "gate_flips",
                                              "accuracy_drop"]
    assert set(d["checks"][0]) == {"id", "name", "value", "threshold", "op", "unit", "status",
                                   "detail"}
    assert set(d["layers"][0]) == {"index", "name", "decisions", "flips", "flip_pct",
                                   "images_with_flips", "reference_active_pct",
                                   "target_active_pct", "slots", "overflow_images"}
    assert d["target"]["target"] == "onnxruntime" and d["target"]["precision"] == "fp32"
    assert not list(path.parent.glob(".*"))  # atomic write: no temporary left behind


def test_cli_table_and_most_recent_export(capsys, digits_export, tmp_path, monkeypatch):
    shutil.copytree(digits_export[1], tmp_path / "dyt-edge-out" / "tiny10")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "validate", "--target", "openvino", "--data", "digits",
                         "--samples", 8)
    assert code == 0, err
    assert "using the most recent export" in err and "tiny10" in err
    for needle in ("Reference vs target", "top-1 agreement", "blocks.1.mlp", "Checks (fp32",
                   "PASSED"):
        assert needle in out, needle


# -- bad input: one line, non-zero exit, no traceback -------------------------------------------

@pytest.mark.parametrize("args,needles,code", [
    ([], ["--target is required"], 2),
    (["-t", "onnxrt"], ["unknown target 'onnxrt'", "did you mean 'onnxruntime'"], 2),
    (["-t", "pytorch"], ["reference"], 2),
    (["-t", "onnxruntime", "--samples", "0"], ["--samples must be a positive integer"], 2),
    (["-t", "onnxruntime", "--batch", "0"], ["--batch must be a positive integer"], 2),
    (["-t", "onnxruntime", "--batch", "-3"], ["--batch must be a positive integer"], 2),
    (["-t", "onnxruntime", "--precision", "fp8"], ["unknown precision 'fp8'"], 2),
    (["-t", "onnxruntime", "--data", "digits", "--precision", "bf16"],
     ["onnxruntime cannot run precision bf16"], 1),
    (["-t", "onnxruntime", "--data", "digits", "--precision", "int8"], ["not an INT8 model"], 1),
    (["-t", "onnxruntime", "--min-agreement", "150"], ["percentage in [0, 100]"], 2),
    (["-t", "onnxruntime", "--max-diff", "0"], ["--max-diff must be positive"], 2),
    (["-t", "onnxruntime", "--data", "{tmp}/nope"], ["data not found"], 1),
    (["-t", "onnxruntime", "--data", "{tmp}/empty"], ["no images in"], 1),
    (["-t", "onnxruntime", "--data", "{tmp}/bad.npz"], ["cannot read bad.npz"], 1),
    (["-t", "onnxruntime", "--data", "{tmp}/broken"], ["only 1 of 3 image files"], 1),
    (["-t", "onnxruntime"], ["--data is required for validation"], 1),
    (["-t", "onnxruntime", "--data", "digits", "--json", "{tmp}"], ["is a directory"], 2),
])
def test_bad_flags_and_data(capsys, digits_export, tmp_path, args, needles, code):
    from PIL import Image

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(broken / "ok.png")
    for name in ("a.png", "b.png"):
        (broken / name).write_bytes(b"\x89PNG garbage")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    got, out, err = cli(capsys, "validate", digits_export[1], *args)
    assert_one_line_error(got, err, *needles)
    assert got == code


def test_corrupt_images_are_skipped_and_counted(digits_export, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    for c in ("zero", "one"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 24), (40 * i, 100, 200)).save(folder / c / f"{i}.png")
    (folder / "one" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    r = validate_artifact(digits_export[1], "onnxruntime", data=str(folder), samples=100)
    assert r.data["images"] == 6 and r.data["skipped"] == 1 and r.data["split"] is None
    assert r.passed and any("1 unreadable" in n for n in r.notes)
    assert r.metrics["reference_accuracy_pct"] is not None  # ImageFolder labels


def test_artifact_problems(capsys, digits_export, capacity_export, tmp_path, monkeypatch):
    code, _, err = cli(capsys, "validate", tmp_path / "missing", "-t", "onnxruntime")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = cli(capsys, "validate", tmp_path, "-t", "onnxruntime")
    assert_one_line_error(code, err, "not a dyt-edge artifact")
    # A plain ONNX export on OpenVINO: build it first.
    code, _, err = cli(capsys, "validate", capacity_export[1], "-t", "openvino", "--data",
                       "digits")
    assert_one_line_error(code, err, "no OpenVINO IR", "dyt-edge build --target openvino")
    # A multi-line backend message still reaches the user as one line.
    use_runtime(monkeypatch, BrokenSetup)
    code, _, err = cli(capsys, "validate", digits_export[1], "-t", "onnxruntime", "--data",
                       "digits")
    assert_one_line_error(code, err, "cannot compile model.onnx at line 2 at line 3",
                          "try something else")


def test_checkpoint_moved_or_changed(capsys, digits_export, tmp_path):
    ckpt, path = digits_export
    art = tmp_path / "art"
    shutil.copytree(path, art)
    manifest = json.loads((art / "dyt_edge.json").read_text())
    moved = tmp_path / "elsewhere.safetensors"
    manifest["source"]["path"] = str(moved)
    (art / "dyt_edge.json").write_text(json.dumps(manifest))
    code, _, err = cli(capsys, "validate", art, "-t", "onnxruntime", "--data", "digits")
    assert_one_line_error(code, err, "is missing", str(moved))
    moved.write_bytes(Path(ckpt).read_bytes() + b"\0")
    code, _, err = cli(capsys, "validate", art, "-t", "onnxruntime", "--data", "digits")
    assert_one_line_error(code, err, "changed since this artifact was exported", "sha256")


def test_help_lists_the_flags(capsys):
    code, out, _ = cli(capsys, "validate", "--help")
    assert code == 0
    for flag in ("--target", "--precision", "--data", "--samples", "--batch", "--json",
                 "--max-diff", "--min-agreement", "--max-drop", "--max-flips"):
        assert flag in out, flag
    assert math.isfinite(PRECISION_THRESHOLDS["fp32"].max_diff)


def test_static_batch_artifact_pads_the_last_batch(digits_export, tmp_path):
    """A static-batch artifact takes exactly its batch: validate runs that batch size and pads
    the last one (the padding's outputs are dropped)."""
    art = tmp_path / "static"
    shutil.copytree(digits_export[1], art)
    manifest = json.loads((art / "dyt_edge.json").read_text())
    manifest["batch"] = 5  # the graph itself is dynamic, so only the batch contract changes
    (art / "dyt_edge.json").write_text(json.dumps(manifest))
    r = validate_artifact(art, "onnxruntime", data="digits", samples=12, batch=32)
    assert r.passed and r.batch == 5 and r.metrics["images"] == 12
    assert r.metrics["decisions"] == 12 * 2 * 16
    assert any("static batch of 5" in n for n in r.notes)


@pytest.mark.parametrize("batch, images", [(2, "5..9"), (3, "10..11")])
def test_a_backend_error_names_the_images_of_its_batch(digits_export, monkeypatch, batch,
                                                       images):
    from dyt_edge.errors import ValidationAborted

    use_runtime(monkeypatch, FailingBatch)
    monkeypatch.setattr(FailingBatch, "FAIL_ON", batch)
    with pytest.raises(ValidationAborted) as info:
        validate_artifact(digits_export[1], "onnxruntime", data="digits", samples=12, batch=5)
    assert info.value.message == (f"onnxruntime failed on images {images}: ValueError: "
                                  "device lost")
    assert "--debug" in info.value.hint
