"""The GRU encoder-decoder (pipeline.models.seq2seq_rnn) trained text-to-text on one task, with a plain PyTorch loop.

Word-level vocabularies from the train split (cased; the target vocabulary of emotion/sst2/conll2003 is the label
or tag set). Each epoch: train with teacher forcing, then greedy-decode the validation split and score its main
metric; early stopping on it, the best weights are kept. Checkpoints (weights as safetensors, optimizer, state)
are written every epoch to checkpoints/train-<model>-<task>/rnn/ and resumed from. The test split is decoded
once with beam search (train.generation) using the best weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from pipeline.core.config import Params
from pipeline.core.io import atomic_file, write_json
from pipeline.core.run_settings import RunSettings
from pipeline.models.seq2seq_rnn import (
    EOS_IDX,
    PAD_IDX,
    SOS_IDX,
    UNK_IDX,
    Hypothesis,
    RNNConfig,
    Seq2Seq,
    beam_search,
    greedy_decode,
)
from pipeline.train.family import AttentionMap, TrainOutcome
from pipeline.train.text2text import Text2TextModel, Vocab, read_serving_meta, score_outputs, served_sources

log = logging.getLogger(__name__)

SRC_MIN_FREQ = 2  # rarer source words become <unk>, so the model learns what to do with unseen words
TGT_MIN_FREQ = 2  # text targets only (translation, summarization); labels and tags use the task's full label set
CLASSIFICATION_DECODE_LEN = 2  # label + <eos>
STATE_FILE = "state.json"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- batching and decoding
def pad_batch(seqs: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # [batch]
    out = torch.full((len(seqs), int(lengths.max())), PAD_IDX, dtype=torch.long)  # [batch, max_len]
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device), lengths.to(device)


def decode_len(kind: str, src_lengths: Sequence[int], max_new_tokens: int) -> int:
    if kind == "classification":
        return CLASSIFICATION_DECODE_LEN
    if kind == "ner":
        return max(src_lengths) + 1  # one tag per word + <eos>
    return max_new_tokens


def decode(
    model: Seq2Seq,
    sources: Sequence[Sequence[int]],
    kind: str,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float,
    device: torch.device,
    progress: str | None = None,
) -> list[Hypothesis]:
    """Decode every source (greedy when num_beams == 1), in batches of similar length; results in input order."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[Hypothesis | None] = [None] * len(sources)
    starts = range(0, len(order), batch_size)
    for start in starts if progress is None else tqdm(starts, desc=progress, leave=False):
        idx = order[start : start + batch_size]
        src, src_len = pad_batch([sources[i] for i in idx], device)  # [batch, src_len], [batch]
        max_len = decode_len(kind, [len(sources[i]) for i in idx], max_new_tokens)
        if num_beams > 1:
            hyps = beam_search(model, src, src_len, num_beams, max_len, length_penalty)
        else:
            hyps = greedy_decode(model, src, src_len, max_len)
        for i, h in zip(idx, hyps):
            results[i] = h
    return results  # type: ignore[return-value]


def source_ids(vocab: Vocab, words: Sequence[str], max_length: int) -> list[int]:
    return vocab.encode(words[:max_length]) or [UNK_IDX]  # an empty source still needs one step


