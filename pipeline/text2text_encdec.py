"""A small transformer encoder-decoder (BART architecture, random init) trained text-to-text on one task with
Seq2SeqTrainer.

Tokenization: the project's byte-level BPE (data/tokenizers/gpt); <|endoftext|> ends sources and targets and
starts decoding, <|pad|> pads. For NER the nine tags are added as tokens <O>, <B-PER>, ... so the target is
exactly one token per word (as the rnn's tag vocabulary). Each epoch is evaluated by generation (greedy) on the
validation split; EarlyStoppingCallback + load_best_model_at_end keep the best epoch; checkpoints go to
checkpoints/finetune-<model>-<task>/trainer/ and are resumed from. The test split is decoded once with beam search.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import mlflow.pyfunc
import numpy as np
import torch

from pipeline import paths
from pipeline.config import Params
from pipeline.text2text import (
    AttentionMap,
    EpochRecord,
    TaskFormat,
    TestOutcome,
    Text2TextError,
    Text2TextModel,
    TrainOutcome,
)

log = logging.getLogger(__name__)

CLASSIFICATION_MAX_NEW_TOKENS = 8  # a label name is a few BPE tokens
TRAIN_TIME_FILE = "train_time_s"


def tag_token(tag: str) -> str:
    return f"<{tag}>"


def load_bpe_tokenizer(fmt: TaskFormat, folder: Path | None = None):
    """The project's byte-level BPE tokenizer, plus one token per NER tag for the conll2003 task."""
    from transformers import AutoTokenizer

    folder = folder or paths.tokenizer_dir("gpt")
    if not (Path(folder) / "tokenizer.json").exists():
        raise Text2TextError(f"{folder} has no tokenizer.json: run the tokenizers stage first (python -m flows.tokenizers)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise Text2TextError(f"{folder}: the tokenizer needs an eos and a pad token (retrain it with the tokenizers stage)")
    if fmt.kind == "ner":
        tokenizer.add_tokens([tag_token(t) for t in fmt.label_names])
    return tokenizer


class TextCodec:
    """Task text <-> token ids for the encoder-decoder."""

    def __init__(self, tokenizer, fmt: TaskFormat, max_length: int, max_new_tokens: int):
        self.tok, self.fmt, self.max_length = tokenizer, fmt, max_length
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.tag_ids = {tokenizer.convert_tokens_to_ids(tag_token(t)): t for t in fmt.label_names} if fmt.kind == "ner" else {}
        self.gen_max_new_tokens = {"classification": CLASSIFICATION_MAX_NEW_TOKENS, "ner": max_length + 1}.get(
            fmt.kind, max_new_tokens)

    def source(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False, truncation=True, max_length=self.max_length - 1)["input_ids"]
        return ids + [self.eos]

    def target(self, example: dict) -> list[int]:
        if self.fmt.kind == "ner":
            tags = self.fmt.target_words(example)[: self.max_length - 1]
            return [self.tok.convert_tokens_to_ids(tag_token(t)) for t in tags] + [self.eos]
        return self.source(self.fmt.target_text(example))

    def output_words(self, ids) -> list[str]:
        """Generated ids -> the output as words (tags for NER, one text for the others)."""
        ids = [int(i) for i in ids if int(i) >= 0 and int(i) != self.pad]
        if ids and ids[0] == self.eos:  # the decoder start token
            ids = ids[1:]
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        if self.fmt.kind == "ner":
            return [self.tag_ids.get(i, self.tok.convert_ids_to_tokens(i)) for i in ids]
        return [self.tok.decode(ids, skip_special_tokens=True).strip()]


def build_bart(tokenizer, cfg, max_positions: int):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        encoder_layers=cfg.layers,
        decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        dropout=cfg.dropout,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=None,
        scale_embedding=True,
    )
    model = BartForConditionalGeneration(config)
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None
    return model


def set_generation_length(model, max_new_tokens: int) -> None:
    """Cap generation through max_length (decoder start token + max_new_tokens): Seq2SeqTrainer fills in a
    default max_length after its first generate, which would then clash with a max_new_tokens setting."""
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = max_new_tokens + 1


