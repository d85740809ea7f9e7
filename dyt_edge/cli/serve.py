"""``dyt-edge serve``: a local Triton on a packaged repository until Ctrl-C / SIGTERM. The
library is :mod:`dyt_edge.serving.server`."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def serve(
    repository: Annotated[Path, typer.Argument(
        help="Model repository written by `dyt-edge package --for triton`.",
        show_default=False)],
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; 0.0.0.0 opens the ports to the network.")]
    = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", help="KServe-v2 HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="KServe-v2 gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", help="Prometheus metrics port.")] = 8002,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds to wait for every model to load.")] = 300.0,
    log: Annotated[Optional[Path], typer.Option(
        "--log", show_default=False,
        help="Keep the server's log in this file. \\[default: a temporary file, removed on "
        "exit]")] = None,
) -> None:
    """Serve a model repository on a local Triton Inference Server (the serve extra).

    Starts the server, waits until every model is ready, prints the addresses and a request to
    try, and runs until Ctrl-C or SIGTERM; then it stops the server and every process it
    started. Listens on 127.0.0.1 unless --host says otherwise.
    """
    from rich.console import Console

    from dyt_edge.serving.server import ServeError, ServeOptions, TritonServer

    console = Console()
    server = TritonServer(ServeOptions(
        repository=repository, host=host, http_port=http_port, grpc_port=grpc_port,
        metrics_port=metrics_port, ready_timeout_s=timeout, log_file=log))
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with console.status(f"starting Triton on {repository}"):
            server.start()
            server.wait_ready()
        describe(server, console)
        while not stop.wait(0.5):
            if not server.alive():
                from dyt_edge.serving.server import load_failure

                reason = load_failure(server.log()) or "see the log (--log FILE)"
                raise ServeError(f"Triton exited unexpectedly: {reason}")
        console.print("stopping Triton", highlight=False)
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    console.print("stopped", highlight=False)


def _record(repository: Path, model: str) -> dict[str, Any]:
    try:
        from dyt_edge.serving.package import RECORD_FILE

        return json.loads((repository / model / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}


def describe(server: Any, console: Any) -> None:
    o = server.options
    console.print(f"Triton is ready: {', '.join(server.models)}", highlight=False)
    console.print(f"  HTTP     http://{server.http_url}  (KServe v2)", highlight=False)
    console.print(f"  gRPC     {server.grpc_url}", highlight=False)
    console.print(f"  metrics  {server.metrics_url}", highlight=False)
    if o.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"  listening on {o.host}: reachable from the network", style="yellow",
                      highlight=False)
    model = next(iter(server.models))
    record = _record(Path(o.repository), model)
    console.print("try:", highlight=False)
    console.print(f"  curl -s http://{server.http_url}/v2/models/{model}", highlight=False)
    inputs = record.get("inputs") or []
    if inputs:
        image = inputs[0]
        batched = (record.get("triton") or {}).get("max_batch_size", 0) > 0
        shape = [1, *image["dims"]] if batched else list(image["dims"])
        console.print(
            "  python -c \"import numpy as np, tritonclient.http as t; "
            f"c = t.InferenceServerClient('{server.http_url}'); "
            f"x = t.InferInput('{image['name']}', {shape}, '{image['datatype']}'); "
            f"x.set_data_from_numpy(np.zeros({tuple(shape)}, np.float32)); "
            f"r = c.infer('{model}', [x]); print(r.as_numpy('logits').argmax(1))\"",
            highlight=False, markup=False, soft_wrap=True)
    console.print("Ctrl-C stops the server.", highlight=False)
