"""The build targets: target name -> :class:`~.builder.Builder`, and the checks of
:class:`~.builder.BuildOptions` that depend on the target.

A new target is a :class:`~.builder.Builder` subclass in its own folder here
(``exporters/<target>/builder.py``) and one line in :data:`BUILDERS`. Builders import their heavy
libraries (onnx, openvino, nncf, TensorRT) inside their methods, so importing this module loads
numpy and dyt-edge's own modules only (``build --help`` stays fast; a test holds that).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UsageError
from .builder import Builder, BuildOptions
from .openvino.builder import OpenVinoBuilder
from .tensorrt.builder import TensorRTBuilder

BUILDERS: dict[str, type[Builder]] = {
    OpenVinoBuilder.target: OpenVinoBuilder,
    TensorRTBuilder.target: TensorRTBuilder,
}
TARGETS = tuple(BUILDERS)


def get_builder(target: str) -> Builder:
    """The builder of ``target``; a one-line :class:`UsageError` naming the choices otherwise."""
    key = str(target).strip().lower()
    if key not in BUILDERS:
        from ..config import closest

        raise UsageError(f"unknown target '{target}'",
                         f"{closest(key, TARGETS)}choose one of: {', '.join(TARGETS)}")
    return BUILDERS[key]()


def check_options(options: BuildOptions) -> BuildOptions:
    """``options`` checked and normalised for their target (:meth:`BuildOptions.checked`, the
    target's name, and no flag that belongs to another target)."""
    builder = get_builder(options.target)
    for other in BUILDERS.values():
        if other.target == builder.target:
            continue
        for attr, flag in other.own_flags.items():
            value = getattr(options, attr)
            if value is not None and value is not False:
                raise UsageError(f"{flag} applies to --target {other.target} only",
                                 f"drop {flag}, or build with --target {other.target}")
    return replace(options, target=builder.target).checked()
