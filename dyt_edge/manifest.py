"""The typed view of an artifact's manifest (``dyt_edge.json``).

The file is JSON (its schema: ``docs/manifest.md``); :class:`Manifest` is what code reads from
it. :meth:`Manifest.from_dict` checks the header and the keys every reader relies on, and
refuses a manifest it cannot read with one line naming the problem: a newer schema than this
dyt-edge knows, a missing or mistyped key. Sections only one command reads (``graph_report``,
``validation``, a builder's record beyond its target and precision, ...) stay plain mappings
under :attr:`Manifest.raw`.

Schema versions: 1 wrote ``"schema": 1``; 2 (current) writes the header every dyt-edge JSON
file has (:func:`dyt_edge.reports.report_header`: ``"schema": "dyt-edge.manifest"``,
``"schema_version": 2``). The keys did not change, so version 1 manifests load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from .errors import ArtifactError, ConfigError
from .reports import SCHEMA_PREFIX, report_header

if TYPE_CHECKING:  # pragma: no cover
    from .config import DyTConfig, Preprocessing

KIND = "manifest"
SCHEMA_VERSION = 2
FIX = "re-export the model with this dyt-edge"


def header(created: str) -> dict[str, Any]:
    """The first keys of every manifest this dyt-edge writes."""
    return report_header(KIND, SCHEMA_VERSION, created)


def schema_version(raw: Mapping[str, Any], where: str = "the manifest") -> int:
    """The schema version of a manifest (either header form); :class:`ArtifactError` when it
    is not a dyt-edge manifest or is newer than this dyt-edge reads."""
    schema = raw.get("schema") if isinstance(raw, Mapping) else None
    if isinstance(schema, int) and not isinstance(schema, bool):
        version = schema  # version 1: "schema": 1
    elif schema == SCHEMA_PREFIX + KIND and isinstance(raw.get("schema_version"), int):
        version = raw["schema_version"]
    else:
        raise ArtifactError(f"{where} is not a dyt-edge manifest", FIX)
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{where} has manifest schema {version}, this dyt-edge reads up to "
                            f"{SCHEMA_VERSION}", "upgrade dyt-edge")
    if version < 1:
        raise ArtifactError(f"{where} has an invalid manifest schema {version}", FIX)
    return version


@dataclass(frozen=True)
class FileEntry:
    """One file of the artifact."""

    path: str
    """Relative to the artifact directory."""
    bytes: Optional[int] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class Source:
    """The checkpoint the artifact was exported from (``path`` None: an in-memory model)."""

    path: Optional[str] = None
    sha256: Optional[str] = None
    format: Optional[str] = None
    layout: Optional[str] = None
    training: Mapping[str, Any] = field(default_factory=dict)
    """What ``dyt-edge train`` recorded in the checkpoint (``config``, ``result``, ``data``),
    or empty."""


@dataclass(frozen=True)
class Output:
    """How the artifact was written: ``directory`` (the directory is the artifact) or
    ``file`` (``-o DIR/NAME.onnx``: only the artifact's files in DIR are ours; ``name`` is
    the model file)."""

    mode: str = "directory"
    name: Optional[str] = None


@dataclass(frozen=True)
class Dispatch:
    mode: str
    capacity: Optional[float] = None
    capacity_slots: Optional[tuple[int, ...]] = None
    dispatchers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``dispatch`` section as a manifest records it."""
        return {"mode": self.mode, "capacity": self.capacity,
                "capacity_slots": (list(self.capacity_slots) if self.capacity_slots is not None
                                   else None),
                "dispatchers": list(self.dispatchers)}


