"""ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), the gate-bias edits on an OpenVINO model,
and the OpenVINO runner of export-time validation.

Choices:

* Weights are saved as f32 (``save_model(..., compress_to_fp16=False)``). OpenVINO's default
  compresses every weight to fp16, the gate weights included, which moves gate logits and can flip
  decisions: the DyT contract keeps the gate path fp32 (a smaller fp16 IR is a separate,
  reported precision choice, not the default).
* Validation compiles for CPU with ``INFERENCE_PRECISION_HINT`` = f32 set explicitly (through
  :class:`dyt_edge.runtimes.openvino_runtime.OpenVinoModel`): on CPUs with bf16 support the
  default is bf16, which moves logits by ~1e-2 and flips gate decisions.
* The ONNX converter removes ``x + 0``: a checkpoint whose gate bias is exactly 0 would lose the
  gate's Add, and with it the point where validation forces gates open or shut. So the ONNX is
  converted with non-zero placeholder biases and the real biases are put back into the
  converted model (a Constant per gate, named after its checkpoint key).
* OpenVINO is imported through :func:`dyt_edge.runtimes.backends.import_openvino` (telemetry off
  first; ``import openvino`` and ``convert_model`` send usage events otherwise).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ...runtimes.backends import import_openvino
from ...runtimes.openvino_gates import gate_adds  # noqa: F401 - re-exported
from ..errors import ExportError

RT_INFO_SECTION = "dyt_edge"
PRECISION_HINT = "f32"


def set_gate_biases(model, dispatcher_names: list[str], values: Mapping[str, np.ndarray]
                    ) -> list[str]:
    """Replace each gate Add's constant input by ``values[dispatcher]`` (any shape that
    broadcasts like the original). Returns the dispatchers that could not be found."""
    ov = import_openvino()
    adds = gate_adds(model, dispatcher_names)
    missing = []
    for name in dispatcher_names:
        add = adds.get(name)
        if add is None or name not in values:
            missing.append(name)
            continue
        idx = next((i for i, v in enumerate(add.input_values())
                    if v.get_node().get_type_name() == "Constant"), None)
        if idx is None:
            missing.append(name)
            continue
        old = add.input_value(idx).get_node()
        shape = tuple(old.get_output_shape(0))
        const = ov.op.Constant(np.asarray(values[name], np.float32).reshape(shape))
        block, site = name.rsplit(".", 1)
        const.set_friendly_name(f"{block}.{site}_token_select.mlp_head.bias")
        add.input(idx).replace_source_output(const.output(0))
    return missing


def convert(onnx_bytes: bytes, xml_path: Path, *, dispatcher_names: list[str],
            gate_biases: Mapping[str, np.ndarray], placeholder_bytes: bytes,
            metadata: Mapping[str, str], compress_to_fp16: bool = False) -> list[str]:
    """Convert the exported ONNX to IR at ``xml_path`` (``.bin`` beside it).

    ``placeholder_bytes`` is the same ONNX with non-zero placeholder gate biases (see module
    doc); ``gate_biases`` the real values per dispatcher. ``metadata`` goes into the IR's
    ``rt_info`` under ``dyt_edge``. Returns notes for the report.
    """
    ov = import_openvino()
    notes = []
    try:
        model = ov.convert_model(io.BytesIO(placeholder_bytes))
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"OpenVINO could not convert the ONNX ({first[:300]})",
                          "re-run with --debug, and report it") from exc
    missing = set_gate_biases(model, dispatcher_names, gate_biases)
    if missing:
        # Could not restore the real biases in place: convert the real graph instead (gates
        # with a zero bias may then lose their Add; validation says so).
        notes.append(f"gate Add not found after conversion for {', '.join(missing)}; "
                     "converted the unmodified ONNX")
        model = ov.convert_model(io.BytesIO(onnx_bytes))
    for key, value in metadata.items():
        model.set_rt_info(str(value), [RT_INFO_SECTION, key])
    try:
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"could not save the OpenVINO IR to {xml_path} ({exc})") from exc
    return notes


def initializer_value(proto, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == name)


def with_placeholder_biases(proto, report) -> bytes:
    """The serialised graph with non-zero, distinct gate biases (for OpenVINO's converter)."""
    import numpy as np
    import onnx

    from ..torch_onnx import set_initializer

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for i, d in enumerate(report.dispatchers):
        if d.gate_bias:
            set_initializer(copy, d.gate_bias, np.array([0.25 + 1e-3 * i], np.float32))
    return copy.SerializeToString()


def convert_exported(proto, report, xml_path: Path, *, metadata: Mapping[str, str],
                     onnx_bytes: Optional[bytes] = None, external: bool = False,
                     dispatcher_names: Optional[list[str]] = None) -> list[str]:
    """The exporter's conversion of its ONNX graph ``proto`` (whose graph report is ``report``)
    to IR at ``xml_path``: placeholder biases for the converter, the real ones put back.
    ``onnx_bytes``: ``proto`` already serialised; ``external``: the model is over 2 GB (no
    placeholder copy is made); ``dispatcher_names``: the dispatchers the model has (default:
    those the report found; one the report missed is named in the notes). Returns notes for
    the report."""
    names = list(dispatcher_names) if dispatcher_names else [d.name for d in report.dispatchers]
    biases = {d.name: initializer_value(proto, d.gate_bias)
              for d in report.dispatchers if d.gate_bias}
    onnx_bytes = onnx_bytes if onnx_bytes is not None else proto.SerializeToString()
    placeholder = onnx_bytes if external else with_placeholder_biases(proto, report)
    return convert(onnx_bytes, xml_path, dispatcher_names=names, gate_biases=biases,
                   placeholder_bytes=placeholder, metadata=metadata)


def read_rt_info(xml_path: Path) -> dict[str, str]:
    """The ``dyt_edge`` section of an IR's rt_info."""
    ov = import_openvino()
    model = ov.Core().read_model(str(xml_path))
    out = {}
    if model.has_rt_info([RT_INFO_SECTION]):
        section = model.get_rt_info([RT_INFO_SECTION])
        for key in section.astype(dict) if hasattr(section, "astype") else section:
            out[key] = model.get_rt_info([RT_INFO_SECTION, key]).astype(str)
    return out


class OpenVinoRunner:
    """Export-time validation on OpenVINO CPU at f32, on a saved IR: ``overrides``
    (dispatcher name -> forced gate bias) compile a copy of the model with those biases."""

    def __init__(self, xml_path: Path, dispatcher_names: list[str]) -> None:
        from ...runtimes.openvino_runtime import OpenVinoModel

        self._xml = Path(xml_path)
        self._names = dispatcher_names
        self._model = OpenVinoModel(self._xml, hint=PRECISION_HINT)
        self.name = self._model.name

    def overridable(self) -> list[Optional[str]]:
        adds = gate_adds(self._model.read(), self._names)
        return [n if n in adds else None for n in self._names]

    def precision(self) -> str:
        from ...runtimes.openvino_runtime import hint_of

        return hint_of(self._model.compiled)

    def run(self, images: np.ndarray, overrides: Optional[dict[str, float]] = None
            ) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(sorted((overrides or {}).items()))

        def edit(model) -> None:
            values = {n: np.full((1,), v, np.float32) for n, v in key}
            missing = set_gate_biases(model, list(values), values)
            if missing:
                raise ExportError(f"gate Add not found for {', '.join(missing)}",
                                  "re-run with --debug, and report it")

        logits, masks = self._model.run(images, key or None, edit if key else None)
        return logits, masks

    def close(self) -> None:
        self._model.close()
