"""Models trained from scratch, text-to-text, on every task: the GRU baseline (rnn) and a transformer
encoder-decoder (encdec).

Each task becomes source -> target text: emotion/sst2 -> the label name, conll2003 -> one tag per source word,
multi30k -> the German sentence. Outputs are mapped back to labels/tags/text and scored with pipeline.core.metrics like
every other model; an output that is no label (or a tag sequence with invalid tags or the wrong length) is
scored as wrong (classification) or repaired to 'O'/padded (NER), and its rate is reported as `invalid_rate`.

`train_text2text(model, task, params)` trains (resuming from checkpoints/finetune-<model>-<task>/), scores the
test split once with the best checkpoint, registers `<task>-<model>` in MLflow and writes
data/models/<model>-<task>/{metrics.json, plots/}. The per-family training lives in text2text_rnn.py and
text2text_encdec.py.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.core import paths
from pipeline.core.config import TASK_SPECS, Params
from pipeline.core.metrics import MAIN_METRIC, classification_metrics, ner_metrics, translation_metrics
from pipeline.core.io import METRICS_FILE, PLOTS_DIR
from pipeline.models.ner_tagger import text_entities

log = logging.getLogger(__name__)

FAMILIES = ("rnn", "encdec")
ATTENTION_EXAMPLES = 3  # first N validation examples get an attention heatmap
LATENCY_EXAMPLES = 20  # as pipeline.train.finetune: batch-1 inference over the first 20 test examples
INVALID_LABEL = "<invalid>"  # how an output that is no label shows up in confusion.csv
_WORD = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")


class Text2TextError(RuntimeError):
    """An input of the scratch stage is missing or malformed; the message says what to run."""


# ---------------------------------------------------------------- words
def word_tokenize(text: str) -> list[str]:
    """Words and punctuation, case kept: "A man's hat." -> ["A", "man's", "hat", "."]."""
    return _WORD.findall(text)


def detokenize(words: Sequence[str]) -> str:
    text = " ".join(words)
    text = re.sub(r" ([.,!?;:%)\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text)


class Vocab:
    """Word <-> id; ids 0-3 are <pad>, <unk>, <sos>, <eos> (pipeline.models.seq2seq_rnn's reserved ids)."""

    SPECIALS = ("<pad>", "<unk>", "<sos>", "<eos>")

    def __init__(self, itos: Sequence[str]):
        if tuple(itos[: len(self.SPECIALS)]) != self.SPECIALS:
            raise ValueError(f"a vocabulary must start with {self.SPECIALS}, got {list(itos[:4])}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, sequences: Sequence[Sequence[str]], min_freq: int = 1) -> "Vocab":
        counts = Counter(w for seq in sequences for w in seq)
        # most frequent first, ties alphabetical: the same data always gives the same ids
        words = sorted((w for w, c in counts.items() if c >= min_freq and w not in cls.SPECIALS), key=lambda w: (-counts[w], w))
        return cls([*cls.SPECIALS, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str]) -> list[int]:
        unk = self.stoi["<unk>"]
        return [self.stoi.get(w, unk) for w in words]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.itos[i] for i in ids]


# ---------------------------------------------------------------- task <-> text
@dataclass
class TaskFormat:
    """How one task becomes text-to-text and back."""

    task: str
    kind: str  # classification | ner | translation
    label_names: list[str] = field(default_factory=list)  # class names, or the NER tag set

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.kind]

    def source_words(self, example: dict) -> list[str]:
        if self.kind == "ner":
            return list(example["tokens"])
        return word_tokenize(example["en"] if self.kind == "translation" else example["text"])

    def source_text(self, example: dict) -> str:
        if self.kind == "ner":
            return " ".join(example["tokens"])
        return example["en"] if self.kind == "translation" else example["text"]

    def target_words(self, example: dict) -> list[str]:
        if self.kind == "classification":
            return [self.label_names[example["label"]]]
        if self.kind == "ner":
            return [self.label_names[t] for t in example["ner_tags"]]
        return word_tokenize(example["de"])

    def target_text(self, example: dict) -> str:
        if self.kind == "translation":
            return example["de"]
        return " ".join(self.target_words(example))

    def gold(self, example: dict) -> Any:
        if self.kind == "classification":
            return int(example["label"])
        if self.kind == "ner":
            return [self.label_names[t] for t in example["ner_tags"]]
        return example["de"]

    def prediction(self, output: Sequence[str], n_words: int) -> tuple[Any, bool]:
        """A model's output words -> (prediction in the gold's form, whether the output was valid)."""
        if self.kind == "classification":
            name = " ".join(output).strip()
            return (self.label_names.index(name), True) if name in self.label_names else (-1, False)
        if self.kind == "ner":
            tags = [t if t in self.label_names else "O" for t in output][:n_words]
            valid = len(output) == n_words and all(t in self.label_names for t in output)
            return tags + ["O"] * (n_words - len(tags)), valid
        return detokenize(output), True

    def score(self, golds: Sequence[Any], predictions: Sequence[Any], valid: Sequence[bool]) -> dict[str, float]:
        if self.kind == "classification":
            metrics = classification_metrics(golds, predictions, len(self.label_names))
        elif self.kind == "ner":
            metrics = ner_metrics(golds, predictions)
        else:
            metrics = translation_metrics(golds, predictions)
        metrics["invalid_rate"] = 1.0 - sum(valid) / max(len(valid), 1)
        return metrics

    def natural(self, prediction: Any, text: str) -> Any:
        """The served form: a label name, the entities found in `text` (NER: its whitespace-separated words), or
        the German text."""
        if self.kind == "classification":
            return self.label_names[prediction] if prediction >= 0 else self.label_names[0]
        if self.kind == "ner":
            return text_entities(text, prediction)  # the same entities as the fine-tuned NER models serve
        return prediction


