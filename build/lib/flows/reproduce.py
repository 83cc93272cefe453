"""`make reproduce MODEL=<registered model> VERSION=<n or alias>`: rebuild a registered version from its lineage.

    python -m flows.reproduce emotion-rnn 3            # version 3
    python -m flows.reproduce emotion-bert champion    # the version an alias points at
    python -m flows.reproduce emotion-rnn 3 --keep     # keep the rebuilt worktree (printed) for inspection

Steps (pipeline/tracking/lineage.py reads what the run recorded):
1. a git worktree at the version's commit, in a temp folder, sharing this repo's DVC cache;
2. `dvc pull` from the configured remote (when there is one), so inputs built elsewhere are available;
3. params.effective.yaml written with the run's profile; its hash must equal the recorded `params_hash`;
4. `dvc repro` of the version's stage (upstream stages come back from DVC's run cache when unchanged), with the
   run's torch thread count, against a throwaway MLflow store inside the worktree (nothing is registered here);
5. the rebuilt inputs' DVC hashes checked against the recorded ones, and the new test metric against the recorded
   one: identical on CPU with the same seed and threads, else within --tolerance. Both are printed.
Exit status 0 when the metric matches, 1 when it does not, 2 when the version cannot be reproduced.
Not a Prefect flow: it drives `dvc repro`, whose stages are the flows (they report to the same Prefect server).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from flows.common import params_or_exit, setup_logging
from flows.prefect_server import DEFAULT_PORT, prefect_api
from pipeline.core import paths
from pipeline.core.config import load_params
from pipeline.core.io import METRICS_FILE
from pipeline.core.profiles import PROFILE_ENV
from pipeline.tracking import runs
from pipeline.tracking.lineage import Lineage, LineageError, compare_metric, lineage_of

EXIT_MISMATCH, EXIT_CANNOT = 1, 2
RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' (?:is cached|didn't change)")


def _run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LineageError(
            f"`{' '.join(cmd)}` failed in {cwd} ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return proc


def make_worktree(root: Path, commit: str, into: Path) -> Path:
    repo = into / "repo"
    _run(["git", "worktree", "add", "--detach", str(repo), commit], cwd=root)
    cache = root / ".dvc" / "cache"
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "config", "--local", "cache.dir", str(cache.resolve())], cwd=repo)
    return repo


def child_env(lineage: Lineage) -> dict:
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # a throwaway store: the worktree's own
        env.pop(key, None)
    env[PROFILE_ENV] = lineage.profile or ""
    if not lineage.profile:
        env.pop(PROFILE_ENV, None)
    # the stages' `python -m flows...` must be this interpreter (its venv), as under `make`
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[runs.ALLOW_DIRTY_ENV] = "1"  # the worktree is the commit itself; params.effective.yaml is rewritten
    if lineage.torch_threads:
        env["OMP_NUM_THREADS"] = str(lineage.torch_threads)
    return env


def rebuild(lineage: Lineage, repo: Path, env: dict) -> dict:
    """Run the version's stage in the worktree; returns its metrics.json."""
    dvc = [sys.executable, "-m", "dvc"]
    if _run([*dvc, "remote", "list"], cwd=repo, env=env).stdout.strip():
        pulled = _run([*dvc, "pull", "--allow-missing"], cwd=repo, env=env, check=False)
        print(f"dvc pull: {'ok' if pulled.returncode == 0 else 'incomplete (upstream stages will be rebuilt)'}")
    _run([sys.executable, "-m", "flows.params"], cwd=repo, env=env)
    rebuilt_hash = runs.params_hash(load_params(repo / "params.yaml", profile=lineage.profile))
    if lineage.params_hash and rebuilt_hash != lineage.params_hash:
        raise LineageError(
            f"params at {lineage.commit[:12]} with profile {lineage.profile or 'none'} hash to {rebuilt_hash}, "
            f"the run recorded {lineage.params_hash}: the run's params are not those of its commit"
        )
    print(f"dvc repro {lineage.dvc_stage} in {repo} ...", flush=True)
    out = _run([*dvc, "repro", lineage.dvc_stage], cwd=repo, env=env).stdout
    ran, restored = RAN.findall(out), RESTORED.findall(out)
    print(f"  upstream: {len(restored)} stage(s) restored from the DVC cache, {len(ran)} re-run ({', '.join(ran)})")
    if lineage.dvc_stage not in ran:  # restored from the run cache: train it again, that is the point
        _run([*dvc, "repro", "--single-item", "--force", lineage.dvc_stage], cwd=repo, env=env)
    metrics = repo / paths.model_dir(lineage.model, lineage.task) / METRICS_FILE
    return json.loads(metrics.read_text(encoding="utf-8"))


def input_mismatches(lineage: Lineage, repo: Path) -> list[str]:
    now = runs.dvc_hashes(list(lineage.inputs), repo)
    return [
        f"{path}: recorded {md5}, rebuilt {now.get(path, 'missing')}"
        for path, md5 in lineage.inputs.items()
        if now.get(path) != md5
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="registered model, e.g. emotion-rnn")
    parser.add_argument("version", nargs="?", default="champion", help="version number or alias (default: champion)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="allowed |difference| when threads differ")
    parser.add_argument("--keep", action="store_true", help="keep the worktree (its path is printed)")
    args = parser.parse_args(argv)
    params = params_or_exit()
    setup_logging()
    root = Path.cwd()
    runs.configure(params, root)
    workdir = Path(tempfile.mkdtemp(prefix="reproduce-"))
    repo = None
    try:
        lineage = lineage_of(args.model, args.version)
        lineage.check_reproducible()
        print(
            f"{lineage.registered_model} v{lineage.version}: run {lineage.run_id}, commit {lineage.commit[:12]}, "
            f"stage {lineage.dvc_stage}, profile {lineage.profile or 'none'}, {lineage.metric} {lineage.recorded:.6g}"
        )
        repo = make_worktree(root, lineage.commit, workdir)
        env = child_env(lineage)
        with prefect_api(port=None, reuse_port=DEFAULT_PORT):
            metrics = rebuild(lineage, repo, env)
        mismatched = input_mismatches(lineage, repo)
    except LineageError as err:
        print(f"CANNOT REPRODUCE: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT) from None
    finally:
        if repo is not None and not args.keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(repo)], cwd=root, capture_output=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rebuilt = float(metrics["test"][lineage.metric])
    same_threads = lineage.torch_threads is not None  # the worktree ran with the recorded thread count
    ok, how = compare_metric(lineage.recorded, rebuilt, same_threads, args.tolerance)
    print(f"recorded test {lineage.metric}: {lineage.recorded:.6g}")
    print(f"rebuilt  test {lineage.metric}: {rebuilt:.6g}  -> {how}")
    for line in mismatched:
        print(f"input differs: {line}")
    if args.keep:
        print(f"worktree kept: {workdir / 'repo'} (remove with `git worktree remove --force {workdir / 'repo'}`)")
    raise SystemExit(0 if ok and not mismatched else EXIT_MISMATCH)


if __name__ == "__main__":
    main(sys.argv[1:])
