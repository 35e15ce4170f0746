"""Where the CPU goes during streaming: CPU-seconds per training step, by process and thread, of the
quickstart trained from chunks in memory and online through Ray (workers that resend solved frames).

    python -m benchmarks.studies.cpu_accounting [--json FILE] [--steps 400] [--rounds 2] [--online NAME:KEY=VALUE ...]

The streaming-efficiency ratio (``throughput.py``) compares two rates measured a minute apart on a
machine whose speed drifts by more than the gap. CPU time spent per training step does not drift
with the machine's speed: what the online run spends on top of the memory run, per step, is the
engine's cost, whoever pays it (the trainer's own threads, the Ray actors, raylet and GCS, Ray's
agents). On a machine with few cores that extra CPU comes out of the trainer's compute, so the
efficiency can be no better than about ``1 - extra / (cores busy per step in memory)``. Ray costs
some CPU even with no data moving (its actors, raylet, GCS, log monitor): measured first, with the
job's actors up and idle.

Linux only (``/proc``). The window is the steady state: from the logging record after the first
quarter of the steps to the last record. Rows are CPU-seconds per training step; ``machine busy``
is all CPU time on this machine (``/proc/stat``), ``machine idle`` the cores left unused.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.studies.throughput import ROOT, ReplayWorker, machine_ticks, memory_messages

TICK = os.sysconf("SC_CLK_TCK")
RAY = ("Ray", "raylet", "GCS", "other Ray", "idle Ray")  # the Ray process groups of _group
ENGINE = (*RAY, "trainer thread: Python receiver")  # what streaming costs on top of the train step
XLA = "trainer thread: tf_XLAEigen"


def _ticks(stat_path: str) -> tuple[str, int]:
    """(name, utime + stime in clock ticks) of one process or thread from its ``stat`` file."""
    text = Path(stat_path).read_text()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, int(fields[11]) + int(fields[12])


def _group(pid: int) -> str:
    """Which part of the system a process other than this one is, by its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for key, group in (("ray::_RayWorker", "Ray actors (solver workers)"), ("raylet", "raylet"),
                       ("gcs_server", "GCS"), ("ray::IDLE", "idle Ray workers"), ("agent", "Ray agents"),
                       ("ray", "other Ray processes")):
        if key in cmd:
            return group
    return "rest of the machine"


