"""Models trained from scratch, text-to-text, on every task: the GRU baseline (rnn) and a transformer
encoder-decoder (encdec).

Each task becomes source -> target text: emotion/sst2 -> the label name, conll2003 -> one tag per source word,
multi30k -> the German sentence, samsum -> the dialogue's summary (the columns of the text kinds come from
pipeline.data.task_data.TEXT_PAIRS), squad -> the (first) answer of "question: <q> context: <c>" (the context is
cut to max_length, never the question; scored against all reference answers; served as {"answer", "score": None}).
Outputs are mapped back to labels/tags/text and scored with pipeline.core.metrics like every other model; an
output that is no label (or a tag sequence with invalid tags or the wrong length) is scored as wrong
(classification) or repaired to 'O'/padded (NER), and its rate is reported as `invalid_rate`.

The families (rnn.py, encdec.py) subclass Text2TextModel; pipeline/train/driver.py runs them like any other.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import TASK_SPECS, Params
from pipeline.core.io import write_json
from pipeline.core.metrics import MAIN_METRIC, classification_metrics, ner_metrics, qa_metrics, text_metrics
from pipeline.core.run_settings import RunSettings
from pipeline.data.task_data import TEXT_PAIRS
from pipeline.models.ner_tagger import text_entities
from pipeline.models.pyfunc import label_answer, qa_answers, qa_rows, texts_of
from pipeline.train.family import ModelFamily, TestScores

log = logging.getLogger(__name__)

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
    def build(cls, sequences: Sequence[Sequence[str]], min_freq: int = 1) -> Vocab:
        counts = Counter(w for seq in sequences for w in seq)
        # most frequent first, ties alphabetical: the same data always gives the same ids
        words = sorted(
            (w for w, c in counts.items() if c >= min_freq and w not in cls.SPECIALS), key=lambda w: (-counts[w], w)
        )
        return cls([*cls.SPECIALS, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str]) -> list[int]:
        unk = self.stoi["<unk>"]
        return [self.stoi.get(w, unk) for w in words]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.itos[i] for i in ids]


# ---------------------------------------------------------------- task <-> text
def qa_source(question: str, context: str) -> str:
    """A qa example as one source text: the question first, so cutting the text to max_length cuts the context."""
    return f"question: {question.strip()} context: {context.strip()}"


@dataclass
class TaskFormat:
    """How one task becomes text-to-text and back."""

    task: str
    kind: str  # classification | ner | translation | summarization | qa
    label_names: list[str] = field(default_factory=list)  # class names, or the NER tag set

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.kind]

    @property
    def writes_text(self) -> bool:
        """The target is free text (translation, summarization, a qa answer), not a label or tags."""
        return self.kind in TEXT_PAIRS or self.kind == "qa"

    def source_words(self, example: dict) -> list[str]:
        if self.kind == "ner":
            return list(example["tokens"])
        return word_tokenize(self.source_text(example))

    def served_words(self, text: str) -> list[str]:
        """A served request's words: NER texts are whitespace-separated words, others are word-tokenized."""
        return text.split() if self.kind == "ner" else word_tokenize(text)

    def source_text(self, example: dict) -> str:
        if self.kind == "ner":
            return " ".join(example["tokens"])
        if self.kind == "qa":
            return qa_source(example["question"], example["context"])
        return example[TEXT_PAIRS[self.kind].source] if self.kind in TEXT_PAIRS else example["text"]

    def target_words(self, example: dict) -> list[str]:
        if self.kind == "classification":
            return [self.label_names[example["label"]]]
        if self.kind == "ner":
            return [self.label_names[t] for t in example["ner_tags"]]
        return word_tokenize(self.target_text(example))

    def target_text(self, example: dict) -> str:
        if self.kind == "qa":
            answers = example["answers"]["text"]
            return answers[0] if answers else ""
        if self.kind in TEXT_PAIRS:
            return example[TEXT_PAIRS[self.kind].target]
        return " ".join(self.target_words(example))

    def gold(self, example: dict) -> Any:
        if self.kind == "classification":
            return int(example["label"])
        if self.kind == "ner":
            return [self.label_names[t] for t in example["ner_tags"]]
        if self.kind == "qa":
            return list(example["answers"]["text"])
        return example[TEXT_PAIRS[self.kind].target]

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
        elif self.kind == "qa":
            metrics = qa_metrics(golds, predictions)
        else:
            metrics = text_metrics(self.kind, golds, predictions)
        metrics["invalid_rate"] = 1.0 - sum(valid) / max(len(valid), 1)
        return metrics

    def natural(self, prediction: Any, text: str) -> Any:
        """The served form (pipeline.models.pyfunc): {"label", "score": None}, the entities found in `text` (NER:
        its whitespace-separated words), the output text (German, a summary) or (qa) {"answer", "score": None}."""
        if self.kind == "classification":
            return label_answer(self.label_names[prediction] if prediction >= 0 else self.label_names[0])
        if self.kind == "ner":
            return text_entities(text, prediction)  # the same entities as the fine-tuned NER models serve
        if self.kind == "qa":
            return qa_answers([(prediction, None)])[0]
        return prediction


