"""Training engine: tokens/s of the pipeline's training step vs a minimal hand-written torch loop.

Same model (a deep copy of the pipeline's freshly built model), same batches, same process and thread count.

- GPT and BERT pretraining: the pipeline's own Trainer (pipeline.pretrain.run: build_model, _training_args, the
  collator and datasets of _datasets, the MLflow step logger and throughput callbacks, logging into a temp MLflow
  store) runs once; a callback interleaves: every K optimizer steps it closes a Trainer segment, replays exactly
  the K batches the Trainer's collator produced through the hand loop (forward, backward, AdamW step,
  zero_grad), and resumes the Trainer. Evaluation and checkpoint saving are turned off (they are not the
  training step); everything else is as configured. K is a multiple of logging_steps, so each segment holds the
  same amount of logging.
- RNN: the pipeline's own epoch loop (RNNText2Text._train_epoch, capped at K steps through max_steps) vs the hand
  loop on the same K padded batches (same seed -> same shuffle), A/B interleaved with bench.common.interleave.

Tokens are counted as the pipeline counts them (non-padding inputs; the RNN adds target tokens).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench import fixtures
from bench.common import (
    BenchOptions,
    fmt_ratio,
    interleave,
    paired_ratios,
    result_body,
    row,
    summarize,
    verdict,
)

log = logging.getLogger("bench")

NAME = "training_engine"
TARGET = 0.95
RNN_TASK = "multi30k"  # the longest targets: the RNN's most expensive task


# ---------------------------------------------------------------- the hand-written loop
class HandLoop:
    """The baseline: forward, backward, AdamW step, zero_grad. Nothing else."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, fused: bool = False):
        self.model = model
        self.model.train()
        # fused: the same AdamW kernel as the Trainer's default optim (adamw_torch_fused), so the ratio measures
        # the loop around the step, not two optimizer implementations.
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)

    def run(self, batches: list[dict]) -> float:
        t0 = time.perf_counter()
        for batch in batches:
            loss = self.model(**batch).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def batch_tokens(batch: dict) -> int:
    """Non-padding input tokens, as Trainer(include_num_input_tokens_seen='non_padding') counts them."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


# ---------------------------------------------------------------- Trainer families (gpt, bert)
class RecordingCollator:
    """The pipeline's collator, keeping each batch it made so the hand loop can replay the same ones."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[dict] = []

    def __call__(self, rows):
        batch = self.inner(rows)
        self.batches.append(batch)
        return batch

    def take(self, n: int) -> list[dict]:
        """The `n` oldest batches (a prefetching dataloader may already have collated the next one)."""
        out, self.batches = self.batches[:n], self.batches[n:]
        return out


