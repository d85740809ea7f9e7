"""What the TensorRT graph conversions share (calibration/onnx_graph.py): the source checks that
turn bad input into one-line errors, and the atomic model writer."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from .helpers.onnx import load


def test_bad_inputs_are_one_line_errors(onnx_exports, fp16_topk, blob_images):
    from dyt_edge.calibration.onnx_fp16 import to_fp16
    from dyt_edge.calibration.onnx_graph import GraphConversionError
    from dyt_edge.calibration.onnx_qdq import to_qdq_int8
    from dyt_edge.errors import DytEdgeError

    original = load(onnx_exports, "topk")
    old = copy.deepcopy(original)
    old.opset_import[0].version = 16
    with pytest.raises(GraphConversionError, match="opset 16.*opset >= 17"):
        to_fp16(old)
    with pytest.raises(GraphConversionError, match="already holds fp16"):
        to_fp16(fp16_topk[0])
    no_masks = copy.deepcopy(original)
    keep = [o for o in no_masks.graph.output if o.name != "masks"]
    del no_masks.graph.output[:]
    no_masks.graph.output.extend(keep)
    with pytest.raises(GraphConversionError, match="no 'masks' output"):
        to_fp16(no_masks)
    with pytest.raises(GraphConversionError, match=r"float32 \[N, 3, H, W\]"):
        to_qdq_int8(original, blob_images[:4].astype(np.float64))
    with pytest.raises(GraphConversionError, match="the model takes"):
        to_qdq_int8(original, blob_images[:4, :, :16, :16])
    with pytest.raises(GraphConversionError, match="unknown calibration method"):
        to_qdq_int8(original, blob_images[:4], method="kl")
    with pytest.raises(DytEdgeError, match="manifest names 3"):
        to_fp16(original, dispatcher_names=["a", "b", "c"])
    # the input model is never modified
    assert original.SerializeToString() == load(onnx_exports, "topk").SerializeToString()


def test_write_model_is_atomic_and_loadable(tmp_path, fp16_topk):
    from dyt_edge.calibration.onnx_graph import write_model

    path = tmp_path / "model.fp16.onnx"
    size = write_model(fp16_topk[0], path)
    assert path.stat().st_size == size
    assert onnx.load(str(path)).SerializeToString() == fp16_topk[0].SerializeToString()
