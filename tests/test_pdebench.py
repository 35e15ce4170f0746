"""PDEBench reader and writers: both layouts round-trip, selections, and one-line errors for bad files.

Fields are stored as float32 and compared exactly after a float32 round trip (no arithmetic happens on the way).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from benchmarks.pdebench import (
    PDEBenchFileError,
    open_pdebench,
    read_pdebench,
    write_pdebench_grouped,
    write_pdebench_single,
)

RNG = np.random.default_rng(0)


def _rand(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(PDEBenchFileError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)
    return msg


# ------------------------------------------------------------------------------------------------------------------
# Single-file layout
# ------------------------------------------------------------------------------------------------------------------


def test_tensor_1d_roundtrip_with_pdebench_time_axis(tmp_path):
    n, nt, nx = 3, 5, 8
    u = _rand(n, nt, nx)
    x = (np.arange(nx) + 0.5) / nx  # cell centres, as PDEBench
    t = np.arange(nt + 1) * 0.01  # PDEBench 1D files carry Nt + 1 times
    path = write_pdebench_single(tmp_path / "1D_Advection_Sols_beta0.1.hdf5", u, x, t, attrs={"beta": 0.1})

    with h5py.File(path, "r") as f:  # PDEBench's exact dataset names
        assert set(f.keys()) == {"tensor", "x-coordinate", "t-coordinate"}
        assert f["tensor"].dtype == np.float32 and f["tensor"].shape == (n, nt, nx)

    pf = open_pdebench(path)
    assert pf.layout == "tensor"
    assert pf.shape == (n, nt, 1, nx) and pf.spatial_dims == 1
    assert pf.channels == ("u",)
    assert pf.attrs["beta"] == pytest.approx(0.1)
    np.testing.assert_array_equal(pf.x, x)
    np.testing.assert_array_equal(pf.t, t[:nt])  # frame i is at t-coordinate[i]
    assert pf.y is None and pf.z is None and set(pf.coords) == {"x"}

    data = pf.read()
    assert data.fields.dtype == np.float32 and data.fields.shape == (n, nt, 1, nx)
    np.testing.assert_array_equal(data.fields[:, :, 0], u)
    np.testing.assert_array_equal(data.sims, np.arange(n))


def test_tensor_2d_roundtrip(tmp_path):
    n, nt, nx, ny = 2, 4, 6, 5
    u = _rand(n, nt, nx, ny)
    x, y, t = np.linspace(0, 1, nx), np.linspace(0, 2, ny), np.linspace(0, 1, nt)
    path = write_pdebench_single(tmp_path / "r.hdf5", u, x, t, y=y)
    data = read_pdebench(path)
    assert data.layout == "tensor" and data.fields.shape == (n, nt, 1, nx, ny)
    np.testing.assert_array_equal(data.fields[:, :, 0], u)
    np.testing.assert_array_equal(data.coords["y"], y)
    np.testing.assert_array_equal(data.t, t)


def test_darcy_tensor_without_time_and_nu_extra(tmp_path):
    n, nx, ny = 3, 4, 4
    u, nu = _rand(n, 1, nx, ny), _rand(n, nx, ny)
    path = write_pdebench_single(tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5", u, np.arange(nx), None,
                                 y=np.arange(ny), extras={"nu": nu}, attrs={"beta": 1.0})
    pf = open_pdebench(path)
    assert pf.t is None and pf.shape == (n, 1, 1, nx, ny)
    assert pf.extras == ("nu",)
    np.testing.assert_array_equal(pf.read_extra("nu", sims=[2, 0]), nu[[2, 0]])
    _one_line_error("no extra dataset 'kappa'", pf.read_extra, "kappa")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_cfd_channels_in_pdebench_order(tmp_path, dims):
    n, nt, grid = 2, 3, (6, 5, 4)[:dims]
    names = ("density", "pressure", "Vx", "Vy", "Vz")[: 2 + dims]
    fields = {k: np.full((n, nt, *grid), 10.0 * i, np.float32) + _rand(n, nt, *grid) for i, k in enumerate(names)}
    coords = dict(zip(("y", "z"), [np.arange(g, dtype=float) for g in grid[1:]], strict=False))
    path = write_pdebench_single(tmp_path / f"{dims}D_CFD.hdf5", fields, np.arange(grid[0]), np.arange(nt + 1),
                                 **coords, attrs={"eta": 0.01, "zeta": 0.01, "M": 0.1})
    pf = open_pdebench(path)
    assert pf.layout == "cfd" and pf.channels == names
    assert pf.shape == (n, nt, len(names), *grid)
    data = pf.read()
    for c, k in enumerate(names):
        np.testing.assert_array_equal(data.fields[:, :, c], fields[k])
    assert list(data.coords) == ["x", "y", "z"][:dims]


def test_selectors_match_numpy_indexing(tmp_path):
    n, nt, nx, ny = 5, 6, 4, 3
    names = ("density", "pressure", "Vx", "Vy")
    fields = {k: _rand(n, nt, nx, ny) for k in names}
    t = np.linspace(0, 1, nt)
    path = write_pdebench_single(tmp_path / "cfd.hdf5", fields, np.arange(nx), t, y=np.arange(ny))
    full = np.stack([fields[k] for k in names], axis=2)
    pf = open_pdebench(path)
    for sims, frames in [([3, 0, 3], slice(1, None, 2)), (1, [5, 0, 2]), (-1, -2), (slice(1, 4), None),
                         (np.array([4, 2]), [1, 1])]:
        data = pf.read(sims=sims, frames=frames)
        s = np.atleast_1d(np.arange(n)[sims])
        fr = np.atleast_1d(np.arange(nt)[frames if frames is not None else slice(None)])
        np.testing.assert_array_equal(data.fields, full[s][:, fr])
        np.testing.assert_array_equal(data.sims, s)
        np.testing.assert_array_equal(data.t, t[fr])


# ------------------------------------------------------------------------------------------------------------------
# Grouped (one group per seed) layout
# ------------------------------------------------------------------------------------------------------------------


def test_grouped_2d_roundtrip_channel_first(tmp_path):
    n, nt, nx, ny, nc = 3, 4, 5, 6, 2
    seeds = [_rand(nt, nx, ny, nc) for _ in range(n)]
    x, y, t = np.linspace(-1, 1, nx), np.linspace(-2, 2, ny), np.linspace(0, 5, nt)
    path = write_pdebench_grouped(tmp_path / "2D_diff-react_NA_NA.h5", seeds, x, t, y=y)

    with h5py.File(path, "r") as f:  # PDEBench's names: str(seed).zfill(4), data, grid/x, grid/y, grid/t
        assert sorted(f.keys()) == ["0000", "0001", "0002"]
        assert set(f["0001"].keys()) == {"data", "grid"}
        assert set(f["0001/grid"].keys()) == {"x", "y", "t"}

    pf = open_pdebench(path)
    assert pf.layout == "grouped" and pf.seeds == ("0000", "0001", "0002")
    assert pf.shape == (n, nt, nc, nx, ny) and pf.channels == ("c0", "c1")
    np.testing.assert_allclose(pf.x, x.astype(np.float32))  # grid stored float32, as PDEBench does
    np.testing.assert_allclose(pf.t, t.astype(np.float32))
    data = pf.read(sims=[2, 0], frames=[3, 1])
    expect = np.stack([np.moveaxis(seeds[i][[3, 1]], -1, 1) for i in (2, 0)])
    np.testing.assert_array_equal(data.fields, expect)
    np.testing.assert_array_equal(data.fields[1, 0, 1], seeds[0][3, :, :, 1])  # channel c1 of seed 0, frame 3


def test_grouped_1d_single_channel(tmp_path):
    nt, nx = 7, 16
    data = _rand(2, nt, nx, 1)  # a stacked (N, Nt, Nx, Nc) array is accepted too
    path = write_pdebench_grouped(tmp_path / "1D_diff-sorp_NA_NA.h5", data, np.arange(nx), np.arange(nt))
    out = read_pdebench(path, sims=1)
    assert out.fields.shape == (1, nt, 1, nx)
    np.testing.assert_array_equal(out.fields[0, :, 0], data[1, :, :, 0])


# ------------------------------------------------------------------------------------------------------------------
# Errors: one line, naming the file, the problem and the fix
# ------------------------------------------------------------------------------------------------------------------


def _good_1d(tmp_path, name="good.hdf5"):
    return write_pdebench_single(tmp_path / name, _rand(2, 3, 64), np.arange(64), np.arange(3))


def test_missing_and_corrupt_files(tmp_path):
    _one_line_error("no such file", open_pdebench, tmp_path / "absent.hdf5")

    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"this is not HDF5" * 100)
    msg = _one_line_error("not a readable HDF5 file", open_pdebench, junk)
    assert str(junk) in msg and "download it again" in msg

    truncated = _good_1d(tmp_path, "trunc.hdf5")
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    _one_line_error("trunc.hdf5", open_pdebench, truncated)


def test_missing_dataset_and_foreign_layouts(tmp_path):
    names = ("density", "pressure", "Vx")
    path = write_pdebench_single(tmp_path / "cfd.hdf5", {k: _rand(2, 3, 8) for k in names}, np.arange(8),
                                 np.arange(3))
    with h5py.File(path, "a") as f:
        del f["pressure"]
    _one_line_error("'pressure' is missing", open_pdebench, path)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["velocity"] = np.zeros((2, 3))
    _one_line_error("no PDEBench layout found", open_pdebench, foreign)

    ours = tmp_path / "ours.h5"
    with h5py.File(ours, "w") as f:
        f.attrs["format"] = "pdestream-trajectories/1"
        f["fields"] = np.zeros((1, 2, 1, 4), np.float32)
    _one_line_error("read_trajectories", open_pdebench, ours)


def test_inconsistent_shapes(tmp_path):
    p = _good_1d(tmp_path, "x.hdf5")
    with h5py.File(p, "a") as f:
        del f["x-coordinate"]
        f["x-coordinate"] = np.arange(63.0)
    _one_line_error("'x-coordinate' has shape \\(63,\\) but the fields have 64 points", open_pdebench, p)

    p = _good_1d(tmp_path, "t.hdf5")
    with h5py.File(p, "a") as f:
        del f["t-coordinate"]
        f["t-coordinate"] = np.arange(9.0)
    _one_line_error("'t-coordinate' has shape \\(9,\\) but the fields have 3 frames", open_pdebench, p)

    p = tmp_path / "rank.hdf5"
    with h5py.File(p, "w") as f:
        f["tensor"] = np.zeros((2, 3), np.float32)
    _one_line_error("'tensor' has shape \\(2, 3\\)", open_pdebench, p)

    names = ("density", "pressure", "Vx", "Vy")
    p = write_pdebench_single(tmp_path / "cfd.hdf5", {k: _rand(2, 3, 4, 4) for k in names}, np.arange(4),
                              np.arange(3), y=np.arange(4))
    with h5py.File(p, "a") as f:
        del f["Vy"]
        f["Vy"] = np.zeros((2, 3, 4, 5), np.float32)
    _one_line_error("'Vy' has shape \\(2, 3, 4, 5\\) but 'density' has \\(2, 3, 4, 4\\)", open_pdebench, p)

    p = write_pdebench_grouped(tmp_path / "g.h5", [_rand(3, 8, 1)] * 3, np.arange(8), np.arange(3))
    with h5py.File(p, "a") as f:
        del f["0002/data"]
        f["0002/data"] = np.zeros((3, 9, 1), np.float32)
    _one_line_error("'0002/data' has shape \\(3, 9, 1\\) but '0000/data' has \\(3, 8, 1\\)", open_pdebench, p)


def test_bad_selections(tmp_path):
    pf = open_pdebench(_good_1d(tmp_path))
    _one_line_error("sims index 5 is out of range; the file holds sims 0..1", pf.read, sims=5)
    _one_line_error("frames index -4 is out of range", pf.read, frames=[-4])
    _one_line_error("selects nothing", pf.read, sims=slice(2, 2))
    _one_line_error("is not an index", pf.read, frames=[0.5])


def test_writer_checks_shapes(tmp_path):
    _one_line_error("x has shape \\(7,\\) but the fields have 8 points", write_pdebench_single,
                    tmp_path / "a.hdf5", _rand(1, 2, 8), np.arange(7), np.arange(2))
    _one_line_error("pass y too", write_pdebench_single, tmp_path / "b.hdf5", _rand(1, 2, 8, 8), np.arange(8),
                    np.arange(2))
    _one_line_error("exactly \\['density', 'pressure', 'Vx'\\]", write_pdebench_single, tmp_path / "c.hdf5",
                    {"rho": _rand(1, 2, 8)}, np.arange(8), np.arange(2))
    _one_line_error("seed 1 has shape", write_pdebench_grouped, tmp_path / "d.h5", [_rand(2, 8, 1), _rand(2, 7, 1)],
                    np.arange(8), np.arange(2))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_corrupt_compressed_data_fails_at_read(tmp_path):
    p = tmp_path / "2D_rdb_NA_NA.h5"
    with h5py.File(p, "w") as f:  # PDEBench's grouped files are compressed (lzf); gzip behaves the same here
        f.create_dataset("0000/data", data=_rand(4, 16, 16, 1), chunks=(4, 16, 16, 1), compression="gzip")
        f["0000/grid/x"] = np.arange(16.0)
        f["0000/grid/y"] = np.arange(16.0)
        info = f["0000/data"].id.get_chunk_info(0)
    raw = bytearray(p.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = b"\xff" * info.size
    p.write_bytes(bytes(raw))
    pf = open_pdebench(p)  # metadata is intact
    assert pf.shape == (1, 4, 1, 16, 16) and pf.t is None
    _one_line_error("reading the fields failed", pf.read)
