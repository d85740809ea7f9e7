"""The OpenVINO target: ONNX -> IR (:mod:`.ir`) and ``dyt-edge build --target openvino``
(:mod:`.builder`: fp32 / bf16 / fp16 IR, INT8 through :mod:`dyt_edge.calibration.openvino_int8`)."""
