"""The training loop (dyt_edge.train.loop): every variant runs, runs are deterministic and
leave torch's settings as they were, the saved model carries its training record, the CLI
prints the summary, and (slow) the digits demo meets its claim."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dyt_edge.errors import DataError
from dyt_edge.train import train

from .helpers.train import tiny_run


@pytest.mark.parametrize("variant,adapter", [("mlp", "adapter"), ("attn", "adapter"),
                                             ("attn_mlp", "adapter"), ("layer", "adapter"),
                                             ("mlp", "moe")])
def test_one_epoch_of_every_variant(variant, adapter):
    events = []
    r = train(tiny_run(variant=variant, adapter_kind=adapter), progress=events.append)
    assert len(r.history) == 1 and math.isfinite(r.history[0]["loss"])
    for term in ("ce_dynamic", "ce_complete", "kl", "rate_loss"):
        assert math.isfinite(r.history[0][term]) and r.history[0][term] >= -1e-6
    assert r.model_config.variant == variant and r.model_config.adapter_kind == adapter
    assert len(r.activation_per_dispatcher) == len(r.dispatchers) == r.model_config.num_dispatchers
    assert 0.0 <= r.activation_mean <= 1.0 and 0.0 <= r.accuracy <= 1.0
    assert r.test_size == 359 and r.train_size == 96
    assert r.background_activation is not None and r.showcase.count("label ") == 3
    assert not r.model.training and r.model.dispatch_mode == "topk"
    kinds = {e.kind for e in events}
    assert {"note", "start", "step", "epoch", "eval", "done"} <= kinds


@pytest.mark.parametrize("augment", ["shift", "affine"])
def test_augmentations_run_and_keep_the_settings_restored(augment):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    r = train(tiny_run(augment=augment, pos_embed_init=0.5, attn_init="timm"))
    assert math.isfinite(r.history[0]["loss"]) and r.config.augment == augment
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_same_seed_same_model_and_masks():
    a = train(tiny_run(seed=3))
    b = train(tiny_run(seed=3))
    assert a.history == [{**row, "seconds": b.history[i]["seconds"]}
                         for i, row in enumerate(a.history)] or \
        all(ra[k] == rb[k] for ra, rb in zip(a.history, b.history) for k in ra if k != "seconds")
    assert a.accuracy == b.accuracy
    assert a.activation_per_dispatcher == b.activation_per_dispatcher
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train(tiny_run(seed=4))
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_unlabelled_data_is_a_one_line_error(tmp_path):
    import numpy as np

    unlabelled = tmp_path / "u.npz"
    np.savez(unlabelled, images=np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="no labels"):
        train(tiny_run(data=str(unlabelled)))


def test_saved_model_loads_with_its_training_metadata(tmp_path):
    pytest.importorskip("dyt_edge.checkpoint")
    from dyt_edge.checkpoint import load_model, read_checkpoint

    out = tmp_path / "runs" / "digits-mlp.safetensors"
    r = train(tiny_run(output=str(out)))
    assert r.checkpoint == out and out.is_file()
    loaded = read_checkpoint(out)
    assert "dyt_edge.training" in loaded.metadata and loaded.config == r.model_config
    model = load_model(out)
    from dyt_edge.data import load_images

    test = load_images("digits", r.model_config.preprocessing, split="test")
    with torch.no_grad():
        pred = model(test.images).argmax(-1)
    assert float((pred == test.labels).float().mean()) == pytest.approx(r.accuracy)


def test_cli_train_prints_the_summary_and_next_step(tmp_path, capsys, monkeypatch):
    import dyt_edge.train.presets as presets
    from dyt_edge.cli import main

    pytest.importorskip("dyt_edge.checkpoint")
    monkeypatch.setattr(presets, "PRESET_ARCH", dict(img_size=32, patch_size=8, embed_dim=32,
                                                       depth=2, num_heads=2, mlp_ratio=2.0))
    out = tmp_path / "m.safetensors"
    report = tmp_path / "train.json"
    code = main(["train", "--epochs", "1", "--batch-size", "128", "--threads", "1",
                 "-o", str(out), "--json", str(report)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "held-out accuracy" in captured.out and "background vs digit" in captured.out
    assert f"dyt-edge inspect {out} --data digits" in captured.out.replace("\n", "")
    assert out.is_file()
    saved = json.loads(report.read_text())
    assert saved["schema"] == "dyt-edge.train" and saved["schema_version"] == 1
    assert saved["checkpoint"] == str(out) and saved["config"]["epochs"] == 1
    assert saved["epochs_run"] == len(saved["history"]) == 1
    assert len(saved["activation_per_dispatcher"]) == len(saved["dispatchers"]) == 2

    code = main(["train", "--epochs", "1", "--batch-size", "128", "--threads", "1",
                 "-o", str(tmp_path / "again.safetensors"), "--json", "-"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    again = json.loads(captured.out)  # stdout holds the JSON alone
    assert again["accuracy"] == saved["accuracy"]  # same seed and threads: the same model
    assert "held-out accuracy" in captured.err and "epoch   1/1" in captured.err

    code = main(["train", "--rate", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error: target activation rate 2")
    code = main(["train", "--data", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: data not found") and "\n" not in err


@pytest.mark.slow
def test_digits_demo_meets_its_claim(digits_demo_model):
    """The full digits recipe: >= 95% held-out accuracy at a measured activation of 0.4-0.6,
    with the dispatchers clearly skipping background patches, deterministically."""
    path, r = digits_demo_model
    assert path.is_file()
    print(r.showcase)
    assert r.accuracy >= 0.95, r.summary()
    assert 0.4 <= r.activation_mean <= 0.6, r.summary()
    assert r.background_activation < 0.5 * r.foreground_activation, r.summary()
    assert not r.stopped_early
