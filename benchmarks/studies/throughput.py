"""Streaming throughput: (a) fields/s into one trainer process with 1, 2 and 4 solver workers, over
Ray and over MPI; (b) streaming efficiency = training steps/s online / steps/s of the same training
from chunks already in memory.

    python -m benchmarks.studies.throughput [--json FILE] [--seconds 20] [--workers 1 2 4] [--steps 300] [--rounds 2]
                                    [--backends ray mpi] [--variants unmatched ratio_1 live_solvers]
                                    [--external-clients 4] [--no-live] [--ingest-rounds 3] [--skip-efficiency]

(a) runs the trainer's ingest path (receive, cut into next-step samples, put into a reservoir of
20,000 samples) with no training, on 64 x 64 float32 heat2d fields (exponential scheme), and counts
new fields received per second once the reservoir is full (steady state): a frame counts once per
simulation; the frames a chunk repeats from the one before it (``window + targets - 1``, so that
every sample is cut from one chunk) count only under ``delivered_fields_per_s_*``. Two rows per worker count:
the ingest ceiling, where each worker solves one task and then resends those frames (the same
messages, no solver cost: what the transport and the trainer's ingest can take; keys
``ingest_fields_per_s_<backend>_<n>w``), and live workers that solve every task (keys
``live_solver_fields_per_s_<backend>_<n>w``: bounded by the solvers' speed on this machine).
(b) runs ``configs/quickstart.toml`` with the same seed and budget from pre-generated chunks in
memory (same trainer, same threads) and online through Ray, with workers that resend solved frames
(solvers that keep up; ``streaming_efficiency``, the quickstart as shipped: rate-matched ingest,
``buffer.ingest_ratio``), the same without rate matching (``streaming_efficiency_unmatched``: the
workers send as fast as they can and the receiver takes it all) and with live solvers
(``streaming_efficiency_live_solvers``: on a 2-core machine the solver processes take cores from
the trainer, so this one measures that contention too); on a GPU machine the steps run on the device.
(c) ``ingest_fields_per_s_external_<n>c``: the same ingest path fed by the ``external`` backend's TCP listener
(in a process of its own, as shipped; ``..._threads``: its reader threads in the trainer's process,
``workers.listener_ring_mb = 0``) from ``n`` small compiled C programs (the C client, ``pdestream
client-config``), each sending 64 x 64 float32 fields as fast as it can (simulations of 50 frames, precomputed
values: no solver cost; each simulation ended with ``pds_end`` and closed once the next one was sent, so the
wait for the job's acknowledgement overlaps the next simulation; the C client carries a closed simulation's
connection over to the next one); ``--external-clients 0`` skips it.
Every row runs alone: Ray is shut down after its rows (its daemons idle beside the next backend's otherwise).
Prints a table and writes a flat JSON dict (keys ``ingest_fields_per_s_ray_4w``,
``ingest_fields_per_s_mpi_4w``, ``ingest_fields_per_s_external_4c``, ``streaming_efficiency``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streaming.config import WorkersSection
from streaming.design import Task
from streaming.worker import SolverWorker

VARIANTS = ("unmatched", "ratio_1", "live_solvers")  # online runs besides the quickstart as shipped (efficiency())
ROOT = Path(__file__).resolve().parents[2]  # the repository (configs/)
FIELD_CASE = {"solver.name": "heat2d", "solver.config": '{ n = 62, scheme = "exponential" }', "solver.steps": "50",
              "solver.n_sims": "0", "workers.sims_per_task": "16", "workers.chunk_frames": "25",
              "workers.max_inflight": "4", "buffer.capacity": "20000", "buffer.watermark": "1000",
              "logging.progress": "false", "logging.tensorboard": "false"}


class ReplayWorker(SolverWorker):
    """A :class:`SolverWorker` that solves its first task and then sends those frames again for every task.

    Measures what the transport and the trainer's ingest can take, free of the solver's cost: the
    messages are the same chunks (shapes, sizes, sim ids, steps) a live heat2d worker sends.
    """

    def simulate(self, task: Task) -> np.ndarray:
        if not hasattr(self, "_frames"):
            self._frames = super().simulate(task)
        n = len(task.sim_ids)
        if n <= len(self._frames):
            return self._frames[:n]
        return np.concatenate([self._frames] * -(-n // len(self._frames)))[:n]


def ingest_rate(backend: str, n_workers: int, seconds: float, replay: bool, nice: int = 0) -> tuple[float, float]:
    """(New, delivered) fields per second received by one process from ``n_workers`` workers (Ray, or MPI via
    mpiexec; see :func:`_count`); ``replay`` workers resend solved frames (transport ceiling), live ones solve
    every task."""
    worker_cls = ReplayWorker if replay else SolverWorker
    if backend == "mpi":
        bin_dir = Path(sys.executable).parent
        out = subprocess.run([str(bin_dir / "mpiexec"), "-n", str(n_workers + 1), sys.executable, __file__,
                              "--_mpi-rank", "--seconds", str(seconds)] + (["--_replay"] if replay else []),
                             capture_output=True, text=True,
                             timeout=seconds * 10 + 300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if out.returncode:
            raise RuntimeError(f"mpiexec exit status {out.returncode}: {(out.stdout + out.stderr)[-2000:]}")
        new, delivered = out.stdout.strip().splitlines()[-1].split()
        return float(new), float(delivered)
    from streaming.assembly import build_solver, sample_spec, worker_args
    from streaming.config import load_config
    from streaming.design import DesignCursor
    from streaming.transport.ray_actors import RaySource

    cfg = load_config(ROOT / "configs/quickstart.toml", {**FIELD_CASE, "workers.count": str(n_workers)})
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    cursor = DesignCursor(solver, 0, "uniform", 0, cfg.workers.sims_per_task)
    source = RaySource(cursor, worker_args(cfg, spec), n_workers, cfg.workers.max_inflight, 2, nice=nice,
                       worker_cls=worker_cls)
    try:
        return _count(source, spec, cfg, seconds)
    finally:
        source.close()
        import ray

        ray.shutdown()  # the next row (another backend's) runs without Ray's daemons beside it


C_SENDER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "pdestream_client.h"
/* argv: ADDRESS CLIENT_INDEX FRAMES. Streams simulations of FRAMES frames of one 64 x 64 field until the job
   stops. Each simulation is ended with pds_end and closed (its acknowledgement awaited) once the next one was
   sent, as a solver that overlaps that wait with its next simulation does. */
static int stop(pds_client *prev, int rc) {
    pds_abort(prev);
    return rc == PDS_E_STOPPED ? 0 : (fprintf(stderr, "%s\n", pds_last_error()), 1);
}
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    long n_frames = atol(argv[3]);
    const char *fields[] = {"T"};
    long grid[] = {64, 64};
    double params[] = {1.0, 0.5, 0.5, 0.5, 0.5};
    static float frames[50][64 * 64];
    for (int k = 0; k < 50; ++k)
        for (int i = 0; i < 64 * 64; ++i) frames[k][i] = (float)(k + 0.001 * i);
    pds_client *prev = NULL;
    for (long sim = atol(argv[2]) * 100000000L;; ++sim) {
        pds_client *c = pds_connect(argv[1], sim, 5, params, 1, fields, 2, grid);
        /* the job stopped between two simulations: nothing listens any more */
        if (!c) return stop(prev, prev && pds_last_code() == PDS_E_CONNECT ? PDS_E_STOPPED : pds_last_code());
        for (long k = 0; k < n_frames; ++k)
            if (pds_send(c, "T", k, frames[k % 50]) < 0) {
                int rc = pds_last_code();
                pds_abort(c);
                return stop(prev, rc);
            }
        if (pds_end(c) < 0) {
            int rc = pds_last_code();
            pds_abort(c);
            return stop(prev, rc);
        }
        if (prev && pds_close(prev) < 0) {
            int rc = pds_last_code();
            pds_abort(c);
            return stop(NULL, rc);
        }
        prev = c;
    }
}
"""


