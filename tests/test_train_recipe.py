"""The recipe (dyt_edge.train.recipe): the loss is the paper's, and the straight-through masks
carry its gradient to the gates."""

from __future__ import annotations

import math

import torch

from dyt_edge.model import build_model
from dyt_edge.train import dyt_loss

from .helpers import tiny_config


def test_training_masks_are_straight_through_and_reach_the_gate():
    torch.manual_seed(0)
    model = build_model(tiny_config(variant="attn_mlp")).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, masks = model(x, return_masks=True)
    assert masks.dtype == torch.float32 and masks.requires_grad
    assert set(masks.unique().tolist()) <= {0.0, 1.0}            # hard values forward
    with model.dispatching("complete"):
        full = model(x)
    loss, terms = dyt_loss(logits, full, masks, y, 0.5)
    assert math.isclose(terms["activation"], float(masks.detach().mean()), rel_tol=1e-6)
    loss.backward()
    for ts in model.token_selects:
        assert ts.mlp_head.weight.grad is not None and ts.mlp_head.weight.grad.abs().sum() > 0


def test_the_loss_is_the_papers():
    torch.manual_seed(1)
    d, c = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    masks = torch.rand(6, 3, 16)
    loss, terms = dyt_loss(d, c, masks, y, 0.3)
    p = torch.softmax(c, -1)
    kl = (p * (p.log() - torch.log_softmax(d, -1))).sum(-1).mean()
    expected = (torch.nn.functional.cross_entropy(d, y) + torch.nn.functional.cross_entropy(c, y)
                + kl + 2.0 * (masks.mean() - 0.3) ** 2)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert math.isclose(terms["rate_loss"], 2.0 * (float(masks.mean()) - 0.3) ** 2, rel_tol=1e-5)
