"""Exporters (installed as ``dyt_edge.exporters``): torch -> ONNX, ONNX -> OpenVINO IR and
TensorRT engines. Not implemented yet: see the export and TensorRT issues."""
