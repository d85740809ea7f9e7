"""Calibration data, the float scope and NNCF INT8 on a tiny exported DyT.

The export is made once per session (conftest's ``tiny_ov_export``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from dyt_edge import artifacts
from dyt_edge.artifacts import ArtifactError
from dyt_edge.errors import DataError, UsageError
from dyt_edge.manifest import Manifest

from .helpers import TINY_NAMES as NAMES
from .helpers import write_folder, write_npz


@pytest.fixture(scope="module")
def export(tiny_ov_export) -> Path:
    return tiny_ov_export


@pytest.fixture(scope="module")
def manifest(export) -> Manifest:
    return artifacts.load_artifact(export).info


def ov_model(export: Path):
    from dyt_edge.runtimes.backends import import_openvino

    return import_openvino().Core().read_model(str(export / "model.xml"))


# -- calibration data -----------------------------------------------------------------------------

def test_npz_calibration_keeps_size_labels_and_preprocessing(tmp_path, manifest):
    from dyt_edge.calibration.data import load_calibration

    calib = load_calibration(str(write_npz(tmp_path / "c.npz", 40, size=20)), manifest, 24)
    assert calib.images.shape == (24, 3, 32, 32) and calib.images.dtype == np.float32
    assert calib.labels is not None and len(calib.labels) == 24
    # vtab preprocessing: mean = std = 0.5 maps [0, 1] pixels to [-1, 1]
    assert calib.images.min() >= -1.0 - 1e-6 and calib.images.max() <= 1.0 + 1e-6
    record = calib.record()
    assert record["size"] == 24 and record["requested"] == 24 and record["skipped"] == 0
    assert record["split"] is None and record["preprocessing"]["crop"] == 32
    items = calib.batches(5)  # a static batch of 5: the last item filled up from the start
    assert len(items) == 5 and all(x.shape == (5, 3, 32, 32) for x in items)
    labelled = calib.labelled_items(5)
    assert labelled[-1][1].tolist() == calib.labels[[20, 21, 22, 23, 0]].tolist()
    assert labelled[-1][2].tolist() == [True] * 4 + [False]  # the fill-up is not counted


def test_digits_calibration_uses_the_training_split(manifest):
    from dyt_edge.calibration.data import load_calibration
    from dyt_edge.data import load_images

    calib = load_calibration("digits", manifest, 50)
    assert calib.split == "train" and len(calib) == 50
    test = load_images("digits", manifest.preprocessing(), split="test").images.numpy()
    flat_test = {x.tobytes() for x in test}
    assert not any(x.tobytes() in flat_test for x in calib.images)


def test_corrupt_files_are_skipped_and_odd_sizes_resized(tmp_path, manifest):
    from dyt_edge.calibration.data import load_calibration

    folder = write_folder(tmp_path / "imgs", good=18, corrupt=3,
                          sizes=((20, 20), (48, 40), (32, 32)))
    calib = load_calibration(str(folder), manifest, 300)
    assert len(calib) == 18 and calib.skipped == 3
    assert calib.images.shape[1:] == (3, 32, 32)
    assert calib.labels is not None


@pytest.mark.parametrize("case, needle", [
    ("missing", "data not found"),
    ("empty", "no images"),
    ("garbage_npz", "cannot read"),
    ("all_corrupt", "could be read"),
    ("too_few", "only 3 usable"),
])
def test_bad_calibration_data_is_a_data_error(tmp_path, manifest, case, needle):
    from dyt_edge.calibration.data import load_calibration

    spec = tmp_path / case
    if case == "empty":
        spec.mkdir()
    elif case == "garbage_npz":
        spec = tmp_path / "garbage.npz"
        spec.write_bytes(b"definitely not a zip archive")
    elif case == "all_corrupt":
        write_folder(spec, good=0, corrupt=4)
    elif case == "too_few":
        write_folder(spec, good=3, corrupt=5)
    with pytest.raises(DataError) as info:
        load_calibration(str(spec), manifest, 300)
    assert needle in str(info.value) and str(info.value).startswith("--calib")


def test_labels_required_for_accuracy_control(tmp_path, manifest):
    from dyt_edge.calibration.data import load_calibration

    spec = str(write_npz(tmp_path / "u.npz", 20, labels=False))
    assert load_calibration(spec, manifest, 20).labels is None
    with pytest.raises(DataError, match="has no labels"):
        load_calibration(spec, manifest, 20, require_labels=True)


def test_size_and_preprocessing_are_checked(tmp_path, manifest):
    from dyt_edge.calibration.data import load_calibration

    spec = str(write_npz(tmp_path / "c.npz", 20))
    with pytest.raises(UsageError, match="--calib-size"):
        load_calibration(spec, manifest, 0)
    bad = copy.deepcopy(dict(manifest.raw))
    bad["preprocessing"]["crop"] = bad["preprocessing"]["resize"] = 48
    bad["preprocessing"]["input_size"] = 48
    with pytest.raises(ArtifactError, match="crops 48 px but the model takes 32"):
        load_calibration(spec, Manifest.from_dict(bad), 20)
    del bad["preprocessing"]["input_size"]  # a record from before input_size: the same check
    with pytest.raises(ArtifactError, match="crops 48 px but the model takes 32"):
        load_calibration(spec, Manifest.from_dict(bad), 20)


# -- the float scope ------------------------------------------------------------------------------

def test_openvino_scope_covers_gates_dispatch_and_float_ops(export):
    from dyt_edge.calibration.scope import DISPATCH_TYPES, openvino_float_scope, openvino_view

    model = ov_model(export)
    scope = openvino_float_scope(model, NAMES)
    assert [d.name for d in scope.dispatchers] == NAMES
    assert all(d.gate_linear and d.gate_linear.startswith(f"{d.name}/gate/")
               for d in scope.dispatchers)
    counts = scope.counts()
    for reason in ("gate", "dispatch", "index", "layernorm", "gelu", "residual"):
        assert counts.get(reason, 0) > 0, (reason, counts)
    view = openvino_view(model)
    for n, t in enumerate(view.types):
        if t in DISPATCH_TYPES - {"Gather"} or t in ("Sigmoid", "Greater", "TopK", "MVN",
                                                     "Gelu", "ReduceMax", "ReduceSum"):
            assert view.names[n] in scope.reasons, (t, view.names[n])
    # the transformer's own MatMuls (attention, MLP, adapters, head) stay quantizable
    matmuls = [view.names[n] for n, t in enumerate(view.types) if t == "MatMul"]
    quantizable = [m for m in matmuls if m not in scope.reasons]
    assert len(quantizable) == len(matmuls) - len(NAMES) and quantizable


def test_onnx_scope_contains_every_dispatcher_node_of_the_graph_report(export):
    import onnx

    from dyt_edge.calibration.scope import onnx_float_scope
    from dyt_edge.exporters.graph_report import analyze

    proto = onnx.load(str(export / "model.onnx"))
    scope = onnx_float_scope(proto, NAMES)
    report = analyze(proto, NAMES)
    for d in report.dispatchers:
        missing = [n for n in d.nodes if n not in scope.reasons]
        assert not missing, (d.name, missing)
    counts = scope.counts()
    assert counts["softmax"] == 2 and counts["layernorm"] >= 3 and counts["gelu"] >= 2
    gemms = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert [d.gate_linear for d in scope.dispatchers] == [f"{n}/gate/Gemm_0" for n in NAMES]
    assert len([g for g in gemms if g not in scope.reasons]) == len(gemms) - len(NAMES)


# -- NNCF -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calib_set(tmp_path_factory, manifest):
    from dyt_edge.calibration.data import load_calibration

    path = write_npz(tmp_path_factory.mktemp("calib") / "c.npz", 24)
    return load_calibration(str(path), manifest, 24)


def _outputs(compiled, x):
    from dyt_edge.runtimes.openvino_runtime import outputs_by_name

    out = outputs_by_name(compiled(x))
    return out["logits"], out["masks"].astype(bool)


def test_quantize_keeps_the_float_scope_out_of_int8(export, calib_set):
    from dyt_edge.calibration.openvino_int8 import quantize
    from dyt_edge.runtimes.openvino_runtime import OpenVinoModel
    from dyt_edge.calibration.scope import count_quantizers, quantizer_violations

    float_model = ov_model(export)
    result = quantize(float_model, calib_set, dispatcher_names=NAMES)
    q = result.model
    assert count_quantizers(q) > 0 and result.quantizers == count_quantizers(q)
    assert quantizer_violations(q, result.scope) == []
    # Walk the graph: no FakeQuantize feeds LayerNorm, Softmax, GELU or any dispatch-path node.
    scoped = set(result.scope.reasons)
    for op in q.get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        for target in op.output(0).get_target_inputs():
            node = target.get_node()
            assert node.get_type_name() not in ("MVN", "Softmax", "Gelu", "TopK", "GatherND",
                                                "ScatterNDUpdate", "Sigmoid", "Greater")
            assert node.get_friendly_name() not in scoped, node.get_friendly_name()
    # The gates are exactly the float gates (SmoothQuant's rescaling undone).
    fops = {op.get_friendly_name(): op for op in float_model.get_ops()}
    for d in result.scope.dispatchers:
        qop = next(op for op in q.get_ops() if op.get_friendly_name() == d.gate_linear)
        fop = fops[d.gate_linear]
        assert qop.input_value(0).get_node().get_friendly_name() == \
            fop.input_value(0).get_node().get_friendly_name()
        np.testing.assert_array_equal(qop.input_value(1).get_node().get_data(),
                                      fop.input_value(1).get_node().get_data())
    # It runs and roughly agrees with the float model.
    x = calib_set.images
    lf, mf = _outputs(OpenVinoModel(float_model).compiled, x)
    lq, mq = _outputs(OpenVinoModel(q).compiled, x)
    assert np.isfinite(lq).all()
    assert (lf.argmax(1) == lq.argmax(1)).mean() >= 0.75
    assert (mf == mq).mean() >= 0.9
    assert np.corrcoef(lf.ravel(), lq.ravel())[0, 1] > 0.95


def test_violation_check_catches_an_unscoped_quantization(export, calib_set):
    """Without the ignored scope NNCF quantizes the gate MatMul's input: the checker says so."""
    from dyt_edge.calibration.openvino_int8 import import_nncf
    from dyt_edge.calibration.scope import openvino_float_scope, quantizer_violations

    nncf = import_nncf()
    model = ov_model(export)
    scope = openvino_float_scope(model, NAMES)
    q = nncf.quantize(model, nncf.Dataset(calib_set.batches()), subset_size=len(calib_set),
                      model_type=nncf.ModelType.TRANSFORMER,
                      preset=nncf.QuantizationPreset.PERFORMANCE)
    problems = quantizer_violations(q, scope)
    assert any("gate" in p for p in problems), problems


def test_scope_survives_renamed_nodes(export):
    """The walk is by data flow: renaming every node keeps the same scope shape."""
    from dyt_edge.calibration.scope import openvino_float_scope

    model = ov_model(export)
    before = openvino_float_scope(model, NAMES).counts()
    for i, op in enumerate(model.get_ops()):
        if op.get_type_name() not in ("Parameter", "Result"):
            op.set_friendly_name(f"n{i}")
    after = openvino_float_scope(model, NAMES).counts()
    assert after == before


def test_int8_weights_cannot_saturate_on_cpus_without_vnni():
    """Every layer gets NNCF's overflow fix (7-bit weights), recorded in the build; on this
    project's AVX2 machines NNCF's default (first layer only) lost 1.4 points on the demo."""
    from nncf.quantization.advanced_parameters import OverflowFix

    from dyt_edge.calibration.openvino_int8 import QuantizeSettings, _advanced

    settings = QuantizeSettings()
    assert settings.to_dict()["overflow_fix"] == "enable"
    for smooth in (True, False):
        params = _advanced(QuantizeSettings(smooth_quant=smooth))
        assert params.overflow_fix == OverflowFix.ENABLE