def _interleaver_callback(
    hand: HandLoop, recorder: RecordingCollator, every: int, samples: dict, extra: dict[str, Callable[[], float]]
):
    from transformers import TrainerCallback

    class Interleaver(TrainerCallback):
        """Every `every` steps: time the Trainer segment just finished, then run the hand loop on its batches
        (and each `extra` probe, e.g. a matmul-peak sample taken under the same machine load)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every:
                return
            trainer_s = time.perf_counter() - self.t0
            batches = recorder.take(every)  # exactly the batches of this segment's steps
            tokens = sum(batch_tokens(b) for b in batches)
            hand_s = hand.run(batches)
            samples["trainer_s"].append(trainer_s)
            samples["hand_s"].append(hand_s)
            samples["tokens"].append(tokens)
            for name, probe in extra.items():
                samples.setdefault(name, []).append(probe())
            self.t0 = time.perf_counter()

    return Interleaver()


def trainer_family(family: str, opts: BenchOptions, extra: dict[str, Callable[[], float]] | None = None) -> dict:
    import mlflow
    from transformers import Trainer, set_seed

    from pipeline.pretrain import run as pretrain
    from pipeline.tracking.runs import using_store

    params = fixtures.params()
    cfg = getattr(params.pretrain, family)
    root = fixtures.stand_in_root()
    with fixtures.in_dir(root), tempfile.TemporaryDirectory(prefix="ht-bench-train-") as tmp:
        set_seed(params.common.seed)
        tok = fixtures.tokenizer(family)
        train, _heldout, collator = pretrain._datasets(family, cfg, tok, params.common.seed)
        tok.model_max_length = cfg.block_size
        model = pretrain.build_model(family, cfg, tok)
        args = pretrain._training_args(family, cfg, params)
        fused = "fused" in str(args.optim).lower()
        hand = HandLoop(copy.deepcopy(model), cfg.learning_rate, cfg.weight_decay, fused=fused)
        every = args.logging_steps * math.ceil(opts.size(5, 3) / args.logging_steps)
        reps, warmup = opts.pick(5, 2), 1
        args = dataclasses.replace(
            args,
            output_dir=str(Path(tmp) / "ckpt"),
            max_steps=every * (reps + warmup),
            eval_strategy="no",
            save_strategy="no",
        )
        recorder = RecordingCollator(collator)
        samples = {"trainer_s": [], "hand_s": [], "tokens": []}
        callbacks = [
            pretrain.MlflowStepLogger(),
            pretrain.ThroughputMeter(),
            _interleaver_callback(hand, recorder, every, samples, extra or {}),
        ]
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=recorder,
            train_dataset=train,
            processing_class=tok,
            callbacks=callbacks,
        )
        with using_store(f"sqlite:///{tmp}/mlflow.db"), mlflow.start_run():
            trainer.train()
    keep = slice(warmup, None)
    a = [t / s for t, s in zip(samples["tokens"][keep], samples["trainer_s"][keep])]
    b = [t / s for t, s in zip(samples["tokens"][keep], samples["hand_s"][keep])]
    n_params = sum(p.numel() for p in model.parameters())
    probes = {name: samples[name][keep] for name in (extra or {})}
    return {
        "engine": "transformers.Trainer (pipeline.pretrain.run config)",
        "probes": probes,
        "model": type(model).__name__,
        "param_count": n_params,
        "steps_per_segment": every,
        "warmup_segments": warmup,
        "logging_steps": args.logging_steps,
        "optim": str(args.optim),
        "hand_optim": f"torch.optim.AdamW(fused={fused})",
        "batch_size": cfg.batch_size,
        "block_size": cfg.block_size,
        "changed_from_pipeline": {"eval_strategy": "no", "save_strategy": "no", "max_steps": args.max_steps},
        "raw": samples,
        "pipeline_tokens_per_s": a,
        "hand_tokens_per_s": b,
        "flop_model": model,  # removed before writing; cpu_utilisation needs it for N
    }


# ---------------------------------------------------------------- RNN (plain PyTorch loop in the pipeline)
def rnn_family(opts: BenchOptions) -> dict:
    from torch import nn

    from pipeline.core.config import parse_params
    from pipeline.train.driver import build
    from pipeline.train.rnn import pad_batch

    base = fixtures.params()
    steps = opts.size(8, 4)
    raw = base.model_dump(by_alias=True)
    raw["train"]["overrides"][f"rnn-{RNN_TASK}"] = {
        **(raw["train"]["overrides"].get(f"rnn-{RNN_TASK}") or {}),
        "max_steps": steps,
    }
    params = parse_params(raw, "bench params")
    data = fixtures.dataset(RNN_TASK)
    cap = params.prepare.tasks[RNN_TASK].max_train
    if cap and len(data["train"]) > cap:
        data = data.copy()
        data["train"] = data["train"].shuffle(seed=params.common.seed).select(range(cap))
    with tempfile.TemporaryDirectory(prefix="ht-bench-rnn-") as tmp, fixtures.in_dir(Path(tmp)):
        rnn = build("rnn", RNN_TASK, params, data=data)
        model, run = rnn.model, rnn.run
        hand_model = copy.deepcopy(model)
        hand_model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=run.learning_rate, weight_decay=params.train.common.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        loss_fn = nn.CrossEntropyLoss(ignore_index=0)
        hand_opt = torch.optim.AdamW(
            hand_model.parameters(), lr=run.learning_rate, weight_decay=params.train.common.weight_decay
        )
        hand_loss = nn.CrossEntropyLoss(ignore_index=0)
        tf_ratio = rnn.cfg.teacher_forcing_ratio
        calls = {"a": 0, "b": 0}

        def same_batches(seed: int) -> list[tuple]:
            """The first `steps` batches _train_epoch draws after torch.manual_seed(seed), padded."""
            torch.manual_seed(seed)
            order = torch.randperm(len(rnn.train_pairs)).tolist()
            out = []
            for i in range(0, steps * rnn.batch_size, rnn.batch_size):
                idx = order[i : i + rnn.batch_size]
                src, src_len = pad_batch([rnn.train_pairs[j][0] for j in idx], rnn.device)
                tgt, _ = pad_batch([rnn.train_pairs[j][1] for j in idx], rnn.device)
                out.append((src, src_len, tgt))
            return out

        prebuilt = {}

        def batch_tokens(seed: int) -> int:
            """Source + target tokens of the batches of this seed: both sides are rated on the same count
            (_train_epoch's own count is source tokens only, as its MLflow tokens/s metric is)."""
            if seed not in prebuilt:
                prebuilt[seed] = same_batches(seed)
            return sum(int(s.sum()) + int((t[:, 1:] != 0).sum()) for _, s, t in prebuilt[seed])

        def pipeline_side() -> float:
            seed = 1000 + calls["a"]
            calls["a"] += 1
            tokens = batch_tokens(seed)
            state = {"steps": 0}
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            rnn._train_epoch(1, optimizer, scheduler, loss_fn, state, total_steps=steps)
            return tokens / (time.perf_counter() - t0)

        def hand_side() -> float:
            seed = 1000 + calls["b"]
            calls["b"] += 1
            tokens = batch_tokens(seed)
            batches = prebuilt[seed]
            t0 = time.perf_counter()
            for src, src_len, tgt in batches:
                logits, _ = hand_model(src, src_len, tgt, tf_ratio)  # [batch, tgt_len-1, vocab]
                loss = hand_loss(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1))
                loss.backward()
                hand_opt.step()
                hand_opt.zero_grad(set_to_none=True)
            return tokens / (time.perf_counter() - t0)

        samples = interleave(pipeline_side, hand_side, reps=opts.pick(5, 2), warmup=1, measure=lambda fn: fn())
    return {
        "engine": "pipeline.train.rnn.RNNText2Text._train_epoch",
        "task": RNN_TASK,
        "model": type(model).__name__,
        "param_count": sum(p.numel() for p in model.parameters()),
        "steps_per_segment": steps,
        "batch_size": rnn.batch_size,
        "order": samples["order"],
        "pipeline_tokens_per_s": samples["a"],
        "hand_tokens_per_s": samples["b"],
    }


