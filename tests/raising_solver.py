"""Test helper: a heat2d whose rollouts on worker ranks can raise or dawdle, and a ``pdestream`` that knows it.

``python tests/raising_solver.py train ...`` is ``pdestream train ...`` with the solver ``raising_heat2d``
registered, so real ``mpiexec`` ranks can run it. Only processes with ``PMI_RANK > 0`` (MPI worker
ranks) fail, sleep or stall; the trainer's validation rollout runs normally.
"""

import os
import sys
import time
from dataclasses import dataclass

from solvers import register
from solvers.heat2d import Heat2D, Heat2DConfig


@dataclass(frozen=True)
class RaisingHeat2DConfig(Heat2DConfig):
    """fail_times: the first rollouts of each worker process that raise; delay: sleep before each rollout (s);
    stall_file: unless this file exists, worker rank 1's first rollout creates it and sleeps until the process is
    killed (so a resumed run does not stall)."""

    fail_times: int = 0
    delay: float = 0.0
    stall_file: str = ""


class RaisingHeat2D(Heat2D):
    name = "raising_heat2d"
    Config = RaisingHeat2DConfig
    calls = 0  # worker rollouts in this process

    def rollout(self, key, params, n_steps, every=1):
        rank = int(os.environ.get("PMI_RANK", "0"))
        if rank > 0:
            RaisingHeat2D.calls += 1
            time.sleep(self.config.delay)
            stall = self.config.stall_file
            if stall and rank == 1 and RaisingHeat2D.calls == 1 and not os.path.exists(stall):
                open(self.config.stall_file, "w").close()
                time.sleep(3600)
            if RaisingHeat2D.calls <= self.config.fail_times:
                raise RuntimeError(f"injected solver failure {RaisingHeat2D.calls} on rank {rank}")
        return super().rollout(key, params, n_steps, every)


if __name__ == "__main__":
    from streaming.cli import main

    register("raising_heat2d", "raising_solver:RaisingHeat2D")
    sys.exit(main())