def snapshot() -> dict[str, float]:
    """CPU-seconds used so far: this process by thread name, every other process by group, the machine."""
    out: dict[str, float] = defaultdict(float)
    me = os.getpid()
    python_threads = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            name, t = _ticks(str(task / "stat"))
        except (OSError, ValueError):
            continue
        if int(task.name) in python_threads:  # Python's own name: MainThread, the receiver, ...
            name = f"Python {python_threads[int(task.name)].split(' (')[0].rstrip('0123456789-_')}"
        elif name == "python":
            name = "unnamed native (XLA runtime; Ray core worker online)"
        out[f"trainer thread: {name.rstrip('0123456789-_')}"] += t / TICK
    out["trainer process (all threads, also finished ones)"] = _ticks("/proc/self/stat")[1] / TICK
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            _, t = _ticks(str(proc / "stat"))
        except (OSError, ValueError):
            continue
        out[_group(int(proc.name))] += t / TICK
    ticks = machine_ticks()
    out["machine busy"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / TICK
    out["machine idle"] = (ticks[3] + ticks[4]) / TICK
    out["machine steal"] = ticks[7] / TICK
    out["wall"] = time.monotonic()
    return dict(out)


class Recorder(threading.Thread):
    """Takes a :func:`snapshot` at each new logging record of ``metrics`` (a metrics.jsonl being written)."""

    def __init__(self, metrics: Path) -> None:
        super().__init__(daemon=True)
        self.metrics, self.stop = metrics, threading.Event()
        self.records: list[tuple[int, dict[str, float]]] = []

    def run(self) -> None:
        seen = 0
        while not self.stop.is_set():
            try:
                lines = self.metrics.read_text().splitlines()
            except OSError:
                lines = []
            steps = []
            for line in lines:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line still being written
                    continue
                if "batches_per_s" in rec:
                    steps.append(rec["step"])
            if len(steps) > seen:
                self.records.append((steps[-1], snapshot()))
                seen = len(steps)
            time.sleep(0.05)


def account(cfg: object, **kwargs: object) -> dict[str, float]:
    """Run ``cfg`` (``run_job(cfg, **kwargs)``) and return CPU-seconds per step over its steady state."""
    from streaming.job import run_job

    rec = Recorder(Path(cfg.logging.run_dir) / cfg.logging.name / "metrics.jsonl")
    rec.start()
    run_job(cfg, **kwargs)
    rec.stop.set()
    rec.join()
    if len(rec.records) < 2:
        raise SystemExit(f"cpu_accounting: {len(rec.records)} logging record(s) in {cfg.logging.name}, no steady-state "
                         f"window; use --steps of at least 4 x logging.interval ({4 * cfg.logging.interval})")
    (s0, a), (s1, b) = rec.records[len(rec.records) // 4], rec.records[-1]
    steps = s1 - s0
    out = {k: (b[k] - a.get(k, 0.0)) / steps for k in b if k != "wall"}
    out["steps per second"] = steps / (b["wall"] - a["wall"])
    return out


def ray_floor(cfg: object, seconds: float) -> dict[str, float]:
    """Cores used by Ray with the job's actors up and idle (no task): what Ray costs before any data moves."""
    from streaming.assembly import build_solver, sample_spec, worker_args
    from streaming.design import DesignCursor
    from streaming.transport import make_source

    solver = build_solver(cfg)
    source = make_source(cfg, DesignCursor(solver, 0, "lhs", 0, 1), worker_args(cfg, sample_spec(cfg, solver)))
    source.worker_pids()  # the actors are up
    time.sleep(5)  # past the start-up work of the Ray processes
    a = snapshot()
    time.sleep(seconds)
    b = snapshot()
    source.close()
    return {k: (b[k] - a.get(k, 0.0)) / (b["wall"] - a["wall"]) for k in b
            if k.startswith(RAY) or k == "machine busy"}


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict:
    """Print the tables of the module docstring for ``runs`` (``{"memory": [...], variant: [...]}``, one
    :func:`account` dict per run, runs of a round in the same list position); return their numbers.

    Besides CPU-seconds per step: per run the *engine's share* (Ray actors, raylet, GCS, other Ray
    processes and the trainer's receiver thread, over all CPU busy during the window) and the *XLA
    cores* (steps/s x XLA's CPU-seconds per step: how many cores the train step's own threads got).
    The host's speed drifts (the same step costs more CPU-seconds at slow moments) but the XLA cores
    of the memory runs hold still, so ``XLA cores online / XLA cores memory`` is a drift-corrected
    efficiency: the share of the trainer's compute the online engine leaves it. It errs low: XLA's
    pool threads spin-wait between ops, and spin less when other processes want the cores.
    """
    mean = {k: {key: float(np.mean([x.get(key, 0.0) for x in v])) for key in set().union(*v)}
            for k, v in runs.items()}
    names = list(runs)
    keys = sorted(set().union(*mean.values()), key=lambda k: (k.startswith("machine"), k))
    print(f"\nCPU-seconds per training step (mean of {len(runs['memory'])} runs each; steady state)\n| | "
          + " | ".join(names) + " | " + " | ".join(f"{k} - memory" for k in names[1:]) + " |\n|"
          + "---|" * (2 * len(names)))
    for k in keys:
        row = [mean[v].get(k, 0.0) for v in names]
        if k == "steps per second" or max(row) >= 5e-4:
            print(f"| {k} | " + " | ".join(f"{x:.4f}" for x in row) + " | "
                  + " | ".join(f"{x - row[0]:+.4f}" for x in row[1:]) + " |")

    def engine(r: dict) -> float:
        return sum(v for k, v in r.items() if k.startswith(ENGINE)) / r["machine busy"]

    def cores(r: dict) -> float:
        return r["steps per second"] * r.get(XLA, 0.0)

    mem = float(np.mean([cores(r) for r in runs["memory"]]))
    out: dict = {"mean": mean, "xla_cores_memory": mem}
    print("\n| run | steps/s per round | engine share of busy CPU | XLA cores per round | XLA cores / memory's |\n"
          "|---|---|---|---|---|")
    for k, v in runs.items():
        share = [engine(r) for r in v]
        ratio = float(np.mean([cores(r) for r in v]) / mem)
        out[f"engine_share_{k}"], out[f"xla_cores_ratio_{k}"] = float(np.mean(share)), ratio
        rates = " / ".join(f"{r['steps per second']:.2f}" for r in v)
        print(f"| {k} | {rates} | {100 * np.mean(share):.1f} % | {' / '.join(f'{cores(r):.3f}' for r in v)} | "
              f"{ratio:.3f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of memory, online, variants (after a warm-up)")
    parser.add_argument("--floor-seconds", type=float, default=30.0, help="window of the idle-Ray measurement")
    parser.add_argument("--online", nargs="*", default=["ratio_1:buffer.ingest_ratio=1"], metavar="NAME:KEY=VALUE ...",
                        help="online variants besides the quickstart as shipped, each with its --set overrides")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: need at least 1")
    bad = [v for v in args.online if ":" not in v or any("=" not in kv for kv in v.split(":", 1)[1].split())]
    if bad:
        parser.error(f"--online {bad[0]!r}: write NAME:KEY=VALUE [KEY=VALUE ...], e.g. ratio_1:buffer.ingest_ratio=1")
    from streaming.config import ConfigError, load_config

    variants = {"online": {}, **{f"online_{name}": dict(kv.split("=", 1) for kv in sets.split())
                                 for name, sets in (v.split(":", 1) for v in args.online)}}
    runs: dict[str, list[dict[str, float]]] = {"memory": [], **{k: [] for k in variants}}
    with tempfile.TemporaryDirectory() as tmp:
        base = {"optim.steps": str(args.steps), "logging.progress": "false", "logging.tensorboard": "false",
                "logging.run_dir": tmp, "validation.interval": str(10 * args.steps),
                "checkpoint.interval": str(10 * args.steps)}

        def cfg(name: str, overrides: dict | None = None) -> object:
            return load_config(ROOT / "configs/quickstart.toml", {**base, "logging.name": name, **(overrides or {})})

        interval = cfg("check").logging.interval
        if args.steps < 4 * interval:
            parser.error(f"--steps {args.steps}: need at least 4 x logging.interval = {4 * interval} for a steady "
                         "state")
        for name, overrides in variants.items():  # a bad key or value stops here, before any run
            try:
                cfg(name, overrides)
            except ConfigError as e:
                parser.error(f"--online {name.removeprefix('online_')}: {e}")
        floor = ray_floor(cfg("floor"), args.floor_seconds)
        print("Ray with the job's actors idle, cores: " + ", ".join(f"{k} {v:.4f}" for k, v in floor.items()))
        messages = memory_messages(cfg("messages"))
        account(cfg("warm_up"), messages=messages)
        for r in range(args.rounds):
            runs["memory"].append(account(cfg(f"memory_{r}"), messages=messages))
            for name, overrides in variants.items():
                runs[name].append(account(cfg(f"{name}_{r}", overrides), worker_cls=ReplayWorker))
            print(f"round {r}, steps/s: " + ", ".join(f"{k} {v[-1]['steps per second']:.2f}" for k, v in runs.items()),
                  flush=True)
    report = summarize(runs)
    if args.json:
        out = {**report, "ray_floor_cores": floor, "runs": runs, "cpus": os.cpu_count()}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
