"""``dyt-edge package`` (dyt_edge/serving/): the Triton, OVMS and KServe repositories it writes,
checked against the manifest field by field, with Triton's own ``ModelConfig`` parser
(``tritonclient``'s ``model_config_pb2``), and the refusals and DyT-aware warnings.

Packaging reads only the manifest, so variants an export would take minutes to make (``topk``,
a static batch, class names, an IR without its ONNX) are copies of the tiny export with the
manifest edited; the TensorRT artifact is a real ``dyt-edge build`` against the fake TensorRT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dyt_edge.artifacts import MANIFEST_NAME, load_artifact
from dyt_edge.serving.package import PackageOptions, package_artifact
from dyt_edge.serving.pbtxt import Enum, Map, to_text

from .fakes.gpus import T4
from .helpers import TINY_NAMES, assert_one_line_error, cli


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def variant(src: Path, dst: Path, **changes) -> Path:
    """A copy of the artifact ``src`` with manifest keys replaced (None deletes a key)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dst


def dtype(name: str) -> int:
    return mc.DataType.Value(f"TYPE_{name}")


def test_triton_python_config_matches_the_manifest_field_by_field(tiny_ov_export, tmp_path):
    result = package_artifact(load_artifact(tiny_ov_export),
                              PackageOptions("triton", output=tmp_path / "repo", name="tiny"))
    model = tmp_path / "repo" / "tiny"
    cfg = parse(model / "config.pbtxt")
    info = load_artifact(tiny_ov_export).info
    assert cfg.name == "tiny" and cfg.backend == "python" and cfg.max_batch_size == 8
    (image,) = cfg.input
    assert image.name == info.inputs[0]["name"] == "images"
    assert image.data_type == dtype("FP32") and list(image.dims) == [3, 32, 32]
    assert [o.name for o in cfg.output] == [o["name"] for o in info.outputs] == ["logits",
                                                                                  "masks"]
    logits, masks = cfg.output
    assert logits.data_type == dtype("FP32") and list(logits.dims) == [5]
    assert masks.data_type == dtype("BOOL") and list(masks.dims) == [len(TINY_NAMES), 16]
    assert logits.label_filename == ""  # the tiny model records no class names
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    assert list(cfg.dynamic_batching.preferred_batch_size) == []
    (group,) = cfg.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert cfg.parameters["runtime"].string_value == "openvino"
    assert cfg.parameters["artifact"].string_value == "artifact"
    # The manifest and the files the OpenVINO runtime reads travel unchanged; not the ONNX.
    copy = model / "1" / "artifact"
    assert (copy / MANIFEST_NAME).read_bytes() == (tiny_ov_export / MANIFEST_NAME).read_bytes()
    assert sorted(p.name for p in copy.iterdir()) == [MANIFEST_NAME, "model.bin", "model.xml"]
    for kind in ("openvino", "openvino_weights"):
        rel = info.files[kind].path
        assert (copy / rel).read_bytes() == (tiny_ov_export / rel).read_bytes()
    assert "dyt_edge.serving.triton_python import TritonPythonModel" in \
        (model / "1" / "model.py").read_text()
    record = json.loads((model / "dyt_edge_package.json").read_text())
    assert record["schema"] == "dyt-edge.package" and record["triton"]["backend"] == "python"
    assert record["preprocessing"] == json.loads(json.dumps(info.preprocessing().to_dict()))
    assert result.notes == [] and "tiny/config.pbtxt" in result.files


