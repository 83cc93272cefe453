"""The compare stage's report files: reports/comparison.md, reports/comparison.json, reports/plots/*.png.

Every file is built next to its target and renamed into place, so a crash never leaves a half-written report.
comparison.json is read by `dvc metrics show/diff`: {task: {model: {metric: value}}, "best": {...},
"champion": {...}}; a combination without a run is {"status": "not run"} there (DVC drops null values). A cell also
holds <main>_ci_low/<main>_ci_high (95% bootstrap interval) and, for a model with a control, transfer_gain /
attention_gain with its _p_value, when the runs wrote test items.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.compare.leaderboard import (
    ATTENTION,
    COST_FIELDS,
    NOT_AVAILABLE,
    NOT_RUN,
    OK,
    TRANSFER,
    Row,
    best_per_task,
    rows_for,
)
from pipeline.core import paths
from pipeline.core.config import TASK_SPECS, TASKS
from pipeline.core.io import atomic_dir, write_json, write_text
from pipeline.core.metrics import main_metric, secondary_metrics

log = logging.getLogger(__name__)

MAIN_PLOT = "main_metric.png"
SCATTER_PLOT = "quality_vs_train_time.png"
HISTORY_SHOWN = 10


# ---------------------------------------------------------------- formatting
def fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    return f"{value:.2f}" if name in ("bleu", "chrf", "exact_match", "f1") else f"{value:.4f}"  # percent: 2 digits


def fmt_ci(name: str, ci: list[float] | None) -> str:
    return NOT_AVAILABLE if ci is None else f"[{fmt_metric(name, ci[0])}, {fmt_metric(name, ci[1])}]"


SIGNIFICANT_MARK = "*"


def fmt_gain(name: str, gain: dict | None) -> str:
    """`+0.1200 [+0.0800, +0.1600] *` vs <control> (p=...): the gain, its 95% interval, * when significant."""
    if gain is None:
        return ""
    sign = lambda v: ("+" if v >= 0 else "") + fmt_metric(name, v)  # noqa: E731
    mark = f" {SIGNIFICANT_MARK}" if gain["significant"] else ""
    return (
        f"{sign(gain['gain'])}{mark} [{sign(gain['low'])}, {sign(gain['high'])}] "
        f"vs {gain['control']} (p={gain['p_value']:.3f})"
    )


def fmt_count(value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {seconds:02d}s"


def fmt_number(value: float | None, digits: int = 1) -> str:
    return NOT_AVAILABLE if value is None else f"{value:,.{digits}f}"


# ---------------------------------------------------------------- comparison.json
def metrics_json(rows: list[Row], champions: dict) -> dict:
    out: dict = {}
    for task in TASKS:
        out[task] = {}
        for row in (r for r in rows if r.task == task):
            if row.status != OK:
                out[task][row.model] = {"status": row.status}
                continue
            cell = {name: row.test[name] for name in (main_metric(task), *secondary_metrics(task)) if name in row.test}
            cell.update({k: getattr(row, k) for k in COST_FIELDS if getattr(row, k) is not None})
            if row.main_ci is not None:
                cell[f"{main_metric(task)}_ci_low"], cell[f"{main_metric(task)}_ci_high"] = row.main_ci
            for name in (TRANSFER, ATTENTION):
                gain = getattr(row, name)
                if gain is not None:
                    cell[name], cell[f"{name}_p_value"] = gain["gain"], gain["p_value"]
            out[task][row.model] = cell
    out["best"] = {task: {"model": b["model"], b["metric"]: b["value"]} for task, b in best_per_task(rows).items()}
    out["champion"] = {}
    for task, state in champions.items():
        leader = state.get("leader")
        if leader and leader.get("metric_value") is not None:
            out["champion"][task] = {
                "model": leader["model"],
                "version": leader["version"],
                state["metric"]: leader["metric_value"],
            }
    return out


# ---------------------------------------------------------------- comparison.md
def _table(rows: list[Row], task: str) -> list[str]:
    main, extra = main_metric(task), secondary_metrics(task)
    head = [
        "model",
        "family",
        "weights",
        f"**{main}**",
        "95% CI",
        "transfer gain",
        "attention gain",
        *extra,
        "params",
        "train time",
        "tokens/s",
        "latency ms/example",
        "MLflow run",
        "registered",
        "status",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows_for(rows, task):
        if r.status != OK:
            metrics = [NOT_RUN, "", "", "", *([NOT_RUN] * len(extra))]
            cells = [r.model, r.family or "", r.weight_source or "", *metrics, *([""] * 6), NOT_RUN]
        else:
            version = r.registered_version or NOT_AVAILABLE
            if r.champion:
                version += " (champion)"
            cells = [
                r.model,
                r.family or NOT_AVAILABLE,
                r.weight_source or NOT_AVAILABLE,
                f"**{fmt_metric(main, r.main_value)}**",
                fmt_ci(main, r.main_ci),
                fmt_gain(main, r.transfer_gain),
                fmt_gain(main, r.attention_gain),
                *(fmt_metric(m, r.test.get(m)) for m in extra),
                fmt_count(r.param_count),
                fmt_seconds(r.train_time_s),
                fmt_number(r.tokens_per_s, 0),
                fmt_number(r.latency_ms_per_example, 2),
                f"`{r.mlflow_run_id}`" if r.mlflow_run_id else "",
                version,
                "; ".join(r.notes) or OK,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _significance_cell(gain: dict) -> str:
    if not gain["significant"]:
        return "no"
    return f"yes {SIGNIFICANT_MARK}" + (" (control better)" if gain["gain"] < 0 else "")


def _gains_section(rows: list[Row]) -> list[str]:
    """What pretraining and attention add: every model's gain over its control, significant ones marked."""
    lines = [
        "## Gains over the controls",
        "",
        "transfer gain = pretrained model - its scratch twin (same architecture and tokenizer, random init); "
        "attention gain = rnn - rnn_noattn. Main metric on the test set; [95% bootstrap interval]; "
        f"{SIGNIFICANT_MARK} = significant (one-sided paired bootstrap p-value, in the direction of the observed "
        "gain, below compare.significance_level); a significant negative gain means the control did better.",
        "",
        "| task | model | gain | control | gain (main metric) | 95% CI | p-value | significant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    found = False
    for task in TASKS:
        main = main_metric(task)
        for r in rows_for(rows, task):
            for name in (TRANSFER, ATTENTION):
                g = getattr(r, name)
                if g is None:
                    continue
                found = True
                lines.append(
                    f"| {task} | {r.model} | {name.replace('_', ' ')} | {g['control']} | "
                    f"{'+' if g['gain'] >= 0 else ''}{fmt_metric(main, g['gain'])} | "
                    f"[{fmt_metric(main, g['low'])}, {fmt_metric(main, g['high'])}] | {g['p_value']:.3f} | "
                    f"{_significance_cell(g)} |"
                )
    if not found:
        lines.append(f"| {NOT_AVAILABLE} | no model and control both have test items |  |  |  |  |  |  |")
    return lines


EXAMPLES_SHOWN = 3  # summarization examples per task in the report (examples.jsonl holds 5 per model)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def examples_section(task: str, examples: list[dict]) -> list[str]:
    """A summarization task's first test examples: the dialogue, the reference and every model's output."""
    if not examples:
        return []
    lines = [f"## {task}: example outputs", ""]
    for example in examples[:EXAMPLES_SHOWN]:
        lines += [
            f"**Test example {example['index']}.** Source: {_cell(example['source'])}",
            "",
            "| model | output |",
            "|---|---|",
            f"| *reference* | {_cell(example['reference'])} |",
            *[f"| {model} | {_cell(output)} |" for model, output in example.get("outputs", {}).items()],
            "",
        ]
    return lines


def markdown(
    rows: list[Row],
    champions: dict,
    history: list[dict],
    plots_rel: str = "plots",
    examples: dict[str, list[dict]] | None = None,
) -> str:
    """The report; `examples`: task -> its test examples with every model's output (summarization tasks)."""
    best = best_per_task(rows)
    done = sum(r.status == OK for r in rows)
    lines = [
        "# Model comparison",
        "",
        f"Test-set results of {len({r.model for r in rows})} models on {len(TASKS)} tasks "
        f"({done} of {len(rows)} combinations run). Higher is better for every quality metric.",
        "",
        "GPT vs BERT (objectives, use cases, architecture), measured on this run: [gpt_vs_bert.md](gpt_vs_bert.md).",
        "",
        "## Best model per task",
        "",
        "| task | metric | best model (this run) | value | champion (registry) |",
        "|---|---|---|---|---|",
    ]
    for task in TASKS:
        b = best.get(task)
        leader = (champions.get(task) or {}).get("leader")
        champ = f"{leader['registered_model']} v{leader['version']}" if leader else "none"
        if b:
            lines.append(f"| {task} | {b['metric']} | {b['model']} | {fmt_metric(b['metric'], b['value'])} | {champ} |")
        else:
            lines.append(f"| {task} | {main_metric(task)} | {NOT_RUN} | {NOT_AVAILABLE} | {champ} |")
    lines += ["", *_gains_section(rows)]
    for task in TASKS:
        lines += ["", f"## {task} (main metric: {main_metric(task)})", "", *_table(rows, task)]
    for task, task_examples in (examples or {}).items():
        lines += ["", *examples_section(task, task_examples)]
    lines += [
        "",
        "## Plots",
        "",
        f"![main metric per model and task]({plots_rel}/{MAIN_PLOT})",
        "",
        f"![quality vs train time]({plots_rel}/{SCATTER_PLOT})",
        "",
    ]
    if history:
        lines += [
            "## Recent champion changes",
            "",
            "| time | event | registered model | version | metric |",
            "|---|---|---|---|---|",
        ]
        for e in history[-HISTORY_SHOWN:][::-1]:
            metric = (
                f"{e.get('metric')}: {fmt_metric(e.get('metric', ''), e.get('old_metric'))} -> "
                f"{fmt_metric(e.get('metric', ''), e.get('new_metric'))}"
            )
            lines.append(
                f"| {e.get('time')} | {e.get('event')} | {e.get('registered_model')} | "
                f"{e.get('old_version') or 'none'} -> {e.get('new_version') or 'none'} | {metric} |"
            )
        lines.append("")
    return "\n".join(lines)


def summarization_examples(rows: list[Row], root: Path) -> dict[str, list[dict]]:
    """task -> its test examples with each model's output side by side, for the summarization tasks."""
    from pipeline.train.examples import gather_examples

    out = {}
    for task in TASKS:
        if TASK_SPECS[task].kind == "summarization":
            models = [r.model for r in rows_for(rows, task) if r.status == OK]
            out[task] = gather_examples(task, models, root)
    return out


# ---------------------------------------------------------------- plots
def _task_panels(target: Path, title: str, draw) -> None:
    """One panel per task, two per row, titled with the task and labelled with its main metric;
    draw(ax, task) fills a panel. Saved to `target`."""
    import matplotlib.pyplot as plt

    n_rows = (len(TASKS) + 1) // 2
    fig, axes = plt.subplots(n_rows, 2, figsize=(10, 3.4 * n_rows), squeeze=False)
    for ax, task in zip(axes.flat, TASKS):
        draw(ax, task)
        ax.set_title(task)
        ax.set_ylabel(main_metric(task))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def _plot_main(rows: list[Row], target: Path) -> None:
    def draw(ax, task):
        mine = [r for r in rows if r.task == task]
        values = [r.main_value or 0.0 for r in mine]
        bars = ax.bar([r.model for r in mine], values, color=["#4c72b0" if r.status == OK else "#cccccc" for r in mine])
        for bar, r in zip(bars, mine):
            label = fmt_metric(main_metric(task), r.main_value) if r.status == OK else NOT_RUN
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90 if r.status != OK else 0,
            )
        ax.set_ylim(0, max(values + [1e-9]) * 1.15)

    _task_panels(target, "Test main metric per model and task", draw)


