"""Benchmarks of the pipeline against the right baselines (`make bench` = `python -m bench.run_all`).

One module per benchmark (each exposes `run(opts, ctx) -> dict`), shared plumbing in bench.common (timing,
statistics, result files, summary), bench.workspace (repo copies, DVC runs with per-stage timing and memory),
bench.fixtures (inputs from the data mirror) and bench.flops. See bench/README.md.
"""
