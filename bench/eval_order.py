"""Evaluation batch order: the Trainer's test prediction with longest-first batches (the pipeline's
`OrderedEvaluation`) against the dataset's order (the plain Trainer's sampler), on one trainer, interleaved.

Each pair builds the fine-tuning setup of a finished run (`pipeline.train.driver.build`: its prepared data, pretrained
checkpoint and tokenizer, read through a temporary view) and predicts the whole test split in both orders, A/B
interleaved. No training: the weights do not change what is measured (the padding each batch carries and its cost),
and the two arms must give the same metrics, since the order is restored before scoring.
"""

from __future__ import annotations

import logging
import math

from bench.common import NOT_MEASURED, BenchOptions, interleave_many, result_body, row, summarize, verdict
from bench.workspace import NOT_RUN_HINT, find_finished_workspace, read_only_view

log = logging.getLogger("bench")

NAME = "eval_order"
# the Trainer families' slowest test predictions in the default run (bench/results/whole_pipeline.json, test_s)
PAIRS = (("minilm", "emotion"), ("minilm", "conll2003"), ("gpt", "emotion"))
QUICK_PAIRS = (("gpt", "emotion"),)


def _metrics(output) -> dict:
    return {k: v for k, v in output.metrics.items() if not k.endswith(("runtime", "per_second", "preparation_time"))}


def same_metrics(a: dict, b: dict) -> bool:
    """The same scores, up to float summation order. The loss is left out: the Trainer averages the batches' mean
    losses, so a token-level loss (NER) depends on which rows share a batch even when every prediction is the same."""
    scores = [k for k in a if not k.endswith("loss")]
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-9) for k in scores)


def loss_note(a: dict, b: dict) -> str:
    key = next((k for k in a if k.endswith("loss")), None)
    if key is None or key not in b:
        return ""
    return f"; {key} {a[key]:.4f} vs {b[key]:.4f} (a mean of batch means)"


def measure_pair(model: str, task: str, params, reps: int) -> dict:
    from pipeline.train.driver import build
    from pipeline.train.finetune import build_trainer

    family = build(model, task, params)
    trainer = build_trainer(family.setup, family.settings, [], resuming=False)
    test = family.setup.encoded["test"]
    metrics = {}

    def arm(name: str, longest_first: bool):
        def predict():
            trainer.longest_first = longest_first
            metrics[name] = _metrics(trainer.predict(test, metric_key_prefix="test"))

        return predict

    arms = {"longest_first": arm("longest_first", True), "dataset_order": arm("dataset_order", False)}
    times = interleave_many(arms, reps)
    return {
        "rows": len(test),
        "longest_first": summarize(times["longest_first"]),
        "dataset_order": summarize(times["dataset_order"]),
        "order": times["order"],
        "metrics": metrics,
        "same_metrics": same_metrics(metrics["longest_first"], metrics["dataset_order"]),
    }


def run(opts: BenchOptions, ctx: dict) -> dict:
    root, why = find_finished_workspace(opts.workspace, check_status=False)
    if root is None:
        item = "test prediction, longest first vs dataset order"
        return result_body([row(item, "report", "-", NOT_MEASURED, f"{NOT_RUN_HINT} ({why})")])
    from pipeline.core.config import load_params

    params = load_params(root / "params.yaml")
    results, rows = {}, []
    with read_only_view(root):
        for model, task in QUICK_PAIRS if opts.quick else PAIRS:
            name = f"{model}-{task}"
            results[name] = r = measure_pair(model, task, params, opts.pick(2, 1))
            a, b = r["longest_first"]["median"], r["dataset_order"]["median"]
            rows.append(
                row(
                    f"{name}: test prediction ({r['rows']} rows), longest first vs dataset order",
                    "faster, the same metrics",
                    f"{a:.2f} vs {b:.2f} s ({a / b:.2f}x)",
                    verdict(a < b and r["same_metrics"]),
                    ("scores identical" if r["same_metrics"] else f"scores differ: {r['metrics']}")
                    + loss_note(r["metrics"]["longest_first"], r["metrics"]["dataset_order"]),
                )
            )
    return result_body(rows, workspace=str(root), pairs=results)
