"""``dyt-edge package``: a model repository for Triton, OVMS or KServe from one artifact.

:func:`package_artifact` checks every option before it writes anything, builds the model
folder under a hidden staging name beside the repository and renames it into place, so a
failed run leaves the repository as it was. A repository may hold several models: packaging
replaces only ``<repository>/<name>`` (and the model's entry in OVMS's ``config.json``), and
only when dyt-edge wrote it (its ``dyt_edge_package.json`` says so).

DyT-aware checks (:func:`dispatch_notes`): a server that batches requests merges unrelated
images into one batch. A ``topk`` graph computes, per batch, as many tokens per image as the
busiest image needs, so merged traffic pays for its busiest image; the default ``pack``
export computes exactly the batch's active tokens, so it keeps the saving under batching.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .._version import __version__
from ..artifacts import (DEFAULT_ROOT, RETIRED_PREFIX, STAGING_PREFIX, Artifact,
                         atomic_write_bytes, create_missing_dirs, existing_ancestor,
                         remove_created_dirs, utc_now)
from ..errors import ArtifactError, UsageError
from ..reports import report_header, to_json
from . import kserve, ovms, triton
from .spec import ServedModel, served_model

SERVERS = ("triton", "ovms", "kserve")
RECORD_FILE = "dyt_edge_package.json"
"""Written into every model folder dyt-edge packages: what was packaged, how, and why."""
RECORD_KIND = "package"
RECORD_SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
PREFERRED_WITHIN = 0.9
"""A benchmarked batch size is preferred when its throughput is within this share of the
best one measured (at or below ``max_batch_size``)."""


@dataclass(frozen=True)
class PackageOptions:
    server: str
    """``triton``, ``ovms`` or ``kserve``."""
    output: Optional[Path] = None
    """The repository; default ``dyt-edge-out/repository-<server>``."""
    name: Optional[str] = None
    max_batch: Optional[int] = None
    instances: int = 1
    backend: str = "python"
    """Triton only: ``python`` or ``native``."""
    queue_delay_us: int = triton.DEFAULT_QUEUE_DELAY_US
    bench: Optional[Path] = None
    """A ``dyt-edge bench --json`` report of this artifact (default: ``<artifact>/bench/
    bench.json`` when there is one): its throughput per batch size picks the preferred batch
    sizes."""
    kserve_server: Optional[str] = None
    """KServe only: ``triton`` or ``ovms`` (default: ovms for an OpenVINO artifact, else
    triton)."""
    storage_uri: Optional[str] = None

    def checked(self) -> "PackageOptions":
        from ..config import check_choice

        check_choice("server", self.server, SERVERS)
        check_choice("backend", self.backend, triton.BACKENDS)
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise UsageError(f"--name {self.name!r} is not a valid model name",
                             "use letters, digits, '_', '-' and '.', starting with a letter "
                             "or digit, at most 63 characters")
        if self.instances <= 0:
            raise UsageError(f"--instances must be a positive integer, got {self.instances}")
        if self.queue_delay_us < 0:
            raise UsageError("--queue-delay must not be negative")
        if self.server == "kserve":
            kserve.check_storage_uri(self.storage_uri)
            if self.kserve_server is not None:
                check_choice("KServe server", self.kserve_server, kserve.SERVERS)
        elif self.storage_uri is not None or self.kserve_server is not None:
            raise UsageError("--storage-uri and --kserve-server are for --for kserve")
        if self.server == "ovms" and self.backend != "python":
            raise UsageError("--backend is for --for triton (OVMS runs the IR itself)")
        return self


@dataclass
class PackageResult:
    repository: Path
    name: str
    server: str
    """What was written: ``triton``, ``ovms``, or ``kserve`` (with :attr:`kserve_server`)."""
    files: list[str]
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.record, "repository": str(self.repository), "files": self.files}


def default_name(artifact: Artifact) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", artifact.path.resolve().name).strip("-.")
    return name[:63] if name and NAME_PATTERN.match(name[:63]) else "dyt"


def dispatch_notes(spec: ServedModel, batches: bool) -> list[str]:
    """What the artifact's dispatch means on a server that merges requests (``batches``)."""
    mode = spec.dispatch
    if mode == "topk" and batches:
        return ["warning: this is a `topk` export and the server batches requests: a merged "
                "batch computes, for every image, as many tokens as its busiest image keeps, "
                "so unrelated traffic pays for its busiest image. Export with the default "
                "`pack` dispatch (`dyt-edge export CKPT`) to keep the saving under batching, "
                "or package with --max-batch 1"]
    if mode in ("complete", "mask"):
        return [f"note: a `{mode}` export computes every token; it skips no work on any "
                "server"]
    return []


