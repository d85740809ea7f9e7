"""Token dispatch: run a sub-block on the tokens a gate activated, in one of five modes.

Each mode is a pure function with the same contract, chosen per block by
:func:`run_dispatched`:

``fn(tokens [B, K, C], key_valid [B, K] bool | None) -> tuple of [B, K, C] tensors``
    the sub-block (MLP, attention, or a whole layer). ``key_valid`` is passed only to attention
    sub-blocks, which must attend to valid keys alone (a key-padding mask), so that results do not
    depend on which other images share the batch.

Every mode returns, per output of ``fn``, a dense ``[B, N, C]`` *delta*: ``fn``'s output at the
active tokens and exactly zero elsewhere, so a block adds it to its residual stream.

Modes:

``complete``  every token is active (the baseline every speedup is measured against).
``mask``      dense computation multiplied by the mask: the exact reference, saves nothing.
``topk``      per image, TopK of the gate scores with K = the largest active count in the batch,
              gather [B, K, C], run, scatter back; padding slots contribute nothing. Exports to
              ONNX TopK / GatherND / ScatterND with a data-dependent K.
``pack``      the batch flattened and the active tokens packed with ``nonzero`` into one [M, C]
              tensor (the published code's approach). Token-wise sub-blocks only: attention needs
              per-image key sets, so attention sub-blocks run as ``topk`` in this mode.
``capacity``  like ``topk`` with a static K per layer (exact while the active count fits; beyond
              that the lowest-scoring active tokens are dropped, see :func:`capacity_overflow`).

Token 0 (CLS) is always active. ``mask_full`` / ``scores_full`` below include it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

DISPATCH_MODES = ("complete", "mask", "topk", "pack", "capacity")

SubBlock = Callable[[torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, ...]]


def full_mask(patch_mask: torch.Tensor) -> torch.Tensor:
    """[B, P] patch decisions -> [B, P+1] with CLS (token 0) always active."""
    ones = torch.ones_like(patch_mask[:, :1])
    return torch.cat([ones, patch_mask], dim=1)


def full_scores(patch_logits: torch.Tensor) -> torch.Tensor:
    """[B, P] gate logits -> [B, P+1] selection scores, CLS ranked first."""
    top = torch.full_like(patch_logits[:, :1], float("inf"))
    return torch.cat([top, patch_logits], dim=1)


def _zeros_like_tokens(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], x.shape[1], like.shape[-1], dtype=like.dtype, device=x.device)


def dense_masked(fn: SubBlock, x: torch.Tensor, mask_full: torch.Tensor,
                 attention: bool) -> tuple[torch.Tensor, ...]:
    """`mask` mode (and training): the sub-block on every token, multiplied by the mask.

    ``mask_full`` may be a float straight-through mask during training; its hard value decides
    which keys attention sees, its gradient flows through the multiplication.
    """
    key_valid = (mask_full > 0.5) if attention else None
    m = mask_full.unsqueeze(-1)
    return tuple(out * m.to(out.dtype) for out in fn(x, key_valid))


def topk_select(mask_full: torch.Tensor, scores_full: torch.Tensor,
                k: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose K token slots per image: the K highest-scoring tokens.

    With ``k`` None, K is the largest active count in the batch (data-dependent, at least 1
    because CLS is always active), so every active token gets a slot. Active tokens always
    outscore inactive ones (the gate is monotone in its logit), so the slots hold all the active
    tokens first; the rest are padding. Returns (batch index [B, K], token index [B, K],
    valid [B, K] bool).
    """
    n = scores_full.shape[1]
    if k is None:
        # Data-dependent K (.item() stays symbolic under torch.export). At least 2 slots: a
        # size-1 token axis would be ambiguous to broadcasting in the traced attention, and the
        # spare slot is padding that contributes nothing.
        k = mask_full.sum(dim=1).max().clamp(min=min(2, n)).item()
        torch._check(k >= min(2, n))
        torch._check(k <= n)
    else:
        k = min(int(k), n)
    _, idx = torch.topk(scores_full, k, dim=1, largest=True, sorted=True)
    bidx = torch.arange(scores_full.shape[0], device=scores_full.device).unsqueeze(1).expand(-1, k)
    valid = mask_full[bidx, idx]
    return bidx, idx, valid


def gathered(fn: SubBlock, x: torch.Tensor, mask_full: torch.Tensor, scores_full: torch.Tensor,
             attention: bool, k: Optional[int] = None) -> tuple[torch.Tensor, ...]:
    """`topk` (``k`` None) and `capacity` (static ``k``) modes: gather, run, scatter."""
    bidx, idx, valid = topk_select(mask_full, scores_full, k)
    tokens = x[bidx, idx]                                   # GatherND
    outs = fn(tokens, valid if attention else None)
    keep = valid.unsqueeze(-1)
    deltas = []
    for out in outs:
        base = _zeros_like_tokens(x, out)
        deltas.append(base.index_put((bidx, idx), out * keep.to(out.dtype)))  # ScatterND
    return tuple(deltas)


def packed(fn: SubBlock, x: torch.Tensor, mask_full: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`pack` mode for token-wise sub-blocks: the active tokens of the whole batch in one row."""
    b, n, c = x.shape
    flat_idx = torch.nonzero(mask_full.reshape(-1)).squeeze(-1)        # NonZero
    tokens = x.reshape(b * n, c)[flat_idx].unsqueeze(0)               # [1, M, C]
    deltas = []
    for out in fn(tokens, None):
        base = torch.zeros(b * n, out.shape[-1], dtype=out.dtype, device=x.device)
        deltas.append(base.index_put((flat_idx,), out[0]).reshape(b, n, -1))
    return tuple(deltas)


def run_dispatched(fn: SubBlock, x: torch.Tensor, mask_full: Optional[torch.Tensor],
                   scores_full: Optional[torch.Tensor], mode: str, *, attention: bool,
                   capacity_k: Optional[int] = None) -> tuple[torch.Tensor, ...]:
    """Apply ``fn`` to the active tokens of ``x`` in ``mode``; return dense deltas."""
    if mode == "complete":
        return fn(x, None)
    if mask_full is None or scores_full is None:
        raise ValueError(f"dispatch mode {mode!r} needs the gate's mask and scores")
    if mode == "mask":
        return dense_masked(fn, x, mask_full, attention)
    if mode == "topk" or (mode == "pack" and attention):
        return gathered(fn, x, mask_full, scores_full, attention)
    if mode == "pack":
        return packed(fn, x, mask_full)
    if mode == "capacity":
        if capacity_k is None:
            raise ValueError("capacity mode needs capacity_k (set by set_dispatch)")
        # +1: CLS always holds a slot on top of the patch-token capacity.
        return gathered(fn, x, mask_full, scores_full, attention, k=capacity_k + 1)
    raise ValueError(f"unknown dispatch mode {mode!r}; expected one of {DISPATCH_MODES}")


def capacity_overflow(masks: torch.Tensor, slots: int | list[int]) -> torch.Tensor:
    """Per image and dispatcher, how many active patch tokens `capacity` mode dropped.

    ``masks`` are the gate decisions [B, L, P] a model returns with ``return_masks=True``;
    ``slots`` the patch slots per dispatcher (one int for all, or one per dispatcher).
    """
    counts = masks.to(torch.int64).sum(dim=-1)                           # [B, L]
    cap = torch.as_tensor(slots, dtype=torch.int64, device=masks.device)
    return (counts - cap).clamp(min=0)
