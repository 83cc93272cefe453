"""Generation flow: sample continuations of fixed held-out prompts from the pretrained GPT, measure its held-out
perplexity, and register it as the `generation-gpt` pyfunc model.

    python -m flows.generate
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.common import external_task, mark_flow_run, params_or_exit, run_cli

USAGE = "usage: python -m flows.generate"


@flow(name="generate", log_prints=True)
def generate_flow() -> dict:
    from pipeline.pretrain.generate import generate

    params = params_or_exit()
    mark_flow_run()
    # transient MLflow/registry errors are retried; registration is idempotent per run
    return external_task(generate, "generate-gpt", params)(params)


def main(argv: list[str]) -> None:
    params_or_exit()  # fail on bad params before Prefect starts
    if argv:
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv)!r})")
    run_cli(generate_flow)


if __name__ == "__main__":
    main(sys.argv[1:])
