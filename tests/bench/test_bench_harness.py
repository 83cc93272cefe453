"""The benchmark harness (bench/): statistics, A/B interleaving, result files, the summary, run_all's error
handling, DVC-output parsing and workspace copies. No timing assertions: benchmarks are not tests."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench import common, run_all, workspace
from bench.common import BenchOptions


# ---------------------------------------------------------------- statistics
def test_percentiles_and_summary_match_numpy_linear_method():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    s = common.summarize(values)
    assert s["n"] == 6 and s["min"] == 1.0 and s["max"] == 10.0
    assert s["median"] == pytest.approx(3.5) and s["p50"] == pytest.approx(3.5)
    assert s["p95"] == pytest.approx(8.75)  # numpy.percentile(values, 95)
    assert common.percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        common.summarize([])
    with pytest.raises(ValueError):
        common.percentile([1.0], 101)


def test_ratio_of_medians_and_paired_ratios():
    a, b = [2.0, 4.0, 100.0], [1.0, 2.0, 2.0]
    assert common.ratio_of_medians(a, b) == pytest.approx(2.0)
    assert common.paired_ratios(a, b) == pytest.approx([2.0, 2.0, 50.0])
    with pytest.raises(ValueError):
        common.paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ZeroDivisionError):
        common.ratio_of_medians([1.0], [0.0])


# ---------------------------------------------------------------- interleaving
def test_interleave_alternates_order_and_measures_each_arm():
    calls: list[str] = []

    def arm(name, value):
        def fn():
            calls.append(name)
            return value

        return fn

    out = common.interleave(arm("a", 1.0), arm("b", 2.0), reps=4, warmup=1, measure=lambda fn: fn())
    assert out["a"] == [1.0] * 4 and out["b"] == [2.0] * 4
    assert out["order"] == ["ab", "ba", "ba", "ab"]  # balanced: each arm first equally often
    assert calls == ["a", "b", "a", "b", "b", "a", "b", "a", "a", "b"]  # warmup first, then the rounds


def test_interleave_many_rotates_so_no_arm_is_always_first():
    out = common.interleave_many({k: (lambda: 0.0) for k in "xyz"}, reps=6, warmup=0, measure=lambda fn: fn())
    firsts = [order[0] for order in out["order"]]
    assert sorted(firsts) == ["x", "x", "y", "y", "z", "z"]
    assert all(sorted(order) == ["x", "y", "z"] for order in out["order"])
    with pytest.raises(ValueError):
        common.interleave_many({"a": lambda: 0}, reps=0)


def test_default_measure_is_wall_seconds():
    out = common.interleave(lambda: sum(range(1000)), lambda: None, reps=2, warmup=0)
    assert all(isinstance(x, float) and x >= 0 for x in out["a"] + out["b"])


# ---------------------------------------------------------------- result files and summary
def _result(name="demo", rows=None):
    rows = rows or [common.row("thing", ">= 1", "2", common.MET, "because")]
    return common.envelope(name, common.result_body(rows, samples={"a": [1.0, float("nan")]}), 0.0, 1.5)


def test_envelope_has_machine_versions_commit_and_is_written_atomically(tmp_path):
    result = _result()
    path = common.write_result("demo", result, tmp_path)
    loaded = json.loads(path.read_text())
    for key in common.REQUIRED_KEYS:
        assert key in loaded
    assert loaded["machine"]["logical_cores"] >= 1 and loaded["machine"]["torch_threads"] >= 1
    assert loaded["versions"]["torch"] and loaded["duration_s"] == 1.5
    assert loaded["samples"]["a"] == [1.0, None]  # NaN is not valid JSON: written as null
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temporary file left behind
    assert common.read_result("demo", tmp_path)["name"] == "demo"
    assert common.read_result("missing", tmp_path) is None


def test_check_result_names_what_is_wrong():
    bad = _result()
    del bad["machine"]
    with pytest.raises(ValueError, match="machine"):
        common.check_result(bad)
    bad = _result()
    bad["rows"][0]["status"] = "great"
    with pytest.raises(ValueError, match="bad status"):
        common.check_result(bad)
    with pytest.raises(ValueError, match="status must be one of"):
        common.row("x", "t", "m", "fine")


def test_summary_tables_show_every_row_and_flag_misses():
    res = [_result("one"), _result("two", [common.row("slow | thing", "<= 1 s", "3 s", common.MISSED, "cause")])]
    md = common.summary_markdown(res)
    assert md.count("\n") == 4  # header, rule, two rows
    assert "| two | slow \\| thing | <= 1 s | 3 s | **missed** | cause |" in md
    text = common.summary_text(res)
    assert "one" in text and "missed" in text and "↳ cause" in text


# ---------------------------------------------------------------- run_all
def test_run_all_writes_results_and_summary_and_survives_a_broken_benchmark(tmp_path, monkeypatch, capsys):
    ok = types.ModuleType("bench_test_ok")
    ok.run = lambda opts, ctx: common.result_body([common.row("fine", "report", "1", common.REPORT)], quick=opts.quick)
    broken = types.ModuleType("bench_test_broken")

    def boom(opts, ctx):
        assert "ok" in ctx  # earlier results of the same run are passed on
        raise RuntimeError("no subject yet")

    broken.run = boom
    monkeypatch.setitem(sys.modules, "bench_test_ok", ok)
    monkeypatch.setitem(sys.modules, "bench_test_broken", broken)
    monkeypatch.setattr(run_all, "BENCHMARKS", {"ok": "bench_test_ok", "broken": "bench_test_broken"})
    monkeypatch.setattr(run_all, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)

    assert run_all.main(["--quick"]) == 0
    assert json.loads((tmp_path / "ok.json").read_text())["quick"] is True
    broken_result = json.loads((tmp_path / "broken.json").read_text())
    assert broken_result["rows"][0]["status"] == common.ERROR
    assert "no subject yet" in broken_result["rows"][0]["note"] and "RuntimeError" in broken_result["traceback"]
    summary = (tmp_path / run_all.SUMMARY_MD).read_text()
    assert "| ok | fine |" in summary and "| broken |" in summary
    assert "no subject yet" in capsys.readouterr().out


def test_a_skipped_benchmark_keeps_the_last_measured_result(tmp_path, monkeypatch):
    """A CPU machine's bench run (gpu: skipped, no CUDA) must not erase the GPU numbers measured when one was lent;
    a skip with nothing measured before is written as usual."""
    gpu = types.ModuleType("bench_test_gpu")
    gpu.run = lambda opts, ctx: common.result_body(
        [common.row("MFU", "report", "-", common.SKIPPED, "no CUDA")], skipped="no CUDA device"
    )
    monkeypatch.setitem(sys.modules, "bench_test_gpu", gpu)
    monkeypatch.setattr(run_all, "BENCHMARKS", {"gpu": "bench_test_gpu"})
    monkeypatch.setattr(run_all, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)

    assert run_all.main([]) == 0  # nothing measured yet: the skip is recorded
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"] == "no CUDA device"

    measured = common.envelope("gpu", common.result_body([common.row("MFU", "report", "37 %", common.REPORT)]), 0, 1)
    common.write_result("gpu", measured)
    assert run_all.main([]) == 0
    kept = json.loads((tmp_path / "gpu.json").read_text())
    assert "skipped" not in kept and kept["rows"][0]["measured"] == "37 %"
    summary = (tmp_path / run_all.SUMMARY_MD).read_text()
    assert "37 %" in summary and "From earlier runs: gpu" in summary


def test_run_all_rejects_unknown_names():
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "nope"])


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_all.README_BEGIN}\nold\n{run_all.README_END}\noutro\n")
    assert run_all.update_readme("| new |\n", readme)
    assert readme.read_text() == f"intro\n{run_all.README_BEGIN}\n| new |\n{run_all.README_END}\noutro\n"
    (tmp_path / "plain.md").write_text("no markers")
    assert not run_all.update_readme("x", tmp_path / "plain.md")


def test_options_pick_reps_and_sizes():
    assert BenchOptions().pick(5, 2) == 5 and BenchOptions(quick=True).pick(5, 2) == 2
    assert BenchOptions(reps=7).pick(5, 2) == 7 and BenchOptions(reps=7).size(100, 10) == 100


# ---------------------------------------------------------------- workspace helpers (real subprocesses, sqlite)
def test_run_tracked_times_dvc_stages_from_their_output_lines(tmp_path):
    script = (
        "import time\n"
        "print(\"Stage 'ingest@emotion' didn't change, skipping\", flush=True)\n"
        "print(\"Running stage 'prepare@emotion':\", flush=True); time.sleep(0.3)\n"
        "print(\"12:00:00.000 | INFO | Task run 'dvc-repro' - Running stage 'compare':\", flush=True)\n"
        "x = bytearray(50 * 2**20); time.sleep(0.6)\n"
    )
    run = workspace.run_tracked(
        [sys.executable, "-c", script], tmp_path, sample_every=0.05, log_file=tmp_path / "log.txt"
    )
    assert run.rc == 0 and run.ran == ["prepare@emotion", "compare"]
    assert run.skipped == ["ingest@emotion"]
    prepare, compare = run.stages
    assert prepare.wall_s > 0.2 and compare.start_s >= prepare.start_s + prepare.wall_s - 1e-6
    assert compare.peak_rss_gib >= 0.04  # the 50 MiB buffer was sampled while compare ran
    assert run.peak_rss_gib >= compare.peak_rss_gib
    assert "Running stage 'compare'" in (tmp_path / "log.txt").read_text()
    assert json.loads(json.dumps(run.to_dict()))["stages"][1]["name"] == "compare"
    assert run.jobs == 1


def test_run_tracked_times_stages_run_at_once_by_their_finished_lines(tmp_path):
    """flows/parallel_repro.py's output: a and b overlap, so a ends at its own line, not at b's start."""
    script = (
        "import time\n"
        'print("INFO | Running up to 2 stages at a time, 1 thread(s) each", flush=True)\n'
        "print(\"Running stage 'a':\", flush=True); time.sleep(0.1)\n"
        "print(\"Running stage 'b':\", flush=True); time.sleep(0.5)\n"
        "print(\"Stage 'a' finished in 0.6 s (peak memory 1.25 GiB)\", flush=True); time.sleep(0.2)\n"
        "print(\"Stage 'b' failed (exit 3) after 0.7 s\", flush=True); time.sleep(0.3)\n"
    )
    run = workspace.run_tracked([sys.executable, "-c", script], tmp_path, sample_every=0.05)
    a, b = run.stages
    assert run.jobs == 2 and run.ran == ["a", "b"]
    a_end, b_end = a.start_s + a.wall_s, b.start_s + b.wall_s
    # the order of the script's lines, not their timing (a loaded machine may deliver them late, together):
    # `dvc repro`'s rule would end a at b's start (a_end == b.start_s) and b at the end of the run
    assert b.start_s < a_end < b_end  # overlapped; a ended at its own 'finished in' line
    assert b_end < run.wall_s  # b ended at its 'failed' line
    assert run.to_dict()["jobs"] == 2
    assert a.own_peak_rss_gib == 1.25 and b.own_peak_rss_gib is None  # the stage's own peak, from its line


def test_clone_repo_copies_worktree_files_hardlinks_outputs_and_breaks_links(tmp_path):
    src = tmp_path / "src" / "repo"
    (src / "data" / "out").mkdir(parents=True)
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=src, check=True)
    (src / ".gitignore").write_text("/data/\n/mlflow/\n")
    (src / "tracked.txt").write_text("v1")
    subprocess.run(git + ["add", "-A"], cwd=src, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=src, check=True)
    (src / "untracked.py").write_text("work in progress")
    (src / "data" / "out" / "big.bin").write_text("payload")
    (src / "dvc.lock").write_text("stages: {}\n")
    (src / "mlflow" / "artifacts" / "1").mkdir(parents=True)
    (src / "mlflow" / "mlflow.db").write_bytes(b"the source's store")

    copy = workspace.clone_repo(src, tmp_path / "work", outputs=True)
    assert not (copy / "mlflow").exists(), "a copy gets a fresh MLflow store, never the source's"
    assert (copy / "tracked.txt").read_text() == "v1" and (copy / "untracked.py").exists()
    linked = copy / "data" / "out" / "big.bin"
    assert linked.stat().st_ino == (src / "data" / "out" / "big.bin").stat().st_ino
    assert (copy / "dvc.lock").stat().st_ino != (src / "dvc.lock").stat().st_ino
    assert (copy / ".git").is_dir()

    workspace.break_links(copy / "data" / "out")
    assert linked.stat().st_ino != (src / "data" / "out" / "big.bin").stat().st_ino
    linked.write_text("changed in the copy")
    assert (src / "data" / "out" / "big.bin").read_text() == "payload"

    bare = workspace.clone_repo(src, tmp_path / "bare")
    assert not (bare / "data").exists()


def test_pipeline_level_benchmarks_say_not_measured_without_a_finished_run(tmp_path, monkeypatch):
    from bench import eval_order, quality, smoke_pipeline, whole_pipeline

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(workspace, "candidate_workspaces", lambda explicit: [tmp_path])
    body = quality.run(BenchOptions(), {})
    assert len(body["rows"]) == len(quality.TARGETS) and {r["status"] for r in body["rows"]} == {common.NOT_MEASURED}
    body = whole_pipeline.run(BenchOptions(), {})
    assert body["rows"][0]["status"] == common.NOT_MEASURED and "FULL=1" in body["rows"][0]["note"]
    body = smoke_pipeline.run(BenchOptions(), {})
    assert body["rows"][0]["status"] == common.NOT_MEASURED and "FULL=1" in body["rows"][0]["note"]
    body = eval_order.run(BenchOptions(), {})
    assert body["rows"][0]["status"] == common.NOT_MEASURED and "make run" in body["rows"][0]["note"]


def test_quality_reads_the_agreed_metrics_files(tmp_path):
    from bench import quality

    for model, task, test in (
        ("bert", "emotion", {"accuracy": 0.93}),
        ("rnn", "emotion", {"test_accuracy": 0.5}),
        ("gpt", "multi30k", {"bleu": 20.0}),
    ):
        folder = tmp_path / "data" / "models" / f"{model}-{task}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"task": task, "model": model, "test": test}))
    scores = quality.collect(tmp_path)
    assert scores["emotion"] == {"bert": 0.93, "rnn": 0.5} and scores["multi30k"] == {"gpt": 20.0}
    assert scores["sst2"] == {}


def test_quality_judges_samsum_against_the_lead_baseline_and_reports_the_new_tasks(tmp_path):
    from bench import quality

    for model, task, test in (
        ("lead", "samsum", {"rouge1": 30.0, "rouge2": 9.0, "rougeL": 25.0}),
        ("gpt", "samsum", {"rouge1": 34.0, "rouge2": 10.0, "rougeL": 28.0}),
        ("minilm", "squad", {"f1": 62.0, "exact_match": 50.0}),
    ):
        folder = tmp_path / "data" / "models" / f"{model}-{task}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"task": task, "model": model, "test": test}))
    (tmp_path / "data" / "generate").mkdir(parents=True)
    (tmp_path / "data" / "generate" / "metrics.json").write_text(json.dumps({"heldout": {"perplexity": 250.0}}))
    scores = quality.collect(tmp_path)
    samsum = quality.task_row("samsum", scores, True, "", tmp_path)
    assert samsum["target"] == ">= 35" and samsum["measured"] == "34 (gpt)"  # the lead is no candidate
    assert samsum["status"] == common.MISSED and "gpt rouge2 10" in samsum["note"]
    squad = quality.task_row("squad", scores, True, "", tmp_path)
    assert squad["status"] == common.MET and "minilm exact_match 50" in squad["note"]
    assert quality.generation_perplexity(tmp_path) == 250.0


def test_gpu_benchmark_is_skipped_not_failed_without_cuda():
    import torch

    from bench import gpu

    if torch.cuda.is_available():
        assert gpu.datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
        return
    body = gpu.run(BenchOptions(), {})
    assert body["rows"][0]["status"] == common.SKIPPED and "no CUDA device" in body["rows"][0]["note"]


def test_the_smoke_switch_runs_the_pipeline_with_the_smoke_profile_and_otherwise_none(monkeypatch):
    from bench import whole_pipeline

    monkeypatch.setenv("HT_PROFILE", "gpu")  # the developer's shell choice never reaches the workspace run
    monkeypatch.setenv(whole_pipeline.SMOKE_ENV, "1")
    assert whole_pipeline.smoke_enabled()
    assert whole_pipeline.run_env(smoke=True)["HT_PROFILE"] == "smoke"
    assert "HT_PROFILE" not in whole_pipeline.run_env(smoke=False)
    monkeypatch.setenv(whole_pipeline.SMOKE_ENV, "0")
    assert not whole_pipeline.smoke_enabled()


def test_a_smoke_workspace_is_used_only_when_no_real_run_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    smoke_ws, real_ws = tmp_path / "smoke", tmp_path / "real"
    common.write_result("whole_pipeline", {**_result("whole_pipeline"), "workspace": str(smoke_ws), "smoke": True})
    assert workspace.candidate_workspaces(None) == [common.REPO_ROOT, smoke_ws]
    common.write_result("whole_pipeline", {**_result("whole_pipeline"), "workspace": str(real_ws)})
    assert workspace.candidate_workspaces(tmp_path / "x") == [tmp_path / "x", real_ws, common.REPO_ROOT]


# ---------------------------------------------------------------- serving
@pytest.fixture
def answering_server():
    """A real HTTP server on 127.0.0.1 answering /invocations like a served classifier; the text "bad" gets a
    wrong-shaped answer."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"]
            answers = ["joy" if t == "bad" else {"label": "joy", "score": 0.9} for t in texts]
            body = json.dumps({"predictions": answers}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(timeout=5)


def test_serving_load_counts_every_request_and_checks_each_answer(answering_server):
    from bench import serving

    send = serving.checked_sender(answering_server, ["joy", "sadness"])
    bodies = [{"inputs": ["fine", "also fine"]}, {"inputs": ["bad"]}, {"inputs": ["fine"]}]
    load = serving.concurrent_load(send, bodies, clients=4)
    assert (load["requests"], load["ok"], len(load["errors"])) == (12, 8, 4)
    assert all("not a classification answer: 'joy'" in e for e in load["errors"])
    assert load["requests_per_s"] > 0 and load["latency"]["n"] == 8
    with pytest.raises(ValueError, match="label"):
        serving.checked_sender(answering_server, ["anger"])({"inputs": ["fine"]})  # not in the label set
    with pytest.raises(ValueError, match="at least one client"):
        serving.concurrent_load(send, bodies, clients=0)

    ms, errors = serving.timed_requests(send, bodies[:1])
    out = {
        "model_uri": "models:/emotion@champion",
        "source": "a test",
        "version_tags": {"model": "rnn"},
        "batch_1": {"ms": ms, "errors": errors, **common.summarize(ms)},
        "batch_32": {"ms": [], "errors": ["ValueError: boom"]},
        "concurrent": load,
    }
    rows = serving.rows_of(out)
    assert [r["status"] for r in rows] == [common.REPORT] * 3 + [common.MISSED]
    assert rows[1]["measured"] == "no successful request" and rows[3]["measured"] == "5 of 14"
    assert "serving" in run_all.BENCHMARKS


def test_whole_pipeline_reports_the_fixed_cost_of_training_stages_from_their_timing(tmp_path):
    from bench import whole_pipeline

    timings = {"rnn-emotion": (20.0, 2.0, 25.0), "bert-sst2": (60.0, 5.0, 70.0), "gpt-emotion": (10.0, 1.0, 12.0)}
    for name, (fit, test, total) in timings.items():
        folder = tmp_path / "data" / "models" / name
        folder.mkdir(parents=True)
        timing = {"load_s": 1.0, "fit_s": fit, "test_s": test, "latency_s": 0.1, "register_s": 2.0, "plots_s": 0.5}
        (folder / "metrics.json").write_text(json.dumps({"test": {}, "timing": {**timing, "total_s": total}}))
    stages = [
        {"name": "validate@emotion", "wall_s": 7.0},
        {"name": "train@rnn-emotion", "wall_s": 30.0},
        {"name": "finetune@bert-sst2", "wall_s": 90.0},  # fixed 25 s: over the max
        {"name": "finetune@gpt-emotion", "wall_s": 15.0},
        {"name": "finetune@minilm-emotion", "wall_s": 40.0},  # no metrics.json: wall only
        {"name": "compare", "wall_s": 12.0},
    ]
    costs = whole_pipeline.stage_costs(stages, tmp_path)
    assert costs["validate@emotion"] == {"wall_s": 7.0} and costs["finetune@minilm-emotion"] == {"wall_s": 40.0}
    assert costs["train@rnn-emotion"]["fixed_s"] == pytest.approx(8.0)
    assert costs["train@rnn-emotion"]["outside_driver_s"] == pytest.approx(5.0)
    assert costs["finetune@bert-sst2"]["fixed_s"] == pytest.approx(25.0)
    rows = whole_pipeline.fixed_cost_rows(costs, {"peak_flops": 150e9, "threads": 2}, common.verdict)
    fixed, compare = rows
    assert (
        fixed["status"] == common.verdict(False)
        and "median 8.0 s, max 25.0 s (finetune@bert-sst2)" in fixed["measured"]
    )
    assert "3 stages" in fixed["note"] and "150.0 GFLOP/s" in fixed["note"] and "register 2.0 s" in fixed["note"]
    assert compare["status"] == common.verdict(True)


def test_the_smoke_run_is_judged_against_eight_minutes_and_names_its_slowest_stages(tmp_path, monkeypatch):
    from bench import smoke_pipeline

    stages = [{"name": "pretrain@gpt", "wall_s": 50.0}, {"name": "compare", "wall_s": 9.0}]
    run = {"rc": 0, "wall_s": 420.0, "peak_rss_gib": 2.5, "stages": stages}
    (met,) = smoke_pipeline.rows_for(run)
    assert met["status"] == common.verdict(True) and "2 stages" in met["note"] and "pretrain@gpt" in met["note"]
    (missed,) = smoke_pipeline.rows_for({**run, "wall_s": 481.0})
    assert missed["status"] == common.verdict(False)
    (failed,) = smoke_pipeline.rows_for({**run, "rc": 1, "log_tail": ["boom"]})
    assert failed["status"] == common.ERROR and "boom" in failed["note"]
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)  # a measured run is re-reported with its date
    common.write_result("smoke_pipeline", common.envelope("smoke_pipeline", {"rows": [met], "run": run}, 0.0, 1.0))
    again = smoke_pipeline.run(BenchOptions(), {})
    assert again["rows"][0]["measured"] == met["measured"] and "run of" in again["rows"][0]["note"]


