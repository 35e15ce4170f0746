"""``pdestream eval`` and ``pdestream predict``: the surrogate scored on benchmark suites, and used as a fast solver.

Wired into :func:`streaming.cli.build_parser` by ``add_parsers(sub, add)``; the work is done in
:mod:`benchmarks.evaluate`, :mod:`benchmarks.figures` and :mod:`benchmarks.predict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streaming.cli import CliError, parse_set

SUITES = ("trajectories", "pdebench", "cfd")


def add_parsers(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``eval`` and ``predict`` with ``add(name, fn, help, example) -> ArgumentParser`` (``sub`` is unused)."""
    del sub  # `add` already knows the subparsers
    p = add(
        "eval",
        cmd_eval,
        "Score a surrogate one-step and autoregressively beside the identity baseline; print a markdown table.",
        "pdestream eval runs/quickstart --suite trajectories test.h5 --json eval.json --figures eval_figs",
    )
    p.add_argument(
        "checkpoint", metavar="RUN_OR_SURROGATE", help="run directory of `pdestream train`, or its surrogate/"
    )
    p.add_argument(
        "--suite",
        nargs="+",
        required=True,
        metavar=("SUITE", "FILE"),
        help="`trajectories FILE.h5` (written by `pdestream solve`), `pdebench FILE.h5|.hdf5` (a PDEBench file), "
        "or `cfd` (not available yet)",
    )
    p.add_argument(
        "--initial-step",
        type=int,
        default=None,
        help="pdebench: frames given before the rollout starts (PDEBench's default 10)",
    )
    p.add_argument(
        "--split",
        choices=["test", "all"],
        default=None,
        help="pdebench: PDEBench's test simulations (default) or all of them",
    )
    p.add_argument(
        "--cond",
        action="append",
        metavar="NAME=VALUE",
        help="pdebench: value of a surrogate parameter the file's attributes do not give, repeatable",
    )
    p.add_argument(
        "--rollout-steps",
        type=int,
        action="append",
        metavar="H",
        help="trajectories: score the first H rollout steps, repeatable (default 20; the full rollout always)",
    )
    p.add_argument("--max-sims", type=int, help="evaluate only the first N simulations (of the split)")
    p.add_argument("--batch", type=int, default=32, help="simulations per surrogate call (default 32)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--figures", metavar="DIR", help="also write PNG figures (error against step, a few cases)")
    p.add_argument("--examples", type=int, default=3, help="cases drawn with --figures (default 3)")

    p = add(
        "predict",
        cmd_predict,
        "Roll a surrogate out from the initial states of a trajectory file and write the rollouts (a fast solver).",
        "pdestream predict runs/quickstart --input init.h5 --steps 40 --out pred.h5",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory of `pdestream train`, or its surrogate/")
    p.add_argument("--input", required=True, help="HDF5 file in the `pdestream solve` layout (initial states)")
    p.add_argument("--steps", type=int, required=True, help="frames to predict after the initial window")
    p.add_argument("--out", required=True, help="output HDF5 file (same layout)")
    p.add_argument("--batch", type=int, default=32, help="simulations per surrogate call (default 32)")


def _suite(args: argparse.Namespace) -> tuple[str, Path | None]:
    name, *files = args.suite
    if name not in SUITES:
        raise CliError(f"--suite {name!r} is unknown; choose one of {', '.join(SUITES)}")
    if name == "cfd":
        raise CliError(
            "the CFD suite is not available yet; use --suite trajectories FILE.h5 or --suite pdebench FILE.h5"
        )
    if len(files) != 1:
        raise CliError(
            f"--suite {name} takes one FILE, got {len(files)} ({' '.join(files) or 'none'}); e.g. "
            f"`pdestream eval RUN --suite {name} data.h5` (RUN_OR_SURROGATE goes before --suite)"
        )
    pdebench_only = {"--initial-step": args.initial_step, "--split": args.split, "--cond": args.cond}
    if name == "trajectories":
        used = [k for k, v in pdebench_only.items() if v is not None]
        if used:
            raise CliError(f"{', '.join(used)} apply to --suite pdebench only; drop them for --suite trajectories")
    if name == "pdebench" and args.rollout_steps:
        raise CliError("--rollout-steps applies to --suite trajectories; PDEBench rolls out to the last frame")
    return name, Path(files[0])


def cmd_eval(args: argparse.Namespace) -> None:
    from benchmarks.evaluate import (
        evaluate_pdebench,
        evaluate_trajectory_file,
        format_markdown,
        load_surrogate,
        to_json,
    )

    suite, file = _suite(args)
    if args.examples < 0:
        raise CliError(f"--examples {args.examples}: pass 0 or more")
    sur = load_surrogate(args.checkpoint)
    n_examples = args.examples if args.figures else 0
    if suite == "trajectories":
        result = evaluate_trajectory_file(
            sur,
            file,
            rollout_steps=args.rollout_steps,
            max_sims=args.max_sims,
            batch=args.batch,
            n_examples=n_examples,
        )
    else:
        cond = {k: _float(k, v) for k, v in parse_set(args.cond).items()}
        result = evaluate_pdebench(
            sur,
            file,
            10 if args.initial_step is None else args.initial_step,
            split=args.split or "test",
            max_sims=args.max_sims,
            cond=cond,
            batch=args.batch,
            n_examples=n_examples,
        )
    result["surrogate"]["path"] = str(args.checkpoint)
    for w in result["warnings"]:
        print(f"pdestream eval: warning: {w}", file=sys.stderr)
    print(format_markdown(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_json(result), indent=2) + "\n")
        print(f"wrote {out}")
    if args.figures:
        from benchmarks.figures import write_figures

        paths = write_figures(result, args.figures)
        print(f"wrote {len(paths)} figure(s) to {args.figures}")


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise CliError(f"--cond {name}={value!r}: the value must be a number") from None


def cmd_predict(args: argparse.Namespace) -> None:
    from benchmarks.evaluate import load_surrogate
    from benchmarks.predict import predict_file

    sur = load_surrogate(args.checkpoint)
    summary = predict_file(sur, args.input, args.steps, args.out, batch=args.batch)
    shape = ", ".join(map(str, summary["shape"]))
    print(
        f"wrote {summary['path']}: fields ({shape}) from {sur.metadata.solver} surrogate in {summary['seconds']:.2f} s"
    )
    if summary["nonfinite_sims"]:
        bad = summary["nonfinite_sims"]
        print(
            f"pdestream predict: warning: the rollout is not finite for {len(bad)} simulation(s) (ids {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''})",
            file=sys.stderr,
        )
