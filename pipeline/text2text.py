"""Models trained from scratch, text-to-text, on every task: the GRU baseline (rnn) and a transformer
encoder-decoder (encdec).

Each task becomes source -> target text: emotion/sst2 -> the label name, conll2003 -> one tag per source word,
multi30k -> the German sentence. Outputs are mapped back to labels/tags/text and scored with pipeline.metrics like
every other model; an output that is no label (or a tag sequence with invalid tags or the wrong length) is
scored as wrong (classification) or repaired to 'O'/padded (NER), and its rate is reported as `invalid_rate`.

`train_text2text(model, task, params)` trains (resuming from checkpoints/finetune-<model>-<task>/), scores the
test split once with the best checkpoint, registers `<task>-<model>` in MLflow and writes
data/finetune/<model>-<task>/{metrics.json, plots/}. The per-family training lives in text2text_rnn.py and
text2text_encdec.py.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline import paths
from pipeline.config import TASK_SPECS, Params
from pipeline.metrics import MAIN_METRIC, classification_metrics, ner_metrics, translation_metrics

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ATTENTION_EXAMPLES = 3  # first N validation examples get an attention heatmap
INVALID_LABEL = "<invalid>"  # how an output that is no label shows up in confusion.csv
CHECKPOINTS = Path("checkpoints")
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
    """Word <-> id; ids 0-3 are <pad>, <unk>, <sos>, <eos> (pipeline.seq2seq_rnn's reserved ids)."""

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

    def natural(self, prediction: Any, words: Sequence[str]) -> Any:
        """The served form: a label name, the entities found in `words`, or the German text."""
        if self.kind == "classification":
            return self.label_names[prediction] if prediction >= 0 else self.label_names[0]
        if self.kind == "ner":
            return tags_to_entities(list(words), prediction)
        return prediction


def tags_to_entities(words: list[str], tags: list[str]) -> list[dict]:
    """IOB2 tags -> [{"entity_group", "word", "start", "end"}] with character offsets in " ".join(words)."""
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    entities: list[dict] = []
    current: dict | None = None
    for i, (word, tag) in enumerate(zip(words, tags)):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if kind and (tag.startswith("B-") or current is None or current["entity_group"] != kind):
            current = {"entity_group": kind, "first": i, "last": i}
            entities.append(current)
        elif kind:
            current["last"] = i
        else:
            current = None
    return [
        {
            "entity_group": e["entity_group"],
            "word": " ".join(words[e["first"] : e["last"] + 1]),
            "start": starts[e["first"]],
            "end": starts[e["last"]] + len(words[e["last"]]),
        }
        for e in entities
    ]


def task_format(task: str, train_split) -> TaskFormat:
    """The task's format, with its label names read from the data's ClassLabel features."""
    _, kind = TASK_SPECS[task]
    features = train_split.features
    if kind == "classification":
        names = list(features["label"].names)
    elif kind == "ner":
        inner = features["ner_tags"]
        names = list(getattr(inner, "feature", inner).names)
    else:
        names = []
    return TaskFormat(task, kind, names)


# ---------------------------------------------------------------- data
def load_task_data(task: str):
    """data/prepared/<task> as a DatasetDict with train/validation/test."""
    from datasets import DatasetDict, load_from_disk

    folder = paths.prepared_dir(task)
    hint = f"run the prepare stage first (python -m flows.data prepare {task})"
    if not folder.exists():
        raise Text2TextError(f"{folder} not found: {hint}")
    try:
        data = load_from_disk(str(folder))
    except Exception as err:  # datasets raises several types for a broken folder
        raise Text2TextError(f"{folder} is not a saved DatasetDict ({err}); {hint}") from None
    missing = [s for s in SPLITS if not isinstance(data, DatasetDict) or s not in data or len(data[s]) == 0]
    if missing:
        raise Text2TextError(f"{folder}: split(s) {missing} missing or empty; {hint}")
    return data


def checkpoint_dir(model: str, task: str) -> Path:
    return CHECKPOINTS / f"finetune-{model}-{task}"


# ---------------------------------------------------------------- what a family trainer hands back
@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_metric: float


@dataclass
class TrainOutcome:
    history: list[EpochRecord]
    best_epoch: int
    train_time_s: float
    tokens_per_s: float
    param_count: int


@dataclass
class TestOutcome:
    outputs: list[list[str]]  # model output words (rnn) or [text] (encdec) per test example
    latency_ms_per_example: float


@dataclass
class AttentionMap:
    source: list[str]
    output: list[str]
    weights: Any  # [output_len, source_len] array, rows sum to 1


class Text2TextModel:
    """What train_text2text needs from a family (implemented in text2text_rnn / text2text_encdec)."""

    family: str
    fmt: TaskFormat

    def describe(self) -> dict[str, object]:  # tokenization, vocab sizes, decoding: logged as run params
        raise NotImplementedError

    def fit(self, on_epoch: Callable[[EpochRecord, dict[str, float]], None]) -> TrainOutcome:
        raise NotImplementedError

    def predict_test(self) -> TestOutcome:
        raise NotImplementedError

    def attention_maps(self, n: int) -> list[AttentionMap]:
        raise NotImplementedError

    def register(self, task: str, model: str) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------- the stage
def build_model(model: str, task: str, params: Params, data=None) -> Text2TextModel:
    cfg = params.models.get(model)
    if cfg is None or cfg.family not in ("rnn", "encdec"):
        raise Text2TextError(f"models.{model}: text-to-text training is for families rnn/encdec (got {cfg and cfg.family})")
    if params.common.num_threads:
        import torch

        torch.set_num_threads(params.common.num_threads)
    data = data if data is not None else load_task_data(task)
    fmt = task_format(task, data["train"])
    ckpt = checkpoint_dir(model, task)
    if cfg.family == "rnn":
        from pipeline.text2text_rnn import RNNText2Text

        return RNNText2Text(model, fmt, data, params, ckpt)
    from pipeline.text2text_encdec import EncDecText2Text

    return EncDecText2Text(model, fmt, data, params, ckpt)


def train_text2text(model: str, task: str, params: Params) -> dict:
    """Train `model` (family rnn or encdec) on `task`; returns the metrics written to metrics.json."""
    import mlflow

    from pipeline import tracking

    data = load_task_data(task)
    trainer = build_model(model, task, params, data)
    fmt = trainer.fmt
    ckpt = checkpoint_dir(model, task)
    _drop_stale_checkpoint(ckpt, trainer.fingerprint())
    inputs = [paths.prepared_dir(task)] + ([paths.tokenizer_dir("gpt")] if trainer.family == "encdec" else [])
    tags = tracking.base_tags(params, family=trainer.family, source="scratch", inputs=inputs,
                              extra={"task": task, "model": model})
    with tracking.stage_run(params, tracking.task_experiment(task), f"{model}-{task}", ckpt, tags) as run:
        tracking.log_params_once(run_params(model, task, params, trainer))

        def on_epoch(record: EpochRecord, extra: dict[str, float]) -> None:
            mlflow.log_metrics({"train_loss": record.train_loss, f"val_{fmt.main_metric}": record.val_metric, **extra},
                               step=record.epoch)

        outcome = trainer.fit(on_epoch)
        test = trainer.predict_test()
        test_data = data["test"]
        golds = [fmt.gold(ex) for ex in test_data]
        n_words = [len(fmt.source_words(ex)) if fmt.kind == "ner" else 0 for ex in test_data]
        scored = [fmt.prediction(out, n) for out, n in zip(test.outputs, n_words)]
        predictions = [p for p, _ in scored]
        metrics = fmt.score(golds, predictions, [v for _, v in scored])
        log.info("%s-%s test: %s", model, task, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        summary = {
            "train_time_s": round(outcome.train_time_s, 3),
            "param_count": outcome.param_count,
            "tokens_per_s": round(outcome.tokens_per_s, 3),
            "latency_ms_per_example": round(test.latency_ms_per_example, 4),
            "best_epoch": outcome.best_epoch,
        }
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()} | summary)
        version = trainer.register(task, model)
        result = {
            "task": task,
            "model": model,
            "family": trainer.family,
            "weight_source": "scratch",
            "test": {k: round(v, 6) for k, v in metrics.items()},
            **{k: summary[k] for k in ("param_count", "train_time_s", "tokens_per_s", "latency_ms_per_example")},
            "mlflow_run_id": run.info.run_id,
            "registered_version": version,
        }
        out_dir = write_outputs(model, task, result, outcome, fmt, golds, predictions, trainer.attention_maps(ATTENTION_EXAMPLES))
        mlflow.log_artifact(str(out_dir / "metrics.json"))
        mlflow.log_artifacts(str(out_dir / "plots"), artifact_path="plots")
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: the next run of this stage starts fresh
    return result


