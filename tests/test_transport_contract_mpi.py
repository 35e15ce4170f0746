"""The shared transport contract (tests/test_transport_contract.py) against the MPI backend: the same case functions,
run by rank 0 of a real ``mpiexec -disable-auto-cleanup -n 3`` launch with ranks 1 and 2 as solver workers
(``tests/mpi_contract_driver.py``); plus MPI's requeue on a lost worker (a worker rank SIGKILLed mid-task).

The six contract cases share one launch (the case that stops the job comes last: its workers leave);
the lost worker gets its own launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
DRIVER = Path(__file__).parent / "mpi_contract_driver.py"
CASES = ["a_finite_design_arrives_whole", "a_raising_simulation_is_requeued_and_counted",
         "close_while_another_thread_iterates", "checkpoint_state_mid_stream_loses_nothing",
         "a_paced_design_holds_the_workers_until_losses_come",
         "failures_past_the_budget_stop_the_job"]  # the last one ends the workers

pytestmark = pytest.mark.skipif(not (BIN / "mpiexec").exists(), reason="needs mpiexec (the mpich wheel)")


def run_driver(workdir: Path, cases: list[str]) -> dict[str, str]:
    """Run ``cases`` under ``mpiexec -disable-auto-cleanup -n 3``; ``{case: "ok" or the failure}``."""
    out = workdir / "results.json"
    cmd = [str(BIN / "mpiexec"), "-disable-auto-cleanup", "-n", "3", sys.executable, str(DRIVER), str(out),
           str(workdir), *cases]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0 and out.exists(), (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def contract_results(tmp_path_factory) -> dict[str, str]:
    return run_driver(tmp_path_factory.mktemp("mpi_contract"), CASES)


@pytest.mark.parametrize("case", CASES)
def test_contract_case_under_mpiexec(case, contract_results):
    assert contract_results.get(case) == "ok", contract_results.get(case)


def test_requeue_on_a_lost_worker_rank(tmp_path):
    """Worker rank 1 is SIGKILLed in its first task: noticed within seconds, its simulations re-run by rank 2,
    every simulation reported once, one failure counted, ``ranks_lost == [1]``."""
    results = run_driver(tmp_path, ["lost_worker"])
    assert results == {"lost_worker": "ok"}, results.get("lost_worker")