def test_native_onnx_labels_instances_and_queue_delay(tiny_ov_export, tmp_path):
    names = ["cat", "dog", "emu", "fox", "gnu"]
    art = variant(tiny_ov_export, tmp_path / "named", class_names=names)
    result = package_artifact(load_artifact(art), PackageOptions(
        "triton", output=tmp_path / "repo", backend="native", instances=2, max_batch=4,
        queue_delay_us=500))
    model = tmp_path / "repo" / "named"
    cfg = parse(model / "config.pbtxt")
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 4 and not cfg.parameters
    assert cfg.default_model_filename == ""  # model.onnx is Triton's own default
    assert (model / "1" / "model.onnx").read_bytes() == (art / "model.onnx").read_bytes()
    assert not (model / "1" / "model.xml").exists()
    assert cfg.instance_group[0].count == 2
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.output[0].label_filename == "labels.txt"
    assert (model / "labels.txt").read_text().split() == names
    assert any("model.onnx on ONNX Runtime" in n for n in result.notes)


def test_an_openvino_ir_is_refused_natively_with_the_reason_and_alternatives(
        capsys, tiny_ov_export, tmp_path):
    manifest = json.loads((tiny_ov_export / MANIFEST_NAME).read_text())
    files = {k: v for k, v in manifest["files"].items() if k != "onnx"}
    art = variant(tiny_ov_export, tmp_path / "ir", files=files)
    code, out, err = cli(capsys, "package", str(art), "--for", "triton", "--backend", "native",
                         "-o", str(tmp_path / "repo"))
    line = assert_one_line_error(code, err, "precision", "bf16", "--backend python",
                                 "--for ovms")
    assert code == 2 and "Traceback" not in line
    assert not (tmp_path / "repo").exists()


def test_topk_for_a_batching_server_warns_and_names_the_default_export(capsys, tiny_ov_export,
                                                                        tmp_path):
    manifest = json.loads((tiny_ov_export / MANIFEST_NAME).read_text())
    art = variant(tiny_ov_export, tmp_path / "topk",
                  dispatch={**manifest["dispatch"], "mode": "topk"})
    code, out, err = cli(capsys, "package", str(art), "--for", "triton",
                         "-o", str(tmp_path / "repo"))
    assert code == 0
    text = " ".join((out + err).split())
    assert "warning: this is a `topk` export" in text and "`pack`" in text
    assert "dyt-edge export CKPT" in text
    # One request at a time: nothing is merged, nothing to warn about.
    quiet = package_artifact(load_artifact(art), PackageOptions(
        "triton", output=tmp_path / "repo", name="single", max_batch=1))
    assert quiet.notes == []


def test_a_static_batch_is_declared_whole_and_never_batched(tiny_ov_export, tmp_path):
    manifest = json.loads((tiny_ov_export / MANIFEST_NAME).read_text())
    inputs = [{**manifest["inputs"][0], "shape": [4, 3, 32, 32]}]
    outputs = [{**o, "shape": [4, *o["shape"][1:]]} for o in manifest["outputs"]]
    art = variant(tiny_ov_export, tmp_path / "static", batch=4, inputs=inputs, outputs=outputs)
    result = package_artifact(load_artifact(art), PackageOptions("triton",
                                                                 output=tmp_path / "repo"))
    cfg = parse(tmp_path / "repo" / "static" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, 3, 32, 32]
    assert list(cfg.output[1].dims) == [4, len(TINY_NAMES), 16]
    assert any("static batch of 4" in n for n in result.notes)
    with pytest.raises(Exception, match="static batch of 4"):
        package_artifact(load_artifact(art), PackageOptions("triton", output=tmp_path / "r2",
                                                            max_batch=2))


@pytest.fixture
def trt_build(tiny_ov_work, monkeypatch, fake_trt):
    """A real fp32 TensorRT build of the tiny export (fake TensorRT, a T4 present)."""
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes.tensorrt import gpus

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    return build_artifact(tiny_ov_work, "tensorrt", precision="fp32", batch="1:4:16").path


