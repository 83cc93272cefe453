"""Does the seed's own pretraining teach anything? Held-out curves of one pretraining configuration and the
downstream probe: the pretrained checkpoint against its scratch twin (same config, random init), both fine-tuned
with the pipeline's code path (pipeline.train.finetune_setup.build_setup + the HF Trainer with the settings of
pipeline.train.finetune._training_args) on a subsample of one task.

    python -m bench.pretrain_probe pretrain NAME --family bert --set learning_rate=1e-3 --set max_steps=800 \
        --negatives swapped --split-single
    python -m bench.pretrain_probe finetune NAME --task emotion     # pretrained and scratch twin
    python -m bench.pretrain_probe merge                            # bench/results/pretrain_probe/*.json -> one file

Inputs come from a built data/ folder (--data, default /work/fullrun/data: data/corpus, data/tokenizers,
data/prepared), read only. Checkpoints go to --work (default /tmp/pretrain_probe). One thread by default (a
shared 2-core machine): compare only numbers of the same machine and load (ratios). Each command writes
bench/results/pretrain_probe/<NAME>.json (updated in place); `merge` gathers them into
bench/results/pretrain_probe.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import torch
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator, set_seed

from pipeline.models.loading import load_tokenizer
from pipeline.pretrain import run as pretrain_run
from pipeline.pretrain.data import cap, lm_blocks, mlm_collator, nsp_pairs

log = logging.getLogger("bench.pretrain_probe")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pretrain_probe"
MERGED = REPO / "bench" / "results" / "pretrain_probe.json"
EVAL_EXAMPLES = 500
# On a GPU (bench/gpu_probe.sh) the Trainer runs there in bf16; on CPU in fp32 (use_cpu).
CUDA = torch.cuda.is_available()


def _read(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _result(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"name": name}


def _save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


def _config(family: str, sets: list[str], profile: str | None = None) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = dict(params["pretrain"][family])
    if profile:  # the profile's overlay of pretrain.<family> (profiles/<profile>.yaml)
        overlay = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
        cfg.update((overlay.get("pretrain") or {}).get(family) or {})
    for item in sets:
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string
            parsed = float(parsed)
        cfg[key] = parsed
    return cfg


class Curve(TrainerCallback):
    def __init__(self, evaluate, every: int):
        self.evaluate, self.every, self.points = evaluate, every, []
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.seconds += time.perf_counter() - self.start
            point = {"step": state.global_step, "train_s": round(self.seconds, 1), **self.evaluate(model)}
            model.train()
            log.info("%s", point)
            self.points.append(point)
            self.start = time.perf_counter()


class TimeLimit(TrainerCallback):
    """Stops training after `seconds` of wall time (a short device lease): the run keeps its curve and saves
    the checkpoint reached, with the step it stopped at."""

    def __init__(self, seconds: float | None):
        self.seconds, self.stopped_at = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds and time.perf_counter() - self.start > self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at = state.global_step
            log.info("time limit of %.0f s reached at step %d: stopping", self.seconds, state.global_step)


def pretrain(opts) -> None:
    data = Path(opts.data)
    family = opts.family
    cfg = SimpleNamespace(**_config(family, opts.set, opts.profile))
    torch.set_num_threads(opts.threads)
    set_seed(42)
    tok = load_tokenizer(data / "tokenizers" / family)
    train_docs, heldout_docs = _read(data / "corpus" / "train.txt"), _read(data / "corpus" / "heldout.txt")
    if family == "gpt":
        train = lm_blocks(train_docs, tok, cfg.block_size)
        heldout = cap(lm_blocks(heldout_docs, tok, cfg.block_size), EVAL_EXAMPLES)
        collator = default_data_collator

        def evaluate(model):
            return pretrain_run.evaluate_gpt(model, heldout, 32)
    else:
        kw = {"negatives": opts.negatives, "split_single": opts.split_single}
        train = nsp_pairs(train_docs, tok, cfg.block_size, 42, **kw)
        # Held-out pairs of both kinds: the chosen NSP task, and BERT's original (other-document negatives).
        heldout = cap(nsp_pairs(heldout_docs, tok, cfg.block_size, 43, **kw), EVAL_EXAMPLES)
        collator = mlm_collator(tok, cfg.mlm_probability)

        def evaluate(model):
            return pretrain_run.evaluate_bert(model, heldout, tok, cfg.mlm_probability, 32, 43)

    tok.model_max_length = cfg.block_size
    set_seed(42)
    model = pretrain_run.build_model(family, cfg, tok)
    out = Path(opts.work) / opts.name
    scratch = pretrain_run.build_model(family, cfg, tok)  # the twin: same config, its own random init
    scratch.save_pretrained(out / "scratch")
    tok.save_pretrained(out / "scratch")
    curve = Curve(evaluate, opts.eval_every)
    limit = TimeLimit(opts.time_limit)
    args = TrainingArguments(
        output_dir=str(out / "ckpt"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=opts.scheduler,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        seed=42,
        data_seed=42,
        use_cpu=not CUDA,
        bf16=CUDA,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if opts.group_by_length else "random",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    trainer_cls = Trainer if family == "gpt" else pretrain_run.BertPretrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        callbacks=[curve, limit],
        processing_class=tok,
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    if limit.stopped_at is not None and (not curve.points or curve.points[-1]["step"] != limit.stopped_at):
        curve.points.append({"step": limit.stopped_at, **evaluate(model)})
    model.save_pretrained(out / "pretrained")
    tok.save_pretrained(out / "pretrained")
    result = _result(opts.name)
    result.update(
        {
            "family": family,
            "config": vars(cfg),
            "negatives": opts.negatives if family == "bert" else None,
            "split_single": opts.split_single if family == "bert" else None,
            "scheduler": opts.scheduler,
            "group_by_length": opts.group_by_length,
            "train_examples": len(train),
            "threads": opts.threads,
            "profile": opts.profile,
            "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
            "pretrain_wall_s": round(wall, 1),
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "curve": curve.points,
            "stopped_by_time_limit_at_step": limit.stopped_at,
        }
    )
    _save(opts.name, result)


def _task_settings(family: str, task: str) -> tuple[float, int, int]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    run = {**params["tasks"][task], **(params["overrides"].get(f"{family}-{task}") or {})}
    return run["learning_rate"], run["epochs"], run["max_length"]


def finetune_one(weights: Path, family: str, task: str, opts) -> dict:
    from pipeline.train.finetune_setup import argmax_logits, build_setup

    data = datasets.load_from_disk(str(Path(opts.data) / "prepared" / task))
    sizes = {"train": opts.n_train, "validation": opts.n_eval, "test": opts.n_eval}
    data = datasets.DatasetDict(
        {s: data[s].shuffle(seed=0).select(range(min(n, len(data[s])))) for s, n in sizes.items()}
    )
    lr, epochs, max_length = _task_settings(family, task)
    lr = opts.lr or lr
    epochs = opts.epochs or epochs
    set_seed(42)
    setup = build_setup(family, weights, task, data, max_length, max_new_tokens=64)  # classification, NER: unused
    args = TrainingArguments(  # the settings of pipeline.train.finetune._training_args
        output_dir=str(weights.parent / f"ft-{task}-{weights.name}-lr{lr}-ep{epochs}"),  # side by side: own folders
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        weight_decay=0.01,
        warmup_steps=0.06,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=setup.main_metric,
        greater_is_better=True,
        remove_unused_columns=False,
        report_to="none",
        seed=42,
        data_seed=42,
        use_cpu=not CUDA,
        bf16=CUDA,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    from transformers import EarlyStoppingCallback

    trainer = Trainer(
        model=setup.model,
        args=args,
        train_dataset=setup.encoded["train"],
        eval_dataset=setup.encoded["validation"],
        data_collator=setup.collator,
        processing_class=setup.tokenizer,
        compute_metrics=setup.compute_metrics,
        preprocess_logits_for_metrics=argmax_logits,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    test = trainer.evaluate(setup.encoded["test"], metric_key_prefix="test")
    return {
        "lr": lr,
        "epochs": epochs,
        "test": {k.removeprefix("test_"): round(v, 4) for k, v in test.items() if isinstance(v, float)},
        "finetune_s": round(wall, 1),
        "n_train": len(data["train"]),
        "n_test": len(data["test"]),
    }


def finetune(opts) -> None:
    """Results go into NAME's file, or with --own-file into NAME@TASK's (fine-tunes of one checkpoint running
    side by side, as bench/gpu_probe.sh does, must not rewrite one file)."""
    torch.set_num_threads(opts.threads)
    family = _result(opts.name)["family"]
    key = f"{opts.task}" + (f"@lr{opts.lr}" if opts.lr else "") + (f"@ep{opts.epochs}" if opts.epochs else "")
    out_name = f"{opts.name}@{key}" if opts.own_file else opts.name
    result = _result(out_name)
    result.setdefault("family", family)
    down = result.setdefault("downstream", {}).setdefault(key, {})
    for which in opts.which:
        down[which] = finetune_one(Path(opts.work) / opts.name / which, family, opts.task, opts)
        log.info("%s %s %s: %s", opts.name, key, which, down[which]["test"])
        _save(out_name, result)


def adopt(opts) -> None:
    """An existing pretrained checkpoint (e.g. a pipeline run's data/pretrain/<family>/model) as NAME's
    `pretrained`, plus its scratch twin (the same config, random init)."""
    import shutil

    from transformers import AutoConfig, BertForPreTraining, GPT2LMHeadModel

    source = Path(opts.checkpoint)
    out = Path(opts.work) / opts.name
    shutil.copytree(source, out / "pretrained", dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(str(source))
    set_seed(42)
    twin = (GPT2LMHeadModel if opts.family == "gpt" else BertForPreTraining)(config)
    twin.save_pretrained(out / "scratch")
    load_tokenizer(source).save_pretrained(out / "scratch")
    result = _result(opts.name)
    result.update({"family": opts.family, "adopted": str(source)})
    metrics = source.parent / "metrics.json"
    if metrics.exists():
        result["adopted_metrics"] = json.loads(metrics.read_text())
    _save(opts.name, result)


def _row(run: dict) -> str:
    cfg = run.get("config") or {}
    last = (run.get("curve") or [{}])[-1]
    if "adopted" in run:
        held = run.get("adopted_metrics", {}).get("heldout", {})
        last = {**held, "step": run.get("adopted_metrics", {}).get("steps")}
        setup = f"pipeline run ({run['adopted']})"
    else:
        setup = f"{cfg.get('max_steps')} steps, batch {cfg.get('batch_size')}, lr {cfg.get('learning_rate')}" + (
            f", NSP negatives {run['negatives']}, split single {run['split_single']}" if run["family"] == "bert" else ""
        )
    held = (
        f"MLM {last.get('mlm_accuracy', float('nan')):.3f}, NSP {last.get('nsp_accuracy', float('nan')):.3f}"
        if run["family"] == "bert"
        else f"ppl {last.get('perplexity', float('nan')):.0f}"
    )
    down = "; ".join(
        f"{task}: " + " vs ".join(f"{w} {v['test'].get('accuracy', v['test'].get('entity_f1'))}" for w, v in r.items())
        for task, r in run.get("downstream", {}).items()
    )
    wall = run.get("pretrain_wall_s", "")
    return f"| {run['name']} | {run['family']} | {setup} | {held} | {down} | {wall} |"


def merge(_opts) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    MERGED.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    print(f"{len(runs)} runs -> {MERGED}")
    print("| run | family | pretraining | held-out at the end | downstream test (pretrained vs scratch) | pretrain s |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        print(_row(run))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["pretrain", "finetune", "adopt", "merge"])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--family", choices=["gpt", "bert"], default="bert")
    parser.add_argument("--set", action="append", default=[], help="pretrain.<family> key=value")
    parser.add_argument("--profile", help="overlay profiles/<profile>.yaml's pretrain.<family> (e.g. gpu)")
    parser.add_argument("--own-file", action="store_true", help="finetune: write NAME@TASK.json")
    parser.add_argument("--negatives", default="random_document")
    parser.add_argument("--split-single", action="store_true")
    parser.add_argument("--scheduler", default="linear")
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=None, help="pretrain: stop after this many seconds")
    parser.add_argument("--task", default="emotion")
    parser.add_argument("--which", nargs="+", default=["pretrained", "scratch"])
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--checkpoint", help="adopt: the checkpoint folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="/work/fullrun/data")
    parser.add_argument("--work", default="/tmp/pretrain_probe")
    opts = parser.parse_args()
    {"pretrain": pretrain, "finetune": finetune, "adopt": adopt, "merge": merge}[opts.command](opts)


if __name__ == "__main__":
    main()
