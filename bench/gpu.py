"""GPU: GPT pretraining tokens/s and MFU in bf16 (only where a CUDA device is present; skipped otherwise).

MFU = 6·N·tokens/s (N incl. the LM head, bench.flops.gpt_flop_params) over the device's dense bf16 peak:
the datasheet number for known cards (H100 SXM 989 TFLOP/s, H200 the same chip) and, for reference, the
bf16 matmul peak measured here. Three measurements: a hand-written loop over the pipeline's configured GPT (tiny:
a GPU cannot be kept busy by it, so its MFU is reported only) and over GPT-2 small (124M, the size the >= 45 %
target is about), and the pipeline's own Trainer set-up with the gpu profile (the GPU path users run).
"""

from __future__ import annotations

import logging
import os
import time

import torch

from bench.common import REPORT, SKIPPED, BenchOptions, fmt_pct, result_body, row, summarize, verdict
from bench.flops import gpt_flop_params, matmul_peak

log = logging.getLogger("bench")

NAME = "gpu"
MFU_TARGET = 0.45
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity).
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
# Dropout off, as in nanoGPT's MFU runs: with it on, sdpa takes a slower flash kernel and three dropout kernels
# run per layer (28.3 % -> 31.7 % MFU at batch 32 on an H200, bench/README.md).
GPT2_SMALL = {
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "block_size": 1024,
    "batch_size": 32,
    "vocab_size": 50304,
    "dropout": 0.0,
}


def datasheet_peak(device_name: str) -> float | None:
    for key, peak in DATASHEET_BF16.items():
        if key in device_name:
            return peak
    return None


def build_gpt(cfg: dict, lean: bool = False) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel, or with lean=True the same parameters in bench.lean_gpt's layout."""
    if lean:
        from bench.lean_gpt import LeanGPT

        keys = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")
        return LeanGPT(**{k: cfg[k] for k in keys})
    from transformers import GPT2Config, GPT2LMHeadModel

    drop = cfg.get("dropout", 0.1)  # GPT2Config's default
    config = GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["n_embd"],
        n_positions=cfg["block_size"],
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=drop,
        embd_pdrop=drop,
        attn_pdrop=drop,
    )
    return GPT2LMHeadModel(config)


def gpt_tokens_per_s(
    cfg: dict,
    steps: int,
    warmup: int,
    compile_model: bool = True,
    lean: bool = False,
    attention: str | None = None,
    bf16_weights: bool = False,
) -> dict:
    """Hand-written bf16-autocast training loop (AdamW, fused) on random tokens; tokens/s per step.
    attention: None (sdpa picks), "cudnn" or "flash" (that sdpa backend forced); bf16_weights: the model's
    parameters and activations in bf16 without autocast (no fp32 master weights: a throughput ceiling, not a
    training recipe)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = build_gpt(cfg, lean).cuda()
    n = gpt_flop_params(model)
    if bf16_weights:
        model = model.to(torch.bfloat16)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = torch.randint(0, cfg["vocab_size"], (cfg["batch_size"], cfg["block_size"]), device="cuda")
    tokens = batch.numel()
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}.get(attention)
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        precision = contextlib.nullcontext() if bf16_weights else torch.autocast("cuda", dtype=torch.bfloat16)
        with sdpa_kernel(backend) if backend else contextlib.nullcontext():
            with precision:
                out = step_model(input_ids=batch, labels=batch)
                loss = out if lean else out.loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del model, step_model, opt
    torch.cuda.empty_cache()
    rates = [tokens / t for t in times]
    return {
        "config": {
            **cfg,
            "module": "bench.lean_gpt" if lean else "transformers GPT2LMHeadModel",
            "attention": attention or "sdpa default",
            "precision": "bf16 weights" if bf16_weights else "bf16 autocast",
        },
        "n_params_6n": n,
        "tokens_per_step": tokens,
        "step_s": times,
        "tokens_per_s": rates,
        "stats": summarize(rates),
    }


class _StepClock:
    """Wall time of each training step, CUDA-synchronized (a TrainerCallback, built lazily)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []

            def on_step_begin(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter() - self._t0)

        return Clock()