# ---------------------------------------------------------------- training
class RNNText2Text(Text2TextModel):
    family = "rnn"

    def __init__(self, settings: RunSettings, data, params: Params):
        super().__init__(settings, data, params)
        fmt = self.fmt
        self.ckpt = settings.checkpoint_dir / "rnn"
        self.device = pick_device()
        self.validation = self.scored_validation()
        splits = {"train": data["train"], "validation": self.validation, "test": data["test"]}
        self.words = {s: [fmt.source_words(ex) for ex in split] for s, split in splits.items()}
        train_targets = [fmt.target_words(ex) for ex in data["train"]]
        self.src_vocab = Vocab.build(self.words["train"], SRC_MIN_FREQ)
        if fmt.writes_text:
            self.tgt_vocab = Vocab.build(train_targets, TGT_MIN_FREQ)
        else:
            self.tgt_vocab = Vocab([*Vocab.SPECIALS, *fmt.label_names])
        self.train_pairs = [
            (
                source_ids(self.src_vocab, w, self.run.max_length),
                [SOS_IDX, *self.tgt_vocab.encode(t[: self.run.max_length]), EOS_IDX],
            )
            for w, t in zip(self.words["train"], train_targets)
        ]
        self.model_config = RNNConfig(
            len(self.src_vocab),
            len(self.tgt_vocab),
            self.cfg.emb_dim,
            self.cfg.hid_dim,
            self.cfg.dropout,
            attention=self.cfg.attention,
        )
        set_seed(params.common.seed)
        self.model = Seq2Seq(self.model_config).to(self.device)

    # -------------------------------------------------------- description
    def describe(self) -> dict[str, object]:
        return {
            "architecture": "GRU encoder-decoder"
            + (" + Bahdanau attention" if self.cfg.attention else " (fixed context, no attention)"),
            "tokenization": "word-level vocab from train",
            "src_vocab_size": len(self.src_vocab),
            "tgt_vocab_size": len(self.tgt_vocab),
            "src_min_freq": SRC_MIN_FREQ,
            "tgt_min_freq": TGT_MIN_FREQ if self.fmt.writes_text else "label set",
            "decoding.validation": "greedy",
            "decoding.test": f"beam search (num_beams={self.gen.num_beams}, length_penalty={self.gen.length_penalty})",
            "device": str(self.device),
        }

    def fingerprint(self) -> dict:
        return {"vocab": hashlib.sha256(json.dumps([self.src_vocab.itos, self.tgt_vocab.itos]).encode()).hexdigest()}

    # -------------------------------------------------------- fit
    def fit(self, resume_from: Path | None = None) -> TrainOutcome:
        """Train until epochs/max_steps or early stopping; resumes from self.ckpt (resume_from is for the
        Trainer-based encdec and not used here). Ends with the best epoch's weights loaded."""
        model, run = self.model, self.run
        steps_per_epoch = math.ceil(len(self.train_pairs) / self.batch_size)
        total_steps = run.max_steps or run.epochs * steps_per_epoch
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=run.learning_rate, weight_decay=self.settings.common.weight_decay
        )
        warmup = int(self.settings.common.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total_steps))
        state = self._resume(optimizer, scheduler)
        loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_IDX)
        patience = self.settings.common.patience
        main = self.fmt.main_metric
        epoch = state["epoch"]
        while not state["finished"]:
            epoch += 1
            set_seed(self.settings.seed + epoch)  # shuffling and teacher forcing replay the same on resume
            start = time.perf_counter()
            loss, tokens = self._train_epoch(epoch, optimizer, scheduler, loss_fn, state, total_steps)
            state["train_time_s"] += time.perf_counter() - start
            state["tokens"] += tokens
            val = self._validate(loss_fn)
            row = {"epoch": epoch, "train_loss": loss, **{f"val_{k}": v for k, v in val.items()}}
            state["curve"].append(row)
            if state["best_metric"] is None or val[main] > state["best_metric"]:
                state["best_metric"], state["best_epoch"], state["bad_epochs"] = val[main], epoch, 0
                _atomic_save_weights(model, self.ckpt / "best.safetensors")
            else:
                state["bad_epochs"] += 1
            _log_epoch(row)
            log.info(
                "epoch %d: train_loss %.4f val_%s %.4f (best %.4f at epoch %d)",
                epoch,
                loss,
                main,
                val[main],
                state["best_metric"],
                state["best_epoch"],
            )
            state["epoch"] = epoch
            state["finished"] = (
                epoch >= run.epochs
                or state["bad_epochs"] >= patience
                or bool(run.max_steps and state["steps"] >= run.max_steps)
            )
            self._save(optimizer, scheduler, state)
        model.load_state_dict(load_file(str(self.ckpt / "best.safetensors"), device=str(self.device)))
        train_time = state["train_time_s"]
        return TrainOutcome(
            curve=state["curve"],
            best_epoch=state["best_epoch"],
            train_time_s=train_time,
            tokens_per_s=state["tokens"] / train_time if train_time > 0 else 0.0,
            param_count=sum(p.numel() for p in model.parameters()),
        )

    def _train_epoch(self, epoch, optimizer, scheduler, loss_fn, state, total_steps) -> tuple[float, int]:
        model = self.model
        model.train()
        grouped = self.settings.common.length_grouped_batches  # as the transformers' Trainer groups them
        if grouped:
            from transformers.trainer_pt_utils import get_length_grouped_indices

            order = get_length_grouped_indices([len(s) + len(t) for s, t in self.train_pairs], self.batch_size)
        else:
            order = torch.randperm(len(self.train_pairs)).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if grouped:  # in shuffled order: no long-to-short sweeps within a megabatch
            batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
        total_loss, n_batches, tokens = 0.0, 0, 0
        bar = tqdm(batches, desc=f"{self.name}-{self.fmt.task} epoch {epoch}", leave=False)
        for idx in bar:
            src, src_len = pad_batch([self.train_pairs[i][0] for i in idx], self.device)  # [batch, src_len], [batch]
            tgt, _ = pad_batch([self.train_pairs[i][1] for i in idx], self.device)  # [batch, tgt_len]
            logits, _ = model(src, src_len, tgt, self.cfg.teacher_forcing_ratio)  # [batch, tgt_len-1, vocab]
            loss = loss_fn(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            state["steps"] += 1
            value = loss.item()
            total_loss += value
            n_batches += 1
            tokens += int(src_len.sum())  # input tokens, as TrainingSpeed counts them for the transformers
            bar.set_postfix(loss=f"{value:.3f}")
            if self.run.max_steps and state["steps"] >= total_steps:
                break
        return total_loss / max(n_batches, 1), tokens

    def _sources(self, split: str) -> list[list[int]]:
        return [source_ids(self.src_vocab, w, self.run.max_length) for w in self.words[split]]

    def _validate(self, loss_fn) -> dict[str, float]:
        """Validation metrics of greedy decoding, plus the teacher-forced loss."""
        fmt, eval_batch = self.fmt, self.settings.common.eval_batch_size
        sources = self._sources("validation")
        hyps = decode(
            self.model,
            sources,
            fmt.kind,
            eval_batch,
            1,
            self.gen.max_new_tokens,
            self.gen.length_penalty,
            self.device,
            progress="validation",
        )
        metrics, _ = score_outputs(fmt, self.validation, [self.tgt_vocab.decode(h.tokens) for h in hyps])
        targets = [
            [SOS_IDX, *self.tgt_vocab.encode(fmt.target_words(ex)[: self.run.max_length]), EOS_IDX]
            for ex in self.validation
        ]
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(sources), eval_batch):
                src, src_len = pad_batch(sources[start : start + eval_batch], self.device)  # [batch, src_len], [batch]
                tgt, _ = pad_batch(targets[start : start + eval_batch], self.device)  # [batch, tgt_len]
                logits, _ = self.model(src, src_len, tgt, 1.0)  # [batch, tgt_len-1, vocab]
                total += loss_fn(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1)).item() * len(src)
                count += len(src)
        return {"loss": total / max(count, 1), **metrics}

    # -------------------------------------------------------- checkpoints
    def _resume(self, optimizer, scheduler) -> dict:
        state_file = self.ckpt / STATE_FILE
        if not state_file.exists():
            return {
                "epoch": 0,
                "steps": 0,
                "tokens": 0,
                "train_time_s": 0.0,
                "curve": [],
                "best_metric": None,
                "best_epoch": None,
                "bad_epochs": 0,
                "finished": False,
            }
        state = json.loads(state_file.read_text())
        self.model.load_state_dict(load_file(str(self.ckpt / "last.safetensors"), device=str(self.device)))
        extra = torch.load(self.ckpt / "optimizer.pt", map_location=self.device, weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        log.info("Resuming %s-%s from %s after epoch %d", self.name, self.fmt.task, self.ckpt, state["epoch"])
        return state

    def _save(self, optimizer, scheduler, state: dict) -> None:
        self.ckpt.mkdir(parents=True, exist_ok=True)
        _atomic_save_weights(self.model, self.ckpt / "last.safetensors")
        with atomic_file(self.ckpt / "optimizer.pt") as tmp:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp)
        write_json(self.ckpt / STATE_FILE, state)  # written last: it says the files above are complete

    # -------------------------------------------------------- test, latency, attention, registry
    def predict_test(self) -> list[list[str]]:
        hyps = decode(
            self.model,
            self._sources("test"),
            self.fmt.kind,
            self.settings.common.eval_batch_size,
            self.gen.num_beams,
            self.gen.max_new_tokens,
            self.gen.length_penalty,
            self.device,
            progress="test",
        )
        return [self.tgt_vocab.decode(h.tokens) for h in hyps]

    def infer_one(self, text: str) -> None:
        """Tokenize + encode + beam search, as a served request."""
        words = self.fmt.served_words(text)
        decode(
            self.model,
            [source_ids(self.src_vocab, words, self.run.max_length)],
            self.fmt.kind,
            1,
            self.gen.num_beams,
            self.gen.max_new_tokens,
            self.gen.length_penalty,
            self.device,
        )

    def attention_maps(self, n: int) -> list[AttentionMap]:
        if not self.cfg.attention:
            return []  # a fixed context vector: there are no attention weights to draw
        maps = []
        for words in self.words["validation"][:n]:
            words = words[: self.run.max_length] or ["<unk>"]
            src = [source_ids(self.src_vocab, words, self.run.max_length)]
            hyp = decode(
                self.model,
                src,
                self.fmt.kind,
                1,
                self.gen.num_beams,
                self.gen.max_new_tokens,
                self.gen.length_penalty,
                self.device,
            )[0]
            output = self.tgt_vocab.decode(hyp.tokens) + (["<eos>"] if hyp.length > len(hyp.tokens) else [])
            maps.append(AttentionMap(list(words), output, hyp.attention.numpy()))  # [output_len, src_len]
        return maps

    def register(self, export_dir: Path) -> str:
        from pipeline.tracking.registry import register_pyfunc

        with tempfile.TemporaryDirectory(prefix="rnn-model-") as tmp:
            weights = Path(tmp) / "model.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(weights))
            meta = self.write_serving_meta(
                Path(tmp) / "vocab.json",
                config=self.model_config.to_dict(),
                src_itos=self.src_vocab.itos,
                tgt_itos=self.tgt_vocab.itos,
            )
            return register_pyfunc(
                RNNPyfunc(),
                {"weights": weights, "vocab": meta},
                self.settings.task,
                self.settings.model,
                input_example=self.serving_example(),
            )


