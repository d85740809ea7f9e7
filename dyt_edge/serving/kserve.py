"""A KServe ``InferenceService`` for a repository dyt-edge wrote.

KServe runs Triton and OVMS as serving runtimes over the same repository layouts; the
manifest names the runtime and where the cluster reads the repository (``storageUri``: s3://,
gs://, pvc://, ...; dyt-edge does not upload it). Checked against KServe's
``serving.kserve.io/v1beta1`` API and its stock ClusterServingRuntimes:

* ``kserve-tritonserver`` (model format ``triton``) starts ``tritonserver
  --model-store=/mnt/models``: the storage URI is the repository root. Its stock image has no
  dyt-edge, so a ``--backend python`` repository needs an image that adds it (``runtime``
  stays the same; set the image in your own ServingRuntime).
* ``kserve-ovms`` (model format ``openvino``) starts OVMS in single-model mode with
  ``--model_path=/mnt/models``: the storage URI is the model folder, and the configuration
  file is not read, so the precision goes in as the ``--plugin_config`` argument.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UsageError

SERVERS = ("triton", "ovms")
API_VERSION = "serving.kserve.io/v1beta1"


def service_name(name: str) -> str:
    """A Kubernetes object name (DNS-1123 label: lowercase letters, digits and '-', at most
    63, starting with a letter) for the model ``name``."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"dyt-{label}".strip("-")
    return label[:63].rstrip("-")


def check_storage_uri(uri: str | None) -> str:
    if not uri:
        raise UsageError("--for kserve needs --storage-uri: where the cluster reads the "
                         "repository", "pass e.g. --storage-uri s3://BUCKET/PATH (or gs://, "
                         "pvc://CLAIM/PATH), then upload the written repository there")
    if "://" not in uri:
        raise UsageError(f"--storage-uri {uri} is not a URI",
                         "pass a URI such as s3://BUCKET/PATH, gs://BUCKET/PATH or "
                         "pvc://CLAIM/PATH")
    return uri.rstrip("/")


def inference_service(name: str, server: str, storage_uri: str, *,
                      plugin_config: dict[str, str] | None = None,
                      gpu: bool = False) -> dict[str, Any]:
    """The InferenceService object; ``storage_uri`` is where the repository was uploaded
    (for OVMS the model folder ``<uri>/<name>`` is served)."""
    if server not in SERVERS:
        raise UsageError(f"unknown KServe server '{server}'", "choose triton or ovms")
    model: dict[str, Any]
    if server == "triton":
        model = {"modelFormat": {"name": "triton"}, "runtime": "kserve-tritonserver",
                 "storageUri": storage_uri}
    else:
        model = {"modelFormat": {"name": "openvino"}, "runtime": "kserve-ovms",
                 "storageUri": f"{storage_uri}/{name}",
                 "args": [f"--plugin_config={json.dumps(plugin_config or {})}"]}
    if gpu:
        model["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    return {"apiVersion": API_VERSION, "kind": "InferenceService",
            "metadata": {"name": service_name(name),
                         "annotations": {"dyt-edge/model": name}},
            "spec": {"predictor": {"model": model}}}


def to_yaml(service: dict[str, Any], header: str) -> str:
    import yaml

    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + yaml.safe_dump(service, sort_keys=False, default_flow_style=False)


__all__ = ["API_VERSION", "SERVERS", "check_storage_uri", "inference_service", "service_name",
           "to_yaml"]
