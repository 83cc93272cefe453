"""A small recorded search of one pretrained model's fine-tuning settings against its scratch twin on one task.

    python -m bench.transfer_search --workspace /tmp/ht-bench/full/repo --model gpt --task sst2 \
        --grid learning_rate=0.0005,0.001,0.002 --grid epochs=4,8

For each combination the override train.overrides.<model>-<task> is set (the scratch twin trains with it too,
as in the pipeline), both are trained and scored on the test split with the pipeline's own family trainers (no
MLflow, no registration), and the transfer gain gets its paired bootstrap test (pipeline/compare/significance.py).
The workspace is a finished run: its data/prepared, data/pretrain and data/tokenizers are read, nothing there
is written. Results: bench/results/transfer_search_<model>-<task>.json, one row per combination with both models'
test metrics and best validation value of the main metric. Choose by the pretrained model's validation value,
not by the test gain: picking the largest test gain would select the test set's noise.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import yaml

from bench.common import REPO_ROOT
from bench.workspace import read_only_view

RESULTS = REPO_ROOT / "bench" / "results"


def parse_grid(specs: list[str]) -> dict[str, list]:
    grid = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        grid[key] = [_value(v) for v in values.split(",")]
    return grid


def _value(text: str):
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def train_and_score(model: str, task: str, raw: dict) -> tuple[dict, list[dict], float, float | None]:
    """(test metrics, test items, seconds, best validation value of the main metric)."""
    from pipeline.core.config import parse_params
    from pipeline.core.metrics import main_metric
    from pipeline.train.driver import build

    start = time.perf_counter()
    trainer = build(model, task, parse_params(raw))
    outcome = trainer.fit(None)
    scores = trainer.score_test()
    column = f"val_{main_metric(task)}"
    values = [row[column] for row in outcome.curve if column in row]
    return scores.metrics, scores.items, time.perf_counter() - start, max(values, default=None)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer_search", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a finished run's repository")
    parser.add_argument("--model", required=True, help="the pretrained model (its scratch twin is <model>_scratch)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... of train.overrides")
    parser.add_argument("--seed", type=int, default=None, help="common.seed (default: params.yaml's)")
    parser.add_argument("--label", default="", help="suffix of the results file (one search beside another)")
    args = parser.parse_args(argv)

    from pipeline.compare.significance import paired_test
    from pipeline.core.config import TASK_SPECS

    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    if args.seed is not None:
        base["common"]["seed"] = args.seed
    twin = f"{args.model}_scratch"
    grid = parse_grid(args.grid)
    rows = []
    with read_only_view(args.workspace):
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values))
            raw = copy.deepcopy(base)
            key = f"{args.model}-{args.task}"
            raw["train"]["overrides"][key] = {**(raw["train"]["overrides"].get(key) or {}), **setting}
            results = {m: train_and_score(m, args.task, raw) for m in (args.model, twin)}
            test = paired_test(TASK_SPECS[args.task].kind, results[args.model][1], results[twin][1], 1000, 0)
            row = {
                "override": raw["train"]["overrides"][key],
                **{m: {"test": r[0], "validation": r[3], "seconds": round(r[2], 1)} for m, r in results.items()},
                "gain": round(test.gain, 4),
                "interval": [round(test.low, 4), round(test.high, 4)],
                "p_value": test.p_value,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"transfer_search_{args.model}-{args.task}{f'_{args.label}' if args.label else ''}.json"
    out.write_text(
        json.dumps({"workspace": str(args.workspace), "seed": base["common"]["seed"], "rows": rows}, indent=1)
    )
    print(f"-> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
