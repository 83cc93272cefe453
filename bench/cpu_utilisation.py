"""CPU utilisation: achieved FLOP/s of GPT pretraining vs the machine's measured fp32 matmul peak.

Achieved = 6·N·tokens/s (N incl. the LM head: bench.flops.gpt_flop_params) with the tokens/s of the pipeline's
GPT training step (taken from training_engine when it ran earlier in the same `make bench`, else measured
here the same way). Peak = the best fp32 matmul FLOP/s over a few square sizes with the same thread count,
measured before and after the training samples (a busy neighbour lowers both; the max is kept).
The attention-score FLOPs that 6·N leaves out are reported alongside.
"""

from __future__ import annotations

import logging
import statistics

import torch

from bench import training_engine
from bench.common import BenchOptions, fmt_pct, result_body, row, verdict
from bench.flops import attention_flops_per_token, matmul_peak

log = logging.getLogger("bench")

NAME = "cpu_utilisation"
TARGET = 0.40


def gpt_samples(opts: BenchOptions, ctx: dict) -> tuple[dict, str]:
    """The pipeline GPT step's tokens/s samples and N: from this run's training_engine result, else measured."""
    previous = ((ctx.get("training_engine") or {}).get("families") or {}).get("gpt") or {}
    if previous.get("pipeline_tokens_per_s") and previous.get("n_params_6n"):
        return previous, "training_engine (same run)"
    data = training_engine.trainer_family("gpt", opts)
    from bench.flops import gpt_flop_params

    model = data.pop("flop_model")
    data["n_params_6n"] = gpt_flop_params(model)
    data["n_layer"], data["n_embd"] = model.config.n_layer, model.config.n_embd
    return data, "measured here"


def run(opts: BenchOptions, ctx: dict) -> dict:
    reps = opts.pick(5, 3)
    before = matmul_peak(reps=reps)
    gpt, source = gpt_samples(opts, ctx)
    after = matmul_peak(reps=reps)
    peak = max(before["peak_flops"], after["peak_flops"])
    tok_s = statistics.median(gpt["pipeline_tokens_per_s"])
    n = gpt["n_params_6n"]
    achieved = 6 * n * tok_s
    attn = attention_flops_per_token(gpt["n_layer"], gpt["n_embd"], gpt["block_size"])
    with_attn = (6 * n + attn) * tok_s
    utilisation = achieved / peak
    note = (f"{tok_s:,.0f} tok/s x 6 x {n / 1e6:.2f}M params = {achieved / 1e9:.1f} GFLOP/s vs peak "
            f"{peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); with attention "
            f"{fmt_pct(with_attn / peak)}; tokens/s from {source}")
    return result_body(
        [row("GPT pretraining FLOP/s vs fp32 matmul peak", f">= {TARGET:.0%}", fmt_pct(utilisation),
             verdict(utilisation >= TARGET), note)],
        peak_flops=peak, matmul_before=before, matmul_after=after, tokens_per_s=gpt["pipeline_tokens_per_s"],
        tokens_per_s_source=source, n_params_6n=n, attention_flops_per_token=attn, achieved_flops=achieved,
        utilisation=utilisation, utilisation_with_attention=with_attn / peak,
    )
