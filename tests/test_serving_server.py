"""``dyt-edge serve`` on a real Triton server (the serve extra's bundled ``tritonserver`` with
its Python backend), end to end: a packaged tiny export served, KServe-v2 requests over HTTP
and gRPC (``tritonclient``), one image and many concurrent single images the server merges,
outputs compared with the runtime's own; stopping leaves no process and frees the ports. Then
the failures a user meets: a busy port, the extra missing, a repository that does not load.

CI installs the serve extra, so nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dyt_edge.serving.package import PackageOptions, package_artifact
from dyt_edge.serving.server import group_members, load_failure

from .helpers import assert_one_line_error, cli

CLIENTS = 8


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    """No socket listens on the port (connections in TIME_WAIT do not count: a new server
    binds over them, as Triton and dyt-edge's own check do)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_serve(repo: Path, ports: list[int]) -> tuple[subprocess.Popen, list[str]]:
    """``dyt-edge serve`` as a user starts it; returns once it printed that it is ready."""
    cmd = [sys.executable, "-m", "dyt_edge", "serve", str(repo), "--http-port", str(ports[0]),
           "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--timeout", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, COLUMNS="200"), start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 150
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops the server" in line:
            break
        if time.monotonic() > deadline:
            break
    if proc.poll() is not None or not any("Ctrl-C" in x for x in lines):
        proc.kill()
        pytest.fail("dyt-edge serve did not become ready:\n" + "".join(lines))
    return proc, lines


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_ov_export) -> Path:
    from dyt_edge.artifacts import load_artifact

    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

    base = tmp_path_factory.mktemp("serve")
    repo = base / "repo"
    # A long queue delay makes the merging of concurrent requests certain, not timing luck.
    package_artifact(load_artifact(tiny_ov_export), PackageOptions(
        "triton", output=repo, name="tiny", queue_delay_us=300_000))
    # And the user's first path: the default export (ONNX, pack) of the same checkpoint.
    export_checkpoint(tiny_ov_export.parent / "tiny.safetensors", base / "default",
                      ExportOptions())
    package_artifact(load_artifact(base / "default"), PackageOptions("triton", output=repo,
                                                                     name="default"))
    return repo


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_serve_answers_http_and_grpc_with_the_runtimes_outputs_and_stops_cleanly(
        repository, tiny_ov_export, tmp_path):
    from dyt_edge.runtimes import open_runtime

    ports = free_ports(3)
    proc, lines = start_serve(repository, ports)
    text = "".join(lines)
    try:
        assert f"http://127.0.0.1:{ports[0]}" in text and f"127.0.0.1:{ports[1]}" in text
        assert "Triton is ready: default, tiny" in text
        assert "tritonclient.http" in text and "c.infer('default'" in text  # a request to paste
        http = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}", concurrency=CLIENTS)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        meta = http.get_model_metadata("tiny")
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"logits": "FP32",
                                                                        "masks": "BOOL"}
        one = images(1, 0)
        default = repository.parent / "default"
        with open_runtime("onnxruntime", default) as rt:
            want = rt.run(one)
        x = httpclient.InferInput("images", list(one.shape), "FP32")
        x.set_data_from_numpy(one)
        got = http.infer("default", [x])
        np.testing.assert_array_equal(got.as_numpy("logits"), want.logits)
        np.testing.assert_array_equal(got.as_numpy("masks"), want.masks)
        with open_runtime("openvino", tiny_ov_export) as rt:
            want = rt.run(one)
            for client, module in ((http, httpclient), (grpc, grpcclient)):
                x = module.InferInput("images", list(one.shape), "FP32")
                x.set_data_from_numpy(one)
                got = client.infer("tiny", [x])
                np.testing.assert_array_equal(got.as_numpy("logits"), want.logits)
                np.testing.assert_array_equal(got.as_numpy("masks"), want.masks)

            # A real client: a non-square picture, preprocessed as the package record says.
            from PIL import Image

            from dyt_edge.config import Preprocessing
            from dyt_edge.data import load_images
            from dyt_edge.preprocess import preprocess_image

            record = json.loads((repository / "tiny" / "dyt_edge_package.json").read_text())
            pre = Preprocessing.from_dict(record["preprocessing"])
            pixels = np.random.default_rng(5).integers(0, 255, (45, 70, 3), dtype=np.uint8)
            folder = tmp_path / "photos" / "any"
            folder.mkdir(parents=True)
            Image.fromarray(pixels).save(folder / "photo.png")
            photo = preprocess_image(folder / "photo.png", pre)[None]
            # The same pixels every other dyt-edge command feeds the model.
            same = load_images(str(folder.parent), pre).images.numpy()
            np.testing.assert_array_equal(photo, same)
            x = grpcclient.InferInput("images", list(photo.shape), "FP32")
            x.set_data_from_numpy(photo)
            np.testing.assert_array_equal(grpc.infer("tiny", [x]).as_numpy("logits"),
                                          rt.run(photo).logits)

            # Concurrent single images: the server merges them into batches.
            batch = images(CLIENTS, 1)
            want = rt.run(batch)
            each = [rt.run(batch[i:i + 1]) for i in range(CLIENTS)]

            pending = []  # all in flight at once, on CLIENTS connections
            for i in range(CLIENTS):
                x = httpclient.InferInput("images", [1, 3, 32, 32], "FP32")
                x.set_data_from_numpy(batch[i:i + 1])
                pending.append(http.async_infer("tiny", [x]))
            results = [p.get_result() for p in pending]
        atol = json.loads((tiny_ov_export / "dyt_edge.json").read_text())["validation"]["atol"]
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r.as_numpy("masks"), want.masks[i:i + 1])
            # Batch 1 or merged: the runtime's own numbers, to the export's rounding.
            np.testing.assert_allclose(r.as_numpy("logits"), want.logits[i:i + 1], rtol=0,
                                       atol=atol)
            np.testing.assert_allclose(r.as_numpy("logits"), each[i].logits, rtol=0, atol=atol)
        stats = http.get_inference_statistics("tiny")["model_stats"][0]
        sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
        assert max(sizes) > 1, f"no merged batch was executed: {stats['batch_stats']}"
        assert int(stats["inference_count"]) == 3 + CLIENTS
        http.close()
        grpc.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    assert group_members(proc.pid) == []  # the server and its stubs are gone
    assert all(port_is_free(p) for p in ports)