# ---------------------------------------------------------------- the benchmark
def matmul_probe() -> float:
    """One fp32 matmul-peak sample (best of 1024^2 and 2048^2), for cpu_utilisation's paired ratio."""
    from bench.flops import matmul_flops

    return max(max(matmul_flops(n, reps=1, min_time_s=0.15)) for n in (1024, 2048))


def finish(family: str, data: dict) -> tuple[dict, dict]:
    a, b = data["pipeline_tokens_per_s"], data["hand_tokens_per_s"]
    ratios = paired_ratios(a, b)
    data["stats"] = {"pipeline": summarize(a), "hand": summarize(b), "paired_ratio": summarize(ratios)}
    data["ratio"] = statistics.median(a) / statistics.median(b)
    data["paired_ratios"] = ratios
    ratio = data["ratio"]
    line = row(
        f"{family}: pipeline step vs hand loop",
        f"ratio >= {TARGET}",
        f"{fmt_ratio(ratio)} ({statistics.median(a):,.0f} vs {statistics.median(b):,.0f} tok/s)",
        verdict(ratio >= TARGET),
        f"{data['engine']}; {len(a)} interleaved pairs of {data['steps_per_segment']} steps; paired-ratio "
        f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})",
    )
    return data, line


def run(opts: BenchOptions, ctx: dict) -> dict:
    torch.manual_seed(0)
    results, rows = {}, []
    jobs = {
        "gpt": lambda: trainer_family("gpt", opts, extra={"matmul_flops": matmul_probe}),
        "bert": lambda: trainer_family("bert", opts),
        "rnn": lambda: rnn_family(opts),
    }
    for family, job in jobs.items():
        log.info("training engine: %s", family)
        try:
            data = job()
        except Exception as err:  # one family failing must not hide the others
            log.exception("training engine %s failed", family)
            results[family] = {"error": f"{type(err).__name__}: {err}"}
            rows.append(
                row(
                    f"{family}: pipeline step vs hand loop",
                    f"ratio >= {TARGET}",
                    "-",
                    "error",
                    f"{type(err).__name__}: {err}",
                )
            )
            continue
        flop_model = data.pop("flop_model", None)
        if flop_model is not None and family == "gpt":
            from bench.flops import gpt_flop_params

            data["n_params_6n"] = gpt_flop_params(flop_model)
            data["n_layer"], data["n_embd"] = flop_model.config.n_layer, flop_model.config.n_embd
        results[family], line = finish(family, data)
        rows.append(line)
    return result_body(rows, threads=torch.get_num_threads(), families=results)