class EncDecText2Text(Text2TextModel):
    family = "encdec"

    def __init__(self, model_name: str, fmt: TaskFormat, data, params: Params, ckpt: Path):
        from transformers import set_seed

        self.name, self.fmt, self.params = model_name, fmt, params
        self.cfg = params.models[model_name]
        self.run = params.finetune.for_run(model_name, fmt.task)
        self.batch_size = params.finetune.batch_size_for(model_name, fmt.task)
        self.gen = params.finetune.generation
        self.ckpt = ckpt / "trainer"
        self.data = data
        self.tokenizer = load_bpe_tokenizer(fmt)
        self.codec = TextCodec(self.tokenizer, fmt, self.run.max_length, self.gen.max_new_tokens)
        self.encoded = {s: self._encode(data[s]) for s in ("train", "validation", "test")}
        set_seed(params.common.seed)
        max_positions = max(self.run.max_length, self.codec.gen_max_new_tokens) + 2
        self.model = build_bart(self.tokenizer, self.cfg, max_positions)
        set_generation_length(self.model, self.codec.gen_max_new_tokens)
        self.trainer = None

    def _encode(self, split):
        from datasets import Dataset

        rows = {"input_ids": [], "labels": []}
        for ex in split:
            rows["input_ids"].append(self.codec.source(self.fmt.source_text(ex)))
            rows["labels"].append(self.codec.target(ex))
        return Dataset.from_dict(rows)

    # -------------------------------------------------------- description
    def describe(self) -> dict[str, object]:
        return {
            "tokenization": "byte-level BPE data/tokenizers/gpt" + (" + one token per NER tag" if self.fmt.kind == "ner" else ""),
            "vocab_size": len(self.tokenizer),
            "architecture": "BartForConditionalGeneration (random init)",
            "decoding.validation": "greedy",
            "decoding.test": f"beam search (num_beams={self.gen.num_beams}, length_penalty={self.gen.length_penalty})",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }

    def fingerprint(self) -> str:
        blob = json.dumps(
            {"run": self.run.model_dump(), "model": self.cfg.model_dump(), "batch": self.batch_size,
             "common": self.params.finetune.common.model_dump(), "seed": self.params.common.seed,
             "vocab": len(self.tokenizer), "tok": hashlib.sha256(self.tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
             "n": [len(self.encoded["train"]), len(self.encoded["validation"])]},
            sort_keys=True,
        )
        return "encdec-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -------------------------------------------------------- fit
    def _scores(self, generated, split: str) -> dict[str, float]:
        fmt = self.fmt
        examples = self.data[split]
        preds, valid = [], []
        for ids, ex in zip(generated, examples):
            n_words = len(fmt.source_words(ex)) if fmt.kind == "ner" else 0
            p, v = fmt.prediction(self.codec.output_words(ids), n_words)
            preds.append(p)
            valid.append(v)
        return fmt.score([fmt.gold(ex) for ex in examples], preds, valid)

    def _build_trainer(self, on_epoch: Callable[[EpochRecord, dict[str, float]], None]):
        from transformers import (
            DataCollatorForSeq2Seq,
            EarlyStoppingCallback,
            Seq2SeqTrainer,
            Seq2SeqTrainingArguments,
            TrainerCallback,
        )

        common, main = self.params.finetune.common, self.fmt.main_metric

        class EpochLogger(TrainerCallback):
            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                losses = [h["loss"] for h in state.log_history if "loss" in h]
                record = EpochRecord(int(round(state.epoch or 0)), float(losses[-1]) if losses else float("nan"),
                                     float(metrics[f"eval_{main}"]))
                on_epoch(record, {"val_loss": float(metrics.get("eval_loss", float("nan")))})

        args = Seq2SeqTrainingArguments(
            output_dir=str(self.ckpt),
            num_train_epochs=self.run.epochs,
            max_steps=self.run.max_steps or -1,
            learning_rate=self.run.learning_rate,
            weight_decay=common.weight_decay,
            warmup_steps=common.warmup_ratio,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=common.eval_batch_size,
            eval_strategy="epoch",
            save_strategy="epoch",
            logging_strategy="epoch",
            save_total_limit=common.save_total_limit,
            load_best_model_at_end=True,
            metric_for_best_model=f"eval_{main}",
            greater_is_better=True,
            restore_callback_states_from_checkpoint=True,
            predict_with_generate=True,
            generation_max_length=None,
            generation_num_beams=1,
            seed=self.params.common.seed,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            dataloader_num_workers=0,
        )
        return Seq2SeqTrainer(
            model=self.model,
            args=args,
            data_collator=DataCollatorForSeq2Seq(self.tokenizer, model=self.model, label_pad_token_id=-100),
            train_dataset=self.encoded["train"],
            eval_dataset=self.encoded["validation"],
            processing_class=self.tokenizer,
            compute_metrics=lambda pred: self._scores(pred.predictions, "validation"),
            callbacks=[EarlyStoppingCallback(early_stopping_patience=common.patience), EpochLogger()],
        )

    def fit(self, on_epoch: Callable[[EpochRecord, dict[str, float]], None]) -> TrainOutcome:
        from transformers.trainer_utils import get_last_checkpoint

        self.trainer = trainer = self._build_trainer(on_epoch)
        last = get_last_checkpoint(str(self.ckpt)) if self.ckpt.is_dir() else None
        if last:
            log.info("Resuming %s-%s from %s", self.name, self.fmt.task, last)
        time_file = self.ckpt.parent / TRAIN_TIME_FILE
        before = float(time_file.read_text()) if last and time_file.exists() else 0.0
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=last)
        train_time = before + time.perf_counter() - start
        time_file.write_text(str(train_time))
        history = self._history(trainer.state.log_history)
        best_epoch = max(history, key=lambda r: r.val_metric).epoch if history else 0
        tokens = sum(len(x) for x in self.encoded["train"]["input_ids"]) + sum(len(x) for x in self.encoded["train"]["labels"])
        epochs_done = float(trainer.state.epoch or 0)
        return TrainOutcome(
            history=history,
            best_epoch=best_epoch,
            train_time_s=train_time,
            tokens_per_s=tokens * epochs_done / train_time if train_time > 0 else 0.0,
            param_count=sum(p.numel() for p in self.model.parameters()),
        )

    def _history(self, log_history: list[dict]) -> list[EpochRecord]:
        main = f"eval_{self.fmt.main_metric}"
        records, last_loss = {}, float("nan")
        for entry in log_history:
            if "loss" in entry:
                last_loss = float(entry["loss"])
            if main in entry:
                epoch = int(round(entry["epoch"]))
                records[epoch] = EpochRecord(epoch, last_loss, float(entry[main]))
        return [records[e] for e in sorted(records)]

    # -------------------------------------------------------- test, attention, registry
    def predict_test(self) -> TestOutcome:
        start = time.perf_counter()
        out = self.trainer.predict(self.encoded["test"], num_beams=self.gen.num_beams,
                                   length_penalty=self.gen.length_penalty)
        elapsed = time.perf_counter() - start
        outputs = [self.codec.output_words(ids) for ids in out.predictions]
        return TestOutcome(outputs, 1000.0 * elapsed / max(len(outputs), 1))

    def attention_maps(self, n: int) -> list[AttentionMap]:
        return cross_attention_maps(self.model, self.tokenizer, self.codec,
                                    [self.fmt.source_text(ex) for ex in self.data["validation"].select(range(min(n, len(self.data["validation"]))))],
                                    self.gen.num_beams, self.gen.length_penalty)

    def register(self, task: str, model: str) -> str:
        from pipeline.registry import register_pyfunc

        with tempfile.TemporaryDirectory(prefix="encdec-model-") as tmp:
            folder = Path(tmp) / "model"
            self.model.save_pretrained(str(folder), safe_serialization=True)
            self.tokenizer.save_pretrained(str(folder))
            meta = Path(tmp) / "task.json"
            meta.write_text(json.dumps({
                "task": self.fmt.task, "kind": self.fmt.kind, "label_names": self.fmt.label_names,
                "max_length": self.run.max_length, "num_beams": self.gen.num_beams,
                "length_penalty": self.gen.length_penalty, "max_new_tokens": self.gen.max_new_tokens,
            }))
            from pipeline.text2text_rnn import serving_example

            words = [self.fmt.source_words(ex) for ex in self.data["test"].select(range(min(2, len(self.data["test"]))))]
            return register_pyfunc(EncDecPyfunc(), {"model": folder, "task": meta}, task, model,
                                   input_example=serving_example(self.fmt, words))


