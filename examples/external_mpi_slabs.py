"""An MPI-parallel external solver: each rank owns a slab of rows and streams it with its offset.

The explicit heat solver of ``external_heat_solver.py``, domain-decomposed by rows: rank ``r`` owns
rows ``[row0, row1)`` of the ``(n + 2) x (n + 2)`` grid, exchanges one halo row with each neighbour
per sub-step (uppercase mpi4py ``Sendrecv`` on numpy buffers) and sends only its own rows::

    connect(address, sim_id=s, params=p, fields=["T"], grid=(n + 2, n + 2), offset=(row0, 0),
            ranks=comm.Get_size())

The training job assembles the slabs of all ranks into full-grid frames; the result is the same,
value for value, as the serial solver's.

    mpiexec -n 4 python examples/external_mpi_slabs.py --address 127.0.0.1:47011 --sims 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_heat_solver import draw_params, initial_field, interior_update, substeps  # noqa: E402

from streaming.client import Client, JobStopped, connect  # noqa: E402


def row_range(n_rows: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[row0, row1)`` owned by ``rank``: contiguous blocks, sizes differing by at most one."""
    base, extra = divmod(n_rows, size)
    row0 = rank * base + min(rank, extra)
    return row0, row0 + base + (rank < extra)


def run_simulation(comm: MPI.Comm, params: np.ndarray, n: int, dt: float, kappa: float, frames: int,
                   client: Client) -> None:
    """Step this rank's slab (with halo rows) and send its owned rows every frame.

    Raises JobStopped on every rank at the same frame once the training job stops taking data.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    n_rows = n + 2
    row0, row1 = row_range(n_rows, rank, size)
    lo, hi = max(row0 - 1, 0), min(row1 + 1, n_rows)  # the block with its halo rows
    u = np.ascontiguousarray(initial_field(n, params)[lo:hi])
    own = slice(row0 - lo, row1 - lo)
    up = rank - 1 if rank > 0 else MPI.PROC_NULL
    down = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    k, r = substeps(n, dt, kappa)
    for frame in range(frames):
        stopped = 0
        try:
            client.send("T", u[own], frame)
        except JobStopped:
            stopped = 1
        if comm.allreduce(stopped, op=MPI.MAX):  # all ranks leave together, none is left in a halo exchange
            raise JobStopped("the training job stopped taking data")
        if frame + 1 == frames:
            break
        for _ in range(k):
            u[1:-1, 1:-1] = interior_update(u, r)  # the block's interior = owned rows that are not walls
            if row0 > 0:  # halo exchange: my first owned row up, the row above me down
                comm.Sendrecv(u[own.start], dest=up, recvbuf=u[0], source=up)
            if row1 < n_rows:
                comm.Sendrecv(u[own.stop - 1], dest=down, recvbuf=u[-1], source=down)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", default=None, help="the job's address HOST:PORT (default $PDESTREAM_ADDRESS)")
    ap.add_argument("--sims", type=int, default=4, help="simulations to run")
    ap.add_argument("--first-sim", type=int, default=0, help="sim_id of the first simulation")
    ap.add_argument("--n", type=int, default=30, help="interior nodes per axis (grid n + 2)")
    ap.add_argument("--dt", type=float, default=0.002, help="seconds between frames")
    ap.add_argument("--kappa", type=float, default=1.0, help="diffusivity (m^2/s)")
    ap.add_argument("--frames", type=int, default=41, help="frames per simulation")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size > args.n + 2:
        raise SystemExit(f"{size} ranks for {args.n + 2} rows: use at most n + 2 ranks")
    row0, _ = row_range(args.n + 2, rank, size)
    rng = np.random.default_rng(args.seed)
    for sim_id in range(args.first_sim, args.first_sim + args.sims):
        params = np.empty(5)
        if rank == 0:
            params[:] = draw_params(rng)
        comm.Bcast(params, root=0)  # every rank sends the same parameter vector
        stopped = 0
        try:
            with connect(args.address, sim_id=sim_id, params=params, fields=["T"], grid=(args.n + 2, args.n + 2),
                         offset=(row0, 0), ranks=size, solver="numpy-explicit-heat-mpi") as client:
                run_simulation(comm, params, args.n, args.dt, args.kappa, args.frames, client)
        except JobStopped:  # the job reached its training-step budget (while sending, or before it took everything)
            stopped = 1
        if comm.allreduce(stopped, op=MPI.MAX):  # every rank stops, none waits in the next Bcast
            if rank == 0:
                print("the training job stopped taking data; stopping", flush=True)
            return
        if rank == 0:
            print(f"simulation {sim_id} sent by {size} ranks", flush=True)


if __name__ == "__main__":
    main()