def test_a_busy_port_is_one_line_and_starts_nothing(capsys, repository):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        http, metrics = free_ports(2)
        code, _, err = cli(capsys, "serve", str(repository), "--http-port", str(http),
                           "--grpc-port", str(busy), "--metrics-port", str(metrics))
    assert_one_line_error(code, err, f"port {busy} on 127.0.0.1 is already in use",
                          "--grpc-port")


def test_without_the_serve_extra_the_install_command_is_named(capsys, monkeypatch, repository):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytriton" else real(name, *a))
    code, _, err = cli(capsys, "serve", str(repository))
    assert_one_line_error(code, err, "serve extra is not installed", 'dyt-edge[serve]')
    from dyt_edge.serving.tritonserver import availability

    ok, why = availability()
    assert not ok and "not installed" in why


def test_availability_here_names_the_bundled_server():
    from dyt_edge.serving.tritonserver import availability

    ok, what = availability()
    assert ok, what
    assert "nvidia-pytriton 0.7" in what and "Python backend" in what


def test_a_native_model_is_refused_with_what_to_do(capsys, tmp_path, tiny_ov_export):
    from dyt_edge.artifacts import load_artifact

    package_artifact(load_artifact(tiny_ov_export), PackageOptions(
        "triton", output=tmp_path / "repo", backend="native"))
    code, _, err = cli(capsys, "serve", str(tmp_path / "repo"))
    assert_one_line_error(code, err, "onnxruntime backend", "--backend python",
                          "nvcr.io/nvidia/tritonserver")
    code, _, err = cli(capsys, "serve", str(tmp_path / "nothing"))
    assert_one_line_error(code, err, "does not exist", "dyt-edge package")


def test_a_model_that_does_not_load_is_reported_in_one_line(capsys, tmp_path, repository):
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    (repo / "tiny" / "1" / "artifact" / "model.xml").unlink()
    http, grpc, metrics = free_ports(3)
    code, _, err = cli(capsys, "serve", str(repo), "--http-port", str(http), "--grpc-port",
                       str(grpc), "--metrics-port", str(metrics))
    line = assert_one_line_error(code, err, "model 'tiny' did not load")
    assert "model.xml" in line
    assert all(port_is_free(p) for p in (http, grpc, metrics))


