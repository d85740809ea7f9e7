"""Calibration (installed as ``dyt_edge.calibration``): INT8 calibration data and quantizers.
Not implemented yet: see the runtimes and TensorRT issues."""