def serving_example(fmt: TaskFormat, split, n: int = 2):
    """The first test inputs as served: a list of texts (NER: the words joined by spaces; qa: a DataFrame of
    question and context), as the fine-tuned models' registered examples."""
    if fmt.kind == "qa":
        return split.select(range(min(n, len(split)))).to_pandas()[["question", "context"]]
    return [fmt.source_text(split[i]) for i in range(min(n, len(split)))]


def served_sources(fmt: TaskFormat, model_input) -> list[str]:
    """A served request's source texts (qa: question + context rows, see pipeline.models.pyfunc.qa_rows)."""
    if fmt.kind == "qa":
        return [qa_source(q, c) for q, c in zip(*qa_rows(model_input))]
    return texts_of(model_input)


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


# ---------------------------------------------------------------- the text-to-text families' common part
def score_outputs(fmt: TaskFormat, split, outputs: Sequence[Sequence[str]]) -> tuple[dict[str, float], list]:
    """Metrics of model outputs against a split's gold labels/tags/translations, and the predictions."""
    golds = [fmt.gold(ex) for ex in split]
    n_words = [len(fmt.source_words(ex)) if fmt.kind == "ner" else 0 for ex in split]
    scored = [fmt.prediction(out, n) for out, n in zip(outputs, n_words)]
    predictions = [p for p, _ in scored]
    return fmt.score(golds, predictions, [v for _, v in scored]), predictions


class Text2TextModel(ModelFamily):
    """A model trained from scratch that reads and writes text (rnn, encdec): the task's format, test scoring
    from its decoded outputs and the served example are shared here; a family adds build, fit and decoding."""

    def __init__(self, settings: RunSettings, data, params: Params):
        super().__init__(settings, data, params)
        self.fmt = task_format(settings.task, data["train"])
        self.cfg, self.run, self.gen = settings.model_cfg, settings.training, settings.generation
        self.batch_size = settings.batch_size
        self.name = settings.model

    def scored_validation(self):
        """The validation examples each epoch decodes and scores: the first train.tasks.<task>.
        val_generation_examples of them (all when unset)."""
        validation = self.data["validation"]
        cap = self.run.val_generation_examples
        return validation if cap is None or cap >= len(validation) else validation.select(range(cap))

    def predict_test(self) -> list[list[str]]:
        """Output words per test example (tags for NER; one text for encdec), by beam search."""
        raise NotImplementedError

    def score_test(self) -> TestScores:
        test_split = self.data["test"]
        metrics, predictions = score_outputs(self.fmt, test_split, self.predict_test())
        golds = [self.fmt.gold(ex) for ex in test_split]
        items = [{"gold": g, "prediction": p} for g, p in zip(golds, predictions)]  # classification: -1 = no label
        if self.fmt.kind == "qa":
            for ex, gold, prediction in list(zip(test_split, golds, predictions))[:3]:
                log.info(
                    "test example:\n  question: %s\n  gold: %s\n  prediction: %s", ex["question"], gold, prediction
                )
        if self.fmt.kind != "classification":
            return TestScores(metrics, items=items)
        invalid = len(self.fmt.label_names)  # an output that is no label gets its own row/column
        return TestScores(
            metrics,
            (golds, [p if p >= 0 else invalid for p in predictions], [*self.fmt.label_names, INVALID_LABEL]),
            items,
        )

    def latency_examples(self, n: int) -> list[str]:
        return [self.fmt.source_text(ex) for ex in self.data["test"].select(range(min(n, len(self.data["test"]))))]

    def write_serving_meta(self, path: Path, **extra) -> Path:
        """The JSON a family's pyfunc model reads back (read_serving_meta): the task format, the input length and
        the decoding settings, plus the family's own entries."""
        return write_json(
            path,
            {
                "task": self.fmt.task,
                "kind": self.fmt.kind,
                "label_names": self.fmt.label_names,
                "max_length": self.run.max_length,
                "num_beams": self.gen.num_beams,
                "length_penalty": self.gen.length_penalty,
                "max_new_tokens": self.gen.max_new_tokens,
                **extra,
            },
        )

    def serving_example(self) -> list[str]:
        return serving_example(self.fmt, self.data["test"])


def read_serving_meta(path: str | Path) -> tuple[dict, TaskFormat]:
    """A registered text-to-text model's meta JSON (Text2TextModel.write_serving_meta) and its task format."""
    meta = json.loads(Path(path).read_text(encoding="utf-8"))
    return meta, TaskFormat(meta["task"], meta["kind"], meta["label_names"])
