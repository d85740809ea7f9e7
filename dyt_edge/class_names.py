"""Class names: where a model's come from, and how labelled data is matched against them.

A model's class names (index -> name, in the order of its logits) are known when

* ``dyt-edge train`` saved them in the checkpoint (safetensors metadata :data:`METADATA_KEY`, a
  JSON list: ImageFolder folder names, an .npz's ``class_names``, ``"0"`` .. ``"9"`` for digits);
* the user gives them with ``--class-names FILE`` (:func:`read_class_names_file`: one name per
  line, blank lines ignored), which wins over the checkpoint's.

Published checkpoints record none. ``export`` writes them into the manifest (``class_names``,
``class_names_source``) and the model's metadata; ``validate`` and ``bench`` match them against
the data's own names (:func:`match_class_names`) before they group images by class:

==========================================  ===============================================
the model's names vs the data's             what is done
==========================================  ===============================================
equal                                       labels used as they are
the same names in another order             the data's labels mapped onto the model's order
the data's names are some of the model's    mapped likewise (the data holds fewer classes)
anything else                               labels may not correspond: no accuracy; images
                                            grouped by the data's own classes
only one side has names                     labels used as they are, named by that side
==========================================  ===============================================

Torch-free (numpy only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .manifest import Manifest

METADATA_KEY = "dyt_edge.class_names"
"""Checkpoint metadata / ONNX metadata_props / OpenVINO rt_info key: the names as a JSON list."""
MAX_FILE_BYTES = 16 << 20

PathLike = Union[str, "os.PathLike[str]"]


def read_class_names_file(path: PathLike) -> list[str]:
    """The class names in a text file: one per line, in class-index order; surrounding
    whitespace is dropped and blank lines are ignored. Each name must be unique."""
    p = Path(path).expanduser()
    flag = f"--class-names {path}"
    hint = "pass a UTF-8 text file with one class name per line, in class-index order"
    if not p.exists():
        raise ConfigError(f"{flag} does not exist", hint)
    if not p.is_file():
        raise ConfigError(f"{flag} is not a file", hint)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{flag} is larger than {MAX_FILE_BYTES >> 20} MiB, which no "
                              "list of class names is", hint)
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} is not UTF-8 text", hint) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {flag}: {exc.strerror or exc}",
                          "check the path and its permissions") from None
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"{flag} holds no class names (only blank lines)", hint)
    return check_unique(names, flag)


def check_unique(names: Sequence[str], what: str) -> list[str]:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"{what} lists the class name '{n}' more than once",
                              "give every class its own name")
        seen.add(n)
    return list(names)


def check_count(names: Sequence[str], num_classes: int, what: str) -> list[str]:
    """``names`` when there is one per class; otherwise a one-line error with both counts."""
    if len(names) != int(num_classes):
        raise ConfigError(f"{what} lists {len(names)} class names but the model has "
                          f"{int(num_classes)} classes",
                          f"give exactly {int(num_classes)} names, one per line, in "
                          "class-index order")
    return list(names)


def checked_names(names: Sequence[Any], num_classes: int, what: str) -> list[str]:
    """``names`` as strings, once each and one per class; otherwise a one-line error."""
    return check_count(check_unique([str(n) for n in names], what), num_classes, what)


def parse_metadata(text: str) -> list[str]:
    """The names stored under :data:`METADATA_KEY` (ValueError when they are not a JSON list
    of strings)."""
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("not a JSON list of strings")
    return names


def preview(names: Sequence[str], count: int = 5) -> str:
    """``cat, dog, fish, ... (10)``: the first few names and, when cut, how many there are."""
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names)})" if len(names) > count else "")


# -- matching data against a model -------------------------------------------------------------

@dataclass
class ClassMatch:
    """How labelled data relates to a model's classes."""

    relation: str
    """``same`` | ``reordered`` | ``subset`` | ``different`` | ``model only`` | ``data only`` |
    ``unnamed`` | ``no labels`` | ``out of range``."""
    labels: Optional[Any] = None
    """[N] labels in the model's class order, fit for accuracy (None: none, or they may not
    correspond to the model's classes)."""
    groups: Optional[Any] = None
    """[N] class index each image is grouped by (the model's order unless ``different``)."""
    names: list[str] = field(default_factory=list)
    """Name per group index (the model's names, else the data's, else the index)."""
    names_from: str = "index"
    """``artifact`` | ``data`` | ``index``."""
    notes: list[str] = field(default_factory=list)

    def name(self, index: int) -> str:
        return self.names[index] if 0 <= index < len(self.names) else str(index)

    def to_dict(self) -> dict[str, Any]:
        return {"relation": self.relation, "names_from": self.names_from,
                "accuracy": self.labels is not None}