def test_the_whole_run_budget_scales_up_on_a_slower_machine_only():
    from bench import whole_pipeline

    assert whole_pipeline.wall_target_s(None) == 35 * 60
    assert whole_pipeline.wall_target_s({"peak_flops": 356e9}) == 35 * 60  # faster than 300 GFLOP/s: not cut
    assert whole_pipeline.wall_target_s({"peak_flops": 150e9}) == pytest.approx(70 * 60)
    assert whole_pipeline.wall_target_text({"peak_flops": 150e9}) == "<= 70 min on 2 cores"


def test_inference_shapes_qa_rows_and_texts_like_the_logged_example():
    import pandas as pd

    from bench.inference import shaped

    rows = [{"question": "Who?", "context": "Ann did."}]
    framed = shaped(pd.DataFrame(rows), rows)
    assert isinstance(framed, pd.DataFrame) and list(framed.columns) == ["question", "context"]
    assert shaped(rows, rows) == rows
    assert shaped(pd.DataFrame({"dialogue": ["a: hi"]}), ["b: yo"]).to_dict("list") == {"dialogue": ["b: yo"]}
    assert shaped(["x"], ["y", "z"]) == ["y", "z"]


def test_inference_batch_scaling_row_judges_batch_32_against_batch_1():
    from bench.inference import batch_scaling_row

    met = batch_scaling_row("emotion-bert", 2.0, 9.6)
    assert met["status"] == "met" and met["measured"].startswith("4.8x")
    missed = batch_scaling_row("emotion-minilm", 6.4, 160.0)
    assert missed["status"] != "met" and missed["measured"].startswith("25.0x")
    assert "5.00 ms at batch 32 vs 6.40 ms at batch 1 (78%)" in missed["note"]


