"""``dyt-edge package``: an artifact as a model repository for Triton, OVMS or KServe. The
library is :mod:`dyt_edge.serving.package`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import JsonOut, check_json_out, emit_json, human_console

TRITON_PANEL = "Triton"
KSERVE_PANEL = "KServe"


def package(
    artifact: Annotated[Optional[Path], typer.Argument(
        help="Artifact directory (or a model file in it). Default: the most recent export "
        "under dyt-edge-out/.", show_default=False)] = None,
    server: Annotated[Optional[str], typer.Option(
        "--for", show_default=False,
        help="Server to package for: triton | ovms | kserve (required).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", show_default=False,
        help="Model repository directory (other models in it are kept). "
        "\\[default: dyt-edge-out/repository-<server>]")] = None,
    name: Annotated[Optional[str], typer.Option(
        "--name", show_default=False,
        help="Model name on the server. \\[default: the artifact directory's name]")] = None,
    max_batch: Annotated[Optional[int], typer.Option(
        "--max-batch", show_default=False, rich_help_panel=TRITON_PANEL,
        help="Largest batch the server forms from requests (max_batch_size). \\[default: the "
        "TensorRT profile's maximum, else 8; a static-batch artifact is not batched]")] = None,
    instances: Annotated[int, typer.Option(
        "--instances", rich_help_panel=TRITON_PANEL,
        help="Model instances (instance_group count); CPU instances share the cores.")] = 1,
    backend: Annotated[str, typer.Option(
        "--backend", rich_help_panel=TRITON_PANEL,
        help="python: the artifact through dyt-edge's own runtime (any artifact; the one "
        "backend the serve extra's Triton has) | native: Triton's ONNX Runtime or TensorRT "
        "backend (NVIDIA's containers).")] = "python",
    queue_delay: Annotated[int, typer.Option(
        "--queue-delay", rich_help_panel=TRITON_PANEL,
        help="Microseconds the dynamic batcher may wait to merge requests.")] = 1000,
    bench: Annotated[Optional[Path], typer.Option(
        "--bench", show_default=False, rich_help_panel=TRITON_PANEL,
        help="A `dyt-edge bench --json` report of this artifact: the batch sizes within 90% "
        "of its best throughput become the preferred batch sizes. \\[default: "
        "<artifact>/bench/bench.json if present]")] = None,
    kserve_server: Annotated[Optional[str], typer.Option(
        "--kserve-server", show_default=False, rich_help_panel=KSERVE_PANEL,
        help="Serving runtime under KServe: triton | ovms. \\[default: ovms for an OpenVINO "
        "artifact, else triton]")] = None,
    storage_uri: Annotated[Optional[str], typer.Option(
        "--storage-uri", show_default=False, rich_help_panel=KSERVE_PANEL,
        help="Where the cluster reads the repository (s3://, gs://, pvc://...); required "
        "with --for kserve.")] = None,
    json_out: JsonOut = None,
) -> None:
    """Write a model repository that serves an artifact on Triton, OVMS or KServe.

    Triton: <name>/config.pbtxt (tensors, types and dims from the manifest, dynamic batching,
    instance groups), <name>/labels.txt and <name>/1/. OVMS: <name>/1/model.xml|bin and
    config.json with the artifact's inference precision. KServe: the Triton or OVMS
    repository plus an InferenceService manifest. Clients send preprocessed images (the
    artifact's preprocessing, recorded in <name>/dyt_edge_package.json).
    """
    from dyt_edge.artifacts import resolve_artifact
    from dyt_edge.errors import UsageError
    from dyt_edge.serving.package import PackageOptions, package_artifact

    if server is None:
        raise UsageError("--for is required", "pass --for triton, --for ovms or --for kserve")
    options = PackageOptions(server=server, output=output, name=name, max_batch=max_batch,
                             instances=instances, backend=backend, queue_delay_us=queue_delay,
                             bench=bench, kserve_server=kserve_server,
                             storage_uri=storage_uri).checked()
    json_out = check_json_out(json_out, "package.json")
    console = human_console(json_out)
    art, picked = resolve_artifact(artifact)
    if picked:
        console.print(f"using the most recent export: {art.summary()}", highlight=False)
    result = package_artifact(art, options)
    render(result, console)
    emit_json(json_out, result.to_dict())


def render(result: Any, console: Any) -> None:
    r = result.record
    where = result.repository / result.name
    console.print(f"wrote {where} ({result.server}"
                  + (f", {r['triton']['backend']} backend" if "triton" in r else "") + ")",
                  highlight=False)
    for note in result.notes:
        style = "yellow" if note.startswith("warning") else "dim"
        console.print(note, style=style, highlight=False)
    if "kserve" in r:
        console.print(f"KServe: upload {result.repository} to {r['kserve']['storage_uri']}, "
                      f"then: kubectl apply -f {result.repository / r['kserve']['file']}",
                      highlight=False)
    elif result.server == "triton" and r["triton"]["backend"] == "python":
        console.print(f"try it: dyt-edge serve {result.repository}", highlight=False)