def test_load_failure_reads_the_reason_from_triton_logs():
    log = ('I1202 model_lifecycle.cc:472] "loading: tiny:1"\n'
           "E1202 model_lifecycle.cc:642] \"failed to load 'tiny' version 1: Internal: "
           "ArtifactError: artifact x has no openvino model\\n\\nAt:\\n  model.py(2)\"\n"
           "error: creating server: Internal - failed to load all models\n")
    assert load_failure(log) == ("model 'tiny' did not load: Internal: ArtifactError: "
                                 "artifact x has no openvino model")
    assert load_failure("error: creating server: Unavailable - Socket '127.0.0.1:1' already "
                        "in use") == "Socket '127.0.0.1:1' already in use"
    assert load_failure("all fine") is None


def test_ctrl_c_in_the_foreground_stops_it_too(repository):
    ports = free_ports(3)
    proc, _ = start_serve(repository, ports)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the process group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(proc.pid) == []
    assert all(port_is_free(p) for p in ports)


def test_the_python_model_splits_merged_requests_and_reports_errors_per_request(
        tiny_ov_export, monkeypatch):
    """triton_python.TritonPythonModel with a stand-in for the stub's utilities module."""
    import types

    from dyt_edge.runtimes import open_runtime
    from dyt_edge.serving.triton_python import TritonPythonModel, threads_per_instance

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    class Response:
        def __init__(self, output_tensors=(), error=None):
            self.tensors = {t.name: t.value for t in output_tensors}
            self.error = error

    pb = types.SimpleNamespace(
        Tensor=Tensor, InferenceResponse=Response, TritonError=str,
        get_input_tensor_by_name=lambda r, name: r.get(name))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    repo = tiny_ov_export.parent / "as-model"
    (repo / "1").mkdir(parents=True, exist_ok=True)
    if not (repo / "1" / "artifact").exists():
        (repo / "1" / "artifact").symlink_to(tiny_ov_export)
    config = {"max_batch_size": 8, "input": [{"name": "images"}],
              "output": [{"name": "logits"}, {"name": "masks"}],
              "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
              "parameters": {"runtime": {"string_value": "openvino"}}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo),
                      "model_version": "1", "model_instance_kind": "CPU"})
    try:
        x = images(5, 3)
        requests = [{"images": Tensor("images", x[:2])}, {}, {"images": Tensor("images", x[2:])}]
        a, missing, b = model.execute(requests)
        assert missing.error == "the request has no input 'images'"
        with open_runtime("openvino", tiny_ov_export) as rt:
            want = rt.run(x)
        got = np.concatenate([a.tensors["logits"], b.tensors["logits"]])
        atol = json.loads((tiny_ov_export / "dyt_edge.json").read_text())["validation"]["atol"]
        np.testing.assert_allclose(got, want.logits, rtol=0, atol=atol)
        np.testing.assert_array_equal(np.concatenate([a.tensors["masks"], b.tensors["masks"]]),
                                      want.masks)
        bad = model.execute([{"images": Tensor("images", x[:1, :, :8])}])
        assert bad[0].error.startswith("dyt-edge ")
    finally:
        model.finalize()
    assert threads_per_instance(3, cores=8) == 2 and threads_per_instance(4, cores=2) == 1


def test_the_load_benchmark_runs_and_checks_every_answer(tiny_ov_export, tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    http = free_ports(1)[0]
    while not all(port_is_free(p) for p in (http + 1, http + 2)):
        http = free_ports(1)[0]
    out = tmp_path / "load.json"
    code = module.main([str(tiny_ov_export), "--clients", "3", "--duration", "1", "--rounds",
                        "1", "--warmup", "0.3", "--images", "8", "--port", str(http),
                        "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["server"]["failed"] == 0
    assert report["server"]["requests"] > 0 and report["direct"]["requests"] > 0
    assert set(report["server"]["latency_ms"]) == {"p50", "p95", "p99"}
    assert "serve, 3 clients" in capsys.readouterr().out
