"""reports/gpt_vs_bert.md: the seed's "key differences" between GPT and BERT, measured on this run.

Every number comes from the run's own outputs, none is typed here:
- Objective: the pretraining curves side by side (data/pretrain/<family>/plots/loss.csv: GPT's causal-LM loss,
  BERT's MLM + NSP loss), the held-out numbers before and after pretraining (metrics.json), what each objective
  lets a token see (the causal vs bidirectional mask) and the actual attention weights of both pretrained models
  on the same held-out sentence.
- Use case: per task, gpt vs bert (and minilm, the loaded BERT-family checkpoint) on the task's main metric with
  its 95 % bootstrap interval where the compare stage computed one; who wins, by how much, whether that is what
  the seed predicts (BERT for discriminative tasks, GPT for generative ones), and when it is not, the measured
  cause (how much each pretraining learned, the transfer gain over the scratch twin).
- Architecture: parameters, layers, heads, width, context length and vocabulary from each model's config.json,
  and how each family is adapted to each task kind (ADAPTATION: which head, which pooling, which tokens carry the
  loss; it describes pipeline/train/finetune_setup.py).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.compare.leaderboard import OK, Row
from pipeline.core import paths
from pipeline.core.config import TASK_SPECS, TASKS
from pipeline.core.io import atomic_file, write_text
from pipeline.core.metrics import main_metric

log = logging.getLogger(__name__)

REPORT = "gpt_vs_bert.md"
CURVES_PLOT = "gpt_vs_bert_pretraining.png"
ATTENTION_PLOT = "gpt_vs_bert_attention.png"
DISCRIMINATIVE = ("classification", "ner", "qa")  # the seed: BERT's kind of task; the rest (generation) is GPT's
MAX_SENTENCE_TOKENS = 14
LITTLE_LEARNED_MLM_ACCURACY = 0.2  # below this held-out MLM accuracy an encoder has learned little to transfer

# How each family is adapted to each task kind (what pipeline/train/finetune_setup.py builds).
ADAPTATION = {
    "classification": (
        "GPT2ForSequenceClassification: a linear head on the last non-padding token's hidden state "
        "(the only position that has seen the whole text); loss on the label",
        "BertForSequenceClassification: a linear head on the pooled [CLS] state; loss on the label",
    ),
    "ner": (
        "GPT2ForTokenClassification: a linear head per token; loss on each word's first sub-token; a token sees "
        "only the words to its left",
        "BertForTokenClassification: a linear head per token; loss on each word's first sub-token; a token sees "
        "the whole sentence",
    ),
    "qa": (
        "conditional LM: context + question + 'Answer:' cue, then the answer text; loss on the answer tokens "
        "only; the answer is generated",
        "BertForQuestionAnswering: start/end logits per context token (extractive span, long contexts in "
        "strided windows); loss on the two positions",
    ),
    "translation": (
        "conditional LM: English prompt, then the German text; loss on the German tokens only",
        "encoder-decoder: the BERT encoder + this pipeline's GPT as decoder with new cross-attention; loss on "
        "the German tokens",
    ),
    "summarization": (
        "conditional LM: the dialogue, a 'Summary:' cue, then the summary; loss on the summary tokens only",
        "encoder-decoder: the BERT encoder + this pipeline's GPT as decoder with new cross-attention; loss on "
        "the summary tokens",
    ),
}


@dataclass
class Pretrained:
    family: str
    metrics: dict  # data/pretrain/<family>/metrics.json
    curve: list[dict[str, float]]  # step, loss[, eval_loss]
    config: dict  # model/config.json


def read_pretrained(family: str, root: Path) -> Pretrained | None:
    folder = root / paths.pretrain_dir(family)
    metrics, config = folder / "metrics.json", folder / "model" / "config.json"
    if not metrics.exists() or not config.exists():
        return None
    curve = []
    loss_csv = folder / "plots" / "loss.csv"
    if loss_csv.exists():
        with open(loss_csv, newline="", encoding="utf-8") as f:
            curve = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return Pretrained(
        family,
        json.loads(metrics.read_text(encoding="utf-8")),
        curve,
        json.loads(config.read_text(encoding="utf-8")),
    )


# ---------------------------------------------------------------- figures
def _save(figure, target: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_curves(gpt: Pretrained, bert: Pretrained, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, model, title in (
        (axes[0], gpt, "GPT: causal LM loss (next token)"),
        (axes[1], bert, "BERT: MLM + NSP loss"),
    ):
        steps = [r["step"] for r in model.curve if "loss" in r]
        ax.plot(steps, [r["loss"] for r in model.curve if "loss" in r], label="train")
        evals = [r for r in model.curve if "eval_loss" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    _save(fig, target)
    return target


def attention_weights(model_dir: Path, sentence: str, causal: bool):
    """(tokens, [seq, seq] attention of the last layer averaged over heads) of a pretrained model on `sentence`."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from pipeline.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the pretraining heads (MLM, NSP) are not needed here: no load report
    try:
        model = AutoModel.from_pretrained(
            str(model_dir), use_safetensors=True, trust_remote_code=False, attn_implementation="eager"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    enc = tokenizer(sentence, return_tensors="pt", truncation=True, max_length=MAX_SENTENCE_TOKENS)
    if not causal:
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    weights = out.attentions[-1][0].mean(0)  # [seq, seq]: the last layer, averaged over heads
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return [t.replace("Ġ", "_") for t in tokens], weights.numpy()


def plot_attention(gpt_dir: Path, bert_dir: Path, sentence: str, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gpt_tokens, gpt_w = attention_weights(gpt_dir, sentence, causal=True)
    bert_tokens, bert_w = attention_weights(bert_dir, sentence, causal=False)
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    panels = (
        (axes[0, 0], np.tril(np.ones((len(gpt_tokens),) * 2)), gpt_tokens, "GPT mask: causal (token i sees 0..i)"),
        (axes[0, 1], np.ones((len(bert_tokens),) * 2), bert_tokens, "BERT mask: bidirectional (sees every token)"),
        (axes[1, 0], gpt_w, gpt_tokens, "GPT attention (last layer, mean over heads)"),
        (axes[1, 1], bert_w, bert_tokens, "BERT attention (last layer, mean over heads)"),
    )
    fig.subplots_adjust(hspace=0.45, wspace=0.35)
    for ax, matrix, tokens, title in panels:
        ax.imshow(matrix, cmap="viridis", vmin=0, vmax=float(matrix.max()) or 1.0)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_xlabel("attends to")
        ax.set_title(title, fontsize=9)
    _save(fig, target)
    return target


# ---------------------------------------------------------------- tables
def _param_count(config: dict, pretrained: Pretrained) -> str:
    count = pretrained.metrics.get("param_count")
    return f"{count / 1e6:.2f}M" if count else "n/a"


def architecture_lines(gpt: Pretrained | None, bert: Pretrained | None) -> list[str]:
    def get(p: Pretrained | None, *keys):
        if p is None:
            return "n/a"
        for key in keys:
            if key in p.config:
                return str(p.config[key])
        return "n/a"

    lines = [
        "| | GPT (decoder-only) | BERT (encoder-only) |",
        "|---|---|---|",
        f"| parameters | {_param_count(gpt.config, gpt) if gpt else 'n/a'} | "
        f"{_param_count(bert.config, bert) if bert else 'n/a'} |",
        f"| layers | {get(gpt, 'n_layer')} | {get(bert, 'num_hidden_layers')} |",
        f"| attention heads | {get(gpt, 'n_head')} | {get(bert, 'num_attention_heads')} |",
        f"| width | {get(gpt, 'n_embd')} | {get(bert, 'hidden_size')} |",
        f"| context length | {get(gpt, 'n_positions')} | {get(bert, 'max_position_embeddings')} |",
        f"| vocabulary | {get(gpt, 'vocab_size')} (byte-level BPE) | {get(bert, 'vocab_size')} (WordPiece) |",
        "| attention mask | causal | bidirectional |",
        "| pretraining objective | next-token prediction | masked LM (15 %, 80/10/10) + next-sentence prediction |",
    ]
    return lines


def objective_lines(gpt: Pretrained | None, bert: Pretrained | None) -> list[str]:
    lines = ["| held-out | before pretraining | after pretraining |", "|---|---|---|"]
    if gpt:
        before, after = gpt.metrics.get("heldout_initial", {}), gpt.metrics.get("heldout", {})
        lines.append(
            f"| GPT perplexity | {before.get('perplexity', float('nan')):.1f} | "
            f"{after.get('perplexity', float('nan')):.1f} |"
        )
    if bert:
        before, after = bert.metrics.get("heldout_initial", {}), bert.metrics.get("heldout", {})
        for key, name in (("mlm_accuracy", "BERT masked-token accuracy"), ("nsp_accuracy", "BERT NSP accuracy")):
            lines.append(
                f"| {name} | {100 * before.get(key, float('nan')):.1f} % | {100 * after.get(key, float('nan')):.1f} % |"
            )
    return lines


def _fmt(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4g}"
    return f"{text} [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else text


def use_case_lines(
    rows: list[Row],
    interval: Callable[[Row], tuple[float, float] | None],
    gain: Callable[[str, str], str | None],
    bert: Pretrained | None,
) -> list[str]:
    """One line per task: gpt vs bert (minilm for reference), the winner, whether the seed predicts it, why not."""
    by_key = {(r.task, r.model): r for r in rows if r.status == OK}
    lines = [
        "| task | kind | metric | gpt | bert | minilm | winner (gpt vs bert) | seed expects | agrees |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    causes = []
    for task in TASKS:
        kind, metric = TASK_SPECS[task].kind, main_metric(task)
        cells = {m: by_key.get((task, m)) for m in ("gpt", "bert", "minilm")}
        values = {m: (r.main_value if r else None) for m, r in cells.items()}
        expected = "bert" if kind in DISCRIMINATIVE else "gpt"
        if values["gpt"] is None or values["bert"] is None:
            winner, agrees = "n/a", "n/a"
        else:
            winner = "gpt" if values["gpt"] > values["bert"] else "bert"
            margin = abs(values["gpt"] - values["bert"])
            agrees = "yes" if winner == expected else "**no**"
            winner = f"{winner} by {margin:.4g}"
            if winner.split()[0] != expected:
                causes.append(_cause(task, expected, bert, gain))
        lines.append(
            f"| {task} | {kind} | {metric} | "
            + " | ".join(_fmt(values[m], interval(cells[m]) if cells[m] else None) for m in ("gpt", "bert", "minilm"))
            + f" | {winner} | {expected} | {agrees} |"
        )
    if causes:
        lines += ["", "Where the result contradicts the seed, measured causes:", ""] + [f"- {c}" for c in causes]
    return lines


def _cause(task: str, expected: str, bert: Pretrained | None, gain: Callable[[str, str], str | None]) -> str:
    parts = [f"**{task}**: the seed expects {expected}."]
    if expected == "bert" and bert is not None:
        accuracy = bert.metrics.get("heldout", {}).get("mlm_accuracy")
        if accuracy is not None:
            learned = "has learned little to transfer" if accuracy < LITTLE_LEARNED_MLM_ACCURACY else "learned"
            parts.append(f"This BERT predicts {100 * accuracy:.1f} % of held-out masked tokens: it {learned}.")
    for model in ("gpt", "bert"):
        text = gain(task, model)
        if text:
            parts.append(f"{model} transfer gain over its scratch twin: {text}.")
    return " ".join(parts)


def adaptation_lines() -> list[str]:
    lines = ["| task kind | GPT | BERT |", "|---|---|---|"]
    kinds = sorted({spec.kind for spec in TASK_SPECS.values()}, key=list(ADAPTATION).index)
    for kind in kinds:
        gpt, bert = ADAPTATION[kind]
        lines.append(f"| {kind} | {gpt} | {bert} |")
    return lines


SAMPLES_SHOWN = 5


def generation_lines(root: Path) -> list[str]:
    """The generate stage's held-out perplexity and its first samples (data/generate/), or what to run."""
    folder = root / paths.GENERATE
    metrics_file, samples_file = folder / "metrics.json", folder / "samples.jsonl"
    if not metrics_file.exists() or not samples_file.exists():
        return ["The generate stage has not run (data/generate/): `dvc repro generate`.", ""]
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    perplexity = metrics.get("heldout", {}).get("perplexity")
    lines = [
        f"The pretrained GPT completes held-out prompts (the `generate` stage, sampling settings in params.yaml "
        f"`generate`; registered as `generation-gpt`). Held-out perplexity: "
        f"{'n/a' if perplexity is None else f'{perplexity:.1f}'} (vocabulary {metrics.get('vocab_size', 'n/a')}: "
        "a model that learned nothing scores about the vocabulary size). BERT has no such use: it fills in masked "
        "tokens, it does not continue a text.",
        "",
        "| prompt | GPT's continuation |",
        "|---|---|",
    ]
    for sample in samples[:SAMPLES_SHOWN]:
        cells = [str(sample.get(k, "")).replace("|", "\\|").replace("\n", " ") for k in ("prompt", "completion")]
        lines.append(f"| {cells[0]} | {cells[1]} |")
    return [*lines, ""]


# ---------------------------------------------------------------- the report
def heldout_sentence(root: Path) -> str | None:
    path = root / paths.CORPUS / "heldout.txt"
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) >= 8:
            return " ".join(words[:12])
    return None


def row_interval(row: Row) -> tuple[float, float] | None:
    """The row's 95 % bootstrap interval of its main metric (the compare stage's add_significance), if any."""
    return (row.main_ci[0], row.main_ci[1]) if row.main_ci else None


def transfer_gain_text(rows: list[Row]) -> Callable[[str, str], str | None]:
    """(task, model) -> the model's transfer gain over its scratch twin as the leaderboard writes it, if measured."""
    from pipeline.compare.report import fmt_gain

    by_key = {(r.task, r.model): r for r in rows}

    def text(task: str, model: str) -> str | None:
        row = by_key.get((task, model))
        if row is None or not row.transfer_gain:
            return None
        gain = row.transfer_gain
        verdict = "significant" if gain["significant"] else "not significant"
        if gain["significant"] and gain["gain"] < 0:
            verdict += ": the scratch twin did better"
        return f"{fmt_gain(main_metric(task), gain)}, {verdict}"

    return text


def write_gpt_vs_bert(
    rows: list[Row],
    root: Path,
    interval: Callable[[Row], tuple[float, float] | None] = row_interval,
    gain: Callable[[str, str], str | None] | None = None,
) -> tuple[Path, str]:
    """Write reports/gpt_vs_bert.md and its two figures (reports/plots/); returns (path, markdown).
    `interval(row)`: the row's 95 % bootstrap interval of the main metric (default: the row's main_ci);
    `gain(task, model)`: the transfer gain over the scratch twin as text (default: from the rows)."""
    gain = gain or transfer_gain_text(rows)
    reports = root / paths.REPORTS
    gpt, bert = read_pretrained("gpt", root), read_pretrained("bert", root)
    lines = [
        "# GPT vs BERT, measured",
        "",
        "Generated by the compare stage from this run's outputs (pretraining metrics and curves, the models' configs,",
        "the leaderboard); back to the [leaderboard](comparison.md).",
        "",
        "## Objective: what each model learns from and sees",
        "",
    ]
    if gpt and bert:
        plot_curves(gpt, bert, reports / "plots" / CURVES_PLOT)
        lines += [f"![pretraining curves](plots/{CURVES_PLOT})", ""]
        sentence = heldout_sentence(root)
        if sentence:
            try:
                plot_attention(
                    root / paths.pretrain_dir("gpt") / "model",
                    root / paths.pretrain_dir("bert") / "model",
                    sentence,
                    reports / "plots" / ATTENTION_PLOT,
                )
                lines += [
                    f"The masks and the pretrained models' attention on a held-out sentence: *{sentence}*",
                    "",
                    f"![attention masks and weights](plots/{ATTENTION_PLOT})",
                    "",
                ]
            except Exception as err:  # a figure must not fail the comparison
                log.warning("attention figure not drawn: %s", err)
        lines += objective_lines(gpt, bert) + [""]
    else:
        lines += ["Pretraining outputs not found (data/pretrain/{gpt,bert}): run the pretrain stages.", ""]
    lines += [
        "## Use case: discriminative vs generative tasks",
        "",
        "Main test metric per task with its 95 % bootstrap interval where computed. The seed's expectation: BERT",
        "(bidirectional, masked) for discriminative tasks (classification, NER, extractive QA), GPT (causal,",
        "generative) for generation (translation, summarization).",
        "",
        *use_case_lines(rows, interval, gain, bert),
        "",
        "### Text generation: GPT's native use",
        "",
        *generation_lines(root),
        "## Architecture and how each is adapted to a task",
        "",
        *architecture_lines(gpt, bert),
        "",
        *adaptation_lines(),
        "",
    ]
    text = "\n".join(lines)
    target = reports / REPORT
    write_text(target, text)
    log.info("Wrote %s", target)
    return target, text
