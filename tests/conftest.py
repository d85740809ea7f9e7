"""Shared fixtures: tiny DyT models the tests build themselves (no downloads)."""

from __future__ import annotations

import pytest
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
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaptmlp" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for ts in model.token_selects:
            ts.mlp_head.weight.copy_(torch.randn(ts.mlp_head.weight.shape, generator=g) * gate_std)
            ts.mlp_head.bias.fill_(gate_bias)
    return model


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_demo_model(tmp_path_factory):
    """The digits demo model, trained once per test session with the real recipe (slow tests
    only): (checkpoint path, TrainResult)."""
    from dyt_edge.train import TrainConfig, train

    path = tmp_path_factory.mktemp("digits") / "digits-mlp.safetensors"
    result = train(TrainConfig(threads=2, output=str(path)))
    return path, result


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
