"""Dispatch execution modes: topk / pack / capacity must equal the dense `mask` reference."""

from __future__ import annotations

import re

import pytest
import torch

from dyt_edge.config import VARIANTS
from dyt_edge.errors import ConfigError
from dyt_edge.model import build_model, capacity_overflow
from dyt_edge.model.layers import TokenSelect

from .helpers import controlled_model, mixed_batch, tiny_config

ATOL = 1e-5
MODEL_KINDS = [(v, "adapter") for v in VARIANTS] + [("mlp", "moe"), ("attn_mlp", "moe")]


def run(model, mode, images, capacity=None):
    model.set_dispatch(mode, capacity=capacity)
    with torch.no_grad():
        return model(images, return_masks=True)


@pytest.mark.parametrize("variant,adapter_kind", MODEL_KINDS)
def test_topk_and_pack_equal_mask_at_every_batch_size(variant, adapter_kind):
    model = controlled_model(variant, adapter_kind)
    images = mixed_batch(9)
    seen_counts = set()
    for batch in range(1, 10):
        # Rotate which image leads, so every batch size holds a different mix.
        x = images.roll(batch, dims=0)[:batch]
        ref, ref_masks = run(model, "mask", x)
        seen_counts.update(ref_masks[:, 0].sum(-1).tolist())
        for mode in ("topk", "pack"):
            out, masks = run(model, mode, x)
            diff = (out - ref).abs().max().item()
            assert diff <= ATOL, f"{mode} batch {batch}: max diff {diff} (atol {ATOL})"
            assert torch.equal(masks, ref_masks)
    num_patches = model.config.num_patches
    assert 0 in seen_counts and num_patches in seen_counts, seen_counts
    assert any(0 < c < num_patches for c in seen_counts), seen_counts


@pytest.mark.parametrize("variant", VARIANTS)
def test_capacity_one_is_exact(variant):
    model = controlled_model(variant)
    x = mixed_batch(7)
    ref, ref_masks = run(model, "mask", x)
    out, masks = run(model, "capacity", x, capacity=1.0)
    assert (out - ref).abs().max().item() <= ATOL
    assert torch.equal(masks, ref_masks)
    assert capacity_overflow(masks, model.capacity_slots()).sum().item() == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_capacity_overflow_is_counted_and_fitting_images_stay_exact(variant):
    model = controlled_model(variant)
    x = mixed_batch(9, seed=3)
    ref, _ = run(model, "mask", x)
    out, masks = run(model, "capacity", x, capacity=0.5)
    slots = model.capacity_slots()
    assert slots == [8] * model.config.num_dispatchers  # ceil(0.5 * 16)
    overflow = capacity_overflow(masks, slots)           # [B, L]
    per_image = overflow.sum(dim=1)
    # Bright images (all 16 patches active) cannot fit 8 slots; dark ones (0 active) always fit.
    assert (per_image[1::3] > 0).all()
    assert (per_image[0::3] == 0).all()
    fits = per_image == 0
    assert (out[fits] - ref[fits]).abs().max().item() <= ATOL
    assert (out[~fits] - ref[~fits]).abs().max().item() > ATOL  # dropping tokens changes logits


@pytest.mark.parametrize("mode", ["topk", "pack"])
@pytest.mark.parametrize("variant", ["attn", "layer"])
def test_padding_never_leaks_between_images(variant, mode):
    """Attention among active tokens must not see another image's padding slots."""
    model = controlled_model(variant)
    x = mixed_batch(6, seed=5)
    model.set_dispatch(mode)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    assert (batched - single).abs().max().item() <= ATOL


@pytest.mark.parametrize("variant", ["attn", "attn_mlp", "layer"])
def test_pack_runs_attention_projections_on_the_packed_tokens_alone(variant):
    """In pack mode an attention sub-block's qkv and output projections (and the layer
    variant's MLP) see the batch's active tokens alone, as one [M, C] matrix; in topk mode they
    see [B, K, C] with K the busiest image's count."""
    model = controlled_model(variant, depth=1)
    x = mixed_batch(6, seed=2)
    _, masks = run(model, "mask", x)
    active = masks[:, 0].sum(-1) + 1                      # + CLS, per image, first dispatcher
    blk = model.dyt_blocks[0]
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name:
                                     shapes.setdefault(name, []).append(tuple(inp[0].shape)))
             for name, m in (("qkv", blk.attn.qkv), ("proj", blk.attn.proj))]
    try:
        run(model, "pack", x)
        packed = dict(shapes)
        shapes.clear()
        run(model, "topk", x)
    finally:
        for h in hooks:
            h.remove()
    c = model.config.embed_dim
    assert packed["qkv"] == [(int(active.sum()), c)] and packed["proj"] == [(int(active.sum()), c)]
    assert shapes["qkv"] == [(6, int(active.max()), c)]