def external_ingest_rate(n_clients: int, seconds: float, frames_per_sim: int = 50,
                         ring_mb: float | None = None, nice: int = 0) -> tuple[float, float]:
    """(New, delivered) fields per second (:func:`_count`) taken by the trainer's ingest path from ``n_clients`` C
    programs through the ``external`` listener (built from the job config, as ``pdestream train`` builds it:
    in a process of its own unless ``ring_mb`` is 0, ``workers.listener_ring_mb``); each program sends
    simulations of ``frames_per_sim`` frames, two at a time (``C_SENDER``: ``pds_end``, then the previous one's
    ``pds_close``), niced by ``nice`` as the launcher nices the programs it starts."""
    import shlex

    from streaming.assembly import build_solver, sample_spec, worker_args
    from streaming.client_config import flags
    from streaming.config import load_config
    from streaming.design import DesignCursor
    from streaming.transport.launcher import from_config

    ring = {} if ring_mb is None else {"workers.listener_ring_mb": str(ring_mb)}
    cfg = load_config(ROOT / "configs/quickstart.toml", {**FIELD_CASE, "workers.backend": "external",
                                                          "workers.listen": "127.0.0.1:0", "workers.nice": str(nice),
                                                          **ring})
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sender.c").write_text(C_SENDER)
        subprocess.run(["cc", "-O2", "sender.c", "-o", "sender", *shlex.split(flags(cflags=True, libs=True))],
                       cwd=tmp, check=True)
        source = from_config(cfg, DesignCursor(solver, 0, "uniform", 0, 1), worker_args(cfg, spec))
        env = {**os.environ, "PDESTREAM_CONNECT_TIMEOUT": "3"}  # the job's end between two simulations: 3 s
        niced = ["nice", "-n", str(nice)] if nice else []  # as the launcher starts solver programs (workers.nice)
        procs = [subprocess.Popen([*niced, str(Path(tmp) / "sender"), source.address, str(i), str(frames_per_sim)],
                                  env=env) for i in range(n_clients)]
        try:
            return _count(source, spec, cfg, seconds)
        finally:
            source.close()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            bad = [p.returncode for p in procs if p.returncode]
            if bad:
                raise RuntimeError(f"C senders exited with {bad}")


