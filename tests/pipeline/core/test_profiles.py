"""Profiles: overlays composed onto params.yaml, the profile selection, and params.effective.yaml."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import profiles
from pipeline.core.config import ParamsError, load_params
from pipeline.core.effective import RUN_PARAMS_DIR, effective_files, write_effective_params

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def repo(in_tmp_repo, default_params_dict) -> Path:
    """cwd = a tmp repository root with the project's params.yaml and profiles/."""
    (in_tmp_repo / "params.yaml").write_text(yaml.safe_dump(default_params_dict, sort_keys=False))
    shutil.copytree(REPO_ROOT / "profiles", in_tmp_repo / "profiles")
    return in_tmp_repo


def write_profile(repo: Path, name: str, overlay: dict) -> Path:
    path = repo / "profiles" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": [1, 2], "g": {"h": 1}, "i": 5}
    merged = profiles.deep_merge(base, {"a": {"c": {"d": 20}}, "f": [9], "g": None, "i": {"x": 1}})
    assert merged == {"a": {"b": 1, "c": {"d": 20, "e": 3}}, "f": [9], "g": None, "i": {"x": 1}}
    assert base["a"]["c"]["d"] == 2 and base["g"] == {"h": 1}  # the base is not changed


def test_overlay_values_land_and_the_profile_is_recorded(repo):
    write_profile(
        repo,
        "tiny",
        {"prepare": {"tasks": {"sst2": {"max_train": 7}}}, "train": {"overrides": {"gpt-emotion": {"epochs": None}}}},
    )
    params = load_params(profile="tiny")
    default = load_params(profile=None)
    assert params.profile == "tiny" and default.profile is None
    assert params.prepare.tasks["sst2"].max_train == 7
    assert params.prepare.tasks["sst2"].max_validation == default.prepare.tasks["sst2"].max_validation  # merged
    assert params.prepare.tasks["emotion"] == default.prepare.tasks["emotion"]
    assert default.train.overrides["gpt-emotion"].epochs and params.train.overrides["gpt-emotion"].epochs is None
    assert params.train.overrides["gpt-emotion"].learning_rate == default.train.overrides["gpt-emotion"].learning_rate


def test_a_typo_in_a_profile_names_the_file_and_the_dotted_key_and_nothing_is_written(repo):
    write_profile(repo, "typo", {"pretrain": {"gpt": {"n_layers": 4, "n_head": 2}}, "tokenizer": {"x": 1}})
    with pytest.raises(ParamsError) as err:
        write_effective_params(repo, "typo")
    message = str(err.value)
    assert message.startswith("profiles/typo.yaml: key(s) not in params.yaml"), message
    assert "  - pretrain.gpt.n_layers\n" in message and "  - tokenizer\n" in message
    assert "n_head" not in message  # an existing key is fine
    assert not (repo / profiles.EFFECTIVE_FILE).exists()
    with pytest.raises(ParamsError, match=r"pretrain\.gpt\.n_layers"):
        load_params(profile="typo")


def test_an_invalid_value_in_a_profile_names_params_yaml_plus_the_profile(repo):
    write_profile(repo, "bad", {"pretrain": {"gpt": {"n_head": 3}}})
    with pytest.raises(
        ParamsError,
        match=r"Invalid params in params.yaml \+ profiles/bad.yaml:\n  - pretrain.gpt: "
        r"n_embd \(128\) must be divisible by n_head \(3\)",
    ):
        load_params(profile="bad")


def test_an_unknown_profile_lists_the_available_ones(repo):
    with pytest.raises(ParamsError, match=r"unknown profile 'gpu2': available profiles are \['gpu', 'smoke'\]"):
        load_params(profile="gpu2")
    with pytest.raises(ParamsError, match="unknown profile '../params'"):
        load_params(profile="../params")


def test_profile_is_no_parameter(repo, default_params_dict):
    write_profile(repo, "sneaky", {"profile": "gpu"})
    with pytest.raises(ParamsError, match="profiles/sneaky.yaml: `profile` is set by the composition"):
        load_params(profile="sneaky")
    (repo / "params.yaml").write_text(yaml.safe_dump({"profile": None, **default_params_dict}))
    with pytest.raises(ParamsError, match="params.yaml: `profile` is not a parameter"):
        load_params(profile=None)


def test_the_effective_file_is_deterministic_atomic_and_records_its_source(repo):
    path = write_effective_params(repo, "smoke")
    text = path.read_text()
    assert text.startswith("# GENERATED from params.yaml + profiles/smoke.yaml by `python -m flows.params`")
    assert "Do not edit" in text
    body = yaml.safe_load(text)
    assert list(body)[:2] == ["profile", "common"] and body["profile"] == "smoke"
    assert body["tokenizers"]["gpt_vocab_size"] == 600
    assert load_params(profile="smoke") == load_params(profile=None).model_validate(body)  # the same params
    # and one file per training run (tests/pipeline/core/test_effective.py)
    assert {"gpt-emotion.yaml", "rnn_noattn-samsum.yaml"} <= {p.name for p in (repo / RUN_PARAMS_DIR).iterdir()}
    stat = path.stat()
    assert write_effective_params(repo, "smoke") == path and path.read_text() == text
    assert path.stat().st_mtime_ns == stat.st_mtime_ns  # unchanged text: the file is left alone
    write_effective_params(repo, None)
    assert yaml.safe_load(path.read_text())["profile"] is None
    assert "params.yaml (no profile)" in path.read_text().splitlines()[0]
    assert sorted(p.name for p in repo.iterdir()) == ["params.effective.yaml", "params.yaml", "profiles", "run-params"]
    assert not [p for p in (repo / RUN_PARAMS_DIR).iterdir() if p.suffix != ".yaml"]  # no temp files