def test_a_tensorrt_engine_natively_and_through_python(trt_build, tmp_path):
    art = load_artifact(trt_build)
    engine = art.info.section("tensorrt")
    package_artifact(art, PackageOptions("triton", output=tmp_path / "repo", name="trt",
                                         backend="native"))
    model = tmp_path / "repo" / "trt"
    text = (model / "config.pbtxt").read_text()
    cfg = parse(model / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.engine"
    assert (model / "1" / "model.engine").read_bytes() == (trt_build / "model.engine").read_bytes()
    assert cfg.max_batch_size == 16  # the profile's maximum
    io = {e["name"]: e for e in engine["io"]}
    for t in [*cfg.input, *cfg.output]:
        assert list(t.dims) == io[t.name]["shape"][1:]
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert f"TensorRT {engine['tensorrt']['version']}" in text
    with pytest.raises(Exception, match="larger than the engine's batch profile"):
        package_artifact(art, PackageOptions("triton", output=tmp_path / "repo", name="trt",
                                             backend="native", max_batch=32))
    package_artifact(art, PackageOptions("triton", output=tmp_path / "repo", name="trt-py"))
    py = parse(tmp_path / "repo" / "trt-py" / "config.pbtxt")
    assert py.backend == "python" and py.parameters["runtime"].string_value == "tensorrt"
    assert py.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    with pytest.raises(Exception, match="TensorRT engine"):
        package_artifact(art, PackageOptions("ovms", output=tmp_path / "ovms"))


def test_preferred_batch_sizes_come_from_this_artifacts_bench_report(tiny_ov_export, tmp_path):
    art = load_artifact(tiny_ov_export)
    report = {"artifact": {"path": str(tiny_ov_export)}, "results": [
        {"batch": 1, "dyt": {"images_per_s": 50.0}}, {"batch": 4, "dyt": {"images_per_s": 95.0}},
        {"batch": 8, "dyt": {"images_per_s": 100.0}}, {"batch": 2, "dyt": {"images_per_s": 70}},
        {"batch": 32, "dyt": {"images_per_s": 120.0}}]}
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(report))
    result = package_artifact(art, PackageOptions("triton", output=tmp_path / "repo",
                                                  bench=bench))
    cfg = parse(tmp_path / "repo" / result.name / "config.pbtxt")
    # Within 90% of the best at or below max_batch_size 8 (batch 32 is out of reach).
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**report, "artifact": {"path": str(tmp_path)}}))
    with pytest.raises(Exception, match="not .*pass the bench report of this artifact"):
        package_artifact(art, PackageOptions("triton", output=tmp_path / "repo", bench=other))


def test_ovms_layout_and_config_keep_the_precision_and_do_not_pin_the_batch(tiny_ov_export,
                                                                            tmp_path):
    repo = tmp_path / "repo"
    package_artifact(load_artifact(tiny_ov_export), PackageOptions("ovms", output=repo,
                                                                   name="a"))
    assert (repo / "a" / "1" / "model.xml").read_bytes() == \
        (tiny_ov_export / "model.xml").read_bytes()
    assert (repo / "a" / "1" / "model.bin").is_file()
    package_artifact(load_artifact(tiny_ov_export), PackageOptions("ovms", output=repo,
                                                                   name="b"))
    config = json.loads((repo / "config.json").read_text())
    entries = [m["config"] for m in config["model_config_list"]]
    assert [e["name"] for e in entries] == ["a", "b"]
    a = entries[0]
    assert a["base_path"] == "a" and a["target_device"] == "CPU"
    assert a["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert a["shape"] == {"images": "(-1,3,32,32)"} and "batch_size" not in a
    # Packaging "a" again replaces its entry, keeps "b".
    package_artifact(load_artifact(tiny_ov_export), PackageOptions("ovms", output=repo,
                                                                   name="a"))
    names = [m["config"]["name"] for m in json.loads((repo / "config.json").read_text())
             ["model_config_list"]]
    assert sorted(names) == ["a", "b"]
    # A config.json that is not OVMS's is refused before any model folder changes.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"something": "else"}')
    with pytest.raises(Exception, match="not an OVMS configuration"):
        package_artifact(load_artifact(tiny_ov_export), PackageOptions("ovms", output=other))
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]


