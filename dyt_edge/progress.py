"""How long-running library calls report where they are.

:data:`Progress` is ``progress(message)``, called as each stage starts (export, build,
validate, baseline); ``None`` means silent. The CLI turns the messages into a status line. Two
calls say more than a message and have their own callback type: ``bench`` reports how far a
measurement is (:data:`dyt_edge.bench.timer.MeasureProgress`) and ``train`` reports whole
epochs (:data:`dyt_edge.train.loop.OnEvent`).
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Optional[Callable[[str], None]]

__all__ = ["Progress"]
