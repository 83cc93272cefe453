"""Example outputs of a source -> target text run (summarization, translation): the first test examples'
source, reference and the model's output, side by side.

Each such run logs them to MLflow as a table (`examples.json`, mlflow.log_table) and writes them to
data/models/<model>-<task>/examples.jsonl (the driver, pipeline/train/driver.py); `gather_examples` reads every
model's file back for the report: one row per example with each model's output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.core import paths
from pipeline.core.io import write_text
from pipeline.data.task_data import TEXT_PAIRS

EXAMPLES_FILE = "examples.jsonl"  # in data/models/<model>-<task>/
EXAMPLES_ARTIFACT = "examples.json"  # the MLflow table
N_EXAMPLES = 5  # the first test examples
FIELDS = ("index", "source", "reference", "output")


def example_rows(
    sources: Sequence[str], references: Sequence[str], outputs: Sequence[str], n: int = N_EXAMPLES
) -> list[dict]:
    """The first n examples as {index, source, reference, output} (index: the row in the test split)."""
    if not len(sources) == len(references) == len(outputs):
        raise ValueError(f"{len(sources)} sources, {len(references)} references and {len(outputs)} outputs")
    return [
        {"index": i, "source": s, "reference": r, "output": o}
        for i, (s, r, o) in enumerate(zip(sources[:n], references[:n], outputs[:n]))
    ]


def run_examples(kind: str, test_split, items: Sequence[dict] | None, n: int = N_EXAMPLES) -> list[dict]:
    """A run's example rows from its test split and TestScores.items ({gold, prediction} per test example);
    [] for task kinds that do not write text."""
    if kind not in TEXT_PAIRS or not items:
        return []
    pair = TEXT_PAIRS[kind]
    head = test_split.select(range(min(n, len(test_split))))
    return example_rows(head[pair.source], head[pair.target], [str(it["prediction"]) for it in items[:n]], n)


def write_examples(path: str | Path, rows: Sequence[dict]) -> Path:
    """One JSON object per line, written atomically."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_examples(path: str | Path) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    for number, row in enumerate(rows, 1):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}: line {number} lacks {missing} (re-run that model's training stage)")
    return rows


def log_examples(rows: Sequence[dict]) -> None:
    """The rows as an MLflow table of the active run (artifact examples.json: one column per field)."""
    import mlflow

    if rows:
        mlflow.log_table({f: [row[f] for row in rows] for f in FIELDS}, artifact_file=EXAMPLES_ARTIFACT)


def gather_examples(task: str, models: Sequence[str], root: Path | None = None) -> list[dict]:
    """The task's examples with every model's output side by side: [{index, source, reference, outputs:
    {model: output}}], from data/models/<model>-<task>/examples.jsonl of the models that have one (a model
    without the file is left out; the first file found gives the sources and references)."""
    root = root or Path.cwd()
    merged: dict[int, dict] = {}
    for model in models:
        path = root / paths.model_dir(model, task) / EXAMPLES_FILE
        if not path.exists():
            continue
        for row in read_examples(path):
            entry = merged.setdefault(
                row["index"], {"index": row["index"], "source": row["source"], "reference": row["reference"]}
            )
            entry.setdefault("outputs", {})[model] = row["output"]
    return [merged[i] for i in sorted(merged)]
