"""`pdestream solve` / `show` / `solvers` end to end, with real HDF5 files."""

import h5py
import numpy as np
import pytest
from blowup_solver import Growth

from benchmarks.trajectories import TrajectoryFileError, read_trajectories
from solvers import SimulationBlowUp
from streaming.cli import main
from streaming.solve import solve_to_file


def test_solve_writes_layout_and_show_draws(tmp_path, capsys):
    out = tmp_path / "h.h5"
    rc = main(["solve", "heat2d", "--n", "3", "--steps", "4", "--every", "2", "--set", "n=14", "--batch", "2",
               "--out", str(out), "--quiet"])
    assert rc == 0
    traj = read_trajectories(out)
    assert traj.shape == (3, 3, 1, 16, 16)
    assert traj.solver == "heat2d" and traj.channels == ["T"]
    assert traj.params.shape == (3, 5) and list(traj.sim_id) == [0, 1, 2]
    np.testing.assert_allclose(traj.t, [0, 0.002, 0.004])
    data = traj.fields()
    assert np.isfinite(data).all()
    np.testing.assert_allclose(data[:, 0, 0, 5, 5], traj.params[:, 0], rtol=1e-6)  # frame 0 = T_init
    with h5py.File(out) as f:
        assert f["fields"].compression == "gzip"
    png = tmp_path / "h.png"
    assert main(["show", str(out), "--sim", "1", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["solve", "nosuch", "--n", "1", "--steps", "1"], "unknown solver 'nosuch'"),
        (["solve", "heat2d", "--n", "1", "--steps", "1", "--set", "nx=4"], "unknown config key(s) nx"),
        (["solve", "heat2d", "--n", "1", "--steps", "3", "--every", "2"], "multiple of every"),
        (["solve", "heat2d", "--n", "1", "--steps", "1", "--set", "n"], "expected key=value"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, capsys, argv, needle):
    out = tmp_path / "bad.h5"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_blow_up_names_parameters_and_leaves_no_file(tmp_path, monkeypatch):
    solver = Growth()
    monkeypatch.setattr(solver, "sample_params", lambda key, n, design: np.array([[0.1], [1e5], [0.2]]))
    with pytest.raises(SimulationBlowUp, match=r"simulation 1 blew up .* a=100000"):
        solve_to_file(solver, 3, 20, tmp_path / "b.h5", show_progress=False)
    assert not list(tmp_path.iterdir())


def test_corrupt_trajectory_file_is_named(tmp_path):
    bad = tmp_path / "c.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(TrajectoryFileError, match="unreadable"):
        read_trajectories(bad)
    with pytest.raises(TrajectoryFileError, match="no such file"):
        read_trajectories(tmp_path / "missing.h5")


def test_solvers_listing(capsys):
    assert main(["solvers", "--json"]) == 0
    assert "heat2d" in capsys.readouterr().out
