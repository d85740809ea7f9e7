"""The Triton Inference Server of the ``serve`` extra, found and made ready to run.

The ``tritonserver`` package on the package index is an empty placeholder. The
``nvidia-pytriton`` wheel (0.7.0 checked: Triton 2.51.0, a manylinux_2_35 x86_64 wheel) bundles a
real server binary with one backend, Python. What dyt-edge relies on, read from that wheel:

* the binary is ``pytriton/tritonserver/bin/tritonserver``; the libraries it links are in
  ``nvidia_pytriton.libs/`` beside the ``pytriton`` package (added to ``LD_LIBRARY_PATH``);
* the Python backend is ``pytriton/tritonserver/backends/python/`` (``libtriton_python.so``,
  ``triton_python_backend_utils.py``), and its stub, one build per Python minor version, is in
  ``pytriton/tritonserver/python_backend_stubs/<3.X>/``. The backend runs the stub found at
  ``<backend directory>/python/triton_python_backend_stub``, so :func:`prepare_backends` links
  the three files for this interpreter's version into a private backend directory (the wheel
  itself is never modified);
* the stub embeds the shared ``libpython3.X.so.1.0`` of the system and finds packages through
  the first ``python3`` on ``PATH``: the server is started with this interpreter's directory
  (a virtual environment's ``bin``) first on ``PATH``, so the stub imports what this
  environment has installed (dyt-edge, OpenVINO, ...). Without a system libpython of the
  same minor version the stub cannot start (:func:`availability` says so, with the package to
  install);
* the native ONNX Runtime, OpenVINO and TensorRT backends are not in the wheel: they come
  with NVIDIA's Triton containers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DytEdgeError

INSTALL = 'pip install "dyt-edge[serve]"'
STUB = "triton_python_backend_stub"


class ServeUnavailable(DytEdgeError):
    """The serve extra (the bundled Triton server) is missing or cannot run here."""


@dataclass(frozen=True)
class Distribution:
    """Where the bundled server's files are."""

    root: Path
    """The ``pytriton/tritonserver`` folder."""
    libs: Path
    version: str

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    def stub(self, python: str = f"{sys.version_info[0]}.{sys.version_info[1]}") -> Path:
        return self.root / "python_backend_stubs" / python / STUB


def find_distribution() -> Distribution:
    """The bundled server, or :class:`ServeUnavailable` naming the install command."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeUnavailable("the serve extra is not installed (no Triton server found)",
                               INSTALL)
    package = Path(list(spec.submodule_search_locations)[0])
    try:
        from importlib.metadata import version

        ver = version("nvidia-pytriton")
    except Exception:  # noqa: BLE001 - a version is only reported
        ver = "?"
    dist = Distribution(package / "tritonserver", package.parent / "nvidia_pytriton.libs", ver)
    if not dist.binary.is_file():
        raise ServeUnavailable(f"nvidia-pytriton {ver} has no tritonserver binary at "
                               f"{dist.binary}", f"reinstall it: {INSTALL}")
    return dist


def missing_libraries(binary: Path, libs: Path) -> list[str]:
    """The shared libraries ``binary`` needs that the loader cannot find (``ldd``)."""
    env = dict(os.environ, LD_LIBRARY_PATH=_library_path(libs))
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []  # no ldd: the server's own start-up error will say it
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def availability() -> tuple[bool, str]:
    """Whether ``dyt-edge serve`` can start a server here: ``(ok, what / why not)``."""
    try:
        dist = find_distribution()
        check_stub(dist)
    except ServeUnavailable as exc:
        return False, str(exc)
    return True, f"Triton (nvidia-pytriton {dist.version}), Python backend"


def check_stub(dist: Distribution) -> Path:
    """The Python-backend stub for this interpreter, checked to be loadable."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist.stub(python)
    if not stub.is_file():
        have = sorted(p.name for p in (dist.root / "python_backend_stubs").glob("3.*"))
        raise ServeUnavailable(f"nvidia-pytriton {dist.version} has no Python-backend stub for "
                               f"Python {python} (it has {', '.join(have) or 'none'})",
                               "run dyt-edge on one of those Python versions")
    missing = missing_libraries(stub, dist.libs) + missing_libraries(dist.binary, dist.libs)
    if missing:
        fix = (f"install the system's shared Python library (Debian/Ubuntu: apt install "
               f"libpython{python})" if any(m.startswith("libpython") for m in missing)
               else "reinstall nvidia-pytriton")
        raise ServeUnavailable(f"the Triton server cannot load {', '.join(sorted(missing))}",
                               fix)
    return stub


def prepare_backends(dist: Distribution, workspace: Path) -> Path:
    """A backend directory in ``workspace`` whose Python backend runs this interpreter's stub;
    returns it (``--backend-directory``)."""
    stub = check_stub(dist)
    backends = workspace / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for src in (dist.python_backend / "libtriton_python.so",
                dist.python_backend / "triton_python_backend_utils.py", stub):
        os.symlink(src, python / src.name)
    return backends


def _library_path(libs: Path, current: Optional[str] = None) -> str:
    current = os.environ.get("LD_LIBRARY_PATH", "") if current is None else current
    return ":".join(p for p in (current, str(libs)) if p)


def server_environment(dist: Distribution) -> dict[str, str]:
    """The server's environment: the bundled libraries found, and this interpreter's
    environment first on ``PATH`` for the Python-backend stub."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = _library_path(dist.libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


__all__ = ["Distribution", "INSTALL", "ServeUnavailable", "availability", "check_stub",
           "find_distribution", "prepare_backends", "server_environment"]
