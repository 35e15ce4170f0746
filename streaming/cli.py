"""The ``pdestream`` command line: a thin face that parses arguments and calls into the parts.

A user's mistake (any ``ValueError`` subclass raised by one of our packages) is printed as one line
and exits with status 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from streaming.cli_args import CliError, parse_set
from streaming.transport import backend_names

if TYPE_CHECKING:
    from streaming.config import JobConfig

OUR_PACKAGES = ("solvers", "surrogates", "streaming", "benchmarks")


def cmd_solvers(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from solvers import get_solver, list_solvers

    table = Table(title="pdestream solvers")
    for col in ("solver", "channels", "grid", "dt", "parameters (range, unit)"):
        table.add_column(col)
    described = {}
    for name in list_solvers():
        s = get_solver(name)
        described[name] = s.describe()
        params = "\n".join(
            f"{p.name} in [{p.low:g}, {p.high:g}] {p.unit}{' (log)' if p.log else ''}" for p in s.param_space.params
        )
        table.add_row(name, ", ".join(s.channels), "x".join(map(str, s.grid)), f"{s.dt:g}", params)
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        Console().print(table)


def cmd_solve(args: argparse.Namespace) -> None:
    from solvers import get_solver
    from streaming.solve import solve_to_file

    solver = get_solver(args.solver, **parse_set(args.set))
    out = Path(args.out)
    target = out if args.layout == "pdestream" else out.with_name(out.name + ".trajectories")
    path = solve_to_file(solver, args.n, args.steps, target, every=args.every, seed=args.seed,
                         design=args.design, batch=args.batch, show_progress=not args.quiet)
    if args.layout == "pdebench":
        from benchmarks.pdebench import trajectories_to_pdebench

        try:
            path = trajectories_to_pdebench(target, out)
        finally:
            target.unlink(missing_ok=True)
    n_out = args.steps // args.every + 1
    print(f"wrote {path} ({args.layout} layout): {args.n} simulations x {n_out} frames of "
          f"{', '.join(solver.channels)} on {'x'.join(map(str, solver.grid))}")


def cmd_show(args: argparse.Namespace) -> None:
    from benchmarks.plots import plot_trajectory
    from benchmarks.trajectories import read_trajectories

    traj = read_trajectories(args.file)
    out = plot_trajectory(traj, sim=args.sim, n_frames=args.frames, out=args.out)
    print(f"wrote {out}")


def _job_config(args: argparse.Namespace) -> JobConfig:
    from streaming.config import load_config

    overrides = parse_set(args.set)
    if getattr(args, "backend", None):
        overrides["workers.backend"] = args.backend
    if getattr(args, "address", None):
        overrides["workers.address"] = args.address
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from streaming.distributed import resolve_spec

    if args.resume:
        if args.config or args.set:
            raise CliError("--resume RUN_DIR continues a run with its saved config; drop CONFIG and --set")
        cfg = None
    else:
        if not args.config:
            raise CliError("give a config file (e.g. configs/quickstart.toml) or --resume RUN_DIR")
        cfg = _job_config(args)
    job = cfg if cfg is not None else _saved_config(args.resume)
    if job is not None and job.workers.backend == "mpi":
        _train_mpi(job, args)
    spec = resolve_spec(args.coordinator, args.num_processes, args.process_id)
    if spec is not None:  # one of N trainer processes: jax.distributed starts before anything touches JAX
        from streaming.distributed import check_config

        if cfg is not None:
            check_config(cfg, spec, offline=args.offline is not None)
        _train_parallel(cfg, spec, resume=args.resume, offline=args.offline)
        return
    from streaming.job import run_job
    from streaming.report import print_summary

    print_summary(run_job(cfg, resume=args.resume, offline=args.offline))


def _saved_config(run_dir: str) -> JobConfig | None:
    """The config the run in ``run_dir`` was trained with; None where there is none (run_job names the problem)."""
    from streaming.config import load_config

    path = Path(run_dir) / "config.resolved.toml"
    return load_config(path) if path.is_file() else None


def _train_parallel(cfg: Any, spec: Any, comm: Any = None, **kw: Any) -> None:
    """Run this process's share of a job of ``spec.num_processes`` trainer processes (``jax.distributed``)."""
    from streaming.distributed import Parallel, initialize

    initialize(spec)
    from streaming.job import run_job
    from streaming.report import print_summary

    summary = run_job(cfg, comm=comm, parallel=Parallel(spec), **kw)
    if spec.process_id == 0:
        print_summary(summary)
    else:  # the others say one line; process 0 writes the run's files and its summary
        print(f"pdestream train: trainer process {spec.process_id}/{spec.num_processes} done: {summary['steps']} "
              f"steps, {summary['sims_done']} simulations, {summary['samples_received']} samples; see "
              f"{summary['run_dir']}/processes/process-{spec.process_id}.json", file=sys.stderr)