@pytest.mark.parametrize("server", ["triton", "ovms"])
def test_kserve_inference_service_for_either_runtime(tiny_ov_export, tmp_path, server):
    result = package_artifact(load_artifact(tiny_ov_export), PackageOptions(
        "kserve", output=tmp_path / "repo", name="Tiny_Model", kserve_server=server,
        storage_uri="s3://bucket/models/"))
    (path,) = (tmp_path / "repo").glob("inferenceservice-*.yaml")
    service = yaml.safe_load(path.read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert service["metadata"]["name"] == "tiny-model"  # a DNS-1123 label
    model = service["spec"]["predictor"]["model"]
    if server == "triton":
        assert model["runtime"] == "kserve-tritonserver"
        assert model["modelFormat"]["name"] == "triton"
        assert model["storageUri"] == "s3://bucket/models"
        assert parse(tmp_path / "repo" / "Tiny_Model" / "config.pbtxt").backend == "python"
    else:
        assert model["runtime"] == "kserve-ovms" and model["modelFormat"]["name"] == "openvino"
        assert model["storageUri"] == "s3://bucket/models/Tiny_Model"
        (arg,) = model["args"]
        assert json.loads(arg.split("=", 1)[1])["INFERENCE_PRECISION_HINT"] == "f32"
    assert result.server == server


@pytest.mark.parametrize("args, needles", [
    ([], ["--for is required"]),
    (["--for", "tritn"], ["unknown server 'tritn'", "triton"]),
    (["--for", "kserve"], ["--storage-uri", "s3://"]),
    (["--for", "kserve", "--storage-uri", "bucket/path"], ["not a URI"]),
    (["--for", "triton", "--name", "bad/name"], ["not a valid model name"]),
    (["--for", "triton", "--instances", "0"], ["--instances"]),
    (["--for", "triton", "--backend", "onnx"], ["unknown backend 'onnx'"]),
    (["--for", "ovms", "--max-batch", "4"], ["Triton settings"]),
])
def test_bad_options_are_one_line_errors_and_write_nothing(capsys, tiny_ov_export, tmp_path,
                                                           args, needles):
    code, _, err = cli(capsys, "package", str(tiny_ov_export), "-o", str(tmp_path / "repo"),
                       *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "repo").exists()


def test_a_model_folder_dyt_edge_did_not_write_is_never_replaced(capsys, tiny_ov_export,
                                                                tmp_path):
    mine = tmp_path / "repo" / "tiny"
    mine.mkdir(parents=True)
    (mine / "config.pbtxt").write_text("name: \"tiny\"\n")
    code, _, err = cli(capsys, "package", str(tiny_ov_export), "--for", "triton", "-o",
                       str(tmp_path / "repo"), "--name", "tiny")
    assert_one_line_error(code, err, "not written by dyt-edge package", "--name")
    assert (mine / "config.pbtxt").read_text() == "name: \"tiny\"\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging left


def test_json_on_stdout_is_the_package_record(capsys, tiny_ov_export, tmp_path):
    code, out, _ = cli(capsys, "package", str(tiny_ov_export), "--for", "triton", "-o",
                       str(tmp_path / "repo"), "--json", "-")
    assert code == 0
    record = json.loads(out)
    assert record["schema"] == "dyt-edge.package" and record["triton"]["max_batch_size"] == 8
    assert record["repository"] == str(tmp_path / "repo")


def test_text_format_writer_quotes_and_nests():
    text = to_text({"name": 'a "b"', "n": 3, "flag": True, "kind": Enum("KIND_CPU"),
                    "dims": [1, 2], "empty": [], "skip": None,
                    "msg": {"x": 1.5}, "rep": [{"a": 1}, {"a": 2}],
                    "parameters": Map({"k": {"string_value": "v"}})}, "top\nline")
    assert text.startswith("# top\n# line\n")
    assert 'name: "a \\"b\\""' in text and "flag: true" in text and "kind: KIND_CPU" in text
    assert "dims: [ 1, 2 ]" in text and "empty" not in text and "skip" not in text
    assert text.count("{") == text.count("}")