def preferred_batch_sizes(artifact: Artifact, bench: Optional[Path],
                          max_batch: int) -> tuple[tuple[int, ...], Optional[str]]:
    """Batch sizes the dynamic batcher should prefer, from a bench report of this artifact:
    ``(sizes, where they came from)``; none without a report."""
    path = bench if bench is not None else artifact.path / "bench" / "bench.json"
    if not path.is_file():
        if bench is not None:
            raise UsageError(f"--bench {bench} does not exist",
                             "pass a report written by `dyt-edge bench ART --json FILE`")
        return (), None
    try:
        report = json.loads(path.read_text())
        measured_path = Path(report["artifact"]["path"]).resolve()
        rows = [(int(r["batch"]), float(r["dyt"]["images_per_s"])) for r in report["results"]
                if r.get("dyt")]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not a dyt-edge bench report",
                         "pass a report written by `dyt-edge bench ART --json FILE`") from None
    if measured_path != artifact.path.resolve():
        raise UsageError(f"{path} measured {measured_path}, not {artifact.path}",
                         "pass the bench report of this artifact, or none")
    rows = [(b, ips) for b, ips in rows if 1 < b <= max_batch]
    if not rows:
        return (), str(path)
    best = max(ips for _, ips in rows)
    return tuple(sorted(b for b, ips in rows if ips >= PREFERRED_WITHIN * best)), str(path)


def _repository(options: PackageOptions) -> Path:
    repo = options.output or Path(DEFAULT_ROOT) / f"repository-{options.server}"
    if repo.exists() and not repo.is_dir():
        raise ArtifactError(f"-o {repo} exists and is not a directory",
                            "pass -o with a repository directory")
    probe = existing_ancestor(repo.parent, "pass -o with a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write beside {repo} ({probe} denies writing)",
                            "pass -o with a directory in a folder you can write to")
    return repo


def _check_model_dir(model_dir: Path) -> None:
    if model_dir.exists() and not (model_dir / RECORD_FILE).is_file():
        raise ArtifactError(f"{model_dir} exists and was not written by dyt-edge package; "
                            "refusing to replace it", "pass another --name, or another -o")