def _train_mpi(cfg: Any, args: argparse.Namespace) -> NoReturn:
    """``--backend mpi``: the first ranks train (one, or ``--num-processes`` joined by jax.distributed), the
    other ranks solve; every rank leaves through :func:`~streaming.transport.mpi_ranks.finish`. ``cfg``: the job's
    config (with ``--resume``, the run's saved one)."""
    import os

    from streaming.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, DistSpec, _int, check_config
    from streaming.transport.mpi_ranks import agree_layout, finish, mpi_world, run_worker_for, split_roles

    if args.offline or args.process_id is not None:
        raise CliError("--backend mpi: --offline and --process-id do not apply (the MPI rank is the process id); "
                       "drop them")
    n = args.num_processes or os.environ.get(ENV_NUM_PROCESSES)  # a bad variable: one-line error, like the flag
    n = None if n is None else _int("--num-processes" if args.num_processes else ENV_NUM_PROCESSES, n)
    comm = mpi_world()
    layout = agree_layout(comm, n, args.coordinator or os.environ.get(ENV_COORDINATOR))
    split_roles(comm, layout)
    rank = comm.Get_rank()
    if not layout.is_trainer(rank):
        run_worker_for(cfg, comm, layout)
    elif layout.trainers == 1:
        from streaming.job import run_job
        from streaming.report import print_summary

        print_summary(run_job(None if args.resume else cfg, resume=args.resume, comm=comm, layout=layout))
    else:
        import jax

        spec = DistSpec(layout.coordinator, layout.trainers, rank)
        check_config(cfg, spec)
        _train_parallel(None if args.resume else cfg, spec, comm=comm, layout=layout, resume=args.resume)
        jax.distributed.shutdown()  # with every trainer, before the ranks meet in finish()
    finish(comm)


def cmd_generate(args: argparse.Namespace) -> None:
    from streaming.offline import generate

    cfg = _job_config(args)
    print(f"wrote {generate(cfg, args.out, show_progress=not args.quiet)}")


def cmd_worker(args: argparse.Namespace) -> None:
    from streaming.transport.mpi_ranks import agree_layout, finish, mpi_world, run_worker_for, split_roles

    cfg = _job_config(args)
    comm = mpi_world()
    layout = agree_layout(comm)
    split_roles(comm, layout)
    if layout.is_trainer(comm.Get_rank()):
        raise CliError(f"`pdestream worker` runs on MPI ranks >= {layout.trainers} (the trainers' count); the first "
                       "ranks must be `pdestream train ... --backend mpi`")
    run_worker_for(cfg, comm, layout)
    finish(comm)


def cmd_client_config(args: argparse.Namespace) -> None:
    from streaming.client_config import flags

    print(flags(cflags=args.cflags, libs=args.libs, fflags=args.fflags))


