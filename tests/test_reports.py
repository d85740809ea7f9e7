"""The JSON files dyt-edge writes: one header and one encoder (:mod:`dyt_edge.reports`), written
atomically (:mod:`dyt_edge.report_files`); the validate and bench reports and the manifest all
go through them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dyt_edge import artifacts
from dyt_edge.artifacts import ArtifactError
from dyt_edge.bench import BatchResult, BenchResult, LatencyStats, Measurement
from dyt_edge.errors import UsageError
from dyt_edge.report_files import check_json_path, write_report
from dyt_edge.reports import json_default, report_header, to_json
from dyt_edge.validate import Check, ValidationReport

HEADER = {"schema", "schema_version", "dyt_edge_version", "created"}
CREATED = "2026-01-02T03:04:05.000006+00:00"


@dataclass
class Point:
    x: int
    y: float


def validation_report() -> ValidationReport:
    check = Check("max_diff", "max logit diff", 1e-6, 1e-4, "<=", "abs", "pass")
    return ValidationReport(artifact={"path": "a"}, target={"target": "onnxruntime"},
                            reference={"target": "pytorch"}, precision="fp32",
                            data={"images": 1}, batch=1, thresholds={}, metrics={},
                            layers=[], capacity=None, checks=[check], created=CREATED)


def bench_result() -> BenchResult:
    lat = LatencyStats(1, 1, 1, 1, 1, 1, 1, 1)
    row = BatchResult(batch=1, dyt=Measurement(batch=1, latency=lat, iterations=5, wall_s=1.0))
    return BenchResult(artifact={"path": "a"}, target="onnxruntime", precision="fp32",
                       settings={}, machine={}, runtime={}, results=[row], created=CREATED)


def test_validate_and_bench_reports_share_the_header():
    from dyt_edge import __version__
    from dyt_edge.bench import SCHEMA_VERSION as BENCH_VERSION
    from dyt_edge.validate import SCHEMA_VERSION as VALIDATE_VERSION

    validate, bench = validation_report().to_dict(), bench_result().to_dict()
    for payload, kind, version in ((validate, "validate", VALIDATE_VERSION),
                                   (bench, "bench", BENCH_VERSION)):
        assert list(payload)[:len(HEADER)] == list(report_header(kind, version, CREATED))
        assert payload["schema"] == f"dyt-edge.{kind}"
        assert payload["schema_version"] == version
        assert payload["dyt_edge_version"] == __version__ and payload["created"] == CREATED
    assert "kind" not in validate


def test_the_encoder_writes_numpy_paths_sets_and_dataclasses():
    payload = {"f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True),
               "a": np.arange(3), "p": Path("/x/y"), "s": {2}, "d": Point(1, 2.5),
               "t": (1, 2), "r": LatencyStats(1, 2, 3, 4, 5, 6, 7, 8)}
    back = json.loads(to_json(payload))
    assert back == {"f": 0.5, "i": 3, "b": True, "a": [0, 1, 2], "p": "/x/y", "s": [2],
                    "d": {"x": 1, "y": 2.5}, "t": [1, 2],
                    "r": {"mean": 1, "p50": 2, "p90": 3, "p95": 4, "p99": 5, "min": 6,
                          "max": 7, "count": 8}}
    assert to_json({"a": 1}) == '{\n  "a": 1\n}\n'
    with pytest.raises(TypeError, match="not JSON-serialisable: object"):
        json_default(object())


def test_write_report_is_atomic_and_its_failures_are_one_line(tmp_path):
    path = write_report(tmp_path / "sub" / "r.json", {"n": np.int32(1)})
    assert json.loads(path.read_text()) == {"n": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind
    (tmp_path / "file").write_text("")
    with pytest.raises(ArtifactError, match="cannot write") as info:
        write_report(tmp_path / "file" / "r.json", {})
    assert "pass --json with a writable path" in str(info.value)


def test_json_path_is_checked_before_any_work(tmp_path):
    assert check_json_path(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert (tmp_path / "new").is_dir()
    with pytest.raises(UsageError, match="is a directory") as info:
        check_json_path(tmp_path, "bench.json")
    assert info.value.hint == f"pass a file path, e.g. {tmp_path / 'bench.json'}"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        check_json_path(tmp_path / "file" / "r.json")


def test_the_manifest_uses_the_same_encoder(tmp_path):
    artifacts.write_manifest(tmp_path, {"schema": 1, "values": np.arange(2),
                                        "path": tmp_path})
    text = (tmp_path / artifacts.MANIFEST_NAME).read_text()
    assert text == to_json({"schema": 1, "values": [0, 1], "path": str(tmp_path)})
