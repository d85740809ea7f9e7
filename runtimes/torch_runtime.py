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

Devices (``RuntimeOptions.device``): ``cpu`` (the default) or a CUDA GPU, ``cuda`` (the current
one, normally ``cuda:0``) or ``cuda:N``. Precisions per device:

* CPU: ``fp32`` (the default, whatever the artifact was built for: it is the reference for every
  build), ``bf16`` (CPU autocast; the model keeps its gates in fp32) or ``fp64`` (a float64 copy
  of the model, logits returned in float64: the yardstick of fp32's own rounding, see
  :mod:`dyt_edge.rounding`; a given in-memory model is copied, never converted). ``fp16`` is
  refused on the CPU.
* CUDA: ``fp32`` (IEEE fp32: TF32 is switched off for matmuls and cuDNN convolutions while the
  model runs, and the previous setting restored, so that fp32 on a GPU is comparable with the CPU
  reference), ``fp16`` and ``bf16`` (``torch.autocast("cuda", dtype=...)``; bf16 needs compute
  capability 8.0 or newer). The gates stay fp32 under CUDA autocast as under CPU autocast:
  ``TokenSelect.logits`` turns autocast off for the device type of its input and computes in
  fp32 at least. ``fp64`` is refused on CUDA (it is the CPU's rounding yardstick).

On CUDA the model weights stay fp32 and are moved to the device (a model given to
:meth:`TorchRuntime.from_model` is moved in place, ``nn.Module.to``); images are copied to the
device per :meth:`run` and once per :meth:`prepare`, whose function synchronizes the device
(``torch.cuda.synchronize``) so that what ``bench`` times is the finished work; outputs come
back as numpy arrays. A CUDA device that does not exist here is a one-line
:class:`RuntimeSetupError` naming the fix (a CPU-only torch build, no GPU visible, an index out
of range); a device string that is neither is a :class:`UsageError`. ``threads`` sets
``torch.set_num_threads`` for the process while the runtime is open (restored by ``close``);
``hint`` is recorded but changes nothing, and ``streams`` is refused (an OpenVINO setting).

:meth:`TorchRuntime.from_model` runs an in-memory model instead (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..artifacts import Artifact, file_sha256
from ..errors import DytEdgeError, UsageError
from ..precisions import REFERENCE
from .base import (RunOutput, Runtime, RuntimeOptions, RuntimeSetupError, RuntimeUnavailable,
                   cpu_name, file_facts)

CPU_PRECISIONS = ("fp32", "bf16", REFERENCE)
CUDA_PRECISIONS = ("fp32", "fp16", "bf16")
BF16_MIN_CAPABILITY = (8, 0)
"""bf16 on CUDA: Ampere (sm_80) and newer (earlier GPUs have no bf16 arithmetic)."""
_DEVICE = re.compile(r"(cpu)|(cuda)(?::(\d+))?")
NO_GPU_HINT = "run on a machine with an NVIDIA GPU and driver, or drop --device"


def resolve_device(torch: Any, requested: Optional[str]) -> Any:
    """The ``torch.device`` that ``requested`` (``None`` / ``cpu`` / ``cuda`` / ``cuda:N``)
    names, checked against this machine: a :class:`UsageError` for a string that is no such
    device, a one-line :class:`RuntimeSetupError` with the fix when the CUDA device cannot be
    used here (a CPU-only torch build, no GPU visible, an index out of range)."""
    text = "cpu" if requested is None or not str(requested).strip() else str(requested).strip()
    m = _DEVICE.fullmatch(text.lower())
    if m is None:
        raise UsageError(f"unknown device '{requested}' for --target pytorch",
                         "use cpu, cuda or cuda:N (N: the GPU's index)")
    if m.group(1):
        return torch.device("cpu")
    if getattr(torch.version, "cuda", None) is None and not getattr(torch.version, "hip", None):
        raise RuntimeSetupError(
            f"this PyTorch ({torch.__version__}) is a CPU-only build: it cannot run on {text}",
            "install a CUDA build of torch (pip install torch==2.14.1 --index-url "
            "https://download.pytorch.org/whl/cu130) on a machine with an NVIDIA GPU, or drop "
            "--device")
    with warnings.catch_warnings(record=True) as caught:  # CUDA init problems come as warnings
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    if not available or count == 0:
        why = next((str(w.message).strip().splitlines()[0] for w in caught
                    if str(w.message).strip()), None)
        hint = NO_GPU_HINT
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            hint = f"CUDA_VISIBLE_DEVICES={visible!r} may hide the GPUs; " + hint
        if why:
            hint = f"PyTorch says: {why[:200]}; " + hint
        raise RuntimeSetupError("no CUDA GPU is visible to PyTorch "
                                "(torch.cuda.is_available() is False)", hint)
    index = int(m.group(3)) if m.group(3) is not None else int(torch.cuda.current_device())
    if index >= count:
        names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count))
        raise RuntimeSetupError(
            f"{text} does not exist: PyTorch sees {count} CUDA GPU{'s' if count != 1 else ''} "
            f"({names})", f"choose cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}, or "
            "check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", index)


