"""`make serve-model`: a task's champion served by `mlflow models serve` answers in the task kind's one shape.

Real models (the rnn family trained a few steps on the real-data subsamples of tests.fixtures.text2text) are
registered, championed by the real compare code, and served by real `mlflow models serve` processes on free
ports of 127.0.0.1; a plain HTTP client posts JSON to /invocations. The servers are stopped (whole process
group) and checked gone.
"""

from __future__ import annotations

import contextlib
import shutil

import psutil
import pytest

from flows.serve_model import check_champion
from pipeline.tracking.serving import alive, champion_uri, invoke, running_server

ENTITY_KEYS = {"entity", "word", "start", "end", "word_start", "word_end"}


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
    with contextlib.ExitStack() as stack:  # the three servers start side by side, then each is waited for
        servers = {
            task: stack.enter_context(running_server(champion_uri(task), tracking, tmp_path / f"{task}.log", False))
            for task in ("emotion", "conll2003", "multi30k")
        }
        for server in servers.values():
            server.wait_ready()

        port = servers["emotion"].port
        answers = invoke(port, {"inputs": ["i feel wonderful today", "i am so scared of the dark"]})
        assert len(answers) == 2 and all(set(a) == {"label", "score"} and a["label"] in labels for a in answers)
        assert invoke(port, {"dataframe_records": [{"text": "i feel wonderful today"}]}) == answers[:1]

        port = servers["conll2003"].port
        texts = ["Peter Blackburn flew to Germany .", "EU rejects German call to boycott British lamb ."]
        answers = invoke(port, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        assert len(answers) == 2 and all(isinstance(found, list) for found in answers)
        for text, found in zip(texts, answers):
            for e in found:  # a few steps of training: whatever it finds must be well-formed
                assert set(e) == ENTITY_KEYS and text[e["start"] : e["end"]] == e["word"]
                assert e["entity"] in {"PER", "ORG", "LOC", "MISC"}

        port = servers["multi30k"].port
        german = invoke(port, {"dataframe_records": [{"en": "A man is riding a bike."}, {"en": "Two dogs play."}]})
        assert len(german) == 2 and all(isinstance(t, str) for t in german)
        assert invoke(port, {"inputs": ["A man is riding a bike."]}) == german[:1]
        processes = [s.process.pid for s in servers.values()] + [
            child.pid for s in servers.values() for child in psutil.Process(s.process.pid).children(recursive=True)
        ]
    assert len(processes) > 3 and not [pid for pid in processes if alive(pid)], "a server process was left running"


def test_serve_model_refuses_a_task_without_a_champion(compare_repo, capsys, monkeypatch):
    from flows.serve_model import main

    # the compare repo's own store: an MLFLOW_TRACKING_URI left by an earlier test (MLflow exports it) may hold an
    # emotion champion, and then main() would exec into `mlflow models serve` in place of this test process
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)

    with pytest.raises(SystemExit) as exit_info:
        main(["emotion", "--port", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no models:/emotion@champion in sqlite:///" in err and "`make run`" in err
