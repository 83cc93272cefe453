"""Serve the scheduled retrain (`make serve`): a local Prefect server + the `retrain` deployment on a cron.

    python -m flows.serve [--port 4200] [--repo-dir .]            # serve here until Ctrl-C
    python -m flows.serve --interval 600                          # every 10 min instead of the cron
    python -m flows.serve --work-pool NAME [--source DIR_OR_GIT]  # register with a work pool instead, then exit

The schedule is params.orchestration.retrain_cron and the deployment's parameters come from params.yaml
(repo_dir, lock_timeout_seconds); restart after changing them. With PREFECT_API_URL set, the deployment goes
to that server and no local one is started. One retrain at a time per served process (limit=1); a retrain
from elsewhere on the same repository (make run, another server) is kept out by the retrain lock.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flows.common import setup_logging
from flows.prefect_server import API_ENV, DEFAULT_PORT, prefect_api
from pipeline.core.config import Params, ParamsError, load_params

log = logging.getLogger("hello_transformers")

DEPLOYMENT_NAME = "scheduled-retrain"
CODE_ROOT = Path(__file__).resolve().parents[1]  # where flows/ lives: the source a worker runs from
ENTRYPOINT = "flows/retrain.py:retrain_flow"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="local Prefect server port (default 4200)")
    parser.add_argument("--repo-dir", default=".", help="the DVC repository the retrain runs in (default: .)")
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help=f"deployment name (default {DEPLOYMENT_NAME})")
    parser.add_argument(
        "--interval", type=float, default=None, help="run every N seconds instead of params.orchestration.retrain_cron"
    )
    parser.add_argument(
        "--work-pool", default=None, help="register the deployment with this work pool (needs PREFECT_API_URL) and exit"
    )
    parser.add_argument(
        "--source",
        default=str(CODE_ROOT),
        help="where a worker gets the code (a git URL or a folder; default: this checkout)",
    )
    return parser.parse_args(argv)


def deployment_parameters(repo: Path, params: Params) -> dict:
    return {"repo_dir": str(repo), "lock_timeout_seconds": params.orchestration.lock_timeout_seconds}


def schedule_kwargs(args: argparse.Namespace, params: Params) -> dict:
    if args.interval:
        return {"interval": args.interval}
    return {"cron": params.orchestration.retrain_cron}


def serve(args: argparse.Namespace, repo: Path, params: Params) -> None:
    with prefect_api(port=args.port, reuse_port=args.port) as api_url:
        from prefect.types.entrypoint import EntrypointType

        from flows.retrain import retrain_flow

        when = schedule_kwargs(args, params)
        log.info(
            "Serving deployment retrain/%s (%s) for %s on %s; Prefect UI: %s",
            args.name,
            f"every {args.interval:g} s" if args.interval else f"cron {when['cron']!r}",
            repo,
            api_url,
            api_url.removesuffix("/api"),
        )
        retrain_flow.serve(
            name=args.name,
            parameters=deployment_parameters(repo, params),
            description="Reproduce what is out of date (dvc repro), compare, promote, publish the leaderboard.",
            tags=["retrain"],
            limit=1,
            entrypoint_type=EntrypointType.MODULE_PATH,
            **when,
        )


def deploy_to_pool(args: argparse.Namespace, repo: Path, params: Params) -> str:
    """Register the deployment with a work pool (run `prefect worker start --pool NAME` to execute it)."""
    from prefect import flow

    remote_flow = flow.from_source(source=args.source, entrypoint=ENTRYPOINT)
    deployment_id = remote_flow.deploy(
        name=args.name,
        work_pool_name=args.work_pool,
        parameters=deployment_parameters(repo, params),
        description="Reproduce what is out of date (dvc repro), compare, promote, publish the leaderboard.",
        tags=["retrain"],
        concurrency_limit=1,
        build=False,
        push=False,
        print_next_steps=False,
        **schedule_kwargs(args, params),
    )
    log.info(
        "Deployment retrain/%s registered with work pool %r (id %s); start a worker: prefect worker start --pool %s",
        args.name,
        args.work_pool,
        deployment_id,
        args.work_pool,
    )
    return str(deployment_id)


def main(argv: list[str]) -> None:
    import os

    args = parse_args(argv)
    repo = Path(args.repo_dir).expanduser().resolve()
    try:
        params = load_params(repo / "params.yaml")
    except ParamsError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None
    if not (repo / "dvc.yaml").is_file():
        raise SystemExit(f"{repo}/dvc.yaml not found: --repo-dir must be the root of the DVC repository")
    setup_logging()
    if args.work_pool:
        if not os.environ.get(API_ENV):
            raise SystemExit(
                f"--work-pool registers with a running server: set {API_ENV} "
                "(e.g. http://prefect.example:4200/api) first"
            )
        deploy_to_pool(args, repo, params)
        return
    try:
        serve(args, repo, params)
    except KeyboardInterrupt:
        log.info("Stopped serving")


if __name__ == "__main__":
    main(sys.argv[1:])
