"""Plot data files that `dvc plots` renders: learning curves (linear) and confusion matrices.

- learning_curve.csv: one row per epoch: epoch, train_loss, val_loss, val_<metric>... (epoch 0, when present:
  the untrained model's validation scores, no train loss)
- confusion.csv: one row per test example: actual, predicted (label names), for DVC's confusion template.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

LEARNING_CURVE = "learning_curve.csv"
CONFUSION = "confusion.csv"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_learning_curve(folder: Path, rows: list[dict[str, float]]) -> Path:
    """rows: one dict per epoch with key 'epoch' and any of train_loss / val_* (missing values left blank)."""
    columns = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"}, key=_column_order)
    return write_csv(
        Path(folder) / LEARNING_CURVE,
        columns,
        ([_fmt(row.get(c)) for c in columns] for row in sorted(rows, key=lambda r: r["epoch"])),
    )


def write_confusion(folder: Path, actual: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> Path:
    if len(actual) != len(predicted):
        raise ValueError(f"{len(actual)} labels but {len(predicted)} predictions")
    return write_csv(
        Path(folder) / CONFUSION, ["actual", "predicted"], ([names[a], names[p]] for a, p in zip(actual, predicted))
    )


def learning_curve_from_history(log_history: list[dict]) -> list[dict[str, float]]:
    """Per-epoch rows from a transformers Trainer's state.log_history (train 'loss' and 'eval_*' entries)."""
    rows: dict[int, dict[str, float]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = int(round(entry["epoch"]))
        row = rows.setdefault(epoch, {"epoch": epoch})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
        for key, value in entry.items():
            if key.startswith("eval_") and isinstance(value, (int, float)) and not _is_speed(key):
                row["val_" + key[len("eval_") :]] = value
    return [rows[e] for e in sorted(rows)]


def _is_speed(key: str) -> bool:
    return key.endswith(("_runtime", "_per_second")) or key == "eval_epoch"


def _column_order(name: str) -> tuple[int, str]:
    return (0 if name == "train_loss" else 1 if name == "val_loss" else 2, name)


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
