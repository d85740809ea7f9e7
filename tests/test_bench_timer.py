"""The benchmark timer of `dyt-edge bench` (:mod:`dyt_edge.bench.timer`), on a fake runtime whose
inferences take a known time on a fake clock (binary fractions of a second: exact sums)."""

from __future__ import annotations

import numpy as np
import pytest

from dyt_edge.bench import MIN_ITERATIONS, Timer
from dyt_edge.bench.timer import THROUGHPUT_LATENCY_SHARE, measure, timed_batches


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """Each prepared inference takes ``cost`` seconds of ``clock``; ``throughput`` runs
    ``per_call`` inferences in 0.25 s."""

    def __init__(self, clock: Clock, cost: float = 1 / 16, per_call: int = 3) -> None:
        self.clock, self.cost, self.per_call = clock, cost, per_call
        self.prepared: list[np.ndarray] = []
        self.ran: list[int] = []

    def prepare(self, x):
        self.prepared.append(x)
        index = len(self.prepared) - 1

        def call() -> None:
            self.ran.append(index)
            self.clock.now += self.cost

        return call

    def throughput(self, x, seconds):
        self.clock.now += 0.25
        return self.per_call, 0.25


def test_timed_batches_are_distinct_consecutive_and_repeat_when_too_few():
    images = np.arange(10)[:, None]
    batches = timed_batches(images, 3, 4)
    assert [b[:, 0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    [one] = timed_batches(images[:2], 3, 4)
    assert one[:, 0].tolist() == [0, 1, 0]


def test_warmup_runs_every_batch_then_chunks_time_single_inferences():
    clock = Clock()
    rt = FakeRuntime(clock)
    timer = Timer(rt, [np.zeros(1), np.ones(1)], "latency", clock=clock)
    timer.warmup(0.0)
    assert rt.ran == [0, 1] and timer.samples == []  # nothing of the warmup is recorded
    timer.chunk(0.5, min_calls=3)
    assert timer.iterations == len(timer.samples) == 8   # 0.5 s of 1/16 s inferences
    assert timer.samples == [1 / 16] * 8
    timer.chunk(0.0, min_calls=3)                         # at least min_calls, however short
    m = timer.result(batch=4)
    assert m.iterations == 11 and m.images == 44
    assert m.wall_s == 11 / 16 and m.latency.mean == pytest.approx(62.5)


def test_throughput_hint_counts_the_runtimes_own_loop_and_times_latency_after_it():
    clock = Clock()
    rt = FakeRuntime(clock)
    timer = Timer(rt, [np.zeros(1)], "throughput", clock=clock)
    timer.chunk(0.5, min_calls=1)
    assert timer.iterations == 6 and timer.wall == 0.5   # two 0.25 s calls of 3 inferences
    assert len(timer.samples) == 0.5 * THROUGHPUT_LATENCY_SHARE * 16


def test_measure_times_both_models_at_each_batch_size():
    clock = Clock()
    dyt, complete = FakeRuntime(clock), FakeRuntime(clock, cost=1 / 8)
    fractions = []
    results = measure(dyt, complete, np.zeros((6, 3)), [1, 2], duration=0.01, warmup=0.005,
                      hint="latency", progress=lambda msg, f: fractions.append(f))
    assert [r.batch for r in results] == [1, 2]
    for r in results:
        assert r.dyt.iterations >= MIN_ITERATIONS and r.complete.iterations >= MIN_ITERATIONS
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    alone = measure(dyt, None, np.zeros((6, 3)), [2], 0.0, 0.0, "latency", None)
    assert alone[0].complete is None