def test_transfer_search_grid_parses_typed_values():
    from bench.transfer_search import parse_grid

    assert parse_grid(["learning_rate=0.0005,1e-3", "epochs=4,8"]) == {
        "learning_rate": [0.0005, 0.001],
        "epochs": [4, 8],
    }


def test_read_only_view_links_the_runs_data_and_restores_the_working_directory(tmp_path):
    run = tmp_path / "run"
    for sub in ("prepared", "pretrain", "tokenizers"):
        (run / "data" / sub).mkdir(parents=True)
    (run / "data" / "prepared" / "marker").write_text("x")
    before = Path.cwd()
    with workspace.read_only_view(run) as view:
        assert Path.cwd() == view
        assert (view / "data" / "prepared").is_symlink()
        assert (Path("data") / "prepared" / "marker").read_text() == "x"
        Path("checkpoints").mkdir()  # what the code writes lands in the view, not the run
    assert Path.cwd() == before
    assert not view.exists()
    assert sorted(p.name for p in run.iterdir()) == ["data"]


def test_eval_order_compares_scores_up_to_float_summation_order_and_not_the_loss():
    from bench.eval_order import same_metrics

    a = {"test_loss": 1.8530538082122803, "test_accuracy": 0.1155}
    assert same_metrics(a, {"test_loss": 1.8530535697937012, "test_accuracy": 0.1155})
    assert same_metrics(a, {"test_loss": 1.86, "test_accuracy": 0.1155})  # a token loss: a mean of batch means
    assert not same_metrics(a, {"test_loss": 1.8530538082122803, "test_accuracy": 0.1160})
    assert not same_metrics(a, {"test_loss": 1.8530538082122803})