def match_class_names(model_names: Optional[Sequence[str]], data_names: Optional[Sequence[str]],
                      labels: Optional[Any], num_classes: Optional[int]) -> ClassMatch:
    """Match the data's labels (and class names) against the model's (see the module table)."""
    import numpy as np

    model = list(model_names) if model_names else None
    data = list(data_names) if data_names else None
    if labels is None:
        return ClassMatch("no labels", names=model or [], names_from=_source(model, None))
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    classes = int(num_classes) if num_classes else (len(model) if model else None)

    def in_range(values: Any) -> bool:
        return classes is None or not values.size or int(values.max()) < classes

    if model is not None and data is not None:
        if data == model:
            if not in_range(y):
                return _out_of_range(y, classes, model, "artifact")
            return ClassMatch("same", labels=y, groups=y, names=model, names_from="artifact")
        if len(set(data)) == len(data) and set(data) <= set(model):
            index = {n: i for i, n in enumerate(model)}
            lookup = np.array([index[n] for n in data], dtype=np.int64)
            if y.size and int(y.max()) >= len(lookup):
                return _different(y, model, data, "its labels go beyond its class names")
            mapped = lookup[y]
            if set(data) == set(model):
                relation = "reordered"
                note = ("the data's classes are the model's in another order: its labels were "
                        "mapped onto the model's order by name")
            else:
                relation = "subset"
                note = (f"the data holds {len(data)} of the model's {len(model)} classes: its "
                        "labels were mapped onto the model's order by name")
            return ClassMatch(relation, labels=mapped, groups=mapped, names=model,
                              names_from="artifact", notes=[note])
        return _different(y, model, data, None)
    names = model or data or []
    relation = "model only" if model else "data only" if data else "unnamed"
    if not in_range(y):
        return _out_of_range(y, classes, names, _source(model, data))
    return ClassMatch(relation, labels=y, groups=y, names=names, names_from=_source(model, data))


def match_artifact_classes(info: "Manifest", data_names: Optional[Sequence[str]],
                           labels: Optional[Any]) -> ClassMatch:
    """:func:`match_class_names` against an artifact's manifest (its ``class_names`` and the
    model's ``num_classes``)."""
    return match_class_names(info.class_names, data_names, labels, info.model.get("num_classes"))


def _out_of_range(y: Any, classes: Optional[int], names: list[str], source: str) -> ClassMatch:
    return ClassMatch("out of range", names=names, names_from=source,
                      notes=[f"labels ignored: the data has labels up to {int(y.max())}, the "
                             f"model {classes} classes"])


def _different(y: Any, model: list[str], data: list[str], why: Optional[str]) -> ClassMatch:
    reason = why or (f"the data's class names ({preview(data, 4)}) are not the model's "
                     f"({preview(model, 4)})")
    return ClassMatch("different", labels=None, groups=y, names=data, names_from="data",
                      notes=[f"{reason}: its labels may not correspond to the model's classes, "
                             "so no accuracy is computed against them (per-class rows are "
                             "the data's classes)"])


def _source(model: Optional[list[str]], data: Optional[list[str]]) -> str:
    return "artifact" if model else "data" if data else "index"


# -- per-class summaries ------------------------------------------------------------------------

def per_class_validation(r_logits: Any, t_logits: Any, match: ClassMatch) -> list[dict[str, Any]]:
    """Per class present in the data: images, reference / target accuracy (None without usable
    labels) and top-1 agreement, in percent; by class index."""
    import numpy as np

    if match.groups is None:
        return []
    groups = np.asarray(match.groups)
    r_top, t_top = np.asarray(r_logits).argmax(1), np.asarray(t_logits).argmax(1)
    rows = []
    for g in np.unique(groups):
        idx = groups == g
        row: dict[str, Any] = {"index": int(g), "name": match.name(int(g)),
                               "images": int(idx.sum()),
                               "reference_accuracy_pct": None, "target_accuracy_pct": None,
                               "top1_agreement_pct": 100.0 * float((r_top[idx] == t_top[idx])
                                                                   .mean())}
        if match.labels is not None:
            y = np.asarray(match.labels)[idx]
            row["reference_accuracy_pct"] = 100.0 * float((r_top[idx] == y).mean())
            row["target_accuracy_pct"] = 100.0 * float((t_top[idx] == y).mean())
        rows.append(row)
    return rows


def per_class_activation(per_image: Any, match: ClassMatch) -> list[dict[str, Any]]:
    """Per class present in the data: images and the mean activation rate (share of patch
    tokens kept, averaged over dispatchers and images), also per dispatcher; by class index."""
    import numpy as np

    if match.groups is None or per_image is None:
        return []
    rates = np.asarray(per_image, dtype=np.float64)              # [N, L]
    groups = np.asarray(match.groups)[:rates.shape[0]]
    rows = []
    for g in np.unique(groups):
        r = rates[groups == g]
        rows.append({"index": int(g), "name": match.name(int(g)), "images": int(r.shape[0]),
                     "mean": float(r.mean()),
                     "per_layer": [float(v) for v in r.mean(axis=0)]})
    return rows


def worst_first(rows: Sequence[dict[str, Any]], limit: int = 10) -> tuple[list[dict[str, Any]],
                                                                          int]:
    """The rows to print: all of them when there are at most ``limit + 2``, else the ``limit``
    worst (lowest target accuracy, else agreement); and how many were left out."""
    if len(rows) <= limit + 2:
        return list(rows), 0

    def key(r: dict[str, Any]) -> tuple[float, float, int]:
        acc = r.get("target_accuracy_pct")
        return (acc if acc is not None else 101.0, r["top1_agreement_pct"], r["index"])

    return sorted(rows, key=key)[:limit], len(rows) - limit


__all__ = ["ClassMatch", "METADATA_KEY", "check_count", "checked_names", "match_artifact_classes",
           "match_class_names", "parse_metadata",
           "per_class_activation", "per_class_validation", "preview", "read_class_names_file",
           "worst_first"]
