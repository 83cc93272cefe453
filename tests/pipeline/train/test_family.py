"""The family contract's shared helpers: the batch-1 latency meter."""

from __future__ import annotations

import time

from pipeline.train.family import measure_latency_ms


def test_latency_meter_times_every_example_within_its_budget():
    calls: list[int] = []
    ms = measure_latency_ms(calls.append, list(range(20)), budget_s=60)
    assert calls == [0, *range(20)]  # one warm-up call, then each example in order
    assert 0 <= ms < 1000


def test_latency_meter_stops_when_its_budget_is_spent_but_times_a_minimum():
    calls: list[int] = []

    def slow(example: int) -> None:
        calls.append(example)
        time.sleep(0.02)

    ms = measure_latency_ms(slow, list(range(20)), budget_s=0.0, min_examples=3)
    assert calls == [0, 0, 1, 2]  # warm-up, then exactly the minimum
    assert ms >= 20  # the mean over the timed calls, each >= 20 ms