def test_pack_index_maps_packed_rows_to_padded_slots_and_back():
    from dyt_edge.model.dispatch import pack_index

    mask = torch.tensor([[1, 0, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    index = pack_index(mask)
    assert index.flat_idx.tolist() == [0, 2, 3, 4, 8, 9, 10, 11]
    assert index.valid.tolist() == [[True, True, True, False], [True, False, False, False],
                                    [True, True, True, True]]
    rows = torch.arange(8.0).unsqueeze(1) * 10                  # [M, 1]: row p holds 10 p
    padded = index.pad(rows)                                    # [B, K, 1]
    assert padded[index.valid].squeeze(-1).tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    assert torch.equal(index.unpad(padded), rows)


@pytest.mark.parametrize("variant", VARIANTS)
def test_complete_equals_mask_with_every_gate_open(variant):
    model = controlled_model(variant)
    x = mixed_batch(4)
    complete, _ = run(model, "complete", x)
    with torch.no_grad():
        for ts in model.token_selects:
            ts.mlp_head.bias.fill_(1e4)
    ref, masks = run(model, "mask", x)
    assert masks.all()
    assert (complete - ref).abs().max().item() <= ATOL


def test_masks_shape_and_dtype():
    model = controlled_model("attn_mlp")
    logits, masks = run(model, "topk", mixed_batch(5))
    cfg = model.config
    assert logits.shape == (5, cfg.num_classes)
    assert masks.shape == (5, cfg.num_dispatchers, cfg.num_patches) == (5, 6, 16)
    assert masks.dtype == torch.bool
    assert cfg.dispatcher_names[:2] == ["blocks.0.attn", "blocks.0.mlp"]


def test_complete_mode_without_masks_skips_gate_work():
    model = controlled_model("mlp").set_dispatch("complete")
    calls = []
    orig = TokenSelect.logits
    try:
        TokenSelect.logits = lambda self, x: calls.append(1) or orig(self, x)
        with torch.no_grad():
            model(mixed_batch(2))
        assert calls == []
        with torch.no_grad():
            model(mixed_batch(2), return_masks=True)
        assert len(calls) == model.config.num_dispatchers
    finally:
        TokenSelect.logits = orig


def test_gate_is_fp32_under_autocast():
    torch.manual_seed(0)
    gate = TokenSelect(32)
    x = torch.randn(2, 16, 32)
    ref = gate.logits(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin = torch.nn.functional.linear(x, gate.mlp_head.weight, gate.mlp_head.bias)
        logits = gate.logits(x)
    assert lin.dtype == torch.bfloat16  # autocast is really on for ordinary linears
    assert logits.dtype == torch.float32
    assert torch.equal(logits, ref)


def test_model_runs_under_bf16_autocast_with_fp32_gates():
    model = controlled_model("mlp")
    x = mixed_batch(3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, masks = model.set_dispatch("topk")(x, return_masks=True)
    assert masks.dtype == torch.bool and torch.isfinite(logits.float()).all()


def test_training_masks_are_straight_through():
    model = controlled_model("mlp")
    model.train()
    torch.manual_seed(0)
    logits, masks = model(mixed_batch(4), return_masks=True)
    assert masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    (logits.sum() + masks.mean()).backward()
    grad = model.blocks[0].mlp_token_select.mlp_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_published_key_names_for_mlp_variant():
    model = build_model(tiny_config(depth=2))
    keys = set(model.state_dict())
    expected_block = {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
        "mlp.fc2.weight", "mlp.fc2.bias", "adaptmlp.down_proj.weight", "adaptmlp.down_proj.bias",
        "adaptmlp.up_proj.weight", "adaptmlp.up_proj.bias", "mlp_token_select.mlp_head.weight",
        "mlp_token_select.mlp_head.bias",
    }
    expected = {f"blocks.{i}.{k}" for i in range(2) for k in expected_block} | {
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert keys == expected


def test_bad_dispatch_settings_are_clear_errors():
    model = build_model(tiny_config())
    with pytest.raises(ConfigError, match=re.escape("did you mean 'topk'")):
        model.set_dispatch("topkk")
    with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
        model.set_dispatch("capacity", capacity=1.5)
    with pytest.raises(ConfigError, match="needs a capacity"):
        model.set_dispatch("capacity")
    with pytest.raises(ConfigError, match="capacity mode only"):
        model.set_dispatch("topk", capacity=0.5)


def test_dispatching_context_restores_mode():
    model = build_model(tiny_config()).set_dispatch("capacity", capacity=0.25)
    with model.dispatching("complete"):
        assert model.dispatch_mode == "complete"
    assert model.dispatch_mode == "capacity" and model.capacity == 0.25
    assert model.capacity_slots() == [4, 4, 4]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["topk", "capacity", "complete"])
def test_torch_export_with_dynamic_batch(variant, mode):
    model = controlled_model(variant, "moe" if variant == "layer" else "adapter")
    model.set_dispatch(mode, capacity=0.75 if mode == "capacity" else None)
    batch = torch.export.Dim("batch", min=1, max=256)
    ep = torch.export.export(model, (mixed_batch(2),), dynamic_shapes={"x": {0: batch}})
    exported = ep.module()
    for b in (1, 3, 7):
        x = mixed_batch(b, seed=b)
        with torch.no_grad():
            assert (exported(x) - model(x)).abs().max().item() <= ATOL


def test_add_to_writes_outputs_at_active_tokens_and_leaves_padding_alone():
    """Routed.add_to: base + output at the active tokens, base unchanged elsewhere. A padding
    slot's output (here NaN / inf) must never reach the stream."""
    from dyt_edge.model.dispatch import gathered, packed, run_dispatched

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g)
    base = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    scores = torch.where(mask, 1.0, -1.0) + 0.01 * torch.arange(5.0)
    expected = base + 10 * x * mask.unsqueeze(-1)

    def poison_padding(t, _key_valid):  # 10 * token, but inf/NaN where the token is all-zero
        return (torch.where(t.abs().sum(-1, keepdim=True) > 0, 10 * t, float("nan")),)

    masked_x = x * mask.unsqueeze(-1)
    routed = gathered(poison_padding, masked_x, mask, scores, attention=False)
    assert routed.idx.shape == (3, 4)            # K = the batch maximum (4), so padding exists
    assert not routed.valid.all()
    out = routed.add_to(base)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, base + 10 * masked_x)
    torch.testing.assert_close(packed(poison_padding, masked_x, mask).add_to(base),
                               base + 10 * masked_x)
    dense = run_dispatched(lambda t, k: (10 * t,), x, mask, scores, "mask", attention=False)
    torch.testing.assert_close(dense.add_to(base), expected)
    complete = run_dispatched(lambda t, k: (10 * t,), x, None, None, "complete",
                              attention=False)
    torch.testing.assert_close(complete.add_to(base), base + 10 * x)


@pytest.mark.parametrize("mode", ["topk", "pack"])
def test_int8_openvino_model_of_a_dispatch_graph_compiles_and_runs(tmp_path, mode):
    """NNCF INT8 of the exported graph must compile on OpenVINO's CPU plugin. (A pack graph
    that indexed the packed [1, M, C] output with [0] - a Gather with a scalar index after the
    quantized fc2 - failed there: its low-precision transformations broke the scatter's
    shapes.)"""
    import logging

    import numpy as np

    nncf = pytest.importorskip("nncf")
    from dyt_edge.runtimes.backends import import_openvino
    from dyt_edge.exporters.pipeline import ExportOptions, export_model

    model = controlled_model("mlp")
    out = tmp_path / mode
    export_model(model, out, ExportOptions(format="openvino", dispatch=mode, simplify=False,
                                           validate=False))
    ov = import_openvino()
    core = ov.Core()
    x = mixed_batch(6).numpy()
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(core.read_model(str(out / "model.xml")),
                              nncf.Dataset([x[i:i + 1] for i in range(len(x))]),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(x))
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    compiled = core.compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x)
    logits = next(v for p, v in result.items() if "logits" in p.get_names())
    assert logits.shape == (6, model.config.num_classes) and np.isfinite(logits).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_form_of_attention_equals_timms_in_every_mode(variant):
    """The attention the export traces (split heads, explicit core) computes what timm's does,
    in float64 to float64 rounding, with the same gate decisions; the flag is restored."""
    from dyt_edge.model.layers import DyTBlock, export_form

    model = controlled_model(variant, "adapter").double()
    x = mixed_batch(5).double()
    for mode in ("complete", "mask", "topk", "pack", "capacity"):
        cap = 0.5 if mode == "capacity" else None
        ref, ref_masks = run(model, mode, x, capacity=cap)
        with export_form(model):
            assert all(b.export_attention for b in model.modules() if isinstance(b, DyTBlock))
            out, masks = run(model, mode, x, capacity=cap)
        diff = (out - ref).abs().max().item()
        assert diff <= 1e-10, f"{mode}: max diff {diff}"
        assert torch.equal(masks, ref_masks), mode
    assert not any(b.export_attention for b in model.modules() if isinstance(b, DyTBlock))


def test_exported_attention_has_no_five_dimensional_transpose():
    """timm's qkv permute (a 5-D Transpose) and the exporter's SDPA form are not in the graph:
    per attention a Split, q / v transposes [0 2 1 3] and k [0 2 3 1] (README, "Attention in
    the export")."""
    import onnx

    from dyt_edge.exporters.torch_onnx import export_onnx

    model = controlled_model("mlp", "adapter")
    model.set_dispatch("pack")
    proto, _ = export_onnx(model, opset=18)
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    transposes = [n for n in proto.graph.node if n.op_type == "Transpose"]
    perms = [tuple(a.ints) for n in transposes for a in n.attribute if a.name == "perm"]
    assert not any(len(p) == 5 for p in perms), perms
    assert not any(ranks.get(n.input[0]) == 5 for n in transposes)
    depth = model.config.depth
    assert perms.count((0, 2, 3, 1)) == depth, perms
    assert sum(n.op_type == "Split" for n in proto.graph.node) >= depth
