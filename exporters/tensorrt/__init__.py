"""The TensorRT target: ``dyt-edge build --target tensorrt`` (:mod:`.builder`), its plan
(:mod:`.plan`: batch profiles, trtexec lines, the engine record) and the TensorRT build calls
(:mod:`.engine`). The FP16 / INT8 graph conversions are in :mod:`dyt_edge.calibration`; GPU
profiles, detection, the installed TensorRT and the runtime are in
:mod:`dyt_edge.runtimes.tensorrt`."""
