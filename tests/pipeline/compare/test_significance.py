"""Bootstrap intervals and paired tests over test items, checked against cases computed by hand or by a direct loop
over pipeline.core.metrics' own functions."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipeline.compare.significance import (
    ItemsError,
    confidence_interval,
    item_statistics,
    metric_from_items,
    metric_from_statistics,
    paired_test,
    read_items,
    resample_indices,
    resampled_metric,
)


def _classification(correct: list[bool]) -> list[dict]:
    return [{"gold": 1, "prediction": 1 if ok else 0} for ok in correct]


def _items(kind: str, n: int, seed: int) -> list[dict]:
    """Random but realistic items of each kind (some right, some wrong)."""
    rng = random.Random(seed)
    words = ["ein", "Mann", "mit", "einem", "Hund", "läuft", "auf", "der", "Straße", "im", "Park", "."]
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "B-ORG", "I-ORG"]
    items = []
    for _ in range(n):
        if kind == "classification":
            gold = rng.randrange(3)
            items.append({"gold": gold, "prediction": gold if rng.random() < 0.6 else rng.choice([-1, 0, 1, 2])})
        elif kind == "ner":
            gold = [rng.choice(tags) for _ in range(rng.randint(3, 9))]
            pred = [t if rng.random() < 0.7 else rng.choice(tags) for t in gold][: rng.randint(2, len(gold))]
            items.append({"gold": gold, "prediction": pred})
        elif kind == "translation":
            gold = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
            pred = " ".join(w if rng.random() < 0.6 else rng.choice(words) for w in gold.split())
            items.append({"gold": gold, "prediction": pred})
        elif kind == "qa":
            answers = [" ".join(rng.sample(words, 2)) for _ in range(rng.randint(1, 3))]
            items.append({"gold": answers, "prediction": rng.choice([answers[0], " ".join(rng.sample(words, 3))])})
        else:
            gold = " ".join(rng.choice(words) for _ in range(12))
            items.append({"gold": gold, "prediction": " ".join(rng.sample(gold.split(), 6))})
    return items


KINDS = ("classification", "ner", "translation", "qa", "summarization")


@pytest.mark.parametrize("kind", KINDS)
def test_resampled_metric_equals_the_metric_function_on_the_resampled_items(kind):
    """The fast path (summed per-example statistics) is the metric function itself, on every resample."""
    items = _items(kind, 40, seed=1)
    stats = item_statistics(kind, items)
    assert float(metric_from_statistics(kind, stats.sum(0))) == pytest.approx(metric_from_items(kind, items))
    indices = resample_indices(len(items), 8, seed=7)  # [8, 40]
    fast = resampled_metric(kind, items, indices)
    direct = [metric_from_items(kind, [items[i] for i in row]) for row in indices]
    assert fast == pytest.approx(direct, abs=1e-9)


def test_interval_of_a_perfect_and_of_a_hopeless_model_is_a_point():
    ci = confidence_interval("classification", _classification([True] * 20), 200, seed=0)
    assert (ci.low, ci.high) == (1.0, 1.0)
    ci = confidence_interval("classification", _classification([False] * 20), 200, seed=0)
    assert (ci.low, ci.high) == (0.0, 0.0)


def test_interval_by_a_direct_loop():
    """7 of 10 right: the interval is the 2.5/97.5 percentiles of the accuracy over the seeded resamples."""
    items = _classification([True] * 7 + [False] * 3)
    ci = confidence_interval("classification", items, 500, seed=3)
    rows = resample_indices(10, 500, 3)  # [500, 10]
    accuracies = [sum(items[i]["gold"] == items[i]["prediction"] for i in row) / 10 for row in rows]
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(accuracies, [2.5, 97.5])))
    assert ci.low < 0.7 < ci.high
    assert confidence_interval("classification", items, 500, seed=3) == ci  # seeded


def test_paired_test_by_hand():
    # A right on every example where B is, and on 5 more of 10: the gain is +0.5 on every resample that has one
    # of those 5 examples; it is <= 0 only when a resample draws none of them: (5/10)^10 of the time.
    a = _classification([True] * 8 + [False] * 2)
    b = _classification([True] * 3 + [False] * 7)
    test = paired_test("classification", a, b, 4000, seed=0)
    assert test.gain == pytest.approx(0.5)
    assert test.p_value == pytest.approx(0.5**10, abs=0.002)
    assert test.low > 0 and test.significant(0.05)
    # the other way round: the same evidence, gain negative, the same p-value
    back = paired_test("classification", b, a, 4000, seed=0)
    assert back.gain == pytest.approx(-0.5) and back.p_value == test.p_value


def test_paired_test_by_a_direct_loop_and_of_equal_models():
    a, b = _items("ner", 30, seed=2), _items("ner", 30, seed=2)
    b = [{"gold": x["gold"], "prediction": list(reversed(y["prediction"]))} for x, y in zip(a, b)]
    test = paired_test("ner", a, b, 300, seed=5)
    gains = [
        metric_from_items("ner", [a[i] for i in row]) - metric_from_items("ner", [b[i] for i in row])
        for row in resample_indices(30, 300, 5)
    ]
    sign = np.sign(test.gain)
    assert test.p_value == pytest.approx(np.mean([np.sign(g) != sign for g in gains]))
    assert (test.low, test.high) == pytest.approx(tuple(np.percentile(gains, [2.5, 97.5])))
    same = paired_test("ner", a, a, 100, seed=5)
    assert (same.gain, same.p_value, same.significant(0.05)) == (0.0, 1.0, False)


def test_paired_test_refuses_different_test_sets():
    a = _classification([True] * 5)
    with pytest.raises(ItemsError, match="5 items against 4"):
        paired_test("classification", a, a[:4], 10, seed=0)
    other = [{"gold": 0, "prediction": 0}] * 5
    with pytest.raises(ItemsError, match="gold answers differ"):
        paired_test("classification", a, other, 10, seed=0)


def test_read_items_names_the_bad_line(tmp_path):
    path = tmp_path / "test_items.jsonl"
    assert read_items(path) is None
    path.write_text(json.dumps({"gold": 1, "prediction": 1}) + "\n{oops\n")
    with pytest.raises(ItemsError, match=r"test_items.jsonl:2: not valid JSON"):
        read_items(path)
    path.write_text(json.dumps({"gold": 1}) + "\n")
    with pytest.raises(ItemsError, match=r":1: expected an object with 'gold' and 'prediction'"):
        read_items(path)


def test_bleu_resampling_is_fast():
    """1000 resamples of 500 sentences: one statistics pass, not 1000 corpus_bleu calls (~45 s)."""
    import time

    items = _items("translation", 500, seed=4)
    start = time.perf_counter()
    confidence_interval("translation", items, 1000, seed=0)
    assert time.perf_counter() - start < 10
