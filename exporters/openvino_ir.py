"""ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``), and an OpenVINO CPU runner for validation.

Choices:

* Weights are saved as f32 (``save_model(..., compress_to_fp16=False)``). OpenVINO's default
  compresses every weight to fp16, the gate weights included, which moves gate logits and can flip
  decisions: the DyT contract keeps the gate path fp32 (a smaller fp16 IR is a separate,
  reported precision choice, not the default).
* Validation compiles for CPU with ``INFERENCE_PRECISION_HINT`` = f32 set explicitly: on CPUs
  with bf16 support the default is bf16, which moves logits by ~1e-2 and flips gate decisions.
* The ONNX converter removes ``x + 0``: a checkpoint whose gate bias is exactly 0 would lose the
  gate's Add, and with it the point where validation forces gates open or shut. So the ONNX is
  converted with non-zero placeholder biases and the real biases are put back into the
  converted model (a Constant per gate, named after its checkpoint key).
* Telemetry: see :mod:`.telemetry` (``import openvino`` and ``convert_model`` send Google
  Analytics events unless blocked; :func:`import_openvino` blocks them first).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .errors import ExportError
from .telemetry import disable_openvino_telemetry

RT_INFO_SECTION = "dyt_edge"
PRECISION_HINT = "f32"


def import_openvino():
    """``import openvino`` with telemetry disabled first; a clear error when it is missing."""
    disable_openvino_telemetry()
    try:
        import openvino
    except ImportError as exc:
        raise ExportError("OpenVINO is not installed", "pip install openvino") from exc
    return openvino


_WALK_BACK = {"Squeeze", "Unsqueeze", "Reshape", "Convert"}


def _gate_adds(model, dispatcher_names: list[str]) -> dict[str, Any]:
    """Dispatcher name -> the gate's bias Add in an OpenVINO model: found from the gate's
    Sigmoid (named ``<dispatcher>/gate/Sigmoid_0`` by the exporter), walking back through
    reshapes to an Add with a Constant input."""
    wanted = {f"{n}/gate/Sigmoid_0": n for n in dispatcher_names}
    found = {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name not in wanted or op.get_type_name() != "Sigmoid":
            continue
        node = op.input_value(0).get_node()
        for _ in range(6):
            kind = node.get_type_name()
            if kind == "Add":
                if any(v.get_node().get_type_name() == "Constant" for v in node.input_values()):
                    found[wanted[name]] = node
                break
            if kind not in _WALK_BACK:
                break
            node = node.input_value(0).get_node()
    return found


def set_gate_biases(model, dispatcher_names: list[str], values: Mapping[str, np.ndarray]
                    ) -> list[str]:
    """Replace each gate Add's constant input by ``values[dispatcher]`` (any shape that
    broadcasts like the original). Returns the dispatchers that could not be found."""
    ov = import_openvino()
    adds = _gate_adds(model, dispatcher_names)
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
    """OpenVINO CPU, f32 inference precision, on a saved IR.

    ``overrides`` (dispatcher name -> forced gate bias) are applied to a fresh copy of the model
    read from disk; one compiled model is kept per set of overrides.
    """

    def __init__(self, xml_path: Path, dispatcher_names: list[str]) -> None:
        self._ov = import_openvino()
        self._core = self._ov.Core()
        self._xml = str(xml_path)
        self._names = dispatcher_names
        self._compiled: dict[tuple, Any] = {}
        self.name = f"OpenVINO {self._ov.get_version().split('-')[0]} CPU f32"

    def overridable(self) -> list[Optional[str]]:
        adds = _gate_adds(self._core.read_model(self._xml), self._names)
        return [n if n in adds else None for n in self._names]

    def compiled(self, overrides: Optional[dict[str, float]] = None):
        key = tuple(sorted((overrides or {}).items()))
        if key not in self._compiled:
            model = self._core.read_model(self._xml)
            if key:
                values = {n: np.full((1,), v, np.float32) for n, v in key}
                missing = set_gate_biases(model, list(values), values)
                if missing:
                    raise RuntimeError(f"gate Add not found for {', '.join(missing)}")
            self._compiled[key] = self._core.compile_model(
                model, "CPU", {"INFERENCE_PRECISION_HINT": PRECISION_HINT})
        return self._compiled[key]

    def precision(self) -> str:
        value = self.compiled().get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def run(self, images: np.ndarray, overrides: Optional[dict[str, float]] = None
            ) -> tuple[np.ndarray, np.ndarray]:
        compiled = self.compiled(overrides)
        result = compiled(np.ascontiguousarray(images, dtype=np.float32))
        by_name = {}
        for port, value in result.items():
            for n in port.get_names():
                by_name[n] = value
        return np.asarray(by_name["logits"]), np.asarray(by_name["masks"]).astype(np.bool_)

    def close(self) -> None:
        self._compiled.clear()