@dataclass(frozen=True)
class Build:
    """The ``build`` section of a built artifact: what every reader needs; the rest (the
    builder's own record) is in :attr:`record`."""

    target: str
    precision: str
    parent: Optional[str] = None
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    format: str
    files: Mapping[str, FileEntry]
    source: Source
    model: Mapping[str, Any]
    """:meth:`DyTConfig.to_dict` of the exported model."""
    dispatch: Dispatch
    batch: Optional[int]
    """The static batch size, or None for a dynamic batch."""
    dyt_edge_version: Optional[str] = None
    created: Optional[str] = None
    output: Output = field(default_factory=Output)
    variant: Optional[str] = None
    adapter: Optional[str] = None
    class_names: Optional[tuple[str, ...]] = None
    class_names_source: Optional[str] = None
    """Where :attr:`class_names` came from (``checkpoint``, ``given``, ...)."""
    opset: Optional[int] = None
    inputs: tuple[Mapping[str, Any], ...] = ()
    """``name``, ``shape``, ``dtype`` of each graph input."""
    outputs: tuple[Mapping[str, Any], ...] = ()
    """``name``, ``shape``, ``dtype`` of each graph output (``logits``, and ``masks`` where
    the export exposes them)."""
    build: Optional[Build] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The whole manifest as read."""

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "the manifest") -> "Manifest":
        version = schema_version(raw, where)

        def section(key: str, required: bool = True) -> Mapping[str, Any]:
            value = raw.get(key)
            if value is None and not required:
                return {}
            if not isinstance(value, Mapping):
                raise ArtifactError(f"{where} has no valid '{key}' section", FIX)
            return value

        files = {}
        for kind, entry in section("files", required=False).items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
                raise ArtifactError(f"{where} lists file '{kind}' without a path", FIX)
            files[str(kind)] = FileEntry(entry["path"], entry.get("bytes"), entry.get("sha256"))
        model = section("model")
        if not isinstance(model.get("img_size"), int):
            raise ArtifactError(f"{where} records no model input size (model.img_size)", FIX)
        d = section("dispatch", required=False)
        slots = d.get("capacity_slots")
        dispatch = Dispatch(mode=str(d.get("mode") or "topk"), capacity=d.get("capacity"),
                            capacity_slots=tuple(slots) if isinstance(slots, list) else None,
                            dispatchers=tuple(d.get("dispatchers") or ()))
        s = section("source", required=False)
        training = s.get("training")
        source = Source(s.get("path"), s.get("sha256"), s.get("format"), s.get("layout"),
                        training if isinstance(training, Mapping) else {})
        o = raw.get("output")
        output = (Output(str(o.get("mode") or "directory"), o.get("name"))
                  if isinstance(o, Mapping) else Output())
        def tensors(key: str) -> tuple[Mapping[str, Any], ...]:
            listed = raw.get(key) if isinstance(raw.get(key), list) else []
            return tuple(i for i in listed if isinstance(i, Mapping))
        batch = raw.get("batch", "dynamic")
        if batch not in (None, "dynamic") and not isinstance(batch, int):
            raise ArtifactError(f"{where} has an invalid batch {batch!r}", FIX)
        b = raw.get("build")
        build = None
        if b:
            if not isinstance(b, Mapping) or not b.get("target") or not b.get("precision"):
                raise ArtifactError(f"{where} has a build section without target and precision",
                                    "re-create the artifact with `dyt-edge build`")
            build = Build(str(b["target"]), str(b["precision"]), b.get("parent"), b)
        names = raw.get("class_names")
        return cls(schema_version=version, format=str(raw.get("format") or "?"), files=files,
                   source=source, model=model, dispatch=dispatch,
                   batch=None if batch in (None, "dynamic") else int(batch),
                   dyt_edge_version=raw.get("dyt_edge_version"), created=raw.get("created"),
                   output=output, variant=raw.get("variant"), adapter=raw.get("adapter"),
                   class_names=tuple(names) if isinstance(names, list) else None,
                   class_names_source=raw.get("class_names_source"), opset=raw.get("opset"),
                   inputs=tensors("inputs"), outputs=tensors("outputs"), build=build,
                   raw=raw)

    # -- derived ------------------------------------------------------------------------------
    @property
    def img_size(self) -> int:
        return int(self.model["img_size"])

    @property
    def built_precision(self) -> Optional[str]:
        return self.build.precision if self.build else None

    @property
    def is_build(self) -> bool:
        return self.build is not None

    @property
    def is_baseline(self) -> bool:
        return bool(self.raw.get("baseline"))

    def section(self, key: str) -> Mapping[str, Any]:
        """A section only some readers use (``graph_report``, ``openvino``, ``tensorrt``,
        ...), or an empty mapping."""
        value = self.raw.get(key)
        return value if isinstance(value, Mapping) else {}

    def config(self) -> "DyTConfig":
        from .config import DyTConfig

        return DyTConfig.from_dict(dict(self.model))

    def preprocessing(self) -> "Preprocessing":
        return preprocessing_of(self.raw)


def preprocessing_of(manifest: Mapping[str, Any]) -> "Preprocessing":
    """The preprocessing of this artifact: the manifest's ``preprocessing`` record, checked.

    The one reader every consumer (calibration, ``validate``, ``bench``, ``visualize``,
    serving) uses, so all of them feed a model the pixels it was trained on. Records written
    before ``resize_mode`` was recorded read as :meth:`Preprocessing.from_dict` documents.
    Raises :class:`ArtifactError` when the manifest records none, when the record is invalid,
    or when its crop is not the model's input size.
    """
    from .config import Preprocessing

    raw = manifest.get("preprocessing") if isinstance(manifest, Mapping) else None
    if not isinstance(raw, Mapping):
        raise ArtifactError("the artifact's manifest records no preprocessing",
                            "re-export the model with this dyt-edge")
    try:
        pre = Preprocessing.from_dict(raw)
        pre.validate()
    except (ConfigError, TypeError, ValueError) as exc:
        why = exc.message if isinstance(exc, ConfigError) else str(exc)
        raise ArtifactError(f"the artifact's preprocessing record is invalid ({why})",
                            "re-export the model with this dyt-edge") from None
    size = (manifest.get("model") or {}).get("img_size")
    if size is not None and int(size) != pre.input_size:
        raise ArtifactError(f"the artifact's preprocessing crops {pre.crop} px but the model "
                            f"takes {size} px", "re-export the model")
    return pre


__all__ = ["Build", "Dispatch", "FileEntry", "KIND", "Manifest", "Output", "SCHEMA_VERSION",
           "Source", "header", "preprocessing_of", "schema_version"]
