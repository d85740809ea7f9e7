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


def test_import_contracts_hold():
    """The model knows nothing of exporters/runtimes/CLI; runtimes know nothing of exporters."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter missing: pip install -e '.[dev]'"
    proc = subprocess.run([lint, str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