def cmd_validate(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from benchmarks import validation
    from streaming.progress import progress_bar

    steady = args.problem == "cavity" or args.case == "2D-1"
    if args.tol is not None and (not steady or args.tol <= 0):
        raise CliError(f"--tol {args.tol}: a steady-state tolerance > 0 (m/s^2) for cavity or cylinder --case "
                       "2D-1; 2D-2 runs a fixed time window")
    if args.dtype == "float64":  # the solvers refuse float64 without 64-bit JAX; asking for it here is the switch
        import jax

        jax.config.update("jax_enable_x64", True)
    if steady:
        bar_args = ("to steady state (s)", None, "residual {task.fields[value]}")
    else:
        bar_args = ("simulated time (s)", validation.SHEDDING_SPINUP_S + validation.SHEDDING_WINDOW_S,
                    "lift coefficient {task.fields[value]}")
    with progress_bar(bar_args[0], bar_args[1], extra=bar_args[2], fields={"value": "-"}) as bar:
        clock = [0.0]

        def monitor(t: float, value: float) -> None:
            bar.advance(t - clock[0], value=f"{value:.2e} m/s^2" if steady else f"{value:.4f}")
            clock[0] = t

        if args.problem == "cavity":
            out = validation.validate_cavity(args.re, args.grid or 64, dtype=args.dtype, monitor=monitor, tol=args.tol)
        else:
            out = validation.validate_cylinder(args.case, args.grid or 41, dtype=args.dtype, boundary=args.boundary,
                                               monitor=monitor, tol=args.tol)
    rows = out.get("rows", [])
    table = Table(title=f"validate {args.problem}")
    for col in rows[0] if rows else []:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:.5g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    summary = {k: v for k, v in out.items() if k != "rows" and not isinstance(v, list | dict)}
    print(json.dumps(summary, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdestream", description="Online training of neural PDE surrogates.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable, help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    p = add("solvers", cmd_solvers, "List the solvers with their channels, grids and parameter spaces.",
            "pdestream solvers")
    p.add_argument("--json", action="store_true", help="print a JSON description instead of a table")

    p = add("solve", cmd_solve, "Run a solver over a parameter design and write trajectories to HDF5.",
            "pdestream solve ns2d --n 4 --steps 10 --out x.h5")
    p.add_argument("solver", help="solver name (see `pdestream solvers`)")
    p.add_argument("--n", type=int, required=True, help="number of simulations")
    p.add_argument("--steps", type=int, required=True, help="solver steps per simulation")
    p.add_argument("--every", type=int, default=1, help="write every K-th step (default 1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="solver config override, repeatable")
    p.add_argument("--design", default="uniform", choices=["uniform", "lhs", "sobol"], help="parameter design")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16, help="simulations run together (vmap)")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--layout", choices=["pdestream", "pdebench"], default="pdestream",
                   help="file layout: ours (default) or PDEBench's (single-file `tensor`, grouped for several fields)")

    p = add("show", cmd_show, "Draw snapshots of one simulation of a trajectory file to a PNG.",
            "pdestream show x.h5 --sim 0 --out x.png")
    p.add_argument("file", help="HDF5 file written by `pdestream solve`")
    p.add_argument("--sim", type=int, default=0, help="simulation index")
    p.add_argument("--frames", type=int, default=5, help="number of snapshots")
    p.add_argument("--out", required=True, help="output PNG")

    p = add("validate", cmd_validate, "Run a CFD solver against published reference data (Ghia 1982, Schafer-Turek).",
            "pdestream validate cavity --re 100 --grid 64 --json cavity.json")
    p.add_argument("problem", choices=["cavity", "cylinder"])
    p.add_argument("--re", type=float, default=100.0, help="cavity Reynolds number (Ghia tables: 100)")
    p.add_argument("--case", default="2D-1", help="cylinder case: 2D-1 (steady) or 2D-2 (periodic)")
    p.add_argument("--grid", type=int, help="cells per side (cavity, default 64) / across the channel (cylinder, 41)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--boundary", default="interpolated", choices=["cut", "interpolated", "staircase"],
                   help="cylinder wall treatment: cut-face projection, second-order no-slip, or staircase mask")
    p.add_argument("--tol", type=float, help="steady-state tolerance on max|du/dt| (m/s^2; cavity: lid units) "
                   "for cavity and cylinder 2D-1; default: cavity 3e-5 (float32) / 1e-6 (float64), cylinder 1e-4")
    p.add_argument("--json", help="write the profiles/coefficients and errors here")

    p = add("train", cmd_train, "Train a surrogate online: solver workers stream into the trainer.",
            "pdestream train configs/quickstart.toml --set optim.steps=2000")
    p.add_argument("config", nargs="?", help="job config (TOML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. optim.lr=1e-4 (KEY=none: back to its default)")
    p.add_argument("--backend", choices=backend_names(), help="override workers.backend")
    p.add_argument("--address", help="join an existing Ray cluster (default: start one on this machine)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--offline", metavar="DATA.h5", help="train from a file written by `pdestream generate` instead")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="several trainer processes (data parallel over nodes): process 0's address for "
                        "jax.distributed (env PDESTREAM_COORDINATOR)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="number of trainer processes, solver workers not counted (env PDESTREAM_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, metavar="K",
                   help="this trainer process's index in [0, N) (env PDESTREAM_PROCESS_ID)")

    p = add("generate", cmd_generate, "Write a job's simulations to HDF5 (the offline baseline's dataset).",
            "pdestream generate configs/quickstart.toml --set solver.n_sims=200 --out data.h5")
    p.add_argument("config", help="job config (TOML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("worker", cmd_worker, "Run solver workers on MPI ranks > 0 for a `train --backend mpi` job (MPMD).",
            "mpiexec -n 1 pdestream train cfg.toml --backend mpi : -n 4 pdestream worker cfg.toml")
    p.add_argument("config", help="the job config (TOML), the same as the trainer's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")

    p = add("client-config", cmd_client_config, "Print compiler flags for the C/Fortran clients of external "
            "solvers (builds them on first use).", "cc solver.c $(pdestream client-config --cflags --libs)")
    p.add_argument("--cflags", action="store_true", help="include path of pdestream_client.h")
    p.add_argument("--fflags", action="store_true", help="include path of the Fortran module pdestream_client")
    p.add_argument("--libs", action="store_true", help="link flags (with --fflags: the Fortran library too)")

    from streaming.cli_eval import add_parsers as add_eval_parsers

    add_eval_parsers(sub, add)
    return parser


def is_user_error(exc: BaseException) -> bool:
    """A ValueError (a user's mistake) or a JobFailed raised by one of our packages gets a one-line message."""
    from streaming.errors import JobFailed

    ours = type(exc).__module__.split(".")[0] in OUR_PACKAGES
    return ours and isinstance(exc, ValueError | JobFailed | FloatingPointError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("pdestream: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if is_user_error(e):
            print(f"pdestream {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
