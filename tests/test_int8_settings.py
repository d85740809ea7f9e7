"""INT8 settings beside the defaults: the attention core kept float (``float_attention``)."""

from __future__ import annotations

import numpy as np

from .helpers import TINY_NAMES as NAMES
from .helpers import write_npz


def _sdpa_inputs_quantized(model) -> list[bool]:
    """Per ScaledDotProductAttention op: is any of q, k, v fed by a FakeQuantize?"""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "ScaledDotProductAttention":
            out.append(any(op.input_value(i).get_node().get_type_name() == "FakeQuantize"
                           for i in range(3)))
    return out


def test_float_attention_keeps_q_k_v_unquantized(tiny_ov_export, tmp_path):
    from dyt_edge import artifacts
    from dyt_edge.calibration.data import load_calibration
    from dyt_edge.calibration.openvino_int8 import QuantizeSettings, quantize
    from dyt_edge.calibration.scope import quantizer_violations
    from dyt_edge.runtimes.backends import import_openvino
    from dyt_edge.runtimes.openvino_runtime import OpenVinoModel

    info = artifacts.load_artifact(tiny_ov_export).info
    calib = load_calibration(str(write_npz(tmp_path / "c.npz", 16)), info, 16)
    float_model = import_openvino().Core().read_model(str(tiny_ov_export / "model.xml"))
    default = quantize(float_model, calib, dispatcher_names=NAMES)
    kept = quantize(float_model, calib, dispatcher_names=NAMES,
                    settings=QuantizeSettings(float_attention=True))
    assert _sdpa_inputs_quantized(default.model) == [True] * len(NAMES)
    assert _sdpa_inputs_quantized(kept.model) == [False] * len(NAMES)
    assert 0 < kept.quantizers < default.quantizers
    assert quantizer_violations(kept.model, kept.scope) == []
    assert QuantizeSettings(float_attention=True).to_dict()["float_attention"] is True
    x = calib.images
    ref = OpenVinoModel(float_model).run(x)[0]
    got = OpenVinoModel(kept.model).run(x)[0]
    assert np.isfinite(got).all() and (ref.argmax(1) == got.argmax(1)).mean() >= 0.75
