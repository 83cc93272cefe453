"""A small transformer encoder-decoder (T5 architecture, random init) trained text-to-text on one task with
Seq2SeqTrainer.

Tokenization: the project's byte-level BPE (data/tokenizers/gpt); <|endoftext|> ends sources and targets and
starts decoding, <|pad|> pads. For NER the nine tags are added as tokens <O>, <B-PER>, ... so the target is
exactly one token per word (as the rnn's tag vocabulary). Each epoch is evaluated by generation (greedy) on the
validation split; EarlyStoppingCallback + load_best_model_at_end keep the best epoch; checkpoints go to
checkpoints/train-<model>-<task>/ and are resumed from. The test split is decoded once with beam search, except for
classification: there the test split, the latency meter and the served model score the label set instead
(`score_labels`: one decoder forward over every label's token sequence, the label with the highest total
log-probability wins), the exact best label under the model at a fraction of beam search's cost (p50 ~45 ms at
batch 1 before). An output is then always a label: `invalid_rate` is 0 by construction for classification. NER
decodes under `TagSequenceConstraint` (validation, test, latency, attention maps, serving): only tag tokens, exactly
one per source word, then eos, so an output is invalid only where the source was cut at max_length (2 of 1,000
test sentences). Unconstrained, a model still learning the alignment ran on to the 129-token cap: invalid_rate 1.0
and 174 of the stage's 288 s in the test split's beam search (default run of 28 Nov 2026; constrained: 83 s in all).
`invalid_rate` stays meaningful for the rnn, which decodes freely.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import torch

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.run_settings import RunSettings
from pipeline.models.conditional_generation import reorder_only_decoder_cache
from pipeline.models.loading import load_tokenizer
from pipeline.train.family import AttentionMap, TrainOutcome
from pipeline.train.hf_trainer import OrderedSeq2SeqTrainer, best_epoch
from pipeline.train.text2text import (
    TaskFormat,
    Text2TextError,
    Text2TextModel,
    read_serving_meta,
    score_outputs,
    served_sources,
)

log = logging.getLogger(__name__)

CLASSIFICATION_MAX_NEW_TOKENS = 8  # a label name is a few BPE tokens


BPE_WORD_START = "\u0120"  # "Ġ": byte-level BPE's mark of a token that follows a space


def tag_token(tag: str) -> str:
    return f"<{tag}>"


def load_bpe_tokenizer(fmt: TaskFormat, folder: Path | None = None):
    """The project's byte-level BPE tokenizer, plus one token per NER tag for the conll2003 task."""
    folder = folder or paths.tokenizer_dir("gpt")
    tokenizer = load_tokenizer(folder)
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise Text2TextError(
            f"{folder}: the tokenizer needs an eos and a pad token (retrain it with the tokenizers stage)"
        )
    if fmt.kind == "ner":
        tokenizer.add_tokens([tag_token(t) for t in fmt.label_names])
    return tokenizer


