"""`make run` pushes to the default DVC remote afterwards (flows.run_pipeline.push_outputs): pushed when the
remote works, a warning (never an exception) when it does not, nothing without a remote; HT_DVC_PUSH=0 skips;
a push with nothing new since the last successful one (dvc.lock and the DVC config unchanged) is skipped."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from flows.run_pipeline import PUSH_ENV, PUSH_MARKER, push_outputs, push_wanted


def _dvc(repo, *args):
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def tracked_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    (repo / "data.txt").write_text("some pipeline output\n")
    _dvc(repo, "add", "-q", "data.txt")
    return repo


def test_push_goes_to_the_default_remote(tracked_repo, tmp_path):
    remote = tmp_path / "remote"
    _dvc(tracked_repo, "remote", "add", "-d", "local", str(remote))
    assert push_outputs(tracked_repo) is True
    assert [p for p in (remote / "files" / "md5").rglob("*") if p.is_file()]


def _pushed_files(remote) -> set:
    return {p.name for p in (remote / "files" / "md5").rglob("*") if p.is_file()}


def test_a_push_with_nothing_new_is_skipped_and_a_changed_lock_or_remote_pushes_again(tracked_repo, tmp_path, caplog):
    remote = tmp_path / "remote"
    _dvc(tracked_repo, "remote", "add", "-d", "local", str(remote))
    assert push_outputs(tracked_repo) is True and (tracked_repo / PUSH_MARKER).is_file()
    first = _pushed_files(remote)
    with caplog.at_level(logging.INFO, logger="hello_transformers"):
        assert push_outputs(tracked_repo) is True
    assert "nothing new since the last push" in caplog.text
    # a new output recorded in dvc.lock: pushed
    (tracked_repo / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo more > more.txt\n    outs: [more.txt]\n")
    _dvc(tracked_repo, "repro", "-q")
    assert push_outputs(tracked_repo) is True and len(_pushed_files(remote)) == len(first) + 1
    # another default remote, dvc.lock unchanged: pushed there too
    other = tmp_path / "other"
    _dvc(tracked_repo, "remote", "add", "-d", "other", str(other))
    assert push_outputs(tracked_repo) is True and _pushed_files(other) == _pushed_files(remote)


def test_a_failed_push_warns_and_does_not_raise(tracked_repo, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    _dvc(tracked_repo, "remote", "add", "-d", "broken", str(blocker / "remote"))
    with caplog.at_level(logging.WARNING, logger="hello_transformers"):
        assert push_outputs(tracked_repo) is False
    assert "dvc push to the DVC remote 'broken' failed" in caplog.text and "dvc push` later" in caplog.text
    assert not (tracked_repo / PUSH_MARKER).exists()  # the next run tries again


def test_without_a_default_remote_nothing_is_pushed(tracked_repo, caplog):
    with caplog.at_level(logging.INFO, logger="hello_transformers"):
        assert push_outputs(tracked_repo) is False
    assert "No default DVC remote" in caplog.text


def test_push_can_be_turned_off(monkeypatch):
    monkeypatch.delenv(PUSH_ENV, raising=False)
    assert push_wanted(no_push=False) and not push_wanted(no_push=True)
    monkeypatch.setenv(PUSH_ENV, "0")
    assert not push_wanted(no_push=False)
