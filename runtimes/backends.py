"""The backend libraries, imported one way: telemetry off first, a clear error when missing.

Nothing dyt-edge runs phones home.

Two libraries the exporters use collect usage data by default (checked on onnxruntime 1.32 and
openvino 2026.4 with openvino-telemetry 2025.2, Linux):

* ONNX Runtime's Linux wheel carries Microsoft's 1DS telemetry: ``import onnxruntime`` stores a
  ``ProcessInfo`` event (OS, Python path, network type, a device id) in
  ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` for upload to
  ``mobile.events.data.microsoft.com``. ``ORT_DISABLE_TELEMETRY=1`` in the environment *before
  the import* stops it (``onnxruntime.disable_telemetry_events()`` after the import is too late).
* OpenVINO's Python package sends Google Analytics events through ``openvino-telemetry`` on
  ``import openvino`` and on every ``convert_model`` (session, version, parameters, one event per
  op type), with a client id stored in ``~/intel/``, unless the user opted out
  (``~/intel/openvino_telemetry`` = 0) or ``CI=true``. Making ``openvino_telemetry``
  unimportable before openvino is imported makes OpenVINO use its built-in no-op stub.

:func:`disable_telemetry` does both; :func:`import_onnxruntime` and :func:`import_openvino`
(the only way dyt-edge imports those libraries) call it first, and ``dyt_edge.exporters`` calls
it on import, before onnxscript or the ONNX tools can pull either library in. An explicit
``ORT_DISABLE_TELEMETRY`` in the user's environment is respected.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .base import RuntimeUnavailable

ONNXRUNTIME_INSTALL = "pip install onnxruntime"
OPENVINO_INSTALL = "pip install openvino"


def disable_onnxruntime_telemetry() -> str:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "onnxruntime" in sys.modules:
        return ("onnxruntime was imported before dyt-edge could set ORT_DISABLE_TELEMETRY; "
                "set it in the environment")
    return "ORT_DISABLE_TELEMETRY=1 set before onnxruntime is imported"


def disable_openvino_telemetry() -> str:
    if "openvino_telemetry" not in sys.modules:
        # openvino.tools.ovc falls back to its telemetry_stub when this import fails.
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
        sys.modules["openvino_telemetry.backend"] = None  # type: ignore[assignment]
        return "openvino-telemetry blocked before import (OpenVINO uses its no-op stub)"
    module = sys.modules["openvino_telemetry"]
    if module is None:
        return "openvino-telemetry blocked"
    try:  # imported before us: decline consent now and at every later re-initialisation
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

        OptInChecker.check = lambda self, *a, **k: ConsentCheckResult.DECLINED  # type: ignore
        instance = getattr(module.Telemetry, "_SingletonMetaClass__single_instance", None)
        if instance is not None:
            instance.consent = False
        return "openvino-telemetry was imported before dyt-edge: consent declined in-process"
    except Exception as exc:  # noqa: BLE001 - never fail an export over this
        return f"openvino-telemetry was imported before dyt-edge and could not be disabled ({exc})"


def disable_telemetry() -> list[str]:
    """Disable ONNX Runtime's and OpenVINO's telemetry for this process; what was done."""
    return [disable_onnxruntime_telemetry(), disable_openvino_telemetry()]


def _import(module: str, label: str, install: str, telemetry_off) -> Any:
    telemetry_off()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(f"{label} is not installed", install) from exc


def import_onnxruntime() -> Any:
    """``onnxruntime``, with its telemetry off; :class:`RuntimeUnavailable` (naming the install
    command) when it is missing."""
    return _import("onnxruntime", "ONNX Runtime", ONNXRUNTIME_INSTALL,
                   disable_onnxruntime_telemetry)


def import_openvino() -> Any:
    """``openvino``, with its telemetry off; :class:`RuntimeUnavailable` (naming the install
    command) when it is missing."""
    return _import("openvino", "OpenVINO", OPENVINO_INSTALL, disable_openvino_telemetry)