class TextCodec:
    """Task text <-> token ids for the encoder-decoder."""

    def __init__(self, tokenizer, fmt: TaskFormat, max_length: int, max_new_tokens: int):
        self.tok, self.fmt, self.max_length = tokenizer, fmt, max_length
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.tag_ids = (
            {tokenizer.convert_tokens_to_ids(tag_token(t)): t for t in fmt.label_names} if fmt.kind == "ner" else {}
        )
        self.gen_max_new_tokens = {"classification": CLASSIFICATION_MAX_NEW_TOKENS, "ner": max_length + 1}.get(
            fmt.kind, max_new_tokens
        )
        self.word_start = self._word_start_table() if fmt.kind == "ner" else None

    def _word_start_table(self) -> torch.Tensor:
        """[vocab] bool: which tokens begin a word of a space-joined source (all but its first word)."""
        if self.tok.tokenize("a b")[-1:] != [BPE_WORD_START + "b"]:
            raise Text2TextError(
                "NER decoding counts words by byte-level BPE's space mark; this tokenizer does not use it "
                "(retrain data/tokenizers/gpt with the tokenizers stage)"
            )
        table = torch.zeros(len(self.tok), dtype=torch.bool)
        starts = [i for t, i in self.tok.get_vocab().items() if t.startswith(BPE_WORD_START) and i < len(self.tok)]
        table[starts] = True
        return table

    def word_counts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Words per source row (the tags its NER output must have): [batch, src_len] -> [batch]."""
        content = (input_ids != self.pad) & (input_ids != self.eos)  # [batch, src_len]
        starts = self.word_start.to(input_ids.device)[input_ids] & content  # [batch, src_len]
        return starts.sum(-1) + content[:, 0].long()  # the first word has no space mark

    def generation_kwargs(self, input_ids: torch.Tensor, num_beams: int) -> dict[str, Any]:
        """Extra `generate` arguments for a batch of sources: NER's tag-sequence constraint, nothing otherwise."""
        if self.fmt.kind != "ner":
            return {}
        from transformers import LogitsProcessorList

        constraint = TagSequenceConstraint(self.word_counts(input_ids), list(self.tag_ids), self.eos, num_beams)
        return {"logits_processor": LogitsProcessorList([constraint])}

    def source(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False, truncation=True, max_length=self.max_length - 1)["input_ids"]
        return ids + [self.eos]

    def target(self, example: dict) -> list[int]:
        if self.fmt.kind == "ner":
            tags = self.fmt.target_words(example)[: self.max_length - 1]
            return [self.tok.convert_tokens_to_ids(tag_token(t)) for t in tags] + [self.eos]
        return self.source(self.fmt.target_text(example))

    def label_targets(self) -> list[list[int]]:
        """Each class name's target ids (as `target` encodes it: BPE tokens + eos), in label-id order."""
        return [self.source(name) for name in self.fmt.label_names]

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


class TagSequenceConstraint:
    """A `generate` logits processor for NER: each row may emit only tag tokens until it has one per source word,
    then only eos. Works for greedy and beam search (rows = batch x num_beams, beams of one source adjacent)."""

    def __init__(self, word_counts: torch.Tensor, tag_ids: list[int], eos: int, num_beams: int = 1):
        self.limits = word_counts.repeat_interleave(max(num_beams, 1))  # [rows]
        self.tag_ids = torch.tensor(tag_ids)
        self.eos = eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # input_ids: [rows, 1 + generated] (the decoder start token first); scores: [rows, vocab]
        tagging = (input_ids.size(1) - 1 < self.limits.to(scores.device))[:, None]  # [rows, 1]
        tag_ids = self.tag_ids.to(scores.device)
        allowed = torch.full_like(scores, float("-inf"))  # [rows, vocab]
        allowed[:, tag_ids] = torch.where(tagging, scores[:, tag_ids], float("-inf"))
        allowed[:, self.eos] = torch.where(tagging[:, 0], float("-inf"), 0.0)
        return allowed


class CodecSeq2SeqTrainer(OrderedSeq2SeqTrainer):
    """Seq2SeqTrainer whose generation (validation, test prediction) adds the codec's per-batch arguments (NER:
    the tag-sequence constraint, sized from each batch's sources)."""

    def __init__(self, *args, codec: TextCodec, **kwargs):
        super().__init__(*args, **kwargs)
        self.codec = codec

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if not gen_kwargs:
            gen_kwargs = getattr(self, "_gen_kwargs", {}).copy()
        beams = gen_kwargs.get("num_beams") or model.generation_config.num_beams or 1
        gen_kwargs.update(self.codec.generation_kwargs(inputs["input_ids"], beams))
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)


