"""The Ray cluster path as users run it: heads and nodes started by ``ray start`` in separate processes,
jobs joined with ``pdestream train --address``, a node lost mid-run, and a stale address file.

Every process runs with its own HOME (holding the token that ``ray get-auth-token --generate`` writes,
as after a first local run) and its own RAY_TMPDIR, without the RAY_* variables of the calling shell,
so the installed Ray's defaults decide the authentication mode. Processes started here are stopped by
their ids (whole process trees) at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from streaming.transport.ray_cluster import RayConnectError, connect_failure, join

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
HEAD_CPUS, NODE_CPUS = 4, 2  # the head can take every actor once the second node is gone

# a small job whose stream ends (finite design) and whose trainer draws every sample once (fifo), held
# back by the buffer (ingest_ratio) so the workers are mid-task for most of the run
SMALL_JOB = {
    "solver.config": "{ n = 14 }", "solver.steps": "10", "workers.chunk_frames": "5",
    "model.hparams": "{ modes = 4, width = 8, depth = 1 }", "optim.batch_size": "8",
    "buffer.watermark": "32", "validation.n_sims": "2", "validation.interval": "100000",
    "checkpoint.interval": "100000", "logging.progress": "false", "logging.tensorboard": "false",
    "logging.interval": "5", "optim.unroll": "{ start = 1, end = 1 }",  # one-step samples: 10 per simulation
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sets(values: dict[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


class Machine:
    """A HOME and a Ray temp folder of their own, and the processes started from them."""

    def __init__(self) -> None:
        # a short path (the system temp folder, not pytest's): Ray's Unix sockets live under RAY_TMPDIR
        # and their paths are limited to 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="pdr"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({"HOME": str(self.home), "RAY_TMPDIR": str(self.root), "JAX_PLATFORMS": "cpu", **extra})
        return env

    def run(self, args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=self.env(**env), cwd=ROOT)

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(**env), cwd=ROOT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            kill_tree(proc.pid)
        shutil.rmtree(self.root, ignore_errors=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (a Ray node: raylet, agents, workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def ray_start(machine: Machine, name: str, *args: str, **env: str) -> subprocess.Popen:
    """``ray start --block`` with ports of its own (several nodes share this machine)."""
    ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    return machine.start(name, [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *ports, *args], **env)


def alive_nodes(machine: Machine, address: str, want: int, timeout: float = 90.0) -> dict[str, float]:
    """Wait until the cluster has ``want`` live nodes; {node id: CPUs}."""
    probe = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
             "print(json.dumps({n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}))")
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        proc = machine.run([sys.executable, "-c", probe % address], timeout=60, RAY_AUTH_MODE="token")
        if proc.returncode == 0:
            last = json.loads(proc.stdout.strip().splitlines()[-1])
            if len(last) == want:
                return last
        time.sleep(1.0)
    raise AssertionError(f"cluster at {address} did not reach {want} nodes (last seen {last})")


@pytest.fixture(scope="module")
def two_nodes():
    """A head (``ray start --head``, token authentication on by Ray's default since a token exists) and a
    second node joined with ``ray start --address``; both on this machine, each with CPUs of its own."""
    m = Machine()
    try:
        token = m.run([str(BIN / "ray"), "get-auth-token", "--generate"], timeout=60)
        assert token.returncode == 0 and (m.home / ".ray" / "auth_token").exists(), token.stderr
        port = _free_port()
        address = f"127.0.0.1:{port}"
        # a dead node is noticed in about 2 s instead of Ray's default 15 s
        ray_start(m, "head", "--head", f"--port={port}", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=false",
                  RAY_health_check_period_ms="500",
                  RAY_health_check_failure_threshold="3")
        alive_nodes(m, address, 1)
        # a joining node does not turn token mode on by itself (Ray 2.60): RAY_AUTH_MODE=token, as docs/cluster.md says
        node = ray_start(m, "node", f"--address={address}", f"--num-cpus={NODE_CPUS}", RAY_AUTH_MODE="token")
        nodes = alive_nodes(m, address, 2)
        yield m, address, node, nodes
    finally:
        m.close()


def test_join_without_the_token_says_what_to_set(two_nodes, tmp_path):
    m, address, _, _ = two_nodes
    elsewhere = tmp_path / "home"  # a user with no token at all
    elsewhere.mkdir()
    proc = m.run([str(BIN / "pdestream"), "train", "configs/quickstart.toml", "--address", address,
                  *_sets({**SMALL_JOB, "logging.run_dir": str(tmp_path)})], timeout=180, HOME=str(elsewhere))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "InvalidAuthToken" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert address in last and "no token" in last and "RAY_AUTH_TOKEN" in last, last


def test_job_on_two_nodes_survives_losing_one(two_nodes, tmp_path):
    """Workers spread over both nodes; the second node is SIGKILLed (raylet, agents, actors) once samples flow;
    its actors come back on the head, their unfinished simulations are re-run, and every sample arrives once."""
    m, address, node, nodes = two_nodes
    head_id = next(n for n, cpus in nodes.items() if cpus == HEAD_CPUS)
    node_id = next(n for n, cpus in nodes.items() if cpus == NODE_CPUS)
    n_sims, frames = 240, 10
    job = {**SMALL_JOB, "solver.n_sims": str(n_sims), "workers.count": "4", "workers.placement": "spread",
           "workers.sims_per_task": "4", "workers.max_inflight": "1", "buffer.kind": "fifo",
           "buffer.capacity": "64", "buffer.ingest_ratio": "1", "optim.steps": "100000",
           "logging.run_dir": str(tmp_path), "logging.name": "two-nodes"}
    # no RAY_AUTH_* here: the driver takes the token from ~/.ray/auth_token as `ray start --head` did
    driver = m.start("driver", [str(BIN / "pdestream"), "train", "configs/quickstart.toml", "--address", address,
                                *_sets(job)])
    metrics = tmp_path / "two-nodes" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.stat().st_size > 0):  # samples flow and training has begun
        assert driver.poll() is None, m.log("driver")[-3000:]
        assert time.monotonic() < deadline, "no metrics after 240 s:\n" + m.log("driver")[-3000:]
        time.sleep(0.1)
    kill_tree(node.pid)
    assert driver.wait(timeout=400) == 0, m.log("driver")[-3000:]

    summary = json.loads((tmp_path / "two-nodes" / "summary.json").read_text())
    workers = summary["workers"]
    assert workers["n_nodes"] == 2 and {n[0] for n in workers["actor_nodes"]} == {head_id, node_id}, workers
    moved = [n for n in workers["actor_nodes"] if n[0] == node_id]
    assert moved and all(n == [node_id, head_id] for n in moved), workers  # restarted on the head
    assert workers["worker_failures"] >= len(moved), workers
    assert summary["sims_done"] == n_sims, summary
    assert summary["samples_received"] == n_sims * frames, summary  # nothing lost, nothing counted twice
    assert summary["buffer"]["n_drawn"] == n_sims * frames  # fifo: each sample trained on exactly once


def test_stale_address_file_does_not_derail_the_local_default(tmp_path):
    """A head killed with SIGKILL leaves Ray's address file; the job still starts a local cluster of its own."""
    m = Machine()
    try:
        port = _free_port()
        head = ray_start(m, "head", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false")
        address_file = m.root / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 90
        while not address_file.exists():
            assert head.poll() is None and time.monotonic() < deadline, m.log("head")[-3000:]
            time.sleep(0.2)
        kill_tree(head.pid)
        assert address_file.read_text().strip().endswith(f":{port}")  # left behind
        proc = m.run([str(BIN / "pdestream"), "train", "configs/quickstart.toml",
                      *_sets({**SMALL_JOB, "optim.steps": "10", "logging.run_dir": str(tmp_path),
                              "logging.name": "local"})], timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "ignoring the address of a Ray cluster that no longer runs" in proc.stderr, proc.stderr[-3000:]
        summary = json.loads((tmp_path / "local" / "summary.json").read_text())
        assert summary["steps"] == 10 and summary["samples_received"] > 0
    finally:
        m.close()


def test_unreachable_address_is_one_line():
    port = _free_port()  # nothing listens there once the probe socket is closed
    with pytest.raises(RayConnectError, match=f"127.0.0.1:{port}: nothing accepts connections.*ray start --head"):
        join(f"127.0.0.1:{port}")


@pytest.mark.parametrize("log, with_token, mode, expect", [
    ("InvalidAuthToken: Authentication token is missing or incorrect", False, None, "this process has no token"),
    ("InvalidAuthToken: Authentication token is missing or incorrect", True, None, "refused this process's token"),
    ("Unauthenticated", False, "disabled", "RAY_AUTH_MODE=disabled turns it off here"),
    ("", False, None, "check that `ray status --address 10.0.0.1:6379` answers"),
])
def test_connect_failure_names_what_to_set(monkeypatch, log, with_token, mode, expect):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    if mode:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    msg = connect_failure("10.0.0.1:6379", ConnectionError("Failed to connect to Ray cluster"), log, with_token)
    assert msg.startswith("cannot join the Ray cluster at 10.0.0.1:6379") and expect in msg and "\n" not in msg
