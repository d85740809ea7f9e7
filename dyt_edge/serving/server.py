"""``dyt-edge serve``: the bundled Triton server on a model repository, started, waited for
and stopped cleanly.

:class:`TritonServer` is a context manager (the CLI, the tests and the load benchmark use
it): ``start()`` checks the repository, the ports and the server installation, then starts
``tritonserver`` in a process group of its own, listening on ``host`` only (127.0.0.1 unless
asked otherwise: a local try-out opens no port to the network); ``wait_ready()`` polls
``/v2/health/ready`` until every model loaded, or reports in one line why the server or a
model failed; ``stop()`` asks the server to exit (SIGINT: it drains in-flight requests and
unloads its models, which ends their Python-backend stubs), kills whatever is left of the
process group after a grace period, and removes the stubs' shared-memory regions such a kill
leaves behind, so the ports are free and no process remains.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ArtifactError, DytEdgeError, UsageError
from . import tritonserver

EXIT_TIMEOUT_S = 10
"""How long Triton may drain in-flight requests when asked to stop."""
KILL_GRACE_S = 5
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


class ServeError(DytEdgeError):
    """The server did not start, or a model in the repository did not load."""


@dataclass(frozen=True)
class ServeOptions:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    ready_timeout_s: float = 300.0
    log_file: Optional[Path] = None
    """Keep the server's log here (default: a temporary file, removed on stop)."""

    def checked(self) -> "ServeOptions":
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                 "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            if not 1 <= int(port) <= 65535:
                raise UsageError(f"{flag} {port} is not a port number", "pass 1-65535")
        if len(set(ports.values())) != len(ports):
            raise UsageError("--http-port, --grpc-port and --metrics-port must differ")
        if self.ready_timeout_s <= 0:
            raise UsageError("--timeout must be positive")
        return self


def models_in(repository: Path) -> dict[str, str]:
    """The repository's models and the backend each declares, checked for the bundled
    server (Python backend only); one-line errors for what would not load."""
    repo = Path(repository)
    if not repo.is_dir():
        raise ArtifactError(f"model repository {repo} does not exist",
                            "write one with `dyt-edge package ART --for triton -o DIR`")
    models: dict[str, str] = {}
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = d / "config.pbtxt"
        if not config.is_file():
            raise ArtifactError(f"{d} has no config.pbtxt, so it is not a Triton model",
                                "remove it from the repository, or package it again")
        text = config.read_text(errors="replace")
        found = re.search(r'^\s*(backend|platform)\s*:\s*"([^"]+)"', text, re.M)
        backend = found.group(2) if found else "?"
        if backend != "python":
            raise ArtifactError(
                f"model '{d.name}' uses the {backend} backend; the Triton of the serve extra "
                "has only the Python backend",
                f"package it with --backend python, or serve the repository with NVIDIA's "
                f"Triton container (docker run --rm -p8000:8000 -p8001:8001 -v "
                f"{repo.resolve()}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
                "tritonserver --model-repository=/models)")
        models[d.name] = backend
    if not models:
        raise ArtifactError(f"model repository {repo} holds no model",
                            "write one with `dyt-edge package ART --for triton -o DIR`")
    return models


def check_port_free(host: str, port: int, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As servers bind: connections a previous server closed (TIME_WAIT) do not hold the
        # port, a listening socket does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use",
                                 f"stop what listens there, or pass another {flag}") from None
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})",
                             "pass --host with an address of this machine") from None


def load_failure(log: str) -> Optional[str]:
    """The first reason in a Triton log why a model or the server failed, in one line."""
    patterns = (r"failed to load '([^']+)' version \d+: (.+?)(?:\\n|$)",
                r"(Socket '[^']+' already in use)",
                r"error: creating server: (.+)")
    for pattern in patterns:
        found = re.search(pattern, log, re.M)
        if found:
            if len(found.groups()) == 2:
                return f"model '{found.group(1)}' did not load: {found.group(2).strip()}"
            return found.group(1).strip()
    return None


