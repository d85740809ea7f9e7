"""The command line: help without heavy imports, inspect, and bad input as one clear line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyt_edge.model import build_model

from .helpers import assert_one_line_error, cli, randomize_dyt, tiny_config


@pytest.fixture
def published_ckpt(tmp_path) -> Path:
    """A published-layout checkpoint: {'model', 'optimizer', 'epoch', 'scaler', 'args'} with an
    argparse.Namespace holding an easydict.EasyDict, as the DyT training code writes it."""
    easydict = pytest.importorskip("easydict")
    model = randomize_dyt(build_model(tiny_config()), seed=2)
    # Width 32 is no standard timm width, so the head count must be in the args.
    args = argparse.Namespace(
        model="vit_base_patch16_224", ffn_num=8, nb_classes=5, output_dir=Path("out"),
        num_heads=2, tuning_config=easydict.EasyDict(ffn_adapt=True, ffn_option="parallel",
                                        ffn_adapter_layernorm_option="none",
                                        ffn_adapter_init_option="lora",
                                        ffn_adapter_scalar="0.5", ffn_num=8, d_model=32))
    path = tmp_path / "checkpoint-9.pth"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 9, "scaler": {"scale": 65536.0}, "args": args}, path)
    return path


def test_help_lists_commands_and_does_not_import_torch():
    code = ("import sys; from dyt_edge.cli import main; rc = main(['--help']); "
            "assert 'torch' not in sys.modules, 'torch imported by --help'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("inspect", "train"):
        assert command in proc.stdout


def test_help_offers_shell_completion(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    assert "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("shell, needle", [
    ("bash", "complete -o default -F _dyt_edge_completion dyt-edge"),
    ("zsh", "compdef _dyt_edge_completion dyt-edge"),
])
def test_show_completion_prints_the_script_for_the_shell(capsys, monkeypatch, shell, needle):
    import shellingham

    monkeypatch.setattr(shellingham, "detect_shell", lambda *a, **k: (shell, f"/bin/{shell}"))
    code, out, err = cli(capsys, "--show-completion")
    assert code == 0, err
    assert needle in out and f"_DYT_EDGE_COMPLETE=complete_{shell}" in out


@pytest.mark.parametrize("words, cword, want", [
    ("dyt-edge che", 1, "checks"),
    ("dyt-edge bench --ta", 2, "--target"),
    ("dyt-edge inspect x --js", 3, "--json"),
])
def test_completion_candidates_through_the_environment(capsys, monkeypatch, words, cword, want):
    """What the installed bash script does on TAB: the words in COMP_WORDS / COMP_CWORD and
    _DYT_EDGE_COMPLETE=complete_bash; dyt-edge answers with the candidates, one a line."""
    monkeypatch.setenv("_DYT_EDGE_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    code, out, err = cli(capsys)
    assert code == 0, err
    assert want in out.split(), out


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "dyt_edge", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("dyt-edge "), proc.stderr


def test_inspect_published_checkpoint(capsys, published_ckpt):
    code, out, err = cli(capsys, "inspect", published_ckpt)
    assert code == 0, err
    assert "variant" in out and "mlp" in out
    assert "args.tuning_config.ffn_adapter_scalar" in out
    assert "heads" in out and "args.num_heads" in out


def test_inspect_shows_the_resize_mode(capsys, published_ckpt):
    code, out, err = cli(capsys, "inspect", published_ckpt)
    assert code == 0, err
    assert "vtab: squash to 32x32, bicubic, mean=std=0.5" in " ".join(out.split())
    code, out, err = cli(capsys, "inspect", published_ckpt, "--preprocessing", "imagenet")
    assert code == 0, err
    assert ("imagenet: shorter side to 37, center crop 32x32, bicubic, ImageNet mean/std"
            in " ".join(out.split()))


def test_inspect_shows_where_the_heads_came_from(capsys, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(build_model(tiny_config()).state_dict(), path)
    code, _, err = cli(capsys, "inspect", path, "--adapter-scale", "0.1")
    assert_one_line_error(code, err, "width 32 is not a standard timm ViT width",
                          "--num-heads")
    code, out, err = cli(capsys, "inspect", path, "--adapter-scale", "0.1", "--num-heads", "2")
    assert code == 0, err
    assert "2  (from override)" in out


def test_inspect_json(capsys, published_ckpt, tmp_path):
    code, out, err = cli(capsys, "inspect", published_ckpt, "--json", "-")
    assert code == 0, err
    info = json.loads(out)  # stdout holds the JSON alone; the tables went to stderr
    assert "architecture" in err
    assert info["config"]["variant"] == "mlp"
    assert info["config"]["adapter_scale"] == 0.5
    assert info["provenance"]["adapter_scale"] == "args.tuning_config.ffn_adapter_scalar"
    params = info["parameters"]
    assert params["total"] == sum(p.numel() for p in build_model(tiny_config()).parameters())
    assert 0 < params["trainable"] < params["total"]
    assert info["checkpoint"]["layout"] == "full"
    path = tmp_path / "new" / "inspect.json"
    code, out, err = cli(capsys, "inspect", published_ckpt, "--json", path)
    assert code == 0, err
    assert "architecture" in out and json.loads(path.read_text()) == info
    code, _, err = cli(capsys, "inspect", published_ckpt, "--json", tmp_path)
    assert_one_line_error(code, err, f"--json {tmp_path} is a directory")


def test_inspect_with_data_reports_activation_per_layer(capsys, tmp_path):
    from dyt_edge.checkpoint import save_model

    cfg = tiny_config(img_size=32, patch_size=4, num_classes=10, variant="attn_mlp")
    model = randomize_dyt(build_model(cfg), seed=4, gate_std=0.5)
    path = save_model(model, tmp_path / "m.safetensors")
    code, out, err = cli(capsys, "inspect", path, "--data", "digits", "--samples", "40",
                         "--json", "-")
    assert code == 0, err
    info = json.loads(out)
    data = info["data"]
    assert data["samples"] == 40 and data["accuracy"] is not None
    rates = data["activation_per_dispatcher"]
    assert len(rates) == cfg.num_dispatchers == len(info["dispatchers"])
    assert all(0.0 <= r <= 1.0 for r in rates)
    assert abs(sum(rates) / len(rates) - data["activation_mean"]) < 1e-6
    assert info["flops"]["measured"] <= info["flops"]["complete"] * 1.01


def test_inspect_table_with_data(capsys, tmp_path):
    from dyt_edge.checkpoint import save_model

    cfg = tiny_config(img_size=32, patch_size=4, num_classes=10)
    path = save_model(randomize_dyt(build_model(cfg), seed=4), tmp_path / "m.safetensors")
    code, out, err = cli(capsys, "inspect", path, "--data", "digits", "--samples", "16")
    assert code == 0, err
    assert "blocks.2.mlp" in out and "Activation per dispatcher" in out


# -- bad input: one line, non-zero exit, no traceback, nothing written ------------------------

def test_missing_file(capsys, tmp_path):
    code, _, err = cli(capsys, "inspect", tmp_path / "nope.pth")
    assert_one_line_error(code, err, "nope.pth")


def test_directory_instead_of_file(capsys, tmp_path):
    code, _, err = cli(capsys, "inspect", tmp_path)
    assert_one_line_error(code, err, "director")


def test_not_a_checkpoint(capsys, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n" * 20)
    code, _, err = cli(capsys, "inspect", path)
    assert_one_line_error(code, err, "notes.pth")


def test_truncated_checkpoint(capsys, tmp_path, published_ckpt):
    data = published_ckpt.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, "inspect", path)
    assert_one_line_error(code, err, "truncated.pth")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(capsys, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    code, _, err = cli(capsys, "inspect", path)
    assert_one_line_error(code, err, "system")
    assert not marker.exists()


def test_wrong_keys(capsys, tmp_path):
    sd = build_model(tiny_config()).state_dict()
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    del sd["blocks.1.mlp.fc1.weight"]
    path = tmp_path / "keys.pth"
    torch.save({"model": sd}, path)
    code, _, err = cli(capsys, "inspect", path, "--adapter-scale", "0.1", "--num-heads", "2")
    assert_one_line_error(code, err, "blocks.1.mlp.fc1.weight", "blocks.0.extra.weight")


def test_wrong_shapes(capsys, tmp_path):
    sd = build_model(tiny_config()).state_dict()
    sd["blocks.1.mlp.fc2.weight"] = torch.zeros(32, 100)
    path = tmp_path / "shapes.pth"
    torch.save(sd, path)
    code, _, err = cli(capsys, "inspect", path, "--adapter-scale", "0.1", "--num-heads", "2")
    assert_one_line_error(code, err, "blocks.1.mlp.fc2.weight")


def test_missing_adapter_scale_says_where_it_looked(capsys, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(build_model(tiny_config()).state_dict(), path)
    code, _, err = cli(capsys, "inspect", path, "--num-heads", "2")
    assert_one_line_error(code, err, "--adapter-scale", "args")


def test_unknown_variant_in_config(capsys, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from dyt_edge.checkpoint import save_model

    path = save_model(build_model(tiny_config()), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    cfg["variant"] = "mpl"
    meta["config"] = json.dumps(cfg)
    save_file(load_file(str(path)), str(path), metadata=meta)
    code, _, err = cli(capsys, "inspect", path)
    assert_one_line_error(code, err, "mpl", "mlp")


def test_image_size_that_does_not_fit_the_patch(capsys, tmp_path, published_ckpt):
    code, _, err = cli(capsys, "inspect", published_ckpt, "--img-size", "30")
    assert_one_line_error(code, err, "30", "patch")


def test_train_unknown_variant_writes_nothing(capsys, tmp_path):
    out = tmp_path / "model.safetensors"
    code, _, err = cli(capsys, "train", "--variant", "attention", "-o", out)
    assert_one_line_error(code, err, "attention")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dyt_edge", "--debug", "inspect",
                           str(tmp_path / "nope.pth")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_usage_error_exits_2(capsys, published_ckpt):
    code, _, err = cli(capsys, "inspect", published_ckpt, "--samples", "abc")
    assert code == 2 and "Traceback" not in err and "unexpected" not in err
