"""Calibration (installed as ``dyt_edge.calibration``): INT8 calibration data and quantizers.

Modules (import them where needed; the heavy ones import openvino / nncf inside functions):

``data``           :func:`~.data.load_calibration`: calibration images from DATA, preprocessed
                   per the artifact's manifest (corrupt files skipped and counted)
``scope``          which nodes stay float (the dispatch path of every dispatcher, LayerNorm,
                   Softmax, GELU, residual adds), found by data flow on an OpenVINO model or an
                   ONNX graph (:func:`~.scope.openvino_float_scope`,
                   :func:`~.scope.onnx_float_scope`), and the post-quantization check
``openvino_int8``  NNCF post-training INT8 (optionally accuracy-controlled) for OpenVINO IR
``tensorrt_onnx``  ONNX -> FP16 (dispatch path and LayerNorm kept fp32) and ONNX -> explicit
                   int8 Q/DQ (symmetric, zero points 0) for strongly typed TensorRT networks,
                   with the precision checker and ONNX Runtime parity

``dyt_edge.build`` drives them; the TensorRT path reuses ``data``, ``scope`` and ``tensorrt_onnx``.
"""
