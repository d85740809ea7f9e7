"""Stand-ins for what the development machines and CI lack: NVIDIA GPUs (:mod:`.gpus`), the
``tensorrt`` module (:mod:`.tensorrt`) and the CUDA driver (:mod:`.cuda`). They check how the
code calls TensorRT and CUDA (flags, shapes, buffers, files), not what TensorRT or CUDA do."""