class RNNPyfunc(mlflow.pyfunc.PythonModel):
    """Serves the registered rnn: texts (a DataFrame `text` column, a list or a string; NER: space-separated
    words) -> the task kind's response shape (pipeline.models.pyfunc):
    {"label", "score": None} / entities / German text."""

    def load_context(self, context) -> None:
        meta, self.fmt = read_serving_meta(context.artifacts["vocab"])
        self.meta = meta
        self.src_vocab, self.tgt_vocab = Vocab(meta["src_itos"]), Vocab(meta["tgt_itos"])
        self.device = pick_device()
        self.model = Seq2Seq(RNNConfig(**meta["config"])).to(self.device)
        self.model.load_state_dict(load_file(context.artifacts["weights"], device=str(self.device)))
        self.model.eval()

    def predict(self, context, model_input, params=None) -> list[Any]:
        texts = served_sources(self.fmt, model_input)
        words = [self.fmt.served_words(t) for t in texts]
        sources = [source_ids(self.src_vocab, w, self.meta["max_length"]) for w in words]
        hyps = decode(
            self.model,
            sources,
            self.fmt.kind,
            64,
            self.meta["num_beams"],
            self.meta["max_new_tokens"],
            self.meta["length_penalty"],
            self.device,
        )
        out = []
        for text, w, h in zip(texts, words, hyps):
            prediction, _ = self.fmt.prediction(self.tgt_vocab.decode(h.tokens), len(w))
            out.append(self.fmt.natural(prediction, text))
        return out


def _log_epoch(row: dict) -> None:
    """Per-epoch metrics to the active MLflow run (step = epoch), named as the transformer fine-tunes'."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _atomic_save_weights(model: nn.Module, path: Path) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