def _probe_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def url_host(host: str) -> str:
    h = _probe_host(host)
    return f"[{h}]" if ":" in h else h


class TritonServer:
    """One ``tritonserver`` process (and its stubs) serving a repository."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options.checked()
        self.process: Optional[subprocess.Popen] = None
        self.workspace: Optional[Path] = None
        self.models: dict[str, str] = {}
        self._shm_before: set[str] = set()
        self._log_handle = None

    # -- addresses ----------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{url_host(self.options.host)}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{url_host(self.options.host)}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{url_host(self.options.host)}:{self.options.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.options.log_file or (self.workspace or Path(".")) / "tritonserver.log"

    # -- life cycle -----------------------------------------------------------------------------
    def command(self, backends: Path, binary: Path) -> list[str]:
        o = self.options
        return [str(binary), f"--model-repository={Path(o.repository).resolve()}",
                f"--backend-directory={backends}", "--disable-auto-complete-config",
                f"--http-address={o.host}", f"--http-port={o.http_port}",
                f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
                f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}",
                "--allow-gpu-metrics=false", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
                "--strict-readiness=true"]

    def start(self) -> "TritonServer":
        o = self.options
        self.models = models_in(o.repository)
        dist = tritonserver.find_distribution()
        for flag, port in (("--http-port", o.http_port), ("--grpc-port", o.grpc_port),
                           ("--metrics-port", o.metrics_port)):
            check_port_free(o.host, port, flag)
        self.workspace = Path(tempfile.mkdtemp(prefix="dyt-edge-serve-"))
        try:
            backends = tritonserver.prepare_backends(dist, self.workspace)
            self._shm_before = _shm_regions()
            self._log_handle = open(self.log_path, "wb")
            self.process = subprocess.Popen(
                self.command(backends, dist.binary), stdin=subprocess.DEVNULL,
                stdout=self._log_handle, stderr=subprocess.STDOUT,
                env=tritonserver.server_environment(dist), start_new_session=True)
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Whether the server we started answers its readiness probe. A direct connection to
        its own address and port (never a proxy from the environment, never another host)."""
        conn = http.client.HTTPConnection(_probe_host(self.options.host),
                                          self.options.http_port, timeout=2)
        try:
            conn.request("GET", "/v2/health/ready")
            return conn.getresponse().status == 200
        except (http.client.HTTPException, OSError):
            return False
        finally:
            conn.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        while True:
            if not self.alive():
                reason = load_failure(self.log()) or "the server exited while starting"
                self.stop()
                raise ServeError(f"Triton did not start: {reason}",
                                 "see the server log (re-run with --log FILE)")
            if self.ready():
                return
            if time.monotonic() > deadline:
                reason = load_failure(self.log())
                self.stop()
                raise ServeError(f"Triton was not ready after {self.options.ready_timeout_s:g}"
                                 f" s{': ' + reason if reason else ''}",
                                 "pass a longer --timeout, or see the log (--log FILE)")
            time.sleep(0.25)

    def stop(self) -> Optional[int]:
        """Stop the server and every process it started; returns its exit code."""
        code = None
        p = self.process
        if p is not None:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGINT)
                    code = p.wait(timeout=EXIT_TIMEOUT_S + KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(p.pid)
            code = p.wait() if code is None else code
            self.process = None
            for name in _shm_regions() - self._shm_before:  # left by killed stubs
                (SHM_DIR / name).unlink(missing_ok=True)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None
        return code

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def group_members(pgid: int) -> list[int]:
    """Processes still in process group ``pgid`` (read from /proc)."""
    members = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    members.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _shm_regions() -> set[str]:
    try:
        return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(SHM_PREFIX)}
    except OSError:
        return set()


__all__ = ["ServeError", "ServeOptions", "TritonServer", "check_port_free", "group_members",
           "load_failure", "models_in"]
