"""TensorRT on NVIDIA GPUs: the runtime (:mod:`.runtime`), CUDA through its driver API
(:mod:`.cuda`), and what this machine has: GPU profiles and detection (:mod:`.gpus`), the
installed TensorRT and the guards between GPU, TensorRT and precision (:mod:`.install`), and the
engine record checked before an engine loads (:mod:`.engine_file`). TensorRT and CUDA are only
imported inside functions (:mod:`.runtime`, :mod:`.cuda`, and :func:`.install.find_tensorrt`
to read the installed version), so the package imports without either."""