def pipeline_trainer_tokens_per_s(profile: str, steps: int, warmup: int) -> dict:
    """The pipeline's own GPT pretraining set-up (pipeline.pretrain.run: model, TrainingArguments with bf16 on CUDA,
    data blocks, collator) with params.yaml + profiles/<profile>.yaml, run by transformers.Trainer for warmup +
    steps steps, without MLflow, evaluation or checkpoints: what `make run PROFILE=gpu` pretrains."""
    import dataclasses
    import tempfile

    from transformers import Trainer

    from pipeline.core import paths
    from pipeline.core.config import load_params
    from pipeline.models.loading import load_tokenizer
    from pipeline.pretrain import run as pretrain

    params = load_params(profile=profile)
    cfg = params.pretrain.gpt.model_copy(update={"max_steps": warmup + steps})
    tokenizer = load_tokenizer(paths.tokenizer_dir("gpt"))
    train, _, collator = pretrain._datasets("gpt", cfg, tokenizer, params.common.seed)
    model = pretrain.build_model("gpt", cfg, tokenizer)
    n = gpt_flop_params(model)
    with tempfile.TemporaryDirectory() as tmp:
        args = dataclasses.replace(
            pretrain._training_args("gpt", cfg, params),
            output_dir=tmp,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=10**6,
            logging_first_step=False,
        )
        clock = _StepClock()
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        trainer.train()
    times = clock.times[warmup:]
    tokens = cfg.batch_size * cfg.block_size
    rates = [tokens / t for t in times]
    del trainer, model
    torch.cuda.empty_cache()
    return {
        "config": {"profile": profile, "bf16": args.bf16, **cfg.model_dump()},
        "n_params_6n": n,
        "tokens_per_step": tokens,
        "step_s": times,
        "tokens_per_s": rates,
        "stats": summarize(rates),
    }


def run(opts: BenchOptions, ctx: dict) -> dict:
    if not torch.cuda.is_available():
        return result_body(
            [
                row(
                    "GPT bf16 tokens/s, MFU",
                    f">= {MFU_TARGET:.0%} MFU on an H100",
                    "-",
                    SKIPPED,
                    "skipped: no CUDA device",
                )
            ],
            skipped="no CUDA device",
        )
    from pipeline.core.config import load_params

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast (none expected) use tensor cores
    device = torch.cuda.get_device_name(0)
    measured = matmul_peak(sizes=(4096, 8192), dtype=torch.bfloat16, device="cuda", reps=opts.pick(5, 3))
    sheet = datasheet_peak(device)
    peak = sheet or measured["peak_flops"]
    defaults = load_params(profile=None)  # params.yaml as it is (CPU sizes)
    gpt = defaults.pretrain.gpt
    configs = {
        "pipeline_gpt": {
            "n_layer": gpt.n_layer,
            "n_head": gpt.n_head,
            "n_embd": gpt.n_embd,
            "block_size": gpt.block_size,
            "batch_size": gpt.batch_size,
            "vocab_size": defaults.tokenizers.gpt_vocab_size,
        },
        "gpt2_small": GPT2_SMALL,
        "gpt2_small_lean": GPT2_SMALL,
        "gpt2_small_lean_cudnn": GPT2_SMALL,
        "gpt2_small_lean_flash": GPT2_SMALL,
        "gpt2_small_lean_bf16_weights": GPT2_SMALL,
        "pipeline_trainer_gpu_params": None,
    }
    only = [k for k in os.environ.get("HT_GPU_ONLY", "").split(",") if k]  # a subset, e.g. on a short device lease
    runs, rows = {}, []
    for key, cfg in configs.items():
        if only and key not in only:
            continue
        if cfg is None:  # the pipeline's Trainer set-up with the gpu profile (needs the tokenizer and corpus stages)
            r = pipeline_trainer_tokens_per_s("gpu", steps=opts.size(100, 30), warmup=opts.size(10, 5))
        else:
            r = gpt_tokens_per_s(
                cfg,
                steps=opts.size(30, 10),
                warmup=opts.size(10, 5),
                lean="_lean" in key,
                attention=next((a for a in ("cudnn", "flash") if key.endswith(a)), None),
                bf16_weights=key.endswith("_bf16_weights"),
            )
        med = r["stats"]["median"]
        r["mfu_datasheet"] = 6 * r["n_params_6n"] * med / sheet if sheet else None
        r["mfu_measured_peak"] = 6 * r["n_params_6n"] * med / measured["peak_flops"]
        runs[key] = r
        mfu = 6 * r["n_params_6n"] * med / peak
        target_applies = key.startswith("gpt2_small") and "H100" in device and not key.endswith("_bf16_weights")
        rows.append(
            row(
                f"{key} bf16 ({device})",
                f">= {MFU_TARGET:.0%} MFU on an H100" if target_applies else "report",
                f"{med:,.0f} tok/s, MFU {fmt_pct(mfu)}",
                verdict(mfu >= MFU_TARGET) if target_applies else REPORT,
                f"peak {'datasheet' if sheet else 'measured'} {peak / 1e12:.0f} TFLOP/s; measured bf16 matmul "
                f"{measured['peak_flops'] / 1e12:.0f} TFLOP/s",
            )
        )
    return result_body(rows, device=device, bf16_matmul=measured, datasheet_peak=sheet, runs=runs)
