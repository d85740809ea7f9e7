"""read_checkpoint and load_model: a checkpoint read end to end, its weights checked against
the architecture in one error, and loaded as fp32."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from dyt_edge.checkpoint import file_sha256, load_model, read_checkpoint, save_model
from dyt_edge.config import DyTConfig, Preprocessing
from dyt_edge.errors import CheckpointError

from .helpers.checkpoint import (SCALE, assert_same_logits, images, make_model, published_args,
                                 save_published)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_published_full_layout(tmp_path, legacy):
    model = make_model(seed=1)
    path = save_published(tmp_path / "checkpoint-3.pth", model,
                          published_args(ffn_adapter_scalar=str(SCALE)), legacy=legacy)
    loaded = read_checkpoint(path, num_heads=2)
    assert (loaded.format, loaded.layout) == ("published", "full")
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert loaded.config == model.config
    prov = loaded.provenance
    assert set(prov) == {f for f in DyTConfig.__dataclass_fields__}
    assert prov["adapter_scale"] == "args.tuning_config.ffn_adapter_scalar"
    assert prov["num_heads"] == "override"
    for name in ("embed_dim", "depth", "patch_size", "img_size", "num_classes", "variant",
                 "adapter_dim", "mlp_ratio"):
        assert prov[name] == "tensor shapes", name
    assert prov["preprocessing"] == "default: published VTAB recipe"
    assert loaded.config.preprocessing == Preprocessing.vtab(32)
    # args come back as plain JSON-able data, stand-ins and paths included.
    args = json.loads(json.dumps(loaded.args))
    assert args["tuning_config"]["ffn_num"] == 8 and args["output_dir"] == "out"
    assert args["tuning_config"]["ffn_adapter_scalar"] == str(SCALE)
    assert_same_logits(model, load_model(path, num_heads=2))


def test_load_model_builds_for_real_what_the_weights_do_not_cover(tmp_path, monkeypatch):
    """A tensor the state_dict does not carry (a non-persistent buffer) must not stay on the
    meta device: load_model then builds the model for real."""
    from dyt_edge.checkpoint import api

    real_build = api.build_model

    def build_with_buffer(config, **kwargs):
        model = real_build(config, **kwargs)
        model.register_buffer("lookup", torch.arange(3.0), persistent=False)
        return model

    monkeypatch.setattr(api, "build_model", build_with_buffer)
    model = make_model(seed=2)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.lookup, torch.arange(3.0))
    assert_same_logits(model, loaded)


def test_wrong_keys_listed_with_counts(tmp_path):
    sd = make_model().state_dict()
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    del sd["blocks.1.mlp.fc1.weight"]
    path = tmp_path / "keys.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path, adapter_scale=SCALE, num_heads=2)
    message = exc.value.message
    assert message.startswith(f"{path} does not match a DyT 'mlp' model: ")
    assert "1 missing key (blocks.1.mlp.fc1.weight)" in message
    assert "1 unexpected key (blocks.0.extra.weight)" in message
    assert "shape" not in message


def test_wrong_shapes_listed(tmp_path):
    sd = make_model().state_dict()
    sd["blocks.1.mlp.fc2.weight"] = torch.zeros(32, 100)
    sd["norm.weight"] = torch.ones(32, dtype=torch.int64)
    for i in range(3):
        del sd[f"blocks.{i}.norm1.weight"], sd[f"blocks.{i}.norm1.bias"]
    path = tmp_path / "shapes.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, adapter_scale=SCALE, num_heads=2)
    message = exc.value.message
    assert "1 shape mismatch (blocks.1.mlp.fc2.weight: checkpoint [32, 100] vs model [32, 128])" \
        in message
    assert "1 non-float tensor (norm.weight: torch.int64)" in message
    assert ("6 missing keys (blocks.0.norm1.weight, blocks.0.norm1.bias, "
            "blocks.1.norm1.weight, ...)") in message


def test_loaded_model_owns_fp32_weights(tmp_path):
    model = make_model(seed=9)
    sd = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path / "half.pth"
    torch.save(sd, path)
    loaded = load_model(path, adapter_scale=SCALE, num_heads=2)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in loaded.parameters())
    x = images()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=5e-2)

