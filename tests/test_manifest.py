"""The typed manifest: versions, the header, and clear refusals."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dyt_edge import artifacts
from dyt_edge.errors import ArtifactError
from dyt_edge.manifest import SCHEMA_VERSION, Manifest, schema_version


def _manifest(**changes):
    m = artifacts.new_manifest(
        format="onnx", files={"onnx": {"path": "model.onnx", "bytes": 10, "sha256": "ab"}},
        output={"mode": "directory"},
        source={"path": "/ckpt.pth", "sha256": "cd", "format": "dyt-edge", "layout": None},
        model={"img_size": 32, "in_chans": 3}, class_names=["a", "b"], variant="mlp",
        dispatch={"mode": "pack", "capacity": None, "capacity_slots": None,
                  "dispatchers": ["blocks.0.mlp"]},
        batch="dynamic", preprocessing={"resize": 32, "crop": 32, "interpolation": "bicubic",
                                        "mean": [0.5] * 3, "std": [0.5] * 3,
                                        "resize_mode": "squash"})
    m.update(changes)
    return m


def test_new_manifests_carry_the_report_header():
    m = _manifest()
    assert m["schema"] == "dyt-edge.manifest" and m["schema_version"] == SCHEMA_VERSION
    assert list(m)[:4] == ["schema", "schema_version", "dyt_edge_version", "created"]


def test_the_typed_view_reads_every_stable_key():
    info = Manifest.from_dict(_manifest())
    assert info.schema_version == SCHEMA_VERSION and info.format == "onnx"
    assert info.files["onnx"].path == "model.onnx" and info.files["onnx"].sha256 == "ab"
    assert info.source.path == "/ckpt.pth" and info.img_size == 32
    assert info.dispatch.mode == "pack" and info.dispatch.dispatchers == ("blocks.0.mlp",)
    assert info.batch is None and info.class_names == ("a", "b") and info.build is None
    assert Manifest.from_dict(_manifest(batch=4)).batch == 4
    assert info.preprocessing().crop == 32


def test_the_typed_view_reads_the_export_record_and_writes_dispatch_back():
    info = Manifest.from_dict(_manifest(
        output={"mode": "file", "name": "net.onnx"}, adapter="mlp", opset=17,
        class_names_source="checkpoint", inputs=[{"name": "images", "shape": [1, 3, 32, 32]}],
        source={"path": "/ckpt.pth", "training": {"data": "digits", "config": {}}}))
    assert info.output.mode == "file" and info.output.name == "net.onnx"
    assert info.adapter == "mlp" and info.opset == 17 and info.class_names_source == "checkpoint"
    assert info.inputs[0]["name"] == "images" and info.source.training["data"] == "digits"
    bare = Manifest.from_dict(_manifest(source={"path": None, "training": None}))
    assert bare.output.mode == "directory" and bare.source.training == {} and bare.inputs == ()
    assert info.dispatch.to_dict() == _manifest()["dispatch"]


def test_version_1_manifests_still_load(tmp_path):
    old = _manifest()
    del old["schema_version"]
    old["schema"] = 1
    (tmp_path / artifacts.MANIFEST_NAME).write_text(json.dumps(old))
    art = artifacts.load_artifact(tmp_path)
    assert art.info.schema_version == 1 and art.info.files["onnx"].path == "model.onnx"


@pytest.mark.parametrize("header, message", [
    ({"schema": "dyt-edge.manifest", "schema_version": SCHEMA_VERSION + 1},
     "reads up to"),
    ({"schema": SCHEMA_VERSION + 5}, "upgrade dyt-edge"),
    ({"schema": "dyt-edge.bench", "schema_version": 1}, "not a dyt-edge manifest"),
    ({}, "not a dyt-edge manifest"),
])
def test_unreadable_headers_are_refused_with_one_line(tmp_path, header, message):
    m = {k: v for k, v in _manifest().items() if k not in ("schema", "schema_version")}
    (tmp_path / artifacts.MANIFEST_NAME).write_text(json.dumps({**m, **header}))
    with pytest.raises(ArtifactError, match=message) as err:
        artifacts.load_artifact(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"files": {"onnx": {"bytes": 3}}}, "without a path"),
    ({"model": {}}, "model input size"),
    ({"files": ["model.onnx"]}, "'files'"),
    ({"batch": "eight"}, "invalid batch"),
    ({"build": {"target": "openvino"}}, "without target and precision"),
])
def test_malformed_manifests_are_refused_by_the_typed_view(change, message):
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_dict(_manifest(**change))


def test_a_build_record_is_typed_and_keeps_the_rest():
    info = Manifest.from_dict(_manifest(build={"target": "openvino", "precision": "int8",
                                               "parent": "..", "weights": "int8"}))
    assert info.is_build and info.built_precision == "int8" and info.build.parent == ".."
    assert info.build.record["weights"] == "int8"


def test_schema_version_reads_both_header_forms():
    assert schema_version({"schema": 1}) == 1
    assert schema_version({"schema": "dyt-edge.manifest", "schema_version": 2}) == 2


# -- no reader indexes the JSON itself --------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("dyt_edge", "exporters", "runtimes", "calibration", "benchmarks")
TYPED_VIEW = "dyt_edge/manifest.py"
WRITERS: frozenset[tuple[str, str]] = frozenset()
"""(file, function) pairs allowed to index a manifest by key: code that writes one and must
read back what it wrote. None does today (writers build a dict and store keys into it); add
one here only for such a writer."""


def _is_manifest(node: ast.AST, bound: set[str]) -> bool:
    """``X.manifest``, ``X.raw`` (the typed view's JSON) or a name bound to a manifest."""
    if isinstance(node, ast.Attribute):
        return node.attr in ("manifest", "raw")
    return isinstance(node, ast.Name) and node.id in bound


def manifest_reads(source: str) -> list[tuple[int, str]]:
    """``(line, function)`` of every read of a manifest by key in ``source``: a subscript or a
    ``.get`` on ``art.manifest``, on ``info.raw``, on a variable or parameter named
    ``manifest``, or on a name a function binds to one of those (``m = art.manifest``)."""
    reads: dict[int, str] = {}
    tree = ast.parse(source)
    # the module, then every function, outer ones first: a read is named by its innermost
    scopes = [tree] + [n for n in ast.walk(tree)
                       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        bound = {"manifest"}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and _is_manifest(node.value, bound):
                bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(scope):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                target = node.value
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "get"):
                target = node.func.value
            else:
                continue
            if _is_manifest(target, bound):
                reads[node.lineno] = getattr(scope, "name", "<module>")
    return sorted(reads.items())


def test_the_scan_finds_string_key_reads():
    found = manifest_reads(
        "def a(art):\n    return art.manifest['model']\n"
        "def b(art):\n    m = art.manifest\n    return m.get('files', {})\n"
        "def c(manifest):\n    return manifest.get('dispatch') or {}\n"
        "def d(info):\n    return info.raw['build']\n"
        "def e(art):\n    m = {**art.manifest}\n    m['build'] = 1\n    return art.info.files\n")
    assert found == [(2, "a"), (5, "b"), (7, "c"), (9, "d")]


def test_no_library_module_reads_a_manifest_by_string_keys():
    """Readers use the typed view (``Artifact.info``, ``Manifest``); only
    ``dyt_edge/manifest.py`` reads the JSON, so a renamed or retyped key is changed in one
    place (docs/manifest.md)."""
    offenders = []
    for top in LIBRARY:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == TYPED_VIEW:
                continue
            for line, function in manifest_reads(path.read_text(encoding="utf-8")):
                if (rel, function) not in WRITERS:
                    offenders.append(f"{rel}:{line} ({function})")
    assert not offenders, ("read through Artifact.info / Manifest instead of indexing the "
                           "manifest: " + ", ".join(offenders))