def serving_example(fmt: TaskFormat, split, n: int = 2) -> list[str]:
    """The first test inputs as served: a list of texts (NER: the words joined by spaces), as the fine-tuned
    models' registered examples."""
    return [fmt.source_text(split[i]) for i in range(min(n, len(split)))]


def task_format(task: str, train_split) -> TaskFormat:
    """The task's format, with its label names read from the data's ClassLabel features."""
    kind = TASK_SPECS[task].kind
    features = train_split.features
    if kind == "classification":
        names = list(features["label"].names)
    elif kind == "ner":
        inner = features["ner_tags"]
        names = list(getattr(inner, "feature", inner).names)
    else:
        names = []
    return TaskFormat(task, kind, names)


# ---------------------------------------------------------------- what a family trainer hands back
@dataclass
class TrainOutcome:
    curve: list[dict[str, float]]  # one row per epoch: epoch, train_loss, val_loss, val_<metric>...
    best_epoch: int | None
    train_time_s: float
    tokens_per_s: float
    param_count: int


@dataclass
class AttentionMap:
    source: list[str]
    output: list[str]
    weights: Any  # [output_len, source_len] array, rows sum to 1


class Text2TextModel:
    """What train_text2text needs from a family (implemented in text2text_rnn / text2text_encdec)."""

    family: str
    fmt: TaskFormat
    data: Any  # the prepared DatasetDict

    def __init__(self, model_name: str, fmt: TaskFormat, data, params: Params):
        """The run settings every family reads: model params, task training params with the model-task
        override applied, batch size and generation settings."""
        self.name, self.fmt, self.params, self.data = model_name, fmt, params, data
        self.cfg = params.models[model_name]
        self.run = params.train.for_run(model_name, fmt.task)
        self.batch_size = params.train.batch_size_for(model_name, fmt.task)
        self.gen = params.train.generation

    def describe(self) -> dict[str, object]:
        """Tokenization, vocabulary sizes, decoding: logged as run params."""
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """What the checkpoints depend on: a checkpoint made with another fingerprint is not resumed."""
        raise NotImplementedError

    def fit(self, resume_from: Path | None) -> TrainOutcome:
        """Train (resuming when possible), log per-epoch metrics to the active MLflow run, keep the best epoch."""
        raise NotImplementedError

    def predict_test(self) -> list[list[str]]:
        """Output words per test example (tags for NER; one text for encdec), by beam search."""
        raise NotImplementedError

    def latency_ms(self, n: int) -> float:
        """Mean wall time of batch-1 inference (beam search) over the first n test examples."""
        raise NotImplementedError

    def attention_maps(self, n: int) -> list[AttentionMap]:
        raise NotImplementedError

    def register(self, task: str, model: str) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------- the stage
def checkpoint_dir(model: str, task: str) -> Path:
    return paths.CHECKPOINTS / f"finetune-{model}-{task}"


def build_model(model: str, task: str, params: Params, data=None) -> Text2TextModel:
    """The family trainer of `model` for `task` (data: the prepared DatasetDict, loaded when not given)."""
    from pipeline.data.task_data import load_prepared

    cfg = params.models.get(model)
    if cfg is None or cfg.family not in FAMILIES:
        raise Text2TextError(
            f"models.{model}: text-to-text training takes families {list(FAMILIES)} "
            f"(got {cfg.family if cfg else 'no such model in params.yaml'})"
        )
    if params.common.num_threads:
        import torch

        torch.set_num_threads(params.common.num_threads)
    data = data if data is not None else load_prepared(task)
    fmt = task_format(task, data["train"])
    ckpt = checkpoint_dir(model, task)
    if cfg.family == "rnn":
        from pipeline.train.rnn import RNNText2Text

        return RNNText2Text(model, fmt, data, params, ckpt)
    from pipeline.train.encdec import EncDecText2Text

    return EncDecText2Text(model, fmt, data, params, ckpt)


