"""Tokenizers flow: train the BERT WordPiece and GPT byte-level BPE tokenizers on the pretraining corpus.

python -m flows.tokenizers
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.common import mark_flow_run, params_or_exit, run_cli

USAGE = "usage: python -m flows.tokenizers   (no arguments; reads data/corpus, writes data/tokenizers)"


@flow(name="tokenizers", log_prints=True)
def tokenizers_flow() -> dict[str, str]:
    from pipeline.pretrain.tokenizers import train_tokenizers

    params = params_or_exit()
    mark_flow_run()
    return {family: str(path) for family, path in train_tokenizers(params).items()}


def main(argv: list[str]) -> None:
    params_or_exit()  # fail on bad params before Prefect starts
    if argv:
        raise SystemExit(f"{USAGE}\n(got {' '.join(argv)!r})")
    run_cli(tokenizers_flow)


if __name__ == "__main__":
    main(sys.argv[1:])
