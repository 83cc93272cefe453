"""CPU utilisation: achieved FLOP/s of GPT pretraining vs the machine's measured fp32 matmul peak.

Achieved = 6·N·tokens/s (N incl. the LM head: bench.flops.gpt_flop_params) of the pipeline's GPT training step
(the Trainer segments of training_engine). Peak = the best fp32 `torch.mm` FLOP/s (1024² and 2048²) with the same
thread count, sampled right after each Trainer segment, so each utilisation sample pairs a training segment
with a peak taken under the same machine load (the median of the pairs is reported). A standalone peak over
512-2048² is measured too and reported for reference. The attention-score FLOPs that 6·N leaves out are
reported alongside. Uses training_engine's GPT samples when it ran earlier in the same `make bench`.
"""

from __future__ import annotations

import logging
import statistics

import torch

from bench import training_engine
from bench.common import BenchOptions, fmt_pct, result_body, row, summarize, verdict
from bench.flops import attention_flops_per_token, gpt_flop_params, matmul_peak

log = logging.getLogger("bench")

NAME = "cpu_utilisation"
TARGET = 0.40


def gpt_samples(opts: BenchOptions, ctx: dict) -> tuple[dict, str]:
    """The pipeline GPT step's tokens/s with paired matmul probes, and N: from this run's training_engine, else
    measured here the same way."""
    previous = ((ctx.get("training_engine") or {}).get("families") or {}).get("gpt") or {}
    if previous.get("pipeline_tokens_per_s") and (previous.get("probes") or {}).get("matmul_flops"):
        return previous, "training_engine (same run)"
    data = training_engine.trainer_family("gpt", opts, extra={"matmul_flops": training_engine.matmul_probe})
    model = data.pop("flop_model")
    data["n_params_6n"] = gpt_flop_params(model)
    data["n_layer"], data["n_embd"] = model.config.n_layer, model.config.n_embd
    return data, "measured here"


def run(opts: BenchOptions, ctx: dict) -> dict:
    gpt, source = gpt_samples(opts, ctx)
    reference = matmul_peak(reps=opts.pick(5, 3))
    tok_s = gpt["pipeline_tokens_per_s"]
    peaks = gpt["probes"]["matmul_flops"]
    n = gpt["n_params_6n"]
    attn = attention_flops_per_token(gpt["n_layer"], gpt["n_embd"], gpt["block_size"])
    paired = [6 * n * t / p for t, p in zip(tok_s, peaks)]
    utilisation = statistics.median(paired)
    with_attn = utilisation * (6 * n + attn) / (6 * n)
    best_peak = max(max(peaks), reference["peak_flops"])
    achieved = 6 * n * statistics.median(tok_s)
    note = (
        f"{statistics.median(tok_s):,.0f} tok/s x 6 x {n / 1e6:.2f}M params = {achieved / 1e9:.1f} GFLOP/s; "
        f"paired peak median {statistics.median(peaks) / 1e9:.1f} GFLOP/s (best seen {best_peak / 1e9:.1f}, "
        f"{torch.get_num_threads()} threads); with attention FLOPs {fmt_pct(with_attn)}; tokens/s from {source}"
    )
    return result_body(
        [
            row(
                "GPT pretraining FLOP/s vs fp32 matmul peak",
                f">= {TARGET:.0%}",
                fmt_pct(utilisation),
                verdict(utilisation >= TARGET),
                note,
            )
        ],
        tokens_per_s=tok_s,
        paired_matmul_peak=peaks,
        paired_utilisation=paired,
        stats=summarize(paired),
        reference_peak=reference,
        best_peak_flops=best_peak,
        utilisation_vs_best_peak=achieved / best_peak,
        tokens_per_s_source=source,
        n_params_6n=n,
        attention_flops_per_token=attn,
        achieved_flops=achieved,
        utilisation=utilisation,
        utilisation_with_attention=with_attn,
    )