def cross_attention_maps(model, tokenizer, codec: TextCodec, texts: list[str], num_beams: int,
                         length_penalty: float) -> list[AttentionMap]:
    """Generate for each text, then re-run the generated output through the model for its cross-attention
    (last decoder layer, averaged over heads)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the fused kernels do not return attention weights
    model.eval()
    maps = []
    try:
        with torch.no_grad():
            for text in texts:
                src = torch.tensor([codec.source(text)], device=model.device)  # [1, src_len]
                generated = model.generate(input_ids=src, attention_mask=torch.ones_like(src), num_beams=num_beams,
                                           length_penalty=length_penalty)
                # generated: [1, out_len], starting with the decoder start token
                out = model(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=generated[:, :-1],
                            output_attentions=True)
                weights = out.cross_attentions[-1][0].mean(dim=0)  # [out_len-1, src_len]
                predicted = generated[0, 1:].tolist()
                maps.append(AttentionMap(
                    [tokenizer.decode([i]) for i in src[0].tolist()],
                    [tokenizer.decode([i]) for i in predicted],
                    weights.float().cpu().numpy(),
                ))
    finally:
        model.set_attn_implementation(previous)
    return maps


class EncDecPyfunc(mlflow.pyfunc.PythonModel):
    """Serves the registered encdec: DataFrame with `text` (NER: space-separated words, or a `tokens` list) ->
    label names / entities / German text."""

    def load_context(self, context) -> None:
        from transformers import AutoTokenizer, BartForConditionalGeneration

        meta = json.loads(Path(context.artifacts["task"]).read_text(encoding="utf-8"))
        self.meta = meta
        self.fmt = TaskFormat(meta["task"], meta["kind"], meta["label_names"])
        folder = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = BartForConditionalGeneration.from_pretrained(folder)
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.codec = TextCodec(self.tokenizer, self.fmt, meta["max_length"], meta["max_new_tokens"])
        set_generation_length(self.model, self.codec.gen_max_new_tokens)

    def predict(self, context, model_input, params=None) -> list[Any]:
        from pipeline.text2text_rnn import serving_words

        words = serving_words(self.fmt, model_input)
        if self.fmt.kind == "ner":
            texts = [" ".join(w) for w in words]
        else:
            frame = model_input
            texts = [str(t) for t in frame["text"]]
        results = []
        for start in range(0, len(texts), 32):
            batch = [self.codec.source(t) for t in texts[start : start + 32]]
            width = max(len(b) for b in batch)
            ids = torch.tensor([b + [self.codec.pad] * (width - len(b)) for b in batch], device=self.model.device)  # [batch, src_len]
            mask = (torch.arange(width, device=ids.device).unsqueeze(0) < torch.tensor([len(b) for b in batch], device=ids.device).unsqueeze(1)).long()  # [batch, src_len]
            with torch.no_grad():
                generated = self.model.generate(input_ids=ids, attention_mask=mask, num_beams=self.meta["num_beams"],
                                                length_penalty=self.meta["length_penalty"])  # [batch, out_len]
            for row, w in zip(generated.tolist(), words[start : start + 32]):
                prediction, _ = self.fmt.prediction(self.codec.output_words(row), len(w))
                results.append(self.fmt.natural(prediction, w))
        return results
