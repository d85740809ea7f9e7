"""Calibration (installed as ``dyt_edge.calibration``): lower precisions for each target.

Modules (the heavy ones import openvino / nncf / onnx inside functions):

``data``            :func:`~.data.load_calibration`: calibration images from DATA, preprocessed
                    per the artifact's manifest (corrupt files skipped and counted)
``scope``           which nodes stay float (the dispatch path of every dispatcher, LayerNorm,
                    Softmax, GELU, residual adds), found by data flow on an OpenVINO model or an
                    ONNX graph, and the post-quantization check
``openvino_int8``   NNCF post-training INT8 (optionally accuracy-controlled) for OpenVINO IR
``onnx_fp16``       ONNX -> FP16 with the dispatch path and LayerNorm kept fp32 (TensorRT fp16)
``onnx_qdq``        ONNX -> explicit int8 Q/DQ, symmetric, zero points 0 (TensorRT int8)
``onnx_precision``  the precision checker of those graphs, and their ONNX Runtime parity
``onnx_graph``      ONNX helpers the three share

The builders (:mod:`dyt_edge.exporters.openvino.builder`,
:mod:`dyt_edge.exporters.tensorrt.builder`) drive them; ``docs/calibration.md`` explains the
choices.
"""