def score_outputs(fmt: TaskFormat, split, outputs: Sequence[Sequence[str]]) -> tuple[dict[str, float], list]:
    """Metrics of model outputs against a split's gold labels/tags/translations, and the predictions."""
    golds = [fmt.gold(ex) for ex in split]
    n_words = [len(fmt.source_words(ex)) if fmt.kind == "ner" else 0 for ex in split]
    scored = [fmt.prediction(out, n) for out, n in zip(outputs, n_words)]
    predictions = [p for p, _ in scored]
    return fmt.score(golds, predictions, [v for _, v in scored]), predictions


def train_text2text(model: str, task: str, params: Params) -> dict:
    """Train `model` (family rnn or encdec) on `task`; returns the summary written to metrics.json."""
    import mlflow

    from pipeline.tracking import runs as tracking
    from pipeline.tracking.checkpoints import prepare_checkpoints

    trainer = build_model(model, task, params)
    fmt = trainer.fmt
    folder = checkpoint_dir(model, task)
    resume = prepare_checkpoints(folder, trainer.fingerprint(), params)
    inputs = [paths.prepared_dir(task)] + ([paths.tokenizer_dir("gpt")] if trainer.family == "encdec" else [])
    tags = tracking.base_tags(params, family=trainer.family, source="scratch", inputs=inputs,
                              extra={"task": task, "model": model})
    with tracking.stage_run(params, tracking.task_experiment(task), f"{model}-{task}", folder, tags) as run:
        tracking.log_params_once(run_params(model, task, params, trainer))
        outcome = trainer.fit(resume)
        test_split = trainer.data["test"]
        metrics, predictions = score_outputs(fmt, test_split, trainer.predict_test())
        log.info("%s-%s test: %s", model, task, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        summary = {
            "task": task,
            "model": model,
            "family": trainer.family,
            "weight_source": "scratch",
            "test": metrics,
            "param_count": outcome.param_count,
            "train_time_s": round(outcome.train_time_s, 3),
            "tokens_per_s": round(outcome.tokens_per_s, 2),
            "latency_ms_per_example": round(trainer.latency_ms(LATENCY_EXAMPLES), 3),
            "best_epoch": outcome.best_epoch,
            "mlflow_run_id": run.info.run_id,
        }
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics({k: float(summary[k]) for k in
                            ("param_count", "train_time_s", "tokens_per_s", "latency_ms_per_example")})
        summary["registered_version"] = trainer.register(task, model)
        golds = [fmt.gold(ex) for ex in test_split] if fmt.kind == "classification" else []
        out = write_outputs(model, task, summary, outcome.curve, fmt, golds, predictions,
                            trainer.attention_maps(ATTENTION_EXAMPLES))
        mlflow.log_artifacts(str(out / PLOTS_DIR), artifact_path="plots")
        mlflow.log_artifact(str(out / METRICS_FILE))
    shutil.rmtree(folder, ignore_errors=True)  # finished: the next run of this stage starts fresh
    return summary


def run_params(model: str, task: str, params: Params, trainer: Text2TextModel) -> dict[str, object]:
    from pipeline.tracking.runs import flatten

    return {
        **flatten(f"models.{model}", params.models[model]),
        **flatten("train.run", params.train.for_run(model, task)),
        "train.batch_size": params.train.batch_size_for(model, task),
        **flatten("train.common", params.train.common),
        **flatten("train.generation", params.train.generation),
        "common.seed": params.common.seed,
        "train_examples": len(trainer.data["train"]),
        **trainer.describe(),
    }


# ---------------------------------------------------------------- outputs
def write_outputs(
    model: str,
    task: str,
    summary: dict,
    curve: list[dict[str, float]],
    fmt: TaskFormat,
    golds: Sequence[int],
    predictions: Sequence[Any],
    attention: list[AttentionMap],
) -> Path:
    """data/models/<model>-<task>/{metrics.json, plots/} built in a temp folder, then swapped in."""
    from pipeline.train.attention_plots import save_heatmap
    from pipeline.core.io import atomic_dir, write_json
    from pipeline.train.plots import write_confusion, write_learning_curve

    target = paths.model_dir(model, task)
    with atomic_dir(target) as tmp:
        plots = tmp / PLOTS_DIR
        write_learning_curve(plots, curve)
        if fmt.kind == "classification":
            invalid = len(fmt.label_names)  # an output that is no label gets its own row/column
            write_confusion(plots, golds, [p if p >= 0 else invalid for p in predictions],
                            [*fmt.label_names, INVALID_LABEL])
        for i, amap in enumerate(attention):
            save_heatmap(amap.weights, amap.source, amap.output, plots / f"attention_{i}.png",
                         title=f"{model} on {task}: validation example {i}")
        write_json(tmp / METRICS_FILE, summary)
    return target