def build_t5(tokenizer, cfg):
    """The T5 architecture (pre-layer-norm blocks, relative position buckets, tied embeddings), randomly
    initialised. BART's post-layer-norm blocks at the same sizes ignored the source on Multi30k (2,000 pairs): one
    generic German sentence for every input, test BLEU 0.64 at the default settings, 2.2 at best with lr 1e-3, 10
    epochs, label smoothing and dropout 0.3; T5 conditioned on it within two epochs (28 Nov 2026, bench/README)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        d_kv=cfg.d_model // cfg.heads,
        d_ff=cfg.ffn_dim,
        num_layers=cfg.layers,
        num_decoder_layers=cfg.layers,
        num_heads=cfg.heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return reorder_only_decoder_cache(T5ForConditionalGeneration(config))


@torch.no_grad()
def score_labels(model, label_ids: list[list[int]], input_ids, attention_mask, start_id: int) -> torch.Tensor:
    """The index of the most probable label sequence for each source: sum over each label's tokens (eos
    included) of log p(token | source, previous tokens), all labels in one decoder forward. Returns [batch]."""
    device = input_ids.device
    n_labels, batch = len(label_ids), input_ids.size(0)
    width = max(len(ids) for ids in label_ids)
    targets = torch.tensor([ids + [start_id] * (width - len(ids)) for ids in label_ids], device=device)  # [L, T]
    lengths = torch.tensor([len(ids) for ids in label_ids], device=device)  # [L]
    keep = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()  # [L, T]
    decoder_in = torch.cat([torch.full((n_labels, 1), start_id, device=device), targets[:, :-1]], dim=1)  # [L, T]
    encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)[0]  # [B, S, d]
    logits = model(
        encoder_outputs=(encoded.repeat_interleave(n_labels, dim=0),),  # [B*L, S, d]
        attention_mask=attention_mask.repeat_interleave(n_labels, dim=0),  # [B*L, S]
        decoder_input_ids=decoder_in.repeat(batch, 1),  # [B*L, T]
        use_cache=False,
    ).logits  # [B*L, T, vocab]
    token_lp = logits.log_softmax(-1).gather(-1, targets.repeat(batch, 1).unsqueeze(-1)).squeeze(-1)  # [B*L, T]
    totals = (token_lp * keep.repeat(batch, 1)).sum(-1).view(batch, n_labels)  # [B, L]
    return totals.argmax(-1)  # [B]


def pad_sources(sources: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids and their attention mask: [batch, src_len] each."""
    width = max(len(ids) for ids in sources)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sources], device=device)  # [batch, src_len]
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources], device=device)  # [batch, src_len]
    return ids, mask


def set_generation_length(model, max_new_tokens: int) -> None:
    """Cap generation through max_length (decoder start token + max_new_tokens): Seq2SeqTrainer fills in a
    default max_length after its first generate, which would then clash with a max_new_tokens setting."""
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = max_new_tokens + 1


