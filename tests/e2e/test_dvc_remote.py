"""A DVC remote carries the pipeline's data to another clone: the data stages of one dataset run in a copy of the
repository, `dvc push` to a folder remote, `git clone` + `dvc pull` elsewhere with the mirror gone, and there
nothing is out of date and `dvc repro` runs nothing (the pulled data is enough). A changed mirror file (refreshed
into data-sources.yaml) makes ingest out of date again. Stages report to the shared test Prefect server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.effective import write_effective_params
from tests.fixtures.dvc_repo import RAN, copy_repo, dvc, git, set_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STAGES = ["params", "ingest@emotion", "validate@emotion", "prepare@emotion"]
CAPS = {"max_train": 40, "max_validation": 16, "max_test": 16}


def status(repo: Path, env: dict) -> dict:
    out, _ = dvc(repo, env, "status", "--json", *STAGES)
    return json.loads(out.strip().splitlines()[-1])


def refresh_sources(repo: Path, env: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.sources"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_data_pushed_to_a_remote_is_pulled_into_a_clone_without_the_mirror(tmp_path, repo_root, small_mirror, dvc_env):
    mirror = Path(shutil.copytree(small_mirror, tmp_path / "mirror"))
    remote = tmp_path / "remote"
    repo = copy_repo(repo_root, tmp_path / "repo")

    def shrink(params):
        params["ingest"]["mirror_dir"] = str(mirror)
        params["prepare"]["tasks"]["emotion"] = dict(CAPS)

    set_params(repo, shrink)
    write_effective_params(repo, None)
    assert "emotion" in refresh_sources(repo, dvc_env)  # the small mirror's files, not the real one's
    dvc(repo, dvc_env, "remote", "modify", "local", "url", str(remote))  # the default remote, here in tmp
    out, _ = dvc(repo, dvc_env, "repro", "prepare@emotion")
    assert RAN.findall(out) == STAGES, out[-4000:]
    assert status(repo, dvc_env) == {}
    out, _ = dvc(repo, dvc_env, "push")
    assert remote.is_dir() and any((remote / "files" / "md5").iterdir()), out
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "emotion's data stages")

    shutil.rmtree(mirror)  # the clone's machine has no mirror (and is offline: the hub is no way out)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data").exists()
    dvc(clone, dvc_env, "pull", *STAGES[1:])
    assert (clone / "data/prepared/emotion/dataset_dict.json").is_file()
    assert (clone / "data/validation/emotion.json").is_file(), "metrics travel through the remote too"
    assert status(clone, dvc_env) == {}
    assert "up to date" in refresh_sources(clone, dvc_env)  # no mirror: the recorded sources stay
    assert status(clone, dvc_env) == {}
    out, _ = dvc(clone, dvc_env, "repro", "prepare@emotion")
    assert RAN.findall(out) == [], out[-4000:]

    # back on the first machine: a changed mirror file makes ingest (and what follows) out of date
    shutil.copytree(small_mirror, mirror)
    with open(mirror / "emotion" / "train.txt", "a", encoding="utf-8") as fh:
        fh.write("i feel like a new row;joy\n")
    assert "changed emotion" in refresh_sources(repo, dvc_env)
    assert set(status(repo, dvc_env)) == {"ingest@emotion"}
