"""The PyTorch reference: the DyT model rebuilt from the checkpoint an artifact records.

What it runs, and how it knows it is the right model:

* the checkpoint at the manifest's ``source.path``, whose SHA-256 must equal ``source.sha256``
  (a moved, replaced or re-trained file is refused, naming the path and the fix);
* loaded with the manifest's model config passed as overrides (so a published checkpoint whose
  adapter scale came from ``--adapter-scale`` at export time loads exactly as it was exported),
  and the loaded config checked against the manifest's;
* in the artifact's dispatch mode (``dispatch.mode`` / ``dispatch.capacity``), or the mode
  ``RuntimeOptions.dispatch`` names (``mask`` for the dense exact reference, ``complete`` for
  the baseline; ``capacity`` on a non-capacity artifact takes ``extra["capacity"]``).

Precision ``fp32`` (the default, whatever the artifact was built for: it is the reference for
every build), ``bf16`` (CPU autocast; the model keeps its gates in fp32) or ``fp64`` (a float64
copy of the model, logits returned in float64: the yardstick of fp32's own rounding, see
:mod:`dyt_edge.rounding`; a given in-memory model is copied, never converted). ``threads`` sets
``torch.set_num_threads`` for the process while the runtime is open (restored by ``close``).
Only the CPU is supported (``device`` ``cpu``); ``hint`` is recorded but changes nothing, and
``streams`` is refused (an OpenVINO setting).

:meth:`TorchRuntime.from_model` runs an in-memory model instead (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..artifacts import Artifact
from ..errors import DytEdgeError, UsageError
from .base import (RunOutput, Runtime, RuntimeOptions, RuntimeSetupError, RuntimeUnavailable,
                   cpu_name, file_facts)

_DEVICES = ("cpu",)


class TorchRuntime(Runtime):
    target = "pytorch"
    kind = None
    precisions = ("fp32", "bf16", "fp64")
    install = "pip install torch==2.14.1"

    def __init__(self, artifact: Artifact, options: Optional[RuntimeOptions] = None, *,
                 model: Any = None) -> None:
        self._given_model = model
        self._threads_before: Optional[int] = None
        super().__init__(artifact, options)

    @classmethod
    def from_model(cls, model: Any, info: Optional[Any] = None,
                   options: Optional[RuntimeOptions] = None) -> "TorchRuntime":
        """Run an in-memory :class:`~dyt_edge.model.DyTVisionTransformer`.

        ``info`` is an :class:`Artifact`, a manifest dict, or None; what it does not say comes
        from the model: its config, and its current dispatch mode and capacity. The model is
        not modified (the dispatch mode is applied per call and restored).
        """
        if isinstance(info, Artifact):
            art = info
        else:
            from ..artifacts import new_manifest

            manifest = new_manifest(**dict(info or {}))
            manifest.setdefault("model", model.config.to_dict())
            manifest.setdefault("dispatch", {"mode": model.dispatch_mode,
                                             "capacity": model.capacity})
            manifest.setdefault("batch", "dynamic")
            manifest.setdefault("source", {"path": None, "sha256": None,
                                           "format": "in-memory"})
            art = Artifact(Path("<in-memory model>"), manifest)
        return cls(art, options, model=model)

    # -- backend --------------------------------------------------------------------------------
    @classmethod
    def import_backend(cls) -> Any:
        try:
            import torch
        except ImportError as exc:
            raise RuntimeUnavailable("PyTorch is not installed", cls.install) from exc
        return torch

    def resolve_precision(self, requested: Optional[str]) -> str:
        # The reference ignores the artifact's built precision: it is what every build
        # (bf16, int8, ...) is compared against, and runs fp32 unless asked for bf16.
        precision = requested or "fp32"
        if precision not in self.precisions:
            raise RuntimeSetupError(f"{self.target} cannot run precision {precision}",
                                    f"choose one of: {', '.join(self.precisions)}")
        return precision

    def _load(self) -> None:
        torch = self.backend
        opts = self.options
        if opts.streams is not None:
            raise RuntimeSetupError("--target pytorch has no streams",
                                    "--streams applies to --target openvino")
        device = (opts.device or "cpu").lower()
        if device not in _DEVICES:
            raise RuntimeSetupError(f"--target pytorch runs on the CPU only, not {opts.device!r}",
                                    "drop --device")
        self.mode, self.capacity = self._dispatch_mode()
        if self._given_model is not None:
            self.model = self._given_model
            if self.precision == "fp64":
                import copy

                self.model = copy.deepcopy(self._given_model)
            self.checkpoint: Optional[Path] = None
        else:
            self.checkpoint = self._checked_checkpoint()
            self.model = self._load_model(self.checkpoint)
        if self.precision == "fp64":
            self.model.double()
        self.model.eval()
        try:  # fail now, not on the first batch, when the mode does not fit the model
            with self.model.dispatching(self.mode, self.capacity):
                pass
        except DytEdgeError as exc:
            raise UsageError(exc.message, exc.hint) from None
        if opts.threads is not None:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(opts.threads))

    def _dispatch_mode(self) -> tuple[str, Optional[float]]:
        from ..config import check_choice
        from ..errors import ConfigError

        dispatch = self.info.dispatch
        mode = self.options.dispatch or dispatch.mode
        try:
            from ..model import DISPATCH_MODES

            check_choice("dispatch mode", mode, DISPATCH_MODES)
        except ConfigError as exc:
            raise UsageError(exc.message, exc.hint) from None
        capacity = None
        if mode == "capacity":
            capacity = self.options.extra.get("capacity")
            if capacity is None and dispatch.mode == "capacity":
                capacity = dispatch.capacity
            if capacity is None:
                raise UsageError("dispatch mode capacity needs a capacity",
                                 "the artifact records none: pass extra capacity=C, C in (0, 1]")
        return mode, capacity

    def _checked_checkpoint(self) -> Path:
        from ..checkpoint import file_sha256

        path, want = self.info.source.path, self.info.source.sha256
        if not path:
            raise RuntimeSetupError(
                f"artifact {self.artifact.path} records no checkpoint (it was exported from an "
                "in-memory model), so the PyTorch reference cannot be rebuilt",
                "export it from a checkpoint file with `dyt-edge export CKPT`")
        p = Path(path)
        if not p.is_file():
            raise RuntimeSetupError(
                f"the checkpoint this artifact was exported from, {p}, is missing",
                "put it back at that path, or re-export the artifact from where it is now")
        got = file_sha256(p)
        if want and got != want:
            raise RuntimeSetupError(
                f"the checkpoint {p} changed since this artifact was exported (sha256 "
                f"{got[:12]}..., the manifest records {str(want)[:12]}...)",
                "restore the original file, or re-export the artifact from this checkpoint")
        return p

    def _load_model(self, path: Path) -> Any:
        from ..checkpoint import load_model
        from ..config import DyTConfig

        recorded = self.info.model
        overrides: dict[str, Any] = {}
        if recorded:
            known = {f.name for f in dataclasses.fields(DyTConfig)}
            overrides = {k: v for k, v in recorded.items() if k in known}
            if overrides.get("adapter_scale_learnable"):
                overrides.pop("adapter_scale", None)  # learned: the weights hold it
        try:
            model = load_model(path, **overrides)
        except DytEdgeError as exc:
            raise RuntimeSetupError(f"cannot rebuild the PyTorch reference from {path}: "
                                    f"{exc.message}", exc.hint) from None
        if recorded:
            want = DyTConfig.from_dict(recorded).to_dict()
            got = model.config.to_dict()
            diff = [k for k in want if want[k] != got.get(k)]
            if diff:
                raise RuntimeSetupError(
                    f"the model rebuilt from {path} differs from the artifact's in "
                    f"{', '.join(diff)}", "re-export the artifact from this checkpoint")
        return model.float()

    # -- running --------------------------------------------------------------------------------
    def _autocast(self):
        torch = self.backend
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, x: Any) -> tuple[Any, Any]:
        torch = self.backend
        with torch.inference_mode(), self.model.dispatching(self.mode, self.capacity), \
                self._autocast():
            return self.model(x, return_masks=True)

    def _input(self, images: np.ndarray) -> Any:
        x = self.backend.from_numpy(self.check_batch(images))
        return x.double() if self.precision == "fp64" else x

    def run(self, images: np.ndarray) -> RunOutput:
        logits, masks = self._forward(self._input(images))
        if self.precision == "fp64":
            out = logits.numpy().astype(np.float64, copy=False)
        else:
            out = logits.float().numpy().astype(np.float32, copy=False)
        return RunOutput(out, masks.numpy().astype(np.bool_, copy=False))

    def prepare(self, images: np.ndarray):
        x = self._input(images)
        return lambda: self._forward(x)

    def _describe(self) -> dict[str, Any]:
        torch = self.backend
        facts: dict[str, Any] = {
            "backend": f"PyTorch {torch.__version__}",
            "device": f"CPU ({cpu_name()})",
            "precision_in_effect": {"bf16": "bf16 (CPU autocast, gates fp32)",
                                    "fp64": "float64 (a copy of the model)"}.get(
                                        self.precision, "fp32"),
            "threads": torch.get_num_threads(),
            "streams": 1,
            "dispatch": self.mode,
            "capacity": self.capacity,
        }
        if self.checkpoint is not None:
            facts.update(file_facts(self.checkpoint))
        else:
            facts.update({"model_file": None, "model_bytes": None, "model_mb": None,
                          "model": "in-memory"})
        return facts

    def close(self) -> None:
        if self._threads_before is not None:
            self.backend.set_num_threads(self._threads_before)
            self._threads_before = None
