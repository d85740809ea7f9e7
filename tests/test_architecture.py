"""Package layout and dependency direction."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["dyt_edge.exporters", "dyt_edge.runtimes",
                                  "dyt_edge.calibration"])
def test_side_folders_install_as_subpackages(name):
    module = importlib.import_module(name)
    folder = name.split(".")[-1]
    assert Path(module.__file__).parent == ROOT / folder


def test_no_generic_top_level_packages_are_importable():
    for generic in ("exporters", "runtimes", "calibration"):
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec('{generic}') is not None)"
        proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True)
        assert proc.returncode == 0, f"'{generic}' is importable as a top-level package"


def test_config_and_errors_import_without_torch():
    code = ("import sys; import dyt_edge, dyt_edge.config, dyt_edge.errors; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            found.add(("." * node.level) + mod)
            found.update(("." * node.level) + (mod + "." if mod else "") + a.name
                         for a in node.names)
    return found


@pytest.mark.parametrize("source", ["dyt_edge/model", "dyt_edge/config.py",
                                    "dyt_edge/checkpoint.py", "dyt_edge/flops.py"])
def test_model_knows_nothing_of_exporters_runtimes_or_cli(source):
    """Dependencies point one way: the model never imports exporters, runtimes or the CLI."""
    target = ROOT / source
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    banned = ("exporters", "runtimes", "calibration", "cli")
    for f in files:
        for name in _imports(f):
            parts = name.lstrip(".").split(".")
            assert not any(p in banned for p in parts), f"{f.name} imports {name}"