class EncDecText2Text(Text2TextModel):
    family = "encdec"

    def __init__(self, settings: RunSettings, data, params: Params):
        from transformers import set_seed

        super().__init__(settings, data, params)
        fmt = self.fmt
        self.ckpt = settings.checkpoint_dir
        self.tokenizer = load_bpe_tokenizer(fmt)
        self.codec = TextCodec(self.tokenizer, fmt, self.run.max_length, self.gen.max_new_tokens)
        self.validation = self.scored_validation()
        splits = {"train": data["train"], "validation": self.validation, "test": data["test"]}
        self.encoded = {s: self._encode(split) for s, split in splits.items()}
        set_seed(params.common.seed)
        self.model = build_t5(self.tokenizer, self.cfg)
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
            "tokenization": "byte-level BPE data/tokenizers/gpt"
            + (" + one token per NER tag" if self.fmt.kind == "ner" else ""),
            "vocab_size": len(self.tokenizer),
            "architecture": "T5ForConditionalGeneration (random init)",
            "decoding.validation": "greedy",
            "decoding.test": "label-set scoring (most probable label sequence)"
            if self.fmt.kind == "classification"
            else f"beam search (num_beams={self.gen.num_beams}, length_penalty={self.gen.length_penalty})",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }

    @property
    def inputs(self) -> list[Path]:
        return [paths.tokenizer_dir("gpt")]

    # -------------------------------------------------------- fit
    def _scores(self, generated, split) -> dict[str, float]:
        metrics, _ = score_outputs(self.fmt, split, [self.codec.output_words(ids) for ids in generated])
        return metrics

    def _build_trainer(self, callbacks: list):
        from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainingArguments

        common = self.settings.common
        args = Seq2SeqTrainingArguments(
            output_dir=str(self.ckpt),
            num_train_epochs=self.run.epochs,
            max_steps=self.run.max_steps or -1,
            learning_rate=self.run.learning_rate,
            weight_decay=common.weight_decay,
            warmup_steps=common.warmup_ratio,  # a float < 1 is a fraction of all steps
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=common.eval_batch_size,
            eval_strategy="epoch",
            save_strategy="epoch",
            logging_strategy="epoch",
            save_total_limit=common.save_total_limit,
            load_best_model_at_end=True,
            metric_for_best_model=self.fmt.main_metric,
            greater_is_better=True,
            restore_callback_states_from_checkpoint=True,
            predict_with_generate=True,
            generation_num_beams=1,  # validation: greedy; the test split uses beam search
            include_num_input_tokens_seen="non_padding",
            seed=self.settings.seed,
            data_seed=self.settings.seed,
            train_sampling_strategy="group_by_length" if common.length_grouped_batches else "random",
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=False,
        )
        return CodecSeq2SeqTrainer(
            model=self.model,
            codec=self.codec,
            args=args,
            data_collator=DataCollatorForSeq2Seq(self.tokenizer, model=self.model, label_pad_token_id=-100),
            train_dataset=self.encoded["train"],
            eval_dataset=self.encoded["validation"],
            processing_class=self.tokenizer,
            compute_metrics=lambda pred: self._scores(pred.predictions, self.validation),
            callbacks=[*callbacks, EarlyStoppingCallback(early_stopping_patience=common.patience)],
        )

    def fit(self, resume_from: Path | None = None) -> TrainOutcome:
        from pipeline.train.hf_trainer import MlflowEpochLogger, TrainingSpeed
        from pipeline.train.plots import learning_curve_from_history

        speed = TrainingSpeed()
        self.trainer = trainer = self._build_trainer([MlflowEpochLogger(), speed])
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_time = time.perf_counter() - start
        self.model = trainer.model  # the best epoch's weights (load_best_model_at_end)
        return TrainOutcome(
            curve=learning_curve_from_history(trainer.state.log_history),
            best_epoch=best_epoch(trainer),
            train_time_s=train_time,
            tokens_per_s=speed.tokens_per_s,
            param_count=sum(p.numel() for p in self.model.parameters()),
        )

    # -------------------------------------------------------- test, latency, attention, registry
    def classify(self, texts: list[str], batch_size: int = 32) -> list[str]:
        """Classification: the label name `score_labels` picks for each text."""
        self.model.eval()
        labels, names = self.codec.label_targets(), self.fmt.label_names
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = pad_sources(
                [self.codec.source(t) for t in texts[start : start + batch_size]], self.codec.pad, self.model.device
            )
            out += [names[i] for i in score_labels(self.model, labels, ids, mask, self.codec.eos).tolist()]
        return out

    def predict_test(self) -> list[list[str]]:
        if self.fmt.kind == "classification":
            texts = [self.fmt.source_text(ex) for ex in self.data["test"]]
            return [[name] for name in self.classify(texts, self.settings.common.eval_batch_size)]
        out = self.trainer.predict(
            self.encoded["test"], num_beams=self.gen.num_beams, length_penalty=self.gen.length_penalty
        )
        return [self.codec.output_words(ids) for ids in out.predictions]

    @torch.no_grad()
    def infer_one(self, text: str) -> None:
        """Tokenize + beam search (classification: label-set scoring), as a served request."""
        if self.fmt.kind == "classification":
            self.classify([text])
            return
        self.model.eval()
        ids = torch.tensor([self.codec.source(text)], device=self.model.device)  # [1, src_len]
        self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=self.gen.num_beams,
            length_penalty=self.gen.length_penalty,
            **self.codec.generation_kwargs(ids, self.gen.num_beams),
        )

    def attention_maps(self, n: int) -> list[AttentionMap]:
        validation = self.data["validation"]
        texts = [self.fmt.source_text(validation[i]) for i in range(min(n, len(validation)))]
        return cross_attention_maps(
            self.model, self.tokenizer, self.codec, texts, self.gen.num_beams, self.gen.length_penalty
        )

    def register(self, export_dir: Path) -> str:
        from pipeline.tracking.registry import register_pyfunc

        with tempfile.TemporaryDirectory(prefix="encdec-model-") as tmp:
            folder = Path(tmp) / "model"
            self.model.save_pretrained(str(folder), safe_serialization=True)
            self.tokenizer.save_pretrained(str(folder))
            meta = self.write_serving_meta(Path(tmp) / "task.json")
            return register_pyfunc(
                EncDecPyfunc(),
                {"model": folder, "task": meta},
                self.settings.task,
                self.settings.model,
                input_example=self.serving_example(),
            )


