"""An OpenVINO Model Server (OVMS) repository entry for one artifact.

Layout::

    config.json         model_config_list: one entry per model (entries of other models kept)
    <name>/1/model.xml  the IR (or model.onnx: OVMS reads ONNX through OpenVINO too)
    <name>/1/model.bin

The entry's ``plugin_config`` carries the artifact's ``INFERENCE_PRECISION_HINT`` (OVMS passes
it to the device; an IR's own ``rt_info`` is not honoured by the CPU plugin for it) and the
``PERFORMANCE_HINT``. A dynamic-batch model is declared with ``shape`` ``(-1,C,H,W)``: OVMS
(2022.1 and newer) serves dynamic dimensions natively, without the model reloads that
``batch_size: "auto"`` causes, and without pinning one batch size. ``base_path`` is relative to
``config.json``, so the repository can be mounted anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, UsageError
from .spec import ServedModel
from .triton import place

CONFIG_FILE = "config.json"


def model_file(spec: ServedModel) -> Path:
    kinds = spec.artifact.kinds
    if "openvino" in kinds:
        return spec.artifact.file("openvino")
    if "onnx" in kinds and spec.format != "tensorrt":
        return spec.artifact.file("onnx")
    raise UsageError("OpenVINO Model Server runs OpenVINO IR and ONNX models; this artifact "
                     "is a TensorRT engine", "package it --for triton, or package the export")


def entry(spec: ServedModel, name: str, hint: str = "LATENCY") -> dict[str, Any]:
    """The ``config`` object of the model's ``model_config_list`` entry."""
    cfg: dict[str, Any] = {
        "name": name, "base_path": name, "target_device": "CPU",
        "plugin_config": {"INFERENCE_PRECISION_HINT": spec.openvino_precision,
                          "PERFORMANCE_HINT": hint}}
    if spec.static_batch is None:
        image = spec.inputs[0]
        cfg["shape"] = {image.name: "(" + ",".join(["-1", *map(str, image.dims)]) + ")"}
    return cfg


def write_model(spec: ServedModel, name: str, model_dir: Path) -> Path:
    """Write ``model_dir/1/``; returns the model file placed."""
    src = model_file(spec)
    version = model_dir / "1"
    version.mkdir(parents=True)
    suffix = src.suffix
    place(src, version / f"model{suffix}")
    if suffix == ".xml":
        place(spec.artifact.path / spec.artifact.info.files["openvino_weights"].path,
              version / "model.bin")
    else:
        weights = spec.artifact.info.files.get("onnx_weights")
        if weights is not None:  # external data keeps the name the ONNX file refers to
            place(spec.artifact.path / weights.path, version / weights.path)
    return version / f"model{suffix}"


def merged_config(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` with ``new`` replacing the model of the same name (others kept)."""
    if path.exists():
        try:
            current = json.loads(path.read_text())
            models = current["model_config_list"]
            if not isinstance(models, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ArtifactError(f"{path} is not an OVMS configuration (no model_config_list)",
                                "pass -o with a new directory, or fix the file") from None
    else:
        current, models = {}, []
    kept = [m for m in models
            if not (isinstance(m, dict) and (m.get("config") or {}).get("name") == new["name"])]
    return {**current, "model_config_list": [*kept, {"config": new}]}


__all__ = ["CONFIG_FILE", "entry", "merged_config", "model_file", "write_model"]