def _count(source: object, spec: object, cfg: object, seconds: float) -> tuple[float, float]:
    """Run ``source`` through the trainer's ingest path (cut into samples, put into a reservoir) for ``seconds``
    once the reservoir is full; returns (new frames/s, delivered frames/s). A new frame is one of a simulation
    not received before: the ``overlap`` frames a chunk repeats from the one before count only as delivered."""
    from streaming.buffers import make_buffer
    from streaming.chunk import Chunk
    from streaming.samples import cut

    buf = make_buffer("reservoir", capacity=cfg.buffer.capacity, watermark=1)
    fields = delivered = 0
    t0 = None
    last: dict[int, int] = {}  # simulation -> last frame counted
    for msg in source:
        if not isinstance(msg, Chunk):
            continue
        keys, samples = cut(msg, spec)
        buf.put_many(keys, samples)
        seen, last[msg.sim_id] = last.get(msg.sim_id, -1), int(msg.frame_index[-1])
        if t0 is None:  # start the clock once the buffer is full (compiles, start-up, first-touch page faults)
            if len(buf) == buf.capacity:
                t0 = time.perf_counter()
            continue
        fields += int(np.count_nonzero(msg.frame_index > seen))
        delivered += msg.n_frames
        if time.perf_counter() - t0 >= seconds:
            break
    elapsed = time.perf_counter() - t0
    return fields / elapsed, delivered / elapsed


def _mpi_main(seconds: float, replay: bool) -> None:
    from mpi4py import MPI

    from streaming.assembly import build_solver, sample_spec, worker_args
    from streaming.config import load_config
    from streaming.design import DesignCursor
    from streaming.transport.mpi_ranks import MPISource, finish, run_worker

    comm = MPI.COMM_WORLD
    cfg = load_config(ROOT / "configs/quickstart.toml", FIELD_CASE)
    solver = build_solver(cfg)
    spec = sample_spec(cfg, solver)
    if comm.Get_rank():
        run_worker(comm, (ReplayWorker if replay else SolverWorker)(**worker_args(cfg, spec)))
        finish(comm)
    source = MPISource(DesignCursor(solver, 0, "uniform", 0, cfg.workers.sims_per_task), comm,
                       cfg.workers.max_inflight)
    new, delivered = _count(source, spec, cfg, seconds)
    source.close()
    print(new, delivered, flush=True)
    finish(comm)


