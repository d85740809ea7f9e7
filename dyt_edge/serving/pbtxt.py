"""Protocol-buffer text format, written from plain Python values.

Triton reads a model's ``config.pbtxt`` as the text form of its ``ModelConfig`` message. This
writer covers what a model configuration needs: scalars, enum values (:class:`Enum`), nested
messages (dicts), repeated scalars (lists of scalars: ``dims: [3, 224, 224]``), repeated
messages (lists of dicts) and map fields (``parameters``: :class:`Map`). Tests parse its
output with Triton's own ``model_config_pb2`` (from ``tritonclient``), so a typo in a field
name or an enum fails there; packaging itself needs no protobuf.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


class Enum(str):
    """An enum value: written bare (``KIND_CPU``), not quoted."""


class Map(dict):
    """A protobuf map field: written as one ``key { key: ... value { ... } }`` entry per item."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a valid text-format string literal for printable text
    raise TypeError(f"cannot write {type(value).__name__} in text format")


def _message(fields: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Map):
            for k, v in value.items():
                lines.append(f"{pad}{key} {{")
                lines.append(f"{pad}  key: {_scalar(str(k))}")
                lines.append(f"{pad}  value {{")
                lines.extend(_message(v, indent + 2))
                lines.append(f"{pad}  }}")
                lines.append(f"{pad}}}")
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.extend(_message(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, Mapping) for v in value):
                lines.append(f"{pad}{key} [")
                for i, item in enumerate(value):
                    lines.append(f"{pad}  {{")
                    lines.extend(_message(item, indent + 2))
                    lines.append(f"{pad}  }}{',' if i < len(value) - 1 else ''}")
                lines.append(f"{pad}]")
            elif value:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def to_text(fields: Mapping[str, Any], header: str = "") -> str:
    """``fields`` as a text-format message; ``header`` lines become ``#`` comments on top."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join(comments + _message(fields, 0)) + "\n"


__all__ = ["Enum", "Map", "to_text"]
