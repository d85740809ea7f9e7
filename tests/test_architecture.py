"""Package layout and the one dependency direction, read from the code's own imports.

Layers, each importing only itself and the layers below it:

    api       ``dyt_edge`` (the package's lazy public names), ``dyt_edge.cli``, ``__main__``
    commands  build, validate, bench, train, demo, inspection, visualize, baseline, serving,
              checks
    exporters ``dyt_edge.exporters`` (ONNX export, the builders per target)
    calibration ``dyt_edge.calibration`` (lower precisions per target)
    runtimes  ``dyt_edge.runtimes`` (one runner per backend)
    core      everything else in ``dyt_edge`` (errors, config, artifacts, checkpoint, model,
              data, flops, metrics, reports, ...); the model imports only config and errors

Every import counts, at module level or inside a function, and so does a string naming a
module (a lazy registry such as ``"dyt_edge.runtimes.torch_runtime:TorchRuntime"``): a lazy
import may save start-up time, it may not hide a dependency. On top of the direction, the
module graph has no cycle.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"dyt_edge": "dyt_edge", "exporters": "dyt_edge.exporters",
           "runtimes": "dyt_edge.runtimes", "calibration": "dyt_edge.calibration"}
COMMANDS = ("build", "validate", "bench", "train", "demo", "inspection", "visualize",
            "baseline", "serving", "checks")
LAYERS = ("core", "runtimes", "calibration", "exporters", "commands", "api")
MODEL_MAY_IMPORT = ("dyt_edge.model", "dyt_edge.config", "dyt_edge.errors")


@lru_cache(maxsize=None)
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([package, *parts])] = (path, is_package)
    return found


def _absolute(module: str, is_package: bool, target: str, level: int) -> str:
    if level == 0:
        return target
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


@lru_cache(maxsize=None)
def graph() -> dict[str, frozenset[str]]:
    """Module -> the dyt-edge modules it imports (anywhere in it) or names in a string."""
    known = modules()
    edges = {}
    for name, (path, is_package) in known.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.module or "", node.level)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                ref = node.value.split(":")[0]
                if ref.startswith("dyt_edge.") and ref in known:
                    found.add(ref)
        edges[name] = frozenset(m for m in found if m in known and m != name)
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "dyt_edge" or parts[1:2] in (["cli"], ["__main__"]):
        return "api"
    if parts[1] in ("exporters", "calibration", "runtimes"):
        return parts[1]
    if parts[1] in COMMANDS:
        return "commands"
    return "core"


def test_every_module_is_seen():
    names = set(modules())
    for must in ("dyt_edge.cli", "dyt_edge.build", "dyt_edge.exporters.registry",
                 "dyt_edge.runtimes.tensorrt.runtime", "dyt_edge.calibration.onnx_qdq",
                 "dyt_edge.model.vit"):
        assert must in names, must
    assert graph()["dyt_edge.build"], "the import reader found no imports in build.py"


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down(module):
    rank = LAYERS.index(layer(module))
    upward = sorted(f"{m} ({layer(m)})" for m in graph()[module]
                    if LAYERS.index(layer(m)) > rank)
    assert not upward, f"{module} ({layer(module)}) imports {', '.join(upward)}"


def test_the_model_knows_only_its_config():
    for module, imports in graph().items():
        if module.startswith("dyt_edge.model"):
            bad = sorted(m for m in imports if not m.startswith(MODEL_MAY_IMPORT))
            assert not bad, f"{module} imports {', '.join(bad)}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_reader_sees_function_bodies_and_strings():
    """The checks above would pass vacuously if lazy imports were invisible."""
    edges = graph()
    # runtimes/__init__ names its backends as "module:Class" strings
    assert "dyt_edge.runtimes.torch_runtime" in edges["dyt_edge.runtimes"]
    # the PyTorch runtime imports the checkpoint reader inside a method
    torch_runtime = edges["dyt_edge.runtimes.torch_runtime"]
    assert any(m.startswith("dyt_edge.checkpoint") for m in torch_runtime)


@pytest.mark.parametrize("name", ["dyt_edge.exporters", "dyt_edge.runtimes",
                                  "dyt_edge.calibration"])
def test_side_folders_install_as_subpackages(name):
    module = importlib.import_module(name)
    folder = name.split(".")[-1]
    assert Path(module.__file__).parent == ROOT / folder


def test_every_package_is_installed():
    """Each folder with an ``__init__.py`` is listed in pyproject's packages (a wheel would
    leave it out otherwise)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {m for m, (_, is_package) in modules().items() if is_package}
    assert packages - listed == set()


def test_no_generic_top_level_packages_are_importable():
    for generic in ("exporters", "runtimes", "calibration"):
        code = ("import importlib.util, sys; "
                f"sys.exit(importlib.util.find_spec('{generic}') is not None)")
        proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True)
        assert proc.returncode == 0, f"'{generic}' is importable as a top-level package"


def test_config_and_errors_import_without_torch():
    code = ("import sys; import dyt_edge, dyt_edge.config, dyt_edge.errors; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_library_modules_stay_small():
    """One job per module: none over 500 lines."""
    big = sorted(f"{p.relative_to(ROOT)} ({n})" for p, _ in modules().values()
                 if (n := len(p.read_text().splitlines())) > 500)
    assert not big, "over 500 lines: " + ", ".join(big)


def test_nothing_cites_files_outside_the_repository():
    for folder in (*FOLDERS, "tests", "benchmarks", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and path.is_file():
                text = path.read_text()
                for name in ("TARGETS" + ".md", "DYT-SPEC" + ".md"):
                    assert name not in text, f"{path.relative_to(ROOT)} cites {name}"
