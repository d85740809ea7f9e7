"""What several test modules share: tiny DyT models the tests build themselves (no downloads),
image data they write themselves, and the command line run in-process. Helpers of one area are
in the submodules (``checkpoint``, ``train``, ``figures``, ``onnx``); fixtures are in
``conftest.py``, stand-ins for TensorRT and CUDA in ``tests/fakes/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dyt_edge.config import DyTConfig


def tiny_config(**changes) -> DyTConfig:
    """A DyT small enough for fast tests: 32x32 images, patch 8 (16 patch tokens), width 32."""
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5,
                adapter_dim=8, adapter_scale=0.5)
    base.update(changes)
    return DyTConfig(**base).validate()


def randomize_dyt(model: torch.nn.Module, *, seed: int = 0, gate_std: float = 0.3,
                  gate_bias: float = 0.0) -> torch.nn.Module:
    """Give adapters and gates non-trivial weights (they initialise to zero / near zero), so
    that dispatch decisions are mixed and adapter outputs are non-zero."""
    from dyt_edge.synthetic import random_dispatch_weights_

    return random_dispatch_weights_(model, seed=seed, adapter_std=0.1, gate_std=gate_std,
                                    gate_bias=gate_bias)


def controlled_model(variant: str = "mlp", adapter_kind: str = "adapter",
                     depth: int = 3) -> torch.nn.Module:
    """A tiny DyT whose gates follow the image: channel 0 of every token carries 50x the mean of
    its patch's pixels, and each gate reads channel 0 alone. A bright image activates every
    patch token, a dark one none, noise a mix, so a batch can hold all three (`mixed_batch`).
    Export time grows with ``depth``."""
    from dyt_edge.model import build_model

    model = build_model(tiny_config(variant=variant, adapter_kind=adapter_kind, depth=depth))
    randomize_dyt(model, seed=1)
    with torch.no_grad():
        w = model.patch_embed.proj.weight
        w[0] = 50.0 / w[0].numel()
        model.patch_embed.proj.bias[0] = 0.0
        for ts in model.token_selects:
            ts.mlp_head.weight.zero_()
            ts.mlp_head.weight[0, 0] = 1.0
            ts.mlp_head.bias.zero_()
    return model


def mixed_batch(batch: int, seed: int = 0) -> torch.Tensor:
    """Images cycling through: all-dark (no patch active), all-bright (all active), noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    for i in range(batch):
        if i % 3 == 0:
            images[i] = -images[i].abs() - 0.5
        elif i % 3 == 1:
            images[i] = images[i].abs() + 0.5
    return images


def saved(tmp: Path, model, name: str) -> Path:
    """``model`` saved as ``tmp/<name>.safetensors``."""
    from dyt_edge.checkpoint import save_model

    return save_model(model, tmp / f"{name}.safetensors")


TINY_NAMES = ["blocks.0.mlp", "blocks.1.mlp"]
"""The dispatchers of conftest's ``tiny_ov_export`` (a depth-2 `tiny_config`)."""


# -- image data the tests write themselves --------------------------------------------------------

def write_npz(path: Path, n: int, *, labels: bool = True, size: int = 32, classes: int = 5,
              seed: int = 0) -> Path:
    """An .npz of ``n`` random uint8 HWC images (and labels)."""
    rng = np.random.default_rng(seed)
    arrays = {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)}
    if labels:
        arrays["labels"] = np.arange(n) % classes
    np.savez(path, **arrays)
    return path


def write_folder(root: Path, good: int, corrupt: int = 0, sizes=((32, 32),),
                 classes: int = 2) -> Path:
    """An ImageFolder: ``good`` PNGs of the given sizes (cycled) and ``corrupt`` broken files."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(good):
        w, h = sizes[i % len(sizes)]
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    for i in range(corrupt):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


# -- the command line, as users run it ----------------------------------------------------------

def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``dyt-edge ARGS`` in-process: (exit code, stdout, stderr)."""
    from dyt_edge.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """A failure reported as one ``error: ...`` line holding every needle, with no traceback;
    returns the line."""
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
