"""Token dispatch: run a sub-block on the tokens a gate activated, in one of five modes.

Each mode has the same contract, chosen per block by :func:`run_dispatched`:

``fn(tokens [B, K, C], key_valid [B, K] bool | None) -> tuple of [B, K, C] tensors``
    the sub-block (MLP, attention, or a whole layer). ``key_valid`` is passed only to attention
    sub-blocks, which must attend to valid keys alone (a key-padding mask), so that results do not
    depend on which other images share the batch. (In ``pack`` mode token-wise sub-blocks get the
    packed ``[M, C]`` matrix instead.)

:func:`run_dispatched` returns a :class:`Routed`: ``fn``'s outputs and where they belong.
``routed.add_to(base, i)`` is ``base`` plus output ``i`` at the active tokens (and ``base``
unchanged elsewhere): the block passes the rest of its residual sum as ``base``
(e.g. ``x + Adapter(x)``), so the gathered outputs are added where they belong and written back
in one scatter, with no dense zero-filled delta and no extra full-size add.

Modes:

``complete``  every token is active (the baseline every speedup is measured against).
``mask``      dense computation multiplied by the mask: the exact reference, saves nothing.
``topk``      per image, TopK of the gate scores with K = the largest active count in the batch,
              gather [B, K, C], run, scatter back; padding slots contribute nothing. Exports to
              ONNX TopK / GatherND / ScatterND with a data-dependent K. A batch costs what its
              busiest image costs (K is the batch maximum).
``pack``      the batch flattened and the active tokens packed with ``nonzero`` into one [M, C]
              tensor (the published code's approach): a batch costs its mean activation, no
              padding. Attention needs each image's own key set: an attention sub-block given a
              packed form (``packed_fn``) runs its token-wise parts (LayerNorm, the qkv and
              output projections: ~90% of ViT-B's attention FLOPs) on the packed [M, C] rows
              and only the attention core ``softmax(q k^T) v`` on [B, K, C] padded per image
              (K = the busiest image's count, padding masked out of the keys), see
              :func:`pack_index`; without one it runs as ``topk``.
``capacity``  like ``topk`` with a static K per layer (exact while the active count fits; beyond
              that the lowest-scoring active tokens are dropped, see :func:`capacity_overflow`).

Token 0 (CLS) is always active. ``mask_full`` / ``scores_full`` below include it.

Exactness of the scatter: ``add_to`` gathers ``base`` at the K slots, adds the outputs where the
slot holds an active token (``where(valid, base + out, base)``: a padding slot writes back
``base`` unchanged, whatever its output, even inf or NaN) and scatters the K rows into ``base``.
The K token indices of an image are distinct (TopK / nonzero), so the scatter is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..config import DEFAULT_DISPATCH, DISPATCH_MODES  # noqa: F401 - re-exported

SubBlock = Callable[[torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, ...]]


def full_mask(patch_mask: torch.Tensor) -> torch.Tensor:
    """[B, P] patch decisions -> [B, P+1] with CLS (token 0) always active."""
    ones = torch.ones_like(patch_mask[:, :1])
    return torch.cat([ones, patch_mask], dim=1)


def full_scores(patch_logits: torch.Tensor) -> torch.Tensor:
    """[B, P] gate logits -> [B, P+1] selection scores, CLS ranked first."""
    top = torch.full_like(patch_logits[:, :1], float("inf"))
    return torch.cat([top, patch_logits], dim=1)


@dataclass
class Routed:
    """The outputs of a dispatched sub-block and the token slots they belong to.

    ``kind``: ``dense`` (outputs for every token), ``masked`` (every token, multiplied by
    ``mask`` [B, N, 1]), ``gathered`` (``[B, K, C]`` at ``(bidx, idx)``, ``valid`` [B, K] telling
    real slots from padding) or ``packed`` (``[M, C]`` at rows ``flat_idx`` of the flattened
    ``[B * N, C]`` stream).
    """

    outs: tuple[torch.Tensor, ...]
    kind: str
    mask: Optional[torch.Tensor] = None
    bidx: Optional[torch.Tensor] = None
    idx: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None
    flat_idx: Optional[torch.Tensor] = None

    def add_to(self, base: torch.Tensor, i: int = 0) -> torch.Tensor:
        """``base`` [B, N, C] plus output ``i`` at the active tokens."""
        out = self.outs[i]
        if self.kind == "dense":
            return base + out
        if self.kind == "masked":
            return base + out * self.mask.to(out.dtype)
        if self.kind == "gathered":
            at = base[self.bidx, self.idx]                                 # GatherND
            upd = torch.where(self.valid.unsqueeze(-1), at + out, at)
            return base.index_put((self.bidx, self.idx), upd)              # ScatterND
        if self.kind == "packed":
            b, n, c = base.shape
            flat = base.reshape(b * n, c)
            upd = flat[self.flat_idx] + out                                # GatherND
            return flat.index_put((self.flat_idx,), upd).reshape(b, n, c)  # ScatterND
        raise ValueError(f"unknown routing {self.kind!r}")


def dense_masked(fn: SubBlock, x: torch.Tensor, mask_full: torch.Tensor,
                 attention: bool) -> Routed:
    """`mask` mode (and training): the sub-block on every token, multiplied by the mask.

    ``mask_full`` may be a float straight-through mask during training; its hard value decides
    which keys attention sees, its gradient flows through the multiplication.
    """
    key_valid = (mask_full > 0.5) if attention else None
    return Routed(tuple(fn(x, key_valid)), "masked", mask=mask_full.unsqueeze(-1))


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
             attention: bool, k: Optional[int] = None) -> Routed:
    """`topk` (``k`` None) and `capacity` (static ``k``) modes: gather, run (scatter later)."""
    bidx, idx, valid = topk_select(mask_full, scores_full, k)
    tokens = x[bidx, idx]                                   # GatherND
    outs = fn(tokens, valid if attention else None)
    return Routed(tuple(outs), "gathered", bidx=bidx, idx=idx, valid=valid)


def packed(fn: SubBlock, x: torch.Tensor, mask_full: torch.Tensor) -> Routed:
    """`pack` mode for token-wise sub-blocks: the active tokens of the whole batch in one
    ``[M, C]`` matrix (token-wise sub-blocks take any leading shape). No ``[1, M, C]`` batch
    axis: indexing it away (a Gather with a scalar index) after a quantized MatMul trips
    OpenVINO's low-precision transformations when an INT8 model is compiled."""
    b, n, c = x.shape
    flat_idx = torch.nonzero(mask_full.reshape(-1)).squeeze(-1)        # NonZero
    tokens = x.reshape(b * n, c)[flat_idx]                            # [M, C] (GatherND)
    return Routed(tuple(fn(tokens, None)), "packed", flat_idx=flat_idx)


