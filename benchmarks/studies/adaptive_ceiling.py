"""How far can moving simulations lower the error where a problem is hardest? The bound for any design.

    python -m benchmarks.studies.adaptive_ceiling --json F [--seeds 2] [--first-seed 0] [--ics 64]
        [--test-seed N] [--problems burgers1d,ks1d] [--set KEY=VALUE ...]

Per problem and training seed, two local-backend jobs of the adaptive-sampling study
(:mod:`benchmarks.studies.adaptive_sampling`: same FNO, steps, simulations, buffer, scale ``medium``): the LHS
design over the whole range, and every simulation at one value of the free parameter, the centre of the fifth of
its range where the study's LHS jobs have the largest error (:data:`HARDEST`). Both are scored on ``--ics``
held-out initial conditions at that value. The concentrated job spends the whole budget where a loss-steered
design can only lean, so ``<problem>_ceiling_mean_error_ratio`` (concentrated / LHS, of the mean over seeds of the
mean test error there) bounds from below what any design can reach at that value for this budget, and the
study's tail ratio with it, since the 99th percentile of the study's held-out errors lies in that fifth. A ratio
near 1 says the error there is not limited by the data (steering cannot lower it); a ratio far below the study's
says the design leaves room. ``_ceiling_p99_error_ratio`` is the same for the 99th percentile over the initial
conditions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.studies.adaptive_sampling import (
    SCALES,
    TEST_SEED,
    free_index,
    job_config,
    ratio,
    test_set,
    train_and_score,
)
from streaming.assembly import build_solver

# unit-cube coordinate of the free parameter at the centre of the fifth of the range with the largest mean error of
# the study's LHS jobs (benchmarks/RESULTS.md): small beta (steep fronts), small nu (the most unstable modes), and
# for burgers1d_alpha the strongest nonlinearity
HARDEST = {"burgers1d": 0.1, "ks1d": 0.1, "burgers1d_alpha": 0.9}
DEFAULT_PROBLEMS = ("burgers1d", "ks1d")


def concentrated(problem: str, scale: dict, tmp: str, extra: dict[str, str]) -> tuple[dict[str, str], float]:
    """The overrides that put every simulation at the problem's :data:`HARDEST` value (its own held values kept),
    and that value in the parameter's units."""
    cfg = job_config(problem, "lhs", 0, scale, tmp, "probe", extra)
    space, j = build_solver(cfg).param_space, free_index(cfg)
    u = np.full((1, len(space)), 0.5)
    u[0, j] = HARDEST[problem]
    name, value = space.params[j].name, float(space.from_unit(u)[0, j])
    fixed = {**cfg.solver.fixed, name: value}
    return {**extra, "solver.fixed": "{ " + ", ".join(f"{k} = {v!r}" for k, v in fixed.items()) + " }"}, value


def run_problem(problem: str, seeds: list[int], scale: dict, tmp: str, extra: dict[str, str], ics: int,
                test_seed: int) -> dict[str, Any]:
    at, value = concentrated(problem, scale, tmp, extra)
    frames, params = test_set(job_config(problem, "lhs", 0, scale, tmp, "probe", at), 1, ics, test_seed)
    per_seed = []
    for seed in seeds:
        runs = {}
        for label, overrides in (("lhs", extra), ("concentrated", at)):
            name = f"{problem}-{label}-{seed}"
            summary, wall, errs, _ = train_and_score(job_config(problem, "lhs", seed, scale, tmp, name, overrides),
                                                     frames, params)
            runs[label] = {"wall_s": round(wall, 2), "mean": float(errs.mean()), "p99": float(np.percentile(errs, 99)),
                           "errors": errs.tolist(), "best_step": summary["best_step"]}
            print(f"  {name}: mean {runs[label]['mean']:.4f} p99 {runs[label]['p99']:.4f}", file=sys.stderr, flush=True)
        per_seed.append({"seed": seed, **runs, "mean_ratio": ratio(runs["concentrated"]["mean"], runs["lhs"]["mean"])})
    m = {d: {q: float(np.mean([s[d][q] for s in per_seed])) for q in ("mean", "p99")} for d in ("lhs", "concentrated")}
    return {"value": value, "test_ics": ics, "test_seed": test_seed, "seeds": seeds, "mean_over_seeds": m,
            "ceiling_mean_error_ratio": ratio(m["concentrated"]["mean"], m["lhs"]["mean"]),
            "ceiling_p99_error_ratio": ratio(m["concentrated"]["p99"], m["lhs"]["p99"]), "per_seed": per_seed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Error at a problem's hardest parameter value: LHS over the range vs "
                                 "every simulation there (the lower bound for any design at that value).")
    ap.add_argument("--json", required=True, help="output JSON file")
    ap.add_argument("--seeds", type=int, default=2, help="training seeds per problem")
    ap.add_argument("--first-seed", type=int, default=0, help="the first training seed")
    ap.add_argument("--ics", type=int, default=64, help="held-out initial conditions at the hardest value")
    ap.add_argument("--test-seed", type=int, default=TEST_SEED, help="first initial-condition seed of the held-out set")
    ap.add_argument("--problems", default=",".join(DEFAULT_PROBLEMS), help="comma-separated subset of "
                    + ",".join(HARDEST))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="job config override for both jobs, e.g. --set optim.steps=6000")
    args = ap.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    unknown = sorted(set(problems) - set(HARDEST))
    bad = [kv for kv in args.set if "=" not in kv]
    if unknown or bad or args.seeds < 1 or args.ics < 1:
        why = (f"unknown problem(s) {', '.join(unknown)}; use {', '.join(HARDEST)}" if unknown else
               f"--set {bad[0]!r}: write KEY=VALUE" if bad else "use --seeds >= 1 and --ics >= 1")
        print(f"adaptive_ceiling: {why}", file=sys.stderr)
        return 2
    extra = dict(kv.split("=", 1) for kv in args.set)
    scale, t0 = SCALES["medium"], time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results: dict[str, Any] = {
        "study": "adaptive_ceiling", "scale": "medium", "sizes": scale, "overrides": extra,
        "command": "python -m benchmarks.studies.adaptive_ceiling " + " ".join(argv or sys.argv[1:]),
        "error": "trajectory relative L2", "jax": jax.__version__, "python": platform.python_version(),
        "problems": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for prob in problems:
            print(f"{prob}:", file=sys.stderr, flush=True)
            r = run_problem(prob, seeds, scale, tmp, extra, args.ics, args.test_seed)
            results["problems"][prob] = r
            for q in ("ceiling_mean_error_ratio", "ceiling_p99_error_ratio"):
                results[f"{prob}_{q}"] = r[q]
            print(f"{prob} at {r['value']:.4g}: mean error, LHS {r['mean_over_seeds']['lhs']['mean']:.4f}, every "
                  f"simulation there {r['mean_over_seeds']['concentrated']['mean']:.4f} (ratio "
                  f"{r['ceiling_mean_error_ratio']:.3f}; p99 ratio {r['ceiling_p99_error_ratio']:.3f})")
    results["total_s"] = round(time.perf_counter() - t0, 1)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
