"""flows.parallel_repro on a real git+DVC repository in tmp: stages at once, dvc.lock kept as `dvc repro` keeps it.

The pipeline a -> (b, c) -> d: b and c sleep, so run two at a time they overlap; each records when it ran and
the OMP_NUM_THREADS it got.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from flows.parallel_repro import (
    SAMPLE_EVERY_S,
    STAGE_HISTORY_FILE,
    StageFailed,
    fits_memory,
    reproduce_parallel,
    stage_graph,
    wanted_stages,
)
from tests.fixtures.orchestration import commit_as_dvc_repo

pytestmark = pytest.mark.integration

STAGE = """\
import json, os, sys, time
from pathlib import Path
name, inputs = sys.argv[1], sys.argv[2:]
start = time.time()
text = "".join(Path(f"data/{i}.txt").read_text() for i in inputs) + name
blob = b"x" * (int(os.environ.get("MEM_" + name, "0")) * 2**20)  # resident: filled, not just reserved
time.sleep(float(os.environ.get("SLEEP_" + name, "0")))
if Path(f"fail_{name}").exists():
    print(f"stage {name} breaks on purpose", flush=True)
    sys.exit(3)
if os.environ.get("AWAIT_WORKER_" + name):  # until the stage worker of the run is up (its socket exists)
    import glob, tempfile
    deadline = time.time() + 300
    while not glob.glob(os.path.join(tempfile.gettempdir(), "ht-stage-worker-*", "socket")) and time.time() < deadline:
        time.sleep(0.1)
bars = int(os.environ.get("BARS_" + name, "0"))
for i in range(bars):
    print(f"{100 * (i + 1) // bars:3d}%|##| {i + 1}/{bars} [00:00<00:00]", flush=True)
Path(f"data/{name}.txt").write_text(text)
Path(f"runs").mkdir(exist_ok=True)
Path(f"runs/{name}.json").write_text(json.dumps({"start": start, "end": time.time(),
    "threads": os.environ.get("OMP_NUM_THREADS"), "warm": "torch" in sys.modules, "pid": os.getpid()}))
