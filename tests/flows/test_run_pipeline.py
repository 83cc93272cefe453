"""`make run`'s closing summary (flows.run_pipeline.best_per_task): each task's best test score and champion."""

from __future__ import annotations

import json

from flows.run_pipeline import best_per_task


def test_best_per_task_reads_the_leaderboard(tmp_path):
    (tmp_path / "reports").mkdir()
    board = {
        "emotion": {"minilm": {"accuracy": 0.79}},
        "best": {"emotion": {"model": "minilm", "accuracy": 0.79351}, "samsum": {"model": "lead", "rouge1": 31.83}},
        "champion": {"emotion": {"model": "minilm", "version": "3", "accuracy": 0.79351}},
    }
    (tmp_path / "reports" / "comparison.json").write_text(json.dumps(board))
    header, emotion, samsum = best_per_task(tmp_path)
    assert "best on test" in header and "champion" in header
    assert emotion.split() == ["emotion", "accuracy", "0.7935", "(minilm)", "minilm", "v3"]
    assert samsum.split() == ["samsum", "rouge1", "31.83", "(lead)", "-"]  # a baseline is never registered


def test_best_per_task_is_empty_before_the_first_comparison(tmp_path):
    assert best_per_task(tmp_path) == []
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "comparison.json").write_text("{not json")
    assert best_per_task(tmp_path) == []