def run_params(model: str, task: str, params: Params, trainer: Text2TextModel) -> dict[str, object]:
    from pipeline.tracking import flatten

    values = {
        "model": model,
        "task": task,
        "seed": params.common.seed,
        "batch_size": params.finetune.batch_size_for(model, task),
        **flatten("models." + model, params.models[model]),
        **flatten("train", params.finetune.for_run(model, task)),
        **flatten("finetune.common", params.finetune.common),
        **flatten("generation", params.finetune.generation),
    }
    values.update(trainer.describe())
    return values


def _drop_stale_checkpoint(ckpt: Path, fingerprint: str) -> None:
    """A checkpoint left by a run with other params or data must not be resumed (nor its MLflow run)."""
    marker = ckpt / "fingerprint"
    if ckpt.exists() and (not marker.exists() or marker.read_text().strip() != fingerprint):
        log.warning("%s was written for other params or data; starting over", ckpt)
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


# ---------------------------------------------------------------- outputs
def write_outputs(
    model: str,
    task: str,
    result: dict,
    outcome: TrainOutcome,
    fmt: TaskFormat,
    golds: Sequence[Any],
    predictions: Sequence[Any],
    attention: list[AttentionMap],
) -> Path:
    """data/finetune/<model>-<task>/{metrics.json, plots/} built in a temp folder, then swapped in."""
    from pipeline.attention_plots import save_heatmap

    target = paths.finetune_dir(model, task)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    plots = tmp / "plots"
    plots.mkdir(parents=True)
    try:
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        with open(plots / "learning_curve.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["epoch", "train_loss", f"val_{fmt.main_metric}"])
            for rec in outcome.history:
                writer.writerow([rec.epoch, round(rec.train_loss, 6), round(rec.val_metric, 6)])
        if fmt.kind == "classification":
            with open(plots / "confusion.csv", "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["actual", "predicted"])
                for g, p in zip(golds, predictions):
                    writer.writerow([fmt.label_names[g], fmt.label_names[p] if p >= 0 else INVALID_LABEL])
        for i, amap in enumerate(attention):
            save_heatmap(amap.weights, amap.source, amap.output, plots / f"attention_{i}.png",
                         title=f"{model} on {task}: validation example {i}")
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