def cross_attention_maps(
    model, tokenizer, codec: TextCodec, texts: list[str], num_beams: int, length_penalty: float
) -> list[AttentionMap]:
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
                generated = model.generate(
                    input_ids=src,
                    attention_mask=torch.ones_like(src),
                    num_beams=num_beams,
                    length_penalty=length_penalty,
                    **codec.generation_kwargs(src, num_beams),
                )
                # generated: [1, out_len], starting with the decoder start token
                out = model(
                    input_ids=src,
                    attention_mask=torch.ones_like(src),
                    decoder_input_ids=generated[:, :-1],
                    output_attentions=True,
                )
                weights = out.cross_attentions[-1][0].mean(dim=0)  # [out_len-1, src_len]
                predicted = generated[0, 1:].tolist()
                maps.append(
                    AttentionMap(
                        [tokenizer.decode([i]) for i in src[0].tolist()],
                        [tokenizer.decode([i]) for i in predicted],
                        weights.float().cpu().numpy(),
                    )
                )
    finally:
        model.set_attn_implementation(previous)
    return maps


class EncDecPyfunc(mlflow.pyfunc.PythonModel):
    """Serves the registered encdec: texts (a DataFrame `text` column, a list or a string; NER: space-separated
    words) -> the task kind's response shape (pipeline.models.pyfunc):
    {"label", "score": None} / entities / German text."""

    def load_context(self, context) -> None:
        from transformers import T5ForConditionalGeneration

        meta, self.fmt = read_serving_meta(context.artifacts["task"])
        self.meta = meta
        folder = context.artifacts["model"]
        self.tokenizer = load_tokenizer(folder)
        self.model = reorder_only_decoder_cache(
            T5ForConditionalGeneration.from_pretrained(folder, use_safetensors=True)
        )
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.codec = TextCodec(self.tokenizer, self.fmt, meta["max_length"], meta["max_new_tokens"])
        set_generation_length(self.model, self.codec.gen_max_new_tokens)

    def predict(self, context, model_input, params=None) -> list[Any]:
        texts = served_sources(self.fmt, model_input)
        sources = [" ".join(t.split()) if self.fmt.kind == "ner" else t for t in texts]
        if self.fmt.kind == "classification":  # the most probable label sequence: always a label
            labels, results = self.codec.label_targets(), []
            for start in range(0, len(texts), 32):
                ids, mask = pad_sources(
                    [self.codec.source(t) for t in texts[start : start + 32]], self.codec.pad, self.model.device
                )
                picked = score_labels(self.model, labels, ids, mask, self.codec.eos)  # [batch]
                results += [self.fmt.natural(i, "") for i in picked.tolist()]  # {"label", "score": None}
            return results
        results = []
        for start in range(0, len(texts), 32):
            ids, mask = pad_sources(
                [self.codec.source(t) for t in sources[start : start + 32]], self.codec.pad, self.model.device
            )  # [batch, src_len] each
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    num_beams=self.meta["num_beams"],
                    length_penalty=self.meta["length_penalty"],
                    **self.codec.generation_kwargs(ids, self.meta["num_beams"]),
                )  # [batch, out_len]
            for row, text in zip(generated.tolist(), texts[start : start + 32]):
                prediction, _ = self.fmt.prediction(self.codec.output_words(row), len(text.split()))
                results.append(self.fmt.natural(prediction, text))
        return results
