"""The plan of a `dyt-edge bench` run (:mod:`dyt_edge.bench.plan`): batch sizes, settings and
the order of the timed chunks."""

from __future__ import annotations

import pytest

from dyt_edge.bench import interleave, parse_batches, resolve_batches, schedule
from dyt_edge.errors import UsageError


def test_chunks_alternate_so_each_model_goes_first_equally_often():
    assert interleave(["dyt", "complete"], 4) == [
        (0, "dyt"), (0, "complete"), (1, "complete"), (1, "dyt"),
        (2, "dyt"), (2, "complete"), (3, "complete"), (3, "dyt")]
    assert schedule(5.0) == (5, pytest.approx(1.0))
    assert schedule(0.05) == (2, pytest.approx(0.025))  # at least two chunks each
    assert schedule(0.0)[0] == 2


def test_batch_sizes_parse_or_fail_clearly():
    assert parse_batches("1, 8,8,32") == (1, 8, 32)
    for bad in ("1,x", "0", "-1", "", "1.5", "1,,2"):
        with pytest.raises(UsageError):
            parse_batches(bad)


def test_a_static_batch_artifact_runs_its_own_batch_only():
    assert resolve_batches(None, None) == (1, 8, 32)
    assert resolve_batches(4, None) == (4,)
    assert resolve_batches(4, [4, 4]) == (4,)
    with pytest.raises(UsageError, match="static batch of 4"):
        resolve_batches(4, [2])