def _plot_scatter(rows: list[Row], target: Path) -> None:
    from matplotlib.ticker import NullFormatter

    def draw(ax, task):
        mine = [r for r in rows if r.task == task and r.main_value is not None and r.train_time_s]
        ax.scatter([r.train_time_s for r in mine], [r.main_value for r in mine], color="#dd8452")
        for r in mine:
            ax.annotate(r.model, (r.train_time_s, r.main_value), fontsize=8, xytext=(3, 3), textcoords="offset points")
        if mine:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.margins(0.2)
        else:
            ax.text(0.5, 0.5, NOT_RUN, ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("train time (s, log)")

    _task_panels(target, "Quality vs training time", draw)


def write_plots(rows: list[Row], target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    with atomic_dir(target) as tmp:
        _plot_main(rows, tmp / MAIN_PLOT)
        _plot_scatter(rows, tmp / SCATTER_PLOT)
    return target


# ---------------------------------------------------------------- all reports
def write_reports(
    rows: list[Row], champions: dict, history: list[dict], root: Path | None = None
) -> tuple[dict[str, Path], str]:
    """Write comparison.md/.json and plots/ under reports/; returns ({artifact name: path}, the markdown)."""
    reports = (root or Path.cwd()) / paths.REPORTS
    plots = write_plots(rows, reports / "plots")
    text = markdown(rows, champions, history, examples=summarization_examples(rows, root or Path.cwd()))
    write_text(reports / "comparison.md", text)
    write_json(reports / "comparison.json", metrics_json(rows, champions))
    log.info("Wrote %s, %s and %s", reports / "comparison.md", reports / "comparison.json", plots)
    return {
        "comparison.md": reports / "comparison.md",
        "comparison.json": reports / "comparison.json",
        "plots": plots,
    }, text
