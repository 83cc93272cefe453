"""flows.stage_worker: a real worker process (the stages' libraries preloaded) runs `python -m MODULE ARGS` commands
in forked children that behave as the command's own process would: output, exit status, signals, working
directory, argv, stdin, process group; it refuses what it cannot run that way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.stage_worker import StageWorker

pytestmark = pytest.mark.integration

PROBE = """\
import json, os, sys, time
from pathlib import Path
WARM = "torch" in sys.modules  # only a child of the warm worker has it before importing anything
action, args = sys.argv[1], sys.argv[2:]
if action == "report":
    Path(args[0]).write_text(json.dumps({
        "warm": WARM, "pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(), "argv": sys.argv,
        "name": __name__, "stdin": sys.stdin.read(), "marker": os.environ.get("HT_WORKER_TEST"),
    }))
    print("reported")
elif action == "exit":
    print("leaving with", args[0])
    sys.exit(int(args[0]))
elif action == "raise":
    raise RuntimeError("the probe breaks on purpose")
elif action == "sleep":
    print("sleeping", flush=True)
    time.sleep(float(args[0]))
"""


def _wait_ready(worker: StageWorker, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not worker.ready():
        assert worker.proc.poll() is None, Path(worker.folder, "worker.log").read_text()
        assert time.monotonic() < deadline, "the stage worker did not come up"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage-worker")
    (root / "stage_probe.py").write_text(PROBE)
    return root


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**os.environ, "HT_WORKER_TEST": "marker", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def worker(probe_root, env):
    worker = StageWorker(probe_root, env)
    try:
        _wait_ready(worker)
        yield worker
    finally:
        worker.stop()


def _run(worker: StageWorker, cmd: str, root: Path) -> tuple[int, str]:
    proc = worker.start(cmd, root)
    assert proc is not None, f"the worker did not take {cmd!r}"
    out = proc.stdout.read()
    return proc.wait(timeout=60), out


def test_a_stage_runs_in_a_warm_child_as_its_own_process(worker, probe_root, tmp_path):
    report = tmp_path / "report.json"
    code, out = _run(worker, f"python -m stage_probe report {report}", probe_root)
    assert (code, out.strip()) == (0, "reported")
    seen = json.loads(report.read_text())
    assert seen["warm"] is True  # forked from the worker: its imports were already done
    assert seen["pgid"] == seen["pid"] != worker.proc.pid  # its own process group: stopped as a whole
    assert seen["cwd"] == str(probe_root)
    assert seen["name"] == "__main__"
    assert Path(seen["argv"][0]).name == "stage_probe.py" and seen["argv"][1:] == ["report", str(report)]
    assert seen["stdin"] == "" and seen["marker"] == "marker"

    fresh = tmp_path / "fresh.json"  # the same command as its own process: the same view, only not warm
    subprocess.run(f"python -m stage_probe report {fresh}", shell=True, cwd=probe_root, env=worker.env, check=True)
    alone = json.loads(fresh.read_text())
    assert alone["warm"] is False
    for key in ("cwd", "name", "stdin", "marker"):
        assert alone[key] == seen[key], key


@pytest.mark.parametrize("args", ["exit 0", "exit 3", "raise"])
def test_exit_status_and_output_are_the_commands_own(worker, probe_root, args):
    cmd = f"python -m stage_probe {args}"
    code, out = _run(worker, cmd, probe_root)
    alone = subprocess.run(cmd, shell=True, cwd=probe_root, env=worker.env, capture_output=True, text=True)
    assert code == alone.returncode
    assert out.strip().splitlines()[-1] == (alone.stdout + alone.stderr).strip().splitlines()[-1]


def test_a_stopped_stage_reports_the_signal(worker, probe_root):
    proc = worker.start("python -m stage_probe sleep 60", probe_root)
    assert proc.stdout.readline().strip() == "sleeping"
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


def test_the_worker_takes_only_what_it_can_run_as_the_command_would(worker, probe_root, tmp_path):
    for cmd in (
        "python -c 'print(1)'",  # not a module
        "python -m stage_probe exit 0 > out.txt",  # shell syntax
        "python -m stage_probe exit 0 && rm -rf data",
        "python3.11 -m stage_probe exit 0",  # another program
    ):
        assert worker.start(cmd, probe_root) is None, cmd
    assert worker.start("python -m stage_probe exit 0", tmp_path) is None  # not the folder it imported from
    env = worker.env
    try:  # a stage whose environment differs from the worker's: refused by the worker itself
        worker.env = {**env, "HT_WORKER_TEST": "other"}
        assert worker.start("python -m stage_probe exit 0", probe_root) is None
    finally:
        worker.env = env
    assert _run(worker, "python -m stage_probe exit 0", probe_root)[0] == 0  # and it still serves


def test_stop_ends_the_worker_and_removes_its_socket(probe_root, env):
    worker = StageWorker(probe_root, env)
    worker.stop()  # while it is still importing
    assert worker.proc.returncode is not None
    assert not Path(worker.folder).exists()
    assert worker.start("python -m stage_probe exit 0", probe_root) is None
