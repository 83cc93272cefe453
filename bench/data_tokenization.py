"""Data: the pipeline's tokenization throughput vs raw batched fast-tokenizer throughput on the same texts.

The pipeline tokenizes where its stages need ids: the fine-tuning inputs (pipeline.data.task_data.encode_*, a
datasets.map over the prepared split) and the pretraining blocks (pipeline.pretrain.data.lm_blocks). Each is
timed against the Rust tokenizer's `encode_batch` on the same texts with the same truncation (a private copy
of the tokenizer, so neither side sees the other's settings), A/B interleaved. Tokens/s counts the raw side's
tokens for both, so the ratio is a ratio of times. TOKENIZERS_PARALLELISM is whatever `make` sets (false).
"""

from __future__ import annotations

import logging
import os

from bench import fixtures
from bench.common import BenchOptions, fmt_ratio, interleave, paired_ratios, result_body, row, summarize, verdict

log = logging.getLogger("bench")

NAME = "data_tokenization"
TARGET = 0.8


def raw_encoder(tok, max_length: int | None, add_special_tokens: bool = True):
    """A private copy of the fast tokenizer's Rust backend with the same truncation as the pipeline's call."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_padding()
    if max_length:
        backend.enable_truncation(max_length)
    else:
        backend.no_truncation()

    def encode(texts: list[str]) -> int:
        return sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens))

    return encode


def cases(opts: BenchOptions) -> dict:
    """name -> (pipeline_fn, raw_fn, n_texts, what)"""
    from pipeline.data import task_data
    from pipeline.pretrain.data import lm_blocks

    params = fixtures.params()
    out = {}
    minilm = fixtures.minilm_tokenizer()

    emotion = fixtures.dataset("emotion")["train"]
    cap = opts.size(params.prepare.tasks["emotion"].max_train or len(emotion), 1000)
    emotion = emotion.select(range(min(cap, len(emotion))))
    length = params.train.tasks["emotion"].max_length
    texts = list(emotion["text"])
    raw = raw_encoder(minilm, length)
    out["classification (emotion train, minilm tokenizer)"] = (
        lambda: task_data.encode_classification(emotion, minilm, length),
        lambda: raw(texts),
        texts,
        "pipeline.data.task_data.encode_classification",
    )

    conll = fixtures.dataset("conll2003")["train"]
    cap = opts.size(params.prepare.tasks["conll2003"].max_train or len(conll), 1000)
    conll = conll.select(range(min(cap, len(conll))))
    length = params.train.tasks["conll2003"].max_length
    joined = [" ".join(words) for words in conll["tokens"]]
    raw_ner = raw_encoder(minilm, length)
    out["ner (conll2003 train, minilm tokenizer)"] = (
        lambda: task_data.encode_ner(conll, minilm, length),
        lambda: raw_ner(joined),
        joined,
        "pipeline.data.task_data.encode_ner",
    )

    gpt = fixtures.tokenizer("gpt")
    docs = list(fixtures.wikitext_docs())[: opts.size(10**9, 1500)]
    block = params.pretrain.gpt.block_size
    raw_gpt = raw_encoder(gpt, None, add_special_tokens=False)
    out["pretraining blocks (WikiText, gpt tokenizer)"] = (
        lambda: lm_blocks(docs, gpt, block, "bench corpus"),
        lambda: raw_gpt(docs),
        docs,
        "pipeline.pretrain.data.lm_blocks",
    )
    return out


def run(opts: BenchOptions, ctx: dict) -> dict:
    import datasets

    datasets.disable_progress_bars()  # both sides print nothing; the bar would only add noise to one
    rows, results = [], {}
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    try:
        for name, (pipeline_fn, raw_fn, texts, fn_name) in cases(opts).items():
            tokens = raw_fn()
            samples = interleave(pipeline_fn, raw_fn, reps=opts.pick(5, 3), warmup=1)
            a = [tokens / t for t in samples["a"]]
            b = [tokens / t for t in samples["b"]]
            ratios = paired_ratios(a, b)
            ratio = summarize(a)["median"] / summarize(b)["median"]
            results[name] = {
                "function": fn_name,
                "texts": len(texts),
                "tokens": tokens,
                "seconds": samples,
                "pipeline_tokens_per_s": a,
                "raw_tokens_per_s": b,
                "ratio": ratio,
                "paired_ratios": ratios,
            }
            rows.append(
                row(
                    name,
                    f"ratio >= {TARGET}",
                    f"{fmt_ratio(ratio)} ({summarize(a)['median']:,.0f} vs {summarize(b)['median']:,.0f} tok/s)",
                    verdict(ratio >= TARGET),
                    f"{fn_name} vs Tokenizer.encode_batch; {len(texts)} texts, {tokens:,} tokens",
                )
            )
    finally:
        datasets.enable_progress_bars()
        logging.getLogger("pipeline").setLevel(logging.NOTSET)
    return result_body(rows, cases=results, tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"))