def test_profile_selection_env_then_recorded_then_none(repo, monkeypatch):
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    assert profiles.selected_profile(repo) is None and load_params().profile is None
    write_effective_params(repo, "gpu")
    assert profiles.selected_profile(repo) == "gpu" and load_params().profile == "gpu"
    monkeypatch.setenv(profiles.PROFILE_ENV, "smoke")
    assert load_params().profile == "smoke"
    monkeypatch.setenv(profiles.PROFILE_ENV, "")  # empty = not set
    assert load_params().profile == "gpu"


def test_load_params_composes_in_memory_and_does_not_trust_a_stale_effective_file(repo, default_params_dict):
    write_effective_params(repo, "gpu")
    changed = copy.deepcopy(default_params_dict)
    changed["common"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    params = load_params()
    assert params.common.seed == 7 and params.profile == "gpu" and params.pretrain.gpt.n_layer == 6
    assert yaml.safe_load((repo / profiles.EFFECTIVE_FILE).read_text())["common"]["seed"] == 42  # stale on disk


def test_gpu_profile_only_grows_sizes():
    """GPU-sized pretraining, every task's full data (the CPU default samples each), every multi30k run on the whole
    pool; one stage at a time on the one GPU."""
    overlay = yaml.safe_load((REPO_ROOT / "profiles" / "gpu.yaml").read_text())
    assert list(overlay) == ["pretrain", "prepare", "train", "orchestration"]
    assert overlay["orchestration"] == {"parallel_stages": 1}
    gpu = load_params(REPO_ROOT / "params.yaml", profile="gpu")
    cpu = load_params(REPO_ROOT / "params.yaml", profile=None)
    for family in ("gpt", "bert"):
        assert getattr(gpu.pretrain, family).n_embd > getattr(cpu.pretrain, family).n_embd
    for task, caps in gpu.prepare.tasks.items():
        assert caps.max_train is caps.max_validation is caps.max_test is None, task
    assert cpu.train.tasks["multi30k"].max_train_examples and cpu.train.overrides["rnn-multi30k"].max_train_examples
    assert gpu.train.tasks["multi30k"].max_train_examples is None
    assert gpu.train.overrides["rnn-multi30k"].max_train_examples is None
    assert gpu.train.tasks["squad"].max_length > cpu.train.tasks["squad"].max_length


def test_smoke_profile_only_shrinks_sizes():
    small = load_params(REPO_ROOT / "params.yaml", profile="smoke")
    full = load_params(REPO_ROOT / "params.yaml", profile=None)
    assert small.ingest == full.ingest and small.validate_ == full.validate_  # same data, same checks
    assert small.pretrain.gpt.max_steps < full.pretrain.gpt.max_steps
    assert all(small.train.tasks[t].max_steps == 5 and small.train.tasks[t].epochs == 1 for t in small.train.tasks)
    assert all(o.epochs is None and o.max_steps is None for o in small.train.overrides.values())
    assert all(o.learning_rate == full.train.overrides[k].learning_rate for k, o in small.train.overrides.items())
    for task, caps in small.prepare.tasks.items():
        assert caps.max_train <= (full.prepare.tasks[task].max_train or caps.max_train)


def test_the_committed_effective_files_are_up_to_date():
    recorded = profiles.recorded_profile(REPO_ROOT)
    expected = effective_files(REPO_ROOT, recorded)
    committed = [profiles.EFFECTIVE_FILE] + [
        f"{RUN_PARAMS_DIR}/{p.name}" for p in (REPO_ROOT / RUN_PARAMS_DIR).iterdir()
    ]
    stale = [
        rel for rel in expected if not (REPO_ROOT / rel).exists() or (REPO_ROOT / rel).read_text() != expected[rel]
    ]
    assert not stale and sorted(committed) == sorted(expected), (
        f"{stale or sorted(set(committed) ^ set(expected))} stale for params.yaml + profile {recorded}: run "
        "`python -m flows.params` (git holds the default, no profile)"
    )


def test_the_params_stage_cli_writes_the_file_and_rejects_a_bad_profile_before_anything(repo):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(profiles.PROFILE_ENV, None)

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.params", *args],
            cwd=repo,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli(HT_PROFILE="smoke")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((repo / profiles.EFFECTIVE_FILE).read_text())["profile"] == "smoke"
    assert cli().returncode == 0  # no selection: keeps the recorded profile
    assert yaml.safe_load((repo / profiles.EFFECTIVE_FILE).read_text())["profile"] == "smoke"
    assert cli("--profile", "").returncode == 0
    assert yaml.safe_load((repo / profiles.EFFECTIVE_FILE).read_text())["profile"] is None
    write_profile(repo, "typo", {"train": {"tasks": {"emotion": {"max_step": 5}}}})
    before = (repo / profiles.EFFECTIVE_FILE).read_text()
    failed = cli("--profile", "typo")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "profiles/typo.yaml: key(s) not in params.yaml" in failed.stderr
    assert "- train.tasks.emotion.max_step" in failed.stderr
    assert (repo / profiles.EFFECTIVE_FILE).read_text() == before
