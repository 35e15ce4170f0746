"""Measurement scripts that run pdestream jobs, solvers and models (throughput, CPU accounting, speed-up,
online vs offline, the FNO protocol, model and solver speed). They sit above the engine: the evaluation
library in :mod:`benchmarks` never imports :mod:`streaming`, these scripts may. Run them as modules,
``python -m benchmarks.studies.throughput``, or by path; each prints a table and writes JSON to
``benchmarks/results/`` when given ``--json``."""