def cuda_facts(torch: Any, device: Any) -> dict[str, Any]:
    """What a CUDA ``device`` is: ``gpu`` (its name), ``compute_capability`` (``"9.0"``),
    ``gpu_memory_mib``, ``cuda`` (the CUDA version the torch build was made with), ``cudnn``."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "gpu_index": int(index),
            "compute_capability": f"{major}.{minor}",
            "gpu_memory_mib": int(props.total_memory // 2**20),
            "cuda": torch.version.cuda or (f"HIP {torch.version.hip}"
                                           if getattr(torch.version, "hip", None) else None),
            "cudnn": torch.backends.cudnn.version()}


@contextlib.contextmanager
def ieee_fp32(torch: Any):
    """IEEE fp32 (no TF32) for CUDA matmuls and cuDNN convolutions inside the block; the
    process's previous settings restored after (torch's ``fp32_precision`` knobs)."""
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    before = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "ieee"
        yield
    finally:
        for k, value in zip(knobs, before):
            k.fp32_precision = value


def _device_of(model: Any) -> Any:
    """The device of ``model``'s first parameter (None without parameters)."""
    first = next(iter(model.parameters()), None)
    return None if first is None else first.device


class TorchRuntime(Runtime):
    target = "pytorch"
    kind = None
    precisions = ("fp32", "fp16", "bf16", REFERENCE)
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
        not modified (the dispatch mode is applied per call and restored), except that it is
        moved to the runtime's device when it is elsewhere (in place, ``nn.Module.to``: several
        runtimes on one device share one copy of the weights).
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
        # (bf16, int8, ...) is compared against, and runs fp32 unless asked otherwise. The
        # device comes first: which precisions exist depends on it.
        torch = self.backend
        self.device = resolve_device(torch, self.options.device)
        on_cuda = self.device.type == "cuda"
        allowed = CUDA_PRECISIONS if on_cuda else CPU_PRECISIONS
        precision = requested or "fp32"
        if precision not in self.precisions:
            raise RuntimeSetupError(f"{self.target} cannot run precision {precision}",
                                    f"choose one of: {', '.join(allowed)}")
        if precision == "fp16" and not on_cuda:
            raise RuntimeSetupError("--target pytorch runs fp16 on a CUDA GPU only, not on the "
                                    "CPU", "choose fp32 or bf16 (CPU autocast), or pass "
                                    "--device cuda on a machine with an NVIDIA GPU")
        if precision == REFERENCE and on_cuda:
            raise RuntimeSetupError(f"--target pytorch runs fp64 on the CPU only (the float64 "
                                    f"rounding yardstick), not on {self.device}",
                                    "drop --device, or choose fp32, fp16 or bf16")
        if precision == "bf16" and on_cuda:
            capability = tuple(torch.cuda.get_device_capability(self.device))
            if capability < BF16_MIN_CAPABILITY:
                raise RuntimeSetupError(
                    f"{self.device} ({torch.cuda.get_device_name(self.device)}, compute "
                    f"capability {capability[0]}.{capability[1]}) has no bf16",
                    "choose --precision fp16 or fp32 (bf16 needs compute capability 8.0+)")
        return precision

    def _load(self) -> None:
        torch = self.backend
        opts = self.options
        if opts.streams is not None:
            raise RuntimeSetupError("--target pytorch has no streams",
                                    "--streams applies to --target openvino")
        self.mode, self.capacity = self._dispatch_mode()
        if self._given_model is not None:
            self.model = self._given_model
            if self.precision == REFERENCE:
                import copy

                self.model = copy.deepcopy(self._given_model)
            self.checkpoint: Optional[Path] = None
        else:
            self.checkpoint = self._checked_checkpoint()
            self.model = self._load_model(self.checkpoint)
        if self.precision == REFERENCE:
            self.model.double()
        self.model.eval()
        if _device_of(self.model) != self.device:
            try:
                self.model.to(self.device)
            except RuntimeError as exc:  # out of memory, a broken driver, ...
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise RuntimeSetupError(f"cannot put the model on {self.device}: {first[:200]}",
                                        "free GPU memory, or choose another --device") from None
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
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward(self, x: Any) -> tuple[Any, Any]:
        torch = self.backend
        numerics = (ieee_fp32(torch) if self.device.type == "cuda"
                    else contextlib.nullcontext())
        with torch.inference_mode(), self.model.dispatching(self.mode, self.capacity), \
                numerics, self._autocast():
            return self.model(x, return_masks=True)

    def _input(self, images: np.ndarray) -> Any:
        x = self.backend.from_numpy(self.check_batch(images))
        if self.precision == REFERENCE:
            x = x.double()
        return x.to(self.device) if self.device.type != "cpu" else x

    def run(self, images: np.ndarray) -> RunOutput:
        logits, masks = self._forward(self._input(images))
        logits, masks = logits.cpu(), masks.cpu()  # waits for the device
        if self.precision == REFERENCE:
            out = logits.numpy().astype(np.float64, copy=False)
        else:
            out = logits.float().numpy().astype(np.float32, copy=False)
        return RunOutput(out, masks.numpy().astype(np.bool_, copy=False))

    def prepare(self, images: np.ndarray):
        """The input staged on the device once; the function runs one inference and, on
        CUDA, waits for it (``torch.cuda.synchronize``), so a timer around it times the
        finished work. Outputs stay on the device."""
        x = self._input(images)
        if self.device.type != "cuda":
            return lambda: self._forward(x)
        synchronize, device = self.backend.cuda.synchronize, self.device

        def call() -> Any:
            out = self._forward(x)
            synchronize(device)
            return out

        return call

    def precision_in_effect(self) -> str:
        if self.device.type == "cuda":
            return {"fp16": "fp16 (CUDA autocast, gates fp32)",
                    "bf16": "bf16 (CUDA autocast, gates fp32)"}.get(
                        self.precision, "fp32 (IEEE, TF32 off)")
        return {"bf16": "bf16 (CPU autocast, gates fp32)",
                REFERENCE: "float64 (a copy of the model)"}.get(self.precision, "fp32")

    def _describe(self) -> dict[str, Any]:
        torch = self.backend
        facts: dict[str, Any] = {
            "backend": f"PyTorch {torch.__version__}",
            "device": f"CPU ({cpu_name()})",
            "precision_in_effect": self.precision_in_effect(),
            "threads": torch.get_num_threads(),
            "streams": 1,
            "dispatch": self.mode,
            "capacity": self.capacity,
        }
        if self.device.type == "cuda":
            gpu = cuda_facts(torch, self.device)
            facts["device"] = (f"{self.device} ({gpu['gpu']}, compute capability "
                               f"{gpu['compute_capability']})")
            facts.update(gpu)
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
