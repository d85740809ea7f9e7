"""What the training tests share: a tiny, quick training configuration."""

from __future__ import annotations

from dyt_edge.train import TrainConfig

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, limit=96, epochs=1, batch_size=32,
            threads=1)


def tiny_run(**changes) -> TrainConfig:
    kw = dict(TINY)
    kw.update(changes)
    return TrainConfig(**kw)