print(f"stage {name} done", flush=True)
"""

DVC_YAML = {
    "stages": {
        "a": {"cmd": "python stage.py a", "deps": ["stage.py", "input.txt"], "outs": ["data/a.txt"]},
        "b": {"cmd": "python stage.py b a", "deps": ["stage.py", "data/a.txt"], "outs": ["data/b.txt"]},
        "c": {"cmd": "python stage.py c a", "deps": ["stage.py", "data/a.txt", "c.cfg"], "outs": ["data/c.txt"]},
        "d": {"cmd": "python stage.py d b c", "deps": ["stage.py", "data/b.txt", "data/c.txt"], "outs": ["data/d.txt"]},
    }
}


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "stage.py").write_text(STAGE)
    (root / "input.txt").write_text("x")
    (root / "c.cfg").write_text("1")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / ".gitignore").write_text("/runs/\n/fail_*\n")
    return commit_as_dvc_repo(root, "tiny")


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "DVC_NO_ANALYTICS": "1", **extra}


def _status(repo: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out[out.find("{") :]) if "{" in out else {}


def _run(
    repo: Path, jobs: int = 2, force: bool = False, targets=(), budget: float | None = None, **env
) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    ran = reproduce_parallel(repo, list(targets), force, jobs, _env(**env), set(_status(repo)), lines.append, budget)
    return ran, lines


def _times(repo: Path, name: str) -> dict:
    return json.loads((repo / "runs" / f"{name}.json").read_text())


def test_stage_graph_and_order_follow_dvc_yaml(repo):
    stages = stage_graph(repo)
    assert set(stages) == {"a", "b", "c", "d"}
    assert stages["d"].upstream == {"b", "c"} and stages["a"].upstream == set()
    assert stages["c"].outs == ["data/c.txt"] and stages["b"].cmd == "python stage.py b a"
    assert wanted_stages(stages, []) == ["a", "b", "c", "d"]
    assert wanted_stages(stages, ["c"]) == ["a", "c"]
    with pytest.raises(ValueError, match="no stage nope"):
        wanted_stages(stages, ["nope"])


def test_runs_independent_stages_at_once_and_records_each_in_dvc_lock(repo):
    ran, lines = _run(repo, SLEEP_b="2", SLEEP_c="2", BARS_a="50")
    assert sorted(ran) == ["a", "b", "c", "d"] and ran[0] == "a" and ran[-1] == "d"
    b, c = _times(repo, "b"), _times(repo, "c")
    assert b["start"] < c["end"] and c["start"] < b["end"], "b and c did not overlap"
    assert b["threads"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert (repo / "data" / "d.txt").read_text() == "abacd"
    # dvc.lock is what `dvc repro` would leave: nothing out of date, every stage recorded
    assert _status(repo) == {}
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"a", "b", "c", "d"}
    assert "Running stage 'b':" in "\n".join(lines) and any(line.startswith("[c] stage c done") for line in lines)
    assert (repo / ".dvc/tmp/stage-logs/c.log").read_text().strip() == "stage c done"
    # a's 50 progress-bar redraws: all in its log, the first and the last (100 %) on the console
    assert [line for line in lines if "%|" in line] == [
        "[a]   2%|##| 1/50 [00:00<00:00]",
        "[a] 100%|##| 50/50 [00:00<00:00]",
    ]
    assert (repo / ".dvc/tmp/stage-logs/a.log").read_text().count("%|##|") == 50
    history = json.loads((repo / STAGE_HISTORY_FILE).read_text())["none"]  # no params profile here
    assert set(history) == {"a", "b", "c", "d"} and history["b"]["wall_s"] >= 2
    assert 0.005 < history["b"]["peak_rss_gib"] < 1  # a small python process, sampled while it slept
    assert any(re.fullmatch(r"Stage 'b' finished in \d+\.\d s \(peak memory \d+\.\d\d GiB\)", x) for x in lines)

    # nothing changed: nothing runs
    ran, lines = _run(repo)
    assert ran == [] and "Stage 'a' didn't change, skipping" in lines

    # c's config changes but not its output: c re-runs, d (whose inputs came out the same) does not
    (repo / "c.cfg").write_text("2")
    ran, lines = _run(repo)
    assert ran == ["c"] and "Stage 'd' didn't change, skipping" in lines
    assert _status(repo) == {}

    # forced: all of them again
    ran, _ = _run(repo, force=True)
    assert sorted(ran) == ["a", "b", "c", "d"]


def test_a_failed_stage_stops_new_ones_and_keeps_what_finished(repo):
    (repo / "fail_b").write_text("")
    with pytest.raises(StageFailed, match=r"stage 'b' failed \(exit 3\)") as err:
        # b holds 20 MiB for three sampling periods before it fails: sampled at least twice however slow the machine
        _run(repo, SLEEP_b=str(3 * SAMPLE_EVERY_S), MEM_b="20", SLEEP_c="2")
    assert "stage b breaks on purpose" in str(err.value) and "stage-logs/b.log" in str(err.value)
    # c was running beside b: it finished and is recorded; d never ran
    assert not (repo / "data" / "d.txt").exists()
    assert set(_status(repo)) == {"b", "d"}
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"a", "c"}
    assert json.loads((repo / STAGE_HISTORY_FILE).read_text())["none"]["b"]["peak_rss_gib"] >= 0.02  # known next time
    # fixed, the next run picks up from there
    (repo / "fail_b").unlink()
    ran, _ = _run(repo)
    assert ran == ["b", "d"] and _status(repo) == {}


def test_one_job_runs_one_stage_at_a_time(repo):
    ran, lines = _run(repo, jobs=1, SLEEP_b="1", SLEEP_c="1")
    b, c = _times(repo, "b"), _times(repo, "c")
    assert b["end"] <= c["start"] or c["end"] <= b["start"]
    assert c["threads"] == str(os.cpu_count() or 1) and "Running up to 1 stages at a time" in lines[0]


def test_stages_pair_only_within_the_memory_budget_of_their_recorded_peaks(repo):
    _run(repo, MEM_b="300", MEM_c="300", SLEEP_b="1", SLEEP_c="1")  # records each stage's peak (b, c: ~0.3 GiB)
    history = json.loads((repo / STAGE_HISTORY_FILE).read_text())["none"]
    assert history["b"]["peak_rss_gib"] > 0.29 and history["c"]["peak_rss_gib"] > 0.29
    # under a 0.5 GiB budget b and c (~0.3 GiB each) may not run side by side
    ran, lines = _run(repo, force=True, budget=0.5, SLEEP_b="1", SLEEP_c="1", MEM_b="300", MEM_c="300")
    b, c = _times(repo, "b"), _times(repo, "c")
    assert b["end"] <= c["start"] or c["end"] <= b["start"], "b and c ran side by side over the budget"
    assert "side by side within 0.5 GiB" in lines[0] and sorted(ran) == ["a", "b", "c", "d"]
    # a budget that holds both: they overlap again
    _run(repo, force=True, budget=4, SLEEP_b="2", SLEEP_c="2")
    b, c = _times(repo, "b"), _times(repo, "c")
    assert b["start"] < c["end"] and c["start"] < b["end"]


def test_fits_memory_sums_the_recorded_peaks():
    history = {"big": {"peak_rss_gib": 5.0}, "mid": {"peak_rss_gib": 3.0}, "small": {"peak_rss_gib": 1.0}}
    assert fits_memory("big", [], history, 4)  # alone: always
    assert fits_memory("big", ["mid"], history, 8) and not fits_memory("big", ["mid"], history, 7.9)
    assert fits_memory("new", ["big"], history, 5)  # never run: counts as 0
    assert fits_memory("big", ["mid", "small"], history, None)  # no budget
    assert not fits_memory("small", ["big", "mid"], history, 8.5)


def test_stages_start_from_the_warm_worker_once_it_is_up(repo, monkeypatch):
    """`python -m stage ...` commands (stage.py is a module of the repository root) run in children of the stage
    worker once it has imported the stages' libraries; the ones started before it was up run as subprocesses.
    Either way the same outputs and dvc.lock."""
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    for stage in dvc_yaml["stages"].values():
        stage["cmd"] = stage["cmd"].replace("python stage.py", "python -m stage")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "stages as modules"], cwd=repo, check=True)
    tmp = tempfile.mkdtemp(prefix="w", dir="/tmp")  # the run's worker alone in it (and a short socket path)
    monkeypatch.setattr(tempfile, "tempdir", tmp)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = _env(AWAIT_WORKER_a="1", TMPDIR=tmp, PATH=path)
    lines: list[str] = []
    ran = reproduce_parallel(repo, [], False, 2, env, {"a", "b", "c", "d"}, lines.append, stage_worker=True)
    assert sorted(ran) == ["a", "b", "c", "d"]
    runs = {n: json.loads((repo / "runs" / f"{n}.json").read_text()) for n in "abcd"}
    assert runs["a"]["warm"] is False  # started at once, before the worker was up (a waits for it)
    assert runs["b"]["warm"] and runs["c"]["warm"] and runs["d"]["warm"], lines
    assert (repo / "data" / "d.txt").read_text() == "abacd"
    assert _status(repo) == {}
    assert any("warm stage worker" in line for line in lines)
    history = json.loads((repo / STAGE_HISTORY_FILE).read_text())["none"]
    assert all(history[n]["peak_rss_gib"] > 0.005 for n in "bcd"), history  # short forked stages are sampled too
    assert not [n for n in os.listdir(tmp) if n.startswith("ht-stage-worker-")]  # stopped, its folder removed
    shutil.rmtree(tmp)