def _swap_in(staging: Path, model_dir: Path) -> None:
    retired = None
    if model_dir.exists():
        _check_model_dir(model_dir)
        # Beside the repository like the staging folder: a server never sees it.
        retired = staging.parent / f"{RETIRED_PREFIX}{model_dir.name}-{uuid.uuid4().hex[:8]}"
        model_dir.rename(retired)
    try:
        staging.rename(model_dir)
    except BaseException:
        if retired is not None:
            retired.rename(model_dir)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def package_artifact(artifact: Artifact, options: PackageOptions) -> PackageResult:
    """Write ``artifact`` into a model repository for ``options.server``."""
    opts = options.checked()
    spec = served_model(artifact)
    name = opts.name or default_name(artifact)
    repo = _repository(opts)
    model_dir = repo / name
    _check_model_dir(model_dir)
    kind = opts.server
    if kind == "kserve":
        kind = opts.kserve_server or ("ovms" if spec.format == "openvino" else "triton")
    notes: list[str] = []
    record: dict[str, Any] = {
        **report_header(RECORD_KIND, RECORD_SCHEMA_VERSION, utc_now()),
        "for": opts.server, "server": kind, "name": name,
        "artifact": {"path": str(artifact.path.resolve()), "format": spec.format,
                     "precision": spec.precision, "dispatch": spec.dispatch,
                     "manifest_created": artifact.info.created},
        "inputs": [t.to_dict() for t in spec.inputs],
        "outputs": [t.to_dict() for t in spec.outputs],
        "preprocessing": artifact.info.preprocessing().to_dict(),
        "class_names": list(spec.class_names) if spec.class_names else None,
    }
    plan = None
    if kind == "triton":
        backend = "python" if opts.backend == "python" else triton.native_backend(spec)
        max_batch = triton.max_batch_size(spec, opts.max_batch)
        preferred, source = ((), None)
        if max_batch > 0:
            preferred, source = preferred_batch_sizes(artifact, opts.bench, max_batch)
        plan = triton.TritonPlan(backend=backend, max_batch_size=max_batch,
                                 preferred_batch_sizes=preferred, instances=opts.instances,
                                 queue_delay_us=opts.queue_delay_us)
        record["triton"] = {"backend": backend, "max_batch_size": max_batch,
                            "dynamic_batching": plan.dynamic_batching,
                            "preferred_batch_sizes": list(preferred),
                            "preferred_from": source, "instances": opts.instances,
                            "queue_delay_us": opts.queue_delay_us,
                            "tensorrt_version": spec.tensorrt_version}
        if backend == "onnxruntime" and spec.format == "openvino":
            notes.append("note: the native backend serves the export's model.onnx on ONNX "
                         "Runtime (Triton's OpenVINO backend cannot set the precision)")
        if max_batch == 0:
            notes.append(f"note: the artifact has a static batch of {spec.static_batch}: "
                         "every request must hold exactly that many images, and the server "
                         "does not batch")
        notes += dispatch_notes(spec, batches=max_batch > 1)
    else:
        if opts.max_batch is not None or opts.instances != 1:
            raise UsageError("--max-batch and --instances are Triton settings",
                             "OVMS takes the model's own batch; leave them out")
        ovms.model_file(spec)  # refuses a TensorRT engine before anything is written
        record["ovms"] = ovms.entry(spec, name)
        notes += dispatch_notes(spec, batches=False)
        # Read (and refuse a foreign) config.json before the model folder is touched.
        merged = ovms.merged_config(repo / ovms.CONFIG_FILE, record["ovms"])
    created = create_missing_dirs(repo)
    # Staged beside the repository, not in it: a server must never see a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=repo.parent))
    try:
        if plan is not None:
            triton.write_model(spec, plan, name, staging)
        else:
            ovms.write_model(spec, name, staging)
        record["notes"] = notes
        atomic_write_bytes(staging / RECORD_FILE, to_json(record).encode())
        _swap_in(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created_dirs(created)
        raise
    if kind == "ovms":
        atomic_write_bytes(repo / ovms.CONFIG_FILE, (json.dumps(merged, indent=2) + "\n").encode())
    if opts.server == "kserve":
        service = kserve.inference_service(
            name, kind, kserve.check_storage_uri(opts.storage_uri),
            plugin_config=record.get("ovms", {}).get("plugin_config"),
            gpu=spec.format == "tensorrt")
        path = repo / f"inferenceservice-{kserve.service_name(name)}.yaml"
        text = kserve.to_yaml(service, f"Written by dyt-edge {__version__} for the {kind} "
                              f"repository of model '{name}'.\nUpload the repository to "
                              f"{opts.storage_uri}, then: kubectl apply -f {path.name}")
        atomic_write_bytes(path, text.encode())
        record["kserve"] = {"file": path.name, "storage_uri": opts.storage_uri,
                            "service": service}
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*")
                   if p.is_file() and (p.is_relative_to(model_dir) or p.parent == repo))
    return PackageResult(repository=repo, name=name, server=kind, files=files, record=record,
                         notes=notes)


__all__ = ["NAME_PATTERN", "PackageOptions", "PackageResult", "RECORD_FILE", "SERVERS",
           "default_name", "dispatch_notes", "package_artifact", "preferred_batch_sizes"]
