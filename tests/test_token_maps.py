"""Token maps (dyt_edge.token_maps): which images are shown, the numbers behind a token-map
picture, and the text picture `dyt-edge train` prints."""

from __future__ import annotations

import numpy as np
import torch

from dyt_edge.token_maps import (ascii_token_maps, choose_shown, dispatcher_columns,
                                 shown_images, token_maps)

from .helpers import tiny_config


def test_choose_shown_takes_one_of_each_class_first():
    labels = np.array([2, 2, 0, 1, 0, 2, 1])
    assert choose_shown(7, 4, labels) == [2, 3, 0, 4]
    assert choose_shown(7, 20, labels) == [2, 3, 0, 4, 6, 1, 5]
    assert choose_shown(5, 3, None) == [0, 1, 2]


def test_dispatcher_columns_name_the_site_only_when_a_block_has_two():
    assert dispatcher_columns(tiny_config(depth=2)) == ["L0", "L1"]
    assert dispatcher_columns(tiny_config(depth=2, variant="attn_mlp")) == [
        "L0 attn", "L0 mlp", "L1 attn", "L1 mlp"]


def test_shown_images_are_channels_last_and_clipped():
    raw = torch.linspace(-0.5, 1.5, 3 * 3 * 2 * 2).reshape(3, 3, 2, 2)
    out = shown_images(raw, [2, 0])
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, raw[[2, 0]].clamp(0, 1).permute(0, 2, 3, 1).numpy())


def _two_images():
    """32x32 images (patch 8: a 4x4 grid, two dispatchers), masks, labels and predictions."""
    cfg = tiny_config(depth=2)
    raw = torch.zeros(3, 3, 32, 32)
    raw[1, :, :8, :8] = 1.0                                     # image 1: top-left patch white
    masks = np.zeros((3, 2, 16), dtype=bool)
    masks[1, 0, 0] = masks[1, 1, :] = True                       # 1 + 16 of 32 tokens active
    labels, predictions = np.array([0, 1, 1]), np.array([0, 1, 0])
    shown = choose_shown(3, 2, labels)
    return cfg, shown, token_maps(shown_images(raw, shown), masks, shown, predictions, labels,
                                  cfg, ["zero", "one"])


def test_token_maps_hold_each_shown_images_grids_and_rates():
    cfg, shown, data = _two_images()
    assert shown == [0, 1]
    assert data["masks"].shape == (2, 2, 4, 4) and data["masks"][1, 0, 0, 0]
    np.testing.assert_allclose(data["rates"], [[0.0, 0.0], [1 / 16, 1.0]])
    assert data["rows"] == [{"index": 0, "label": "zero", "prediction": "zero"},
                            {"index": 1, "label": "one", "prediction": "one"}]
    assert data["columns"] == ["L0", "L1"] and data["patch_size"] == cfg.patch_size


def test_ascii_token_maps_draw_brightness_and_decisions():
    _, _, data = _two_images()
    text = ascii_token_maps(data)
    blocks = text.rstrip("\n").split("\n\n")
    assert len(blocks) == 2
    lines = blocks[1].split("\n")
    assert lines[0] == "label one, predicted one, 53% of patch tokens active"
    assert lines[1].split() == ["image", "L0", "L1"]
    assert lines[2].split() == ["@", "#...", "####"]             # white patch, decisions
    assert lines[3].split() == ["....", "####"]                  # a black image row is blank
    assert blocks[0].split("\n")[2].split() == ["....", "...."]