def machine_ticks() -> list[int]:
    """CPU time of this machine so far by state, in clock ticks (Linux ``/proc/stat``): user, nice,
    system, idle, iowait, irq, softirq, steal, ... (raises OSError elsewhere)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def _cpu_jiffies() -> tuple[int, int]:
    """(steal, total) CPU time of this machine so far, in clock ticks (zeros where there is no ``/proc/stat``).

    Steal is time the hypervisor ran someone else on our virtual CPUs: a run with much of it was slowed
    by the host, not by the code.
    """
    try:
        ticks = machine_ticks()
    except OSError:
        return 0, 0
    return ticks[7], sum(ticks[:8])


def memory_messages(cfg: object) -> list:
    """The chunks ``cfg``'s solver would stream, solved here in advance: enough next-step samples for
    ``optim.steps`` batches on top of the watermark (each sample drawn once), as the from-memory runs get them."""
    from streaming.assembly import build_solver, sample_spec, worker_args
    from streaming.design import DesignCursor

    solver = build_solver(cfg)
    worker = SolverWorker(**worker_args(cfg, sample_spec(cfg, solver)))
    cursor = DesignCursor(solver, 0, cfg.solver.design, cfg.solver.seed, cfg.workers.sims_per_task)
    need = cfg.optim.steps * cfg.optim.batch_size + cfg.buffer.watermark
    messages: list = []
    while sum(getattr(m, "n_steps", 0) for m in messages) < need:
        messages += list(worker.run(cursor.next_task()))
    return messages


def efficiency(steps: int, rounds: int = 2, variants: tuple[str, ...] = VARIANTS) -> dict[str, float | list[float]]:
    """Steps/s of the quickstart trained online (Ray) and from the same kind of chunks in memory.

    Online runs up to four ways: with workers that resend solved frames (solvers that always keep up:
    the issue's definition, key ``streaming_efficiency``), the same with ``buffer.ingest_ratio``
    unset (``streaming_efficiency_unmatched``), with ``ingest_ratio = 1`` (one sample received per
    sample drawn: the engine's own cost with the least data, ``streaming_efficiency_ratio_1``), and
    with live solvers sharing this machine's cores
    (``streaming_efficiency_live_solvers``). Runs alternate: memory, online A, memory, online B,
    memory, ... (``rounds`` rounds of the headline and the ``variants`` named, of ``VARIANTS``): each online run
    is compared with the mean
    of the two memory runs right before and after it, so a drift in machine speed hits both sides
    alike; an efficiency is the median of its rounds' ratios (each round's ratio is in the JSON,
    and the headline's lowest and highest round). The JSON also holds each run's share of CPU time
    stolen by the hypervisor (``steal_fraction_<run>``), its steps/s per logging interval
    (``steps_per_s_intervals_<run>``) and the largest change between two neighbouring memory runs
    (``memory_neighbour_change_max``): how much the machine drifted within one comparison. A memory
    run before all that warms up the process and is not counted (the first job in a process was the
    slowest memory run in earlier measurements). A run's steps/s is the median over
    its logging intervals after the first quarter (compiles, and Ray actors still compiling their
    solvers).
    """
    from streaming.config import load_config
    from streaming.job import run_job

    out: dict[str, float | list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = {"optim.steps": str(steps), "logging.progress": "false", "logging.tensorboard": "false",
                "logging.run_dir": tmp, "validation.interval": str(10 * steps), "checkpoint.interval": str(10 * steps)}
        cfg = load_config(ROOT / "configs/quickstart.toml", base)
        messages = memory_messages(cfg)
        online = {"online": ({"worker_cls": ReplayWorker}, {}),
                  "online_unmatched": ({"worker_cls": ReplayWorker}, {"buffer.ingest_ratio": "none"}),
                  "online_ratio_1": ({"worker_cls": ReplayWorker}, {"buffer.ingest_ratio": "1"}),
                  "online_live_solvers": ({}, {})}
        online = {k: v for k, v in online.items() if k == "online" or k.removeprefix("online_") in variants}

        def run(name: str, kwargs: dict, overrides: dict) -> float:
            cfg = load_config(ROOT / "configs/quickstart.toml", {**base, "logging.name": name, **overrides})
            jiffies = _cpu_jiffies()
            summary = run_job(cfg, **kwargs)
            (steal, total), (steal0, total0) = _cpu_jiffies(), jiffies
            out[f"steal_fraction_{name}"] = (steal - steal0) / max(total - total0, 1)
            rec = [json.loads(line) for line in open(Path(tmp) / name / "metrics.jsonl")]
            per_interval = [r["batches_per_s"] for r in rec if "batches_per_s" in r]
            # steady state: skip the first quarter (compiles; actors still compiling their solvers)
            rate = float(np.median(per_interval[max(1, len(per_interval) // 4):]))
            out[f"train_steps_per_s_{name}"] = rate
            out[f"steps_per_s_intervals_{name}"] = per_interval
            out[f"samples_received_{name}"] = summary["samples_received"]
            print(f"  {name}: {rate:.2f} steps/s, {summary['samples_received']:,} samples received", flush=True)
            return rate

        run("warm_up", {"messages": messages}, {})  # not counted: the first job in a process runs slower
        memory = [run("memory_0", {"messages": messages}, {})]
        rates: dict[str, list[float]] = {k: [] for k in online}
        for r in range(1, rounds + 1):
            for k, v in online.items():
                rate = run(f"{k}_{r}", *v)
                memory.append(run(f"memory_{len(memory)}", {"messages": messages}, {}))
                rates[k].append(rate / ((memory[-2] + memory[-1]) / 2))
                out[f"{k}_efficiency_round_{r}"] = rates[k][-1]
    out["train_steps_per_s_memory"] = float(np.mean(memory))
    out["memory_spread"] = float((max(memory) - min(memory)) / np.mean(memory))
    out["ingest_ratio"] = cfg.buffer.ingest_ratio or 0.0
    out["memory_neighbour_change_max"] = float(np.max(np.abs(np.diff(memory) / memory[:-1])))
    out["streaming_efficiency"] = float(np.median(rates["online"]))
    out["streaming_efficiency_min_round"] = float(np.min(rates["online"]))
    out["streaming_efficiency_max_round"] = float(np.max(rates["online"]))
    for k in variants:
        out[f"streaming_efficiency_{k}"] = float(np.median(rates[f"online_{k}"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per ingest run")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="*", default=["ray", "mpi"])
    parser.add_argument("--external-clients", type=int, default=4,
                        help="C programs streaming through the external listener (0: skip)")
    parser.add_argument("--nice", type=int, default=WorkersSection().nice,
                        help="priority drop of the Ray workers, of the external listener's process and of the C "
                             "programs (default: the job's workers.nice as shipped)")
    parser.add_argument("--steps", type=int, default=300, help="training steps for the efficiency runs")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the efficiency runs (see efficiency())")
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument("--no-live", action="store_true", help="skip the live-solver ingest rows (ceilings only)")
    parser.add_argument("--ingest-rounds", type=int, default=1,
                        help="repeat the ingest rows this many times, alternating backends (medians reported)")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS),
                        help="efficiency runs besides the quickstart as shipped (none: the headline alone)")
    parser.add_argument("--_mpi-rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_replay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mpi_rank:
        _mpi_main(args.seconds, args._replay)
        return
    import jax

    results: dict[str, float | str | list[float]] = {"device": str(jax.devices()[0]), "cpus": os.cpu_count() or 0,
                                                     "nice": args.nice}
    print("| round | backend | workers | ingest ceiling, new fields/s (replayed chunks) | delivered incl. overlap "
          "repeats | live heat2d solvers, new fields/s | load average |\n|---|---|---|---|---|---|---|")
    rounds: dict[str, list[float]] = {}

    def row(r: int, key: str, label: str, n: int, rate: tuple[float, float], live: float | None = None) -> None:
        rounds.setdefault(f"ingest_fields_per_s_{key}", []).append(rate[0])
        rounds.setdefault(f"delivered_fields_per_s_{key}", []).append(rate[1])
        if live is not None:
            rounds.setdefault(f"live_solver_fields_per_s_{key}", []).append(live)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"| {r} | {label} | {n} | {rate[0]:,.0f} | {rate[1]:,.0f} | "
              f"{'-' if live is None else f'{live:,.0f}'} | {load:.1f} |", flush=True)

    for r in range(1, args.ingest_rounds + 1):
        for backend in args.backends:
            for w in args.workers:
                ceiling = ingest_rate(backend, w, args.seconds, replay=True, nice=args.nice)
                live = None if args.no_live else ingest_rate(backend, w, args.seconds, replay=False, nice=args.nice)[0]
                row(r, f"{backend}_{w}w", backend, w, ceiling, live)
        if args.external_clients:
            n = args.external_clients
            row(r, f"external_{n}c", "external (C clients)", n, external_ingest_rate(n, args.seconds, nice=args.nice))
            row(r, f"external_{n}c_threads", "external, listener threads in the trainer", n,
                external_ingest_rate(n, args.seconds, ring_mb=0, nice=args.nice))
    for key, values in rounds.items():
        results[key] = float(np.median(values))
        if args.ingest_rounds > 1:
            results[f"{key}_rounds"] = values
    if not args.skip_efficiency:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        results.update(efficiency(args.steps, args.rounds, tuple(args.variants)))
        labels = {"unmatched": "solvers that keep up, no rate matching",
                  "ratio_1": "solvers that keep up, ingest_ratio 1", "live_solvers": "live solvers on the same cores"}
        print(f"\n| online run | streaming efficiency (median of {args.rounds} rounds) |\n|---|---|\n"
              f"| solvers that keep up, ingest_ratio {results['ingest_ratio']:g} (quickstart as shipped) | "
              f"{results['streaming_efficiency']:.3f} (rounds {results['streaming_efficiency_min_round']:.3f}-"
              f"{results['streaming_efficiency_max_round']:.3f}) |\n"
              + "".join(f"| {labels[k]} | {results[f'streaming_efficiency_{k}']:.3f} |\n" for k in args.variants)
              + f"memory baseline {results['train_steps_per_s_memory']:.2f} steps/s (spread between its runs "
              f"{100 * results['memory_spread']:.1f} %, largest change between neighbouring memory runs "
              f"{100 * results['memory_neighbour_change_max']:.1f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
