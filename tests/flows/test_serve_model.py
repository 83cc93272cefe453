"""`make serve-model`: a task's champion served by `mlflow models serve` answers in the task kind's one shape.

Real models (the rnn family trained a few steps on the real-data subsamples of tests.fixtures.text2text) are
registered, championed by the real compare code, and served by real `mlflow models serve` processes on free
ports of 127.0.0.1; a plain HTTP client posts JSON to /invocations. The servers are stopped (whole process
group) and checked gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from flows.serve_model import HOST, champion_uri, check_champion, serve_command, serve_env

STARTUP_TIMEOUT_S = 120
ENTITY_KEYS = {"entity", "word", "start", "end", "word_start", "word_end"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> list:
    request = urllib.request.Request(
        f"http://{HOST}:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())["predictions"]


@contextlib.contextmanager
def served(model_uri: str, tracking: str, log: Path):
    """Start `mlflow models serve` (its own process group) and yield its port once /ping answers; stop it after,
    every process of it."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            serve_command(model_uri, port),
            env=serve_env(tracking),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, port
    finally:
        family = [proc.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in family[1:]):
            time.sleep(0.2)
        for pid in family[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"server process {pid} left running"


def wait_ready(proc, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve not ready in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def championed(t2t_repo, t2t_params, tmp_path, empty_mlflow_db):
    """Tiny rnn models trained a few steps for a classification, a NER and a translation task, registered as the
    training stage does and made their tasks' champions by the compare code; returns (tracking URI, the
    classification task's label names). The test split is not scored (minutes of beam search on 2 cores): a
    logged test metric stands in for it, as in tests.fixtures.compare."""
    import mlflow
    from datasets import load_from_disk

    from pipeline.compare.champion import update_champions
    from pipeline.core.metrics import main_metric
    from pipeline.tracking.runs import ensure_experiment, task_experiment, tracking_uri
    from pipeline.train.driver import build

    (t2t_repo / "mlflow").mkdir()
    shutil.copy(empty_mlflow_db, t2t_repo / "mlflow" / "mlflow.db")  # the schema made once per session
    tasks = ("emotion", "conll2003", "multi30k")
    for task in tasks:
        params = t2t_params("rnn", task, epochs=1, max_steps=2, batch_size=32, learning_rate=0.005)
        trainer = build("rnn", task, params)
        with mlflow.start_run(experiment_id=ensure_experiment(task_experiment(task), params)):
            trainer.fit(None)
            mlflow.log_metric(f"test_{main_metric(task)}", 0.5)
            trainer.register(tmp_path / f"export-{task}")
    update_champions(params, tasks=tasks)
    labels = load_from_disk(str(t2t_repo / "data" / "prepared" / "emotion"))["train"].features["label"].names
    return tracking_uri(params), labels


@pytest.mark.integration
@pytest.mark.slow
def test_each_tasks_champion_is_served_in_its_task_kinds_shape(championed, tmp_path):
    tracking, labels = championed
    assert check_champion("sst2", tracking).startswith("no models:/sst2@champion")  # never trained here
    uris = {task: champion_uri(task) for task in ("emotion", "conll2003", "multi30k")}
    with contextlib.ExitStack() as stack:  # the three servers start side by side
        servers = {
            task: (*stack.enter_context(served(uri, tracking, tmp_path / f"{task}.log")), tmp_path / f"{task}.log")
            for task, uri in uris.items()
        }
        for proc, port, log in servers.values():
            wait_ready(proc, port, log)

        _, port, _ = servers["emotion"]
        answers = post(port, {"inputs": ["i feel wonderful today", "i am so scared of the dark"]})
        assert len(answers) == 2 and all(set(a) == {"label", "score"} and a["label"] in labels for a in answers)
        assert post(port, {"dataframe_records": [{"text": "i feel wonderful today"}]}) == answers[:1]

        _, port, _ = servers["conll2003"]
        texts = ["Peter Blackburn flew to Germany .", "EU rejects German call to boycott British lamb ."]
        answers = post(port, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        assert len(answers) == 2 and all(isinstance(found, list) for found in answers)
        for text, found in zip(texts, answers):
            for e in found:  # a few steps of training: whatever it finds must be well-formed
                assert set(e) == ENTITY_KEYS and text[e["start"] : e["end"]] == e["word"]
                assert e["entity"] in {"PER", "ORG", "LOC", "MISC"}

        _, port, _ = servers["multi30k"]
        german = post(port, {"dataframe_records": [{"en": "A man is riding a bike."}, {"en": "Two dogs play."}]})
        assert len(german) == 2 and all(isinstance(t, str) for t in german)
        assert post(port, {"inputs": ["A man is riding a bike."]}) == german[:1]
        pids = [proc.pid for proc, _, _ in servers.values()]
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
