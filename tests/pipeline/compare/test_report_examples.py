"""The comparison report shows summarization examples: the dialogue, the reference and each model's output."""

from __future__ import annotations

import json

from pipeline.compare.leaderboard import OK, Row
from pipeline.compare.report import markdown, summarization_examples


def _write_examples(root, model: str, outputs: list[str]) -> None:
    folder = root / "data" / "models" / f"{model}-samsum"
    folder.mkdir(parents=True)
    rows = [
        {"index": i, "source": f"Amanda: cookies? | {i}\nJerry: sure", "reference": f"ref {i}", "output": out}
        for i, out in enumerate(outputs)
    ]
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summarization_examples_sit_side_by_side_in_the_report(tmp_path):
    _write_examples(tmp_path, "gpt", ["gpt says a", "gpt says b"])
    _write_examples(tmp_path, "rnn", ["rnn says a", "rnn says b"])
    rows = [
        Row("samsum", "gpt", OK, test={"rouge1": 30.0}),
        Row("samsum", "rnn", OK, test={"rouge1": 20.0}),
        Row("samsum", "encdec"),  # not run: no examples
    ]
    examples = summarization_examples(rows, tmp_path)
    assert [e["outputs"] for e in examples["samsum"]] == [
        {"gpt": "gpt says a", "rnn": "rnn says a"},
        {"gpt": "gpt says b", "rnn": "rnn says b"},
    ]
    text = markdown(rows, {}, [], examples=examples)
    assert "## samsum: example outputs" in text
    assert "**Test example 0.** Source: Amanda: cookies? \\| 0 Jerry: sure" in text  # one line, pipes escaped
    assert "| *reference* | ref 0 |" in text and "| gpt | gpt says a |" in text and "| rnn | rnn says b |" in text
