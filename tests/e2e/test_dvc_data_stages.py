"""The real `dvc repro` of the data stages (ingest, validate, prepare, corpus, tokenizers) on the real mirror.

A copy of the repository (git-tracked and untracked-but-not-ignored files; no .venv, data or mlflow) is made a
git repo in tmp; its params.yaml points at the mirror and has tiny caps and vocabularies. Checks: every data
stage (and `params`, which writes params.effective.yaml) runs and writes well-formed outputs; a second repro runs
nothing and `dvc status` is clean; changing one task's caps in params.yaml re-runs only `params` and that task's
prepare stage; selecting a profile (params.effective.yaml written for it, as `make run PROFILE=...` does) re-runs
only what the overlay changes, a bare `dvc repro` keeps that profile, and dvc.lock and `dvc params diff` show the
overlay's values. Stages report to the shared test Prefect server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from pipeline.core.config import DATASETS, TASKS
from pipeline.core.effective import write_effective_params
from pipeline.core.profiles import EFFECTIVE_FILE, PROFILE_ENV
from tests.fixtures.dvc_repo import RAN, SKIPPED, copy_repo, dvc, git, set_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

TARGETS = ["tokenizers", *(f"prepare@{task}" for task in TASKS)]
DATA_STAGES = {
    "params",
    *(f"ingest@{d}" for d in DATASETS),
    *(f"validate@{d}" for d in DATASETS),
    *(f"prepare@{t}" for t in TASKS),
    "corpus",
    "tokenizers",
}
CAPS = {"max_train": 40, "max_validation": 16, "max_test": 16}
VOCAB = 500
# a profile for this test: one task's cap (profiles/ holds only overlays, so any file there is a profile)
OVERLAY = {"prepare": {"tasks": {"sst2": {"max_train": 30}}}}


@pytest.fixture(scope="module")
def data_repo(tmp_path_factory, repo_root, mirror_dir):
    repo = copy_repo(repo_root, tmp_path_factory.mktemp("dvc-data") / "repo")

    def shrink(params):
        params["ingest"]["mirror_dir"] = str(mirror_dir)
        for task in TASKS:
            params["prepare"]["tasks"][task] = dict(CAPS)
        params["tokenizers"].update(bert_vocab_size=VOCAB, gpt_vocab_size=VOCAB)

    set_params(repo, shrink)
    (repo / "profiles" / "fewer-sst2.yaml").write_text(yaml.safe_dump(OVERLAY))
    write_effective_params(repo, None)  # no profile, whichever the checkout this copy came from records
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny params, a test profile")
    return repo


def stale(repo: Path, env: dict) -> set[str]:
    """What `dvc repro TARGETS` would run: the targets and their upstream stages (`params` among them)."""
    status, _ = dvc(repo, env, "status", "--json", "--with-deps", *TARGETS)
    return set(json.loads(status.strip().splitlines()[-1]))


def lock_params(repo: Path, stage: str) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["params"][EFFECTIVE_FILE]


def test_data_stages_run_then_stay_cached_then_rerun_only_what_changed(data_repo, dvc_env, mirror_dir):
    repo = data_repo
    # 1. everything upstream of the targets runs once
    out, first_s = dvc(repo, dvc_env, "repro", *TARGETS)
    assert set(RAN.findall(out)) == DATA_STAGES, out[-4000:]
    check_outputs(repo)

    # 2. nothing changed: nothing runs, dvc status is clean
    out, second_s = dvc(repo, dvc_env, "repro", *TARGETS)
    assert not RAN.findall(out), out[-4000:]
    assert set(SKIPPED.findall(out)) == DATA_STAGES, out[-4000:]
    assert second_s < max(60.0, first_s / 3), f"no-op repro took {second_s:.0f} s (first run {first_s:.0f} s)"
    assert stale(repo, dvc_env) == set()

    # 3. one task's caps change in params.yaml: `params` is stale (DVC reads the stages' params from
    # params.effective.yaml, which the `params` stage rewrites), then only that task's prepare stage re-runs
    set_params(repo, lambda p: p["prepare"]["tasks"]["emotion"].update(max_train=25))
    assert stale(repo, dvc_env) == {"params"}
    out, _ = dvc(repo, dvc_env, "repro", *TARGETS)
    assert RAN.findall(out) == ["params", "prepare@emotion"], out[-4000:]
    assert len(load_from_disk(str(repo / "data/prepared/emotion"))["train"]) == 25
    assert lock_params(repo, "prepare@emotion")["prepare.tasks.emotion"]["max_train"] == 25
    assert stale(repo, dvc_env) == set()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "emotion capped at 25")

    # 4. a profile selected (what `make run PROFILE=fewer-sst2` does before `dvc repro`): the effective file
    # changes, then a bare `dvc repro` (no HT_PROFILE) keeps that profile and re-runs only what the overlay changes
    select = subprocess.run(
        [sys.executable, "-m", "flows.params", "--profile", "fewer-sst2"],
        cwd=repo,
        env=dvc_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert select.returncode == 0, select.stderr
    assert stale(repo, dvc_env) == {"params", "prepare@sst2"}
    assert PROFILE_ENV not in dvc_env
    out, _ = dvc(repo, dvc_env, "repro", *TARGETS)
    assert RAN.findall(out) == ["params", "prepare@sst2"], out[-4000:]
    assert len(load_from_disk(str(repo / "data/prepared/sst2"))["train"]) == 30
    assert yaml.safe_load((repo / EFFECTIVE_FILE).read_text())["profile"] == "fewer-sst2"
    assert lock_params(repo, "prepare@sst2")["prepare.tasks.sst2"] == {**CAPS, "max_train": 30}
    assert lock_params(repo, "prepare@emotion")["prepare.tasks.emotion"]["max_train"] == 25  # untouched
    assert stale(repo, dvc_env) == set()
    diff, _ = dvc(repo, dvc_env, "params", "diff", "--json")
    entries = json.loads(diff.strip().splitlines()[-1])[EFFECTIVE_FILE]
    changed = {key: (d["old"], d["new"]) for key, d in entries.items()}
    assert changed == {"profile": (None, "fewer-sst2"), "prepare.tasks.sst2.max_train": (40, 30)}, changed
    print(f"first repro {first_s:.0f} s, no-op repro {second_s:.1f} s")


def check_outputs(repo: Path) -> None:
    from transformers import AutoTokenizer

    data = repo / "data"
    for dataset in DATASETS:
        assert json.loads((data / "validation" / f"{dataset}.json").read_text())["success"] is True
        assert (data / "raw" / dataset / "SOURCE.json").exists()
    for task in TASKS:
        prepared = load_from_disk(str(data / "prepared" / task))
        meta = json.loads((data / "prepared" / task / "meta.json").read_text())
        assert {s: len(prepared[s]) for s in prepared} == {"train": 40, "validation": 16, "test": 16} == meta["sizes"]
        assert meta["task"] == task
    train = (data / "corpus" / "train.txt").read_text(encoding="utf-8").splitlines()
    heldout = (data / "corpus" / "heldout.txt").read_text(encoding="utf-8").splitlines()
    stats = json.loads((data / "corpus" / "stats.json").read_text())
    assert len(train) == stats["train_lines"] > 100_000 and len(heldout) == stats["heldout_lines"] > 1000
    assert set(stats["sources"]) == {"wikitext", "emotion", "sst2", "conll2003", "multi30k_en", "multi30k_de"}
    assert all(line.strip() for line in train[:1000])
    bert = AutoTokenizer.from_pretrained(str(data / "tokenizers" / "bert"))
    gpt = AutoTokenizer.from_pretrained(str(data / "tokenizers" / "gpt"))
    assert bert.mask_token == "[MASK]" and len(bert) <= VOCAB and gpt.pad_token == "<|pad|>" and len(gpt) <= VOCAB
    german = "Ein Mädchen läuft über die Straße."
    assert gpt.decode(gpt(german)["input_ids"]) == german
    assert "Mädchen" in bert.decode(bert(german)["input_ids"], skip_special_tokens=True)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) >= DATA_STAGES
