"""Lineage recorded on every run: dirty-tree refusal, params hash and profile (what `make reproduce` reads)."""

from __future__ import annotations

import copy
import threading

import pytest

from pipeline.core.config import parse_params
from pipeline.tracking import runs
from tests.fixtures.dvc_repo import git


@pytest.fixture
def clean_repo(tmp_path):
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.effective.yaml").write_text("profile: null\n")
    (tmp_path / "run-params").mkdir()
    (tmp_path / "run-params" / "rnn-emotion.yaml").write_text("seed: 42\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_a_clean_tree_registers(clean_repo, monkeypatch):
    monkeypatch.delenv(runs.ALLOW_DIRTY_ENV, raising=False)
    assert runs.dirty_files(clean_repo) == []
    assert runs.require_clean_tree("register x", clean_repo) is False


def test_files_the_pipeline_writes_do_not_make_the_tree_dirty(clean_repo, monkeypatch):
    monkeypatch.delenv(runs.ALLOW_DIRTY_ENV, raising=False)
    (clean_repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (clean_repo / "params.effective.yaml").write_text("profile: smoke\n")
    (clean_repo / "run-params" / "rnn-emotion.yaml").write_text("seed: 1\n")  # modified
    (clean_repo / "run-params" / "gpt-emotion.yaml").write_text("seed: 1\n")  # new
    assert runs.require_clean_tree("register x", clean_repo) is False
    (clean_repo / "run-params-notes.txt").write_text("x")  # only the folder is the pipeline's
    assert runs.dirty_files(clean_repo) == ["run-params-notes.txt"]


@pytest.mark.parametrize("change", ["modified", "untracked", "staged"])
def test_uncommitted_code_refuses_to_register_unless_allowed(clean_repo, monkeypatch, change):
    monkeypatch.delenv(runs.ALLOW_DIRTY_ENV, raising=False)
    if change == "modified":
        (clean_repo / "code.py").write_text("x = 2\n")
        expected = "code.py"
    elif change == "untracked":
        (clean_repo / "new_module.py").write_text("y = 1\n")
        expected = "new_module.py"
    else:
        (clean_repo / "staged.py").write_text("z = 1\n")
        git(clean_repo, "add", "staged.py")
        expected = "staged.py"
    with pytest.raises(runs.DirtyTreeError, match=rf"refusing to register x from a dirty working tree \({expected}\)"):
        runs.require_clean_tree("register x", clean_repo)
    monkeypatch.setenv(runs.ALLOW_DIRTY_ENV, "1")
    assert runs.require_clean_tree("register x", clean_repo) is True


def test_params_hash_follows_the_effective_params(default_params_dict):
    base = parse_params(copy.deepcopy(default_params_dict))
    same = parse_params(copy.deepcopy(default_params_dict))
    changed = copy.deepcopy(default_params_dict)
    changed["common"]["seed"] += 1
    assert runs.params_hash(base) == runs.params_hash(same)
    assert runs.params_hash(base) != runs.params_hash(parse_params(changed))
    assert len(runs.params_hash(base)) == 16


def test_base_tags_record_the_lineage(clean_repo, default_params_dict):
    raw = copy.deepcopy(default_params_dict)
    raw["profile"] = "smoke"
    params = parse_params(raw)
    (clean_repo / "code.py").write_text("x = 3\n")
    tags = runs.base_tags(params, family="rnn", source="scratch", root=clean_repo)
    assert tags["git_dirty"] == "true"
    assert tags["profile"] == "smoke"
    assert tags["params_hash"] == runs.params_hash(params)
    assert len(tags["git_commit"]) == 40


LOCK = "stages:\n  prepare@emotion:\n    outs:\n    - path: data/prepared/emotion\n      md5: abc.dir\n"
LOCK_BOTH = LOCK + "  pretrain@gpt:\n    outs:\n    - path: data/pretrain/gpt/model\n      md5: def.dir\n"


@pytest.mark.parametrize(
    "caught",
    [
        LOCK + "  pretrain@gpt:\n    outs: [{path: data/pre",
        LOCK,
        LOCK + "  pretrain@gpt:\n",
        LOCK + "  pretrain@gpt:\n    outs:\n",
        LOCK + "  pretrain@gpt:\n    outs:\n    - path: data/pretrain/gpt/model\n",
        "stag",
        "",
    ],
    ids=[
        "half-written-yaml",
        "entry-not-there-yet",
        "stage-cut-after-its-name",
        "outs-cut",
        "out-without-md5",
        "cut-in-the-first-word",
        "empty",
    ],
)
def test_dvc_hashes_reads_a_dvc_lock_caught_mid_write_again(tmp_path, caught):
    """A stage beside `dvc commit` (stages at once) may read dvc.lock while DVC rewrites it in place."""
    lock = tmp_path / "dvc.lock"
    lock.write_text(caught)
    timer = threading.Timer(0.5, lock.write_text, args=(LOCK_BOTH,))
    timer.start()
    try:
        found = runs.dvc_hashes(["data/prepared/emotion/", "data/pretrain/gpt/model"], tmp_path)
    finally:
        timer.join()
    assert found == {"data/prepared/emotion": "abc.dir", "data/pretrain/gpt/model": "def.dir"}


def test_dvc_hashes_of_a_path_no_stage_made_gives_up_with_what_it_found(tmp_path):
    (tmp_path / "dvc.lock").write_text(LOCK)
    assert runs.dvc_hashes(["data/prepared/emotion", "elsewhere"], tmp_path) == {"data/prepared/emotion": "abc.dir"}
    assert runs.dvc_hashes(["x"], tmp_path / "no-repo") == {}


def test_dvc_hashes_of_paths_in_an_out_absolute_or_outside_the_repo(tmp_path, monkeypatch):
    """Weights folders come as absolute paths, tokenizers as sub-folders of the `data/tokenizers` out, the MiniLM
    checkpoint from an installed package: each in-repo path gets the md5 of the out that holds it on the first
    read (one read allowed: no re-read waits for a path that can never appear), and the package path none."""
    lock = tmp_path / "dvc.lock"
    lock.write_text(LOCK_BOTH + "  tokenizers:\n    outs:\n    - path: data/tokenizers\n      md5: tok.dir\n")
    monkeypatch.setattr(runs, "LOCK_READ_TRIES", 1)
    paths = [tmp_path / "data/pretrain/gpt/model", "data/tokenizers/gpt", "data/prepared/emotion", "/usr/lib/m"]
    found = runs.dvc_hashes(paths, tmp_path)
    assert found == {
        "data/pretrain/gpt/model": "def.dir",
        "data/tokenizers/gpt": "tok.dir",
        "data/prepared/emotion": "abc.dir",
    }
    assert runs.dvc_hashes(["/usr/lib/m"], tmp_path) == {}