@dataclass
class PackIndex:
    """Where the packed rows of a batch sit, for sub-blocks that need each image's tokens
    together (attention): packed ``[M, X]`` <-> padded ``[B, K, X]``.

    Packed row ``p`` is token ``flat_idx[p] % N`` of image ``flat_idx[p] // N`` (image-major,
    token order within an image, as ``nonzero`` returns them). Image ``b``'s ``counts[b]`` rows
    start at ``offsets[b]`` and fill its first ``counts[b]`` slots of ``K``.
    """

    flat_idx: torch.Tensor
    """[M] rows of the flattened [B * N] stream."""
    rows: torch.Tensor
    """[B, K] the packed row of each padded slot (0 for padding slots)."""
    valid: torch.Tensor
    """[B, K] bool: the slot holds a token (padding must be masked out of attention keys)."""
    slot: torch.Tensor
    """[M] the flat padded slot ``b * K + k`` of each packed row."""

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """[M, X] -> [B, K, X] (padding slots hold a copy of row 0: mask them)."""
        return packed[self.rows]

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, K, X] -> [M, X]: the rows of the valid slots, in packed order."""
        b, k = self.rows.shape
        return padded.reshape(b * k, *padded.shape[2:])[self.slot]


def pack_index(mask_full: torch.Tensor) -> PackIndex:
    """:class:`PackIndex` of a batch's ``[B, N]`` token mask (CLS always active: every image
    has at least one row, so M >= B and K >= 1; K is data-dependent, at least 2 as in
    :func:`topk_select`)."""
    b, n = mask_full.shape
    flat_idx = torch.nonzero(mask_full.reshape(-1)).squeeze(-1)              # NonZero [M]
    counts = mask_full.to(torch.int64).sum(dim=1)                            # [B]
    k = counts.max().clamp(min=min(2, n)).item()
    torch._check(k >= min(2, n))
    torch._check(k <= n)
    offsets = torch.cumsum(counts, dim=0) - counts                           # [B]
    image = torch.div(flat_idx, n, rounding_mode="floor")                    # [M]
    within = torch.arange(flat_idx.shape[0], device=flat_idx.device) - offsets[image]
    slot = image * k + within                                                # [M]
    ar = torch.arange(k, device=mask_full.device)
    valid = ar.unsqueeze(0) < counts.unsqueeze(1)                            # [B, K]
    rows = torch.where(valid, offsets.unsqueeze(1) + ar.unsqueeze(0),
                       torch.zeros_like(valid, dtype=torch.int64))
    return PackIndex(flat_idx=flat_idx, rows=rows, valid=valid, slot=slot)


PackedSubBlock = Callable[[torch.Tensor, PackIndex], tuple[torch.Tensor, ...]]
"""``fn(packed [M, C], index) -> tuple of [M, C]``: an attention sub-block in packed form."""


def packed_attention(fn: PackedSubBlock, x: torch.Tensor, mask_full: torch.Tensor) -> Routed:
    """`pack` mode for attention sub-blocks given in packed form (see the module doc)."""
    b, n, c = x.shape
    index = pack_index(mask_full)
    tokens = x.reshape(b * n, c)[index.flat_idx]                             # GatherND [M, C]
    return Routed(tuple(fn(tokens, index)), "packed", flat_idx=index.flat_idx)


def run_dispatched(fn: SubBlock, x: torch.Tensor, mask_full: Optional[torch.Tensor],
                   scores_full: Optional[torch.Tensor], mode: str, *, attention: bool,
                   capacity_k: Optional[int] = None,
                   packed_fn: Optional[PackedSubBlock] = None) -> Routed:
    """Apply ``fn`` to the active tokens of ``x`` in ``mode``; add its outputs to a residual
    stream with :meth:`Routed.add_to`. ``packed_fn`` is an attention sub-block's packed form
    (used in ``pack`` mode)."""
    if mode == "complete":
        return Routed(tuple(fn(x, None)), "dense")
    if mask_full is None or scores_full is None:
        raise ValueError(f"dispatch mode {mode!r} needs the gate's mask and scores")
    if mode == "mask":
        return dense_masked(fn, x, mask_full, attention)
    if mode == "pack" and attention and packed_fn is not None:
        return packed_attention(packed_fn, x, mask_full)
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
    ``slots`` the patch slots per dispatcher (one int for all, or one per dispatcher). Its
    numpy twin, for runtime outputs: :func:`dyt_edge.metrics.overflow_counts`.
    """
    counts = masks.to(torch.int64).sum(dim=-1)                           # [B, L]
    cap = torch.as_tensor(slots, dtype=torch.int64, device=masks.device)
    return (counts - cap).clamp(min=0)
