"""Held-out evaluation (dyt_edge.train.evaluation): which patches are background."""

from __future__ import annotations

import torch

from dyt_edge.train import patch_background


def test_background_patches():
    raw = torch.zeros(1, 3, 8, 8)
    raw[0, :, 0, 5] = 0.1
    bg = patch_background(raw, 4)
    assert bg.tolist() == [[True, False, True, True]]
