"""The C and Fortran clients: compiled with the system compilers through ``pdestream client-config``, run as
real processes against a live listener on 127.0.0.1; every frame must arrive once with the right values."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from streaming.chunk import Chunk
from streaming.transport.listener import ClientSource
from streaming.worker import SimReport

BIN = Path(sys.executable).parent
WAIT = 20.0
NY, NX = 6, 5  # the C programs' grid (C order)

C_PROGRAM = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "pdestream_client.h"

#define NY 6
#define NX 5
static double value(int c, long f, long i, long j) { return 1000.0 * c + 10.0 * f + 0.5 * i + 0.25 * j; }

static int report(const char *what) {
    printf("%s code=%d msg=%s\n", what, pds_last_code(), pds_last_error());
    return 3;
}

int main(int argc, char **argv) {
    const char *addr = argv[1], *mode = argv[2];
    long sim = atol(argv[3]), frames = atol(argv[4]);
    const char *fields[] = {"u", "v"};
    double params[] = {0.5 + sim, -2.0};
    long grid[] = {NY, NX};
    if (!strcmp(mode, "refused")) {          /* wrong field names for the job */
        const char *bad[] = {"p"};
        pds_client *c = pds_connect(addr, sim, 2, params, 1, bad, 2, grid);
        return c ? 0 : report("refused");
    }
    if (!strcmp(mode, "nobody")) {           /* nothing listens there */
        pds_client *c = pds_connect(addr, sim, 2, params, 2, fields, 2, grid);
        return c ? 0 : report("nobody");
    }
    int rank = 0, ranks = 1;
    long offset[2] = {0, 0}, local[2] = {NY, NX};
    pds_client *c;
    if (!strcmp(mode, "slab")) {
        rank = atoi(argv[5]);
        ranks = atoi(argv[6]);
        long rows = NY / ranks;
        offset[0] = rank * rows;
        local[0] = rank == ranks - 1 ? NY - offset[0] : rows;
        c = pds_connect_slab(addr, sim, 2, params, 2, fields, 2, grid, offset, local, ranks);
    } else {
        c = pds_connect(addr, sim, 2, params, 2, fields, 2, grid);
    }
    if (!c) return report("connect");
    if (!strcmp(mode, "misuse")) {
        float z[NY * NX] = {0};
        printf("unknown code=%d msg=%s\n", pds_send(c, "w", 0, z), pds_last_error());
        printf("negative code=%d msg=%s\n", pds_send(c, "u", -1, z), pds_last_error());
        pds_send(c, "u", 3, z);
        printf("order code=%d msg=%s\n", pds_send(c, "u", 4, z), pds_last_error());
        printf("twice code=%d msg=%s\n", pds_send(c, "u", 3, z), pds_last_error());
        int rc = pds_close(c);
        printf("close code=%d msg=%s\n", rc, pds_last_error());
        return 0;
    }
    if (!strcmp(mode, "nan")) {              /* frame 2 holds a NaN: the job drops the simulation */
        float z[NY * NX] = {0};
        int first = -1;
        for (long f = 0; f < frames; ++f) {
            z[7] = f == 2 ? 0.0f / 0.0f : (float)f;
            for (int ch = 0; ch < 2; ++ch) {
                int rc = pds_send(c, fields[ch], f, z);
                if (rc < 0) return report("send");
                if (rc == PDS_DROPPED && first < 0) first = (int)f;
            }
        }
        int rc = pds_close(c);
        printf("nan first=%d close=%d msg=%s\n", first, rc, pds_last_error());
        return 0;
    }
    if (!strcmp(mode, "pipelined")) {        /* sims sim, sim+1 overlapped with pds_end; sim+2 ends incomplete */
        float z[NY * NX];
        pds_client *b = NULL;
        for (long f = 0; f < frames; ++f)
            for (int ch = 0; ch < 2; ++ch) {
                for (long i = 0; i < NY * NX; ++i) z[i] = (float)value(ch, f, i / NX, i % NX);
                if (pds_send(c, fields[ch], f, z) != PDS_OK) return report("send");
            }
        if (pds_end(c) != PDS_OK) return report("end");
        printf("after_end code=%d msg=%s\n", pds_send(c, "u", frames, z), pds_last_error());
        if (!(b = pds_connect(addr, sim + 1, 2, params, 2, fields, 2, grid))) return report("connect");
        for (long f = 0; f < frames; ++f)
            for (int ch = 0; ch < 2; ++ch) {
                for (long i = 0; i < NY * NX; ++i) z[i] = (float)value(ch, f, i / NX, i % NX);
                if (pds_send(b, fields[ch], f, z) != PDS_OK) return report("send");
            }
        if (pds_end(b) != PDS_OK) return report("end");
        if (pds_close(c) != PDS_OK) return report("close");
        if (pds_close(b) != PDS_OK) return report("close");
        pds_client *d = pds_connect(addr, sim + 2, 2, params, 2, fields, 2, grid);
        if (!d) return report("connect");
        pds_send(d, "u", 0, z);
        printf("incomplete code=%d msg=%s\n", pds_end(d), pds_last_error());
        printf("close code=%d msg=%s\n", pds_close(d), pds_last_error());
        return 0;
    }
    if (!strcmp(mode, "twice")) {            /* sims sim and sim+1 one after the other, argv[5] ms apart */
        float z[NY * NX];
        for (int s = 0; s < 2; ++s) {
            if (s) {
                struct timespec ts = {atol(argv[5]) / 1000, (atol(argv[5]) % 1000) * 1000000L};
                nanosleep(&ts, NULL);
                if (!(c = pds_connect(addr, sim + 1, 2, params, 2, fields, 2, grid))) return report("connect");
            }
            for (long f = 0; f < frames; ++f)
                for (int ch = 0; ch < 2; ++ch) {
                    for (long i = 0; i < NY * NX; ++i) z[i] = (float)value(ch, f, i / NX, i % NX);
                    if (pds_send(c, fields[ch], f, z) != PDS_OK) return report("send");
                }
            if (pds_close(c) != PDS_OK) return report("close");
        }
        return 0;
    }
    size_t n = (size_t)(local[0] * local[1]);
    float *f32 = malloc(n * sizeof *f32);
    double *f64 = malloc(n * sizeof *f64);
    for (long f = 0; f < frames; ++f)
        for (int ch = 1; ch >= 0; --ch) {    /* fields in any order within a frame */
            for (long i = 0; i < local[0]; ++i)
                for (long j = 0; j < local[1]; ++j) {
                    double v = value(ch, f, offset[0] + i, offset[1] + j) + (strcmp(mode, "f64") ? 0.0 : 1e-9);
                    f32[i * local[1] + j] = (float)v;
                    f64[i * local[1] + j] = v;
                }
            int rc = strcmp(mode, "f64") ? pds_send(c, fields[ch], f, f32) : pds_send_f64(c, fields[ch], f, f64);
            if (rc != PDS_OK) return report("send");
        }
    if (pds_close(c) != PDS_OK) return report("close");
    printf("ok\n");
    return 0;
}
"""

F_PROGRAM = r"""
program fclient
  use, intrinsic :: iso_fortran_env, only: real32, real64, int64
  use pdestream_client
  implicit none
  type(pds_client) :: c, a, b
  real(real32) :: t(5, 6), half(5, 3)
  real(real64) :: q(5, 6)
  character(len=256) :: addr
  integer(int64) :: k
  integer :: i, j, rc
  call get_command_argument(1, addr)
  c = pds_connect(trim(addr), 4_int64, [2.5d0, -1d0], ["u", "v"], [5_int64, 6_int64])
  if (.not. pds_connected(c)) then
     print '(a)', "connect failed: " // pds_last_error()
     stop 3
  end if
  do k = 0, 6
     do j = 1, 6
        do i = 1, 5
           t(i, j) = real(100 * k + 10 * j + i, real32)
           q(i, j) = -real(100 * k + 10 * j + i, real64)
        end do
     end do
     rc = pds_send(c, "u", k, t)
     if (rc /= PDS_OK) stop 4
     rc = pds_send(c, "v", k, q)
     if (rc /= PDS_OK) stop 5
  end do
  rc = pds_close(c)
  if (rc /= PDS_OK) then
     print '(a)', "close failed: " // pds_last_error()
     stop 6
  end if
  ! two slabs of one simulation from one process: columns 1-3 and 4-6 of t(5, 6) (offsets 0-based)
  a = pds_connect(trim(addr), 6_int64, [0d0, 0d0], ["u", "v"], [5_int64, 6_int64], offset=[0_int64, 0_int64], &
       local_shape=[5_int64, 3_int64], n_ranks=2)
  b = pds_connect(trim(addr), 6_int64, [0d0, 0d0], ["u", "v"], [5_int64, 6_int64], offset=[0_int64, 3_int64], &
       local_shape=[5_int64, 3_int64], n_ranks=2)
  if (.not. (pds_connected(a) .and. pds_connected(b))) stop 8
  do k = 0, 2
     do j = 1, 6
        do i = 1, 5
           t(i, j) = real(100 * k + 10 * j + i, real32)
        end do
     end do
     half = t(:, 1:3)
     if (pds_send(a, "u", k, half) /= PDS_OK .or. pds_send(a, "v", k, -half) /= PDS_OK) stop 9
     half = t(:, 4:6)
     if (pds_send(b, "u", k, half) /= PDS_OK .or. pds_send(b, "v", k, -half) /= PDS_OK) stop 10
  end do
  if (pds_end(a) /= PDS_OK) stop 12  ! ended first, closed after b: the acknowledgement waits meanwhile
  if (pds_close(b) /= PDS_OK .or. pds_close(a) /= PDS_OK) stop 11
  c = pds_connect(trim(addr), 5_int64, [1d0, 1d0], ["nope"], [5_int64, 6_int64])
  if (pds_connected(c)) stop 7
  print '(a,i0,a)', "refused code=", pds_last_code(), " msg=" // pds_last_error()
end program fclient
"""


def value(c: int, f: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return 1000.0 * c + 10.0 * f + 0.5 * i + 0.25 * j


def expected(frames: int, plus: float = 0.0) -> np.ndarray:
    i, j = np.meshgrid(np.arange(NY), np.arange(NX), indexing="ij")
    return np.stack([np.stack([value(c, f, i, j) + plus for c in range(2)]) for f in range(frames)]).astype(np.float32)


def client_config(*opts: str) -> list[str]:
    out = subprocess.run([str(BIN / "pdestream"), "client-config", *opts], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clib-cache")
    os.environ["PDESTREAM_CACHE"] = str(path)  # a fresh build, not the user's cache
    yield path
    os.environ.pop("PDESTREAM_CACHE", None)


@pytest.fixture(scope="module")
def c_program(cache: Path, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cprog")
    (work / "prog.c").write_text(C_PROGRAM)
    flags = client_config("--cflags", "--libs")
    assert (cache / "libpdestream_client.a").exists()
    out = subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "prog.c", "-o", "prog", *flags], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return work / "prog"


def run_c(prog: Path, *args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(prog), *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


class Consumer:
    def __init__(self, source: ClientSource) -> None:
        self.got: list = []
        self.thread = threading.Thread(target=lambda: self.got.extend(source), daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the stream did not end"

    def frames(self, sim_id: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        seen: list[int] = []
        for m in self.got:
            if isinstance(m, Chunk) and m.sim_id == sim_id:
                # chunks repeat the previous chunk's last frame (overlap=1): count each step's first arrival
                new = [s for s in m.frame_index.tolist() if s not in out]
                seen += new
                for s, f in zip(m.frame_index.tolist(), m.fields, strict=True):
                    if s in out:
                        np.testing.assert_array_equal(out[s], f)
                    out[s] = np.array(f)
        assert len(seen) == len(set(seen))
        return out

    def reports(self) -> list[tuple[int, str]]:
        return sorted((m.sim_id, m.status) for m in self.got if isinstance(m, SimReport))


def test_c_client_float32_and_float64_frames_arrive_once_with_their_values(c_program):
    frames = 40
    with ClientSource("127.0.0.1:0", expected_sims=2, max_inflight=2, overlap=1, channels=("u", "v"),
                      grid=(NY, NX), n_params=2) as src:
        consumer = Consumer(src)
        env = {"PDESTREAM_BATCH_STEPS": "3"}  # several messages per simulation: backpressure and acks run
        procs = [subprocess.Popen([str(c_program), src.address, mode, str(sim), str(frames)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
                 for sim, mode in ((0, "f32"), (1, "f64"))]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        consumer.join()
    assert consumer.reports() == [(0, "done"), (1, "done")]
    for sim, plus in ((0, 0.0), (1, 1e-9)):
        got = consumer.frames(sim)
        assert sorted(got) == list(range(frames))
        np.testing.assert_array_equal(np.stack([got[s] for s in range(frames)]), expected(frames, plus))
    params = {m.sim_id: m.params.tolist() for m in consumer.got if isinstance(m, Chunk)}
    assert params == {0: [0.5, -2.0], 1: [1.5, -2.0]}


def test_c_client_slabs_of_two_processes_assemble_the_full_field(c_program):
    frames = 9
    with ClientSource("127.0.0.1:0", expected_sims=1, max_inflight=2, overlap=1) as src:
        consumer = Consumer(src)
        procs = [subprocess.Popen([str(c_program), src.address, "slab", "7", str(frames), str(r), "2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PDESTREAM_BATCH_STEPS": str(2 + r)}) for r in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        consumer.join()
    assert consumer.reports() == [(7, "done")]
    assert all(m.grid == (NY, NX) for m in consumer.got if isinstance(m, Chunk))
    got = consumer.frames(7)
    np.testing.assert_array_equal(np.stack([got[s] for s in range(frames)]), expected(frames))


def test_c_client_pds_end_overlaps_the_acknowledgement_with_the_next_simulation(c_program):
    frames = 12
    with ClientSource("127.0.0.1:0", expected_sims=3, max_inflight=2, overlap=1, channels=("u", "v"),
                      grid=(NY, NX), n_params=2) as src:
        consumer = Consumer(src)
        out = run_c(c_program, src.address, "pipelined", 3, frames, env={"PDESTREAM_BATCH_STEPS": "5"})
        assert out.returncode == 0, out.stdout + out.stderr
        consumer.join()
        report = src.external_report()
        assert report["dropped_sims"] == {"disconnected": 1}  # sim 5 never ended
        assert report["connections"] == 2  # sim 5 came over sim 3's connection, kept after its bye
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert "code=-1" in lines["after_end"] and "already ended with pds_end" in lines["after_end"]
    assert "code=-1" in lines["incomplete"] and "missing field(s) ['v']" in lines["incomplete"]
    assert lines["close"] == lines["incomplete"]  # pds_close repeats why the simulation could not end
    assert consumer.reports() == [(3, "done"), (4, "done"), (5, "error")]
    for sim in (3, 4):
        got = consumer.frames(sim)
        np.testing.assert_array_equal(np.stack([got[s] for s in range(frames)]), expected(frames))


@pytest.mark.parametrize("idle_ms, timeout, connections", [(0, 3600.0, 1), (700, 0.2, 2)])
def test_c_client_keeps_its_connection_for_the_next_simulation(c_program, idle_ms, timeout, connections):
    # one connection carries both simulations; one the job let go while idle is replaced without an error
    with ClientSource("127.0.0.1:0", expected_sims=2, max_inflight=2, overlap=1, channels=("u", "v"),
                      grid=(NY, NX), n_params=2, client_timeout=timeout) as src:
        consumer = Consumer(src)
        out = run_c(c_program, src.address, "twice", 8, 6, idle_ms)
        assert out.returncode == 0, out.stdout + out.stderr
        consumer.join()
        report = src.external_report()
    assert report["connections"] == connections
    assert report["rejected_connections"] == {} and report["dropped_sims"] == {}
    assert consumer.reports() == [(8, "done"), (9, "done")]
    for sim in (8, 9):
        got = consumer.frames(sim)
        np.testing.assert_array_equal(np.stack([got[s] for s in range(6)]), expected(6))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_c_client_error_codes_and_messages(c_program):
    with ClientSource("127.0.0.1:0", channels=("u", "v"), grid=(NY, NX), n_params=2, token="s3cret") as src:
        Consumer(src)
        out = run_c(c_program, src.address, "refused", 0, 1, env={"PDESTREAM_TOKEN": "s3cret"})
        assert out.returncode == 3 and "refused code=-3" in out.stdout  # PDS_E_REFUSED
        assert "fields ['p'] but the job trains on ['u', 'v']" in out.stdout
        out = run_c(c_program, src.address, "f32", 0, 1)  # no token
        assert out.returncode == 3 and "connect code=-3" in out.stdout and "missing or wrong token" in out.stdout
        out = run_c(c_program, f"wrong@{src.address}", "f32", 0, 1, env={"PDESTREAM_TOKEN": "s3cret"})
        assert out.returncode == 3 and "wrong token" in out.stdout  # TOKEN@ in the address wins over the env
        out = run_c(c_program, f"s3cret@{src.address}", "misuse", 1, 1)
        lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
        assert "code=-1" in lines["unknown"] and "not one of the connected fields ['u', 'v']" in lines["unknown"]
        assert "code=-1" in lines["negative"]
        assert "code=-1" in lines["order"] and "frame 3 is missing field(s) ['v']" in lines["order"]
        assert "code=-1" in lines["twice"] and "already sent" in lines["twice"]
        assert "code=-1" in lines["close"] and "missing field(s) ['v']" in lines["close"]
        assert src.external_report()["rejected_connections"] == {"mismatch": 1, "token": 2}
        out = run_c(c_program, f"s3cret@{src.address}", "nan", 2, 30, env={"PDESTREAM_BATCH_STEPS": "1"})
        first, close = out.stdout.split()[1:3]
        assert close == "close=1" and "NaN" in out.stdout  # pds_close: PDS_DROPPED
        assert first == "first=-1" or int(first.split("=")[1]) >= 2  # sends after the notice return PDS_DROPPED
        # the misuse client's pds_close gave up on its incomplete frame: the job saw it leave without an end
        assert src.external_report()["dropped_sims"] == {"disconnected": 1, "nan": 1}
    out = run_c(c_program, f"127.0.0.1:{_free_port()}", "nobody", 0, 1, env={"PDESTREAM_CONNECT_TIMEOUT": "0.3"})
    assert out.returncode == 3 and "nobody code=-2" in out.stdout and "no pdestream train job listening" in out.stdout
    out = run_c(c_program, "no-port-here", "nobody", 0, 1)
    assert "nobody code=-2" in out.stdout and "expected HOST:PORT" in out.stdout


def test_fortran_client_frames_arrive_transposed_to_c_order(cache, tmp_path):
    if shutil.which("gfortran") is None:
        pytest.fail("gfortran is not installed: the Fortran client cannot be checked; install it "
                    "(apt-get install gfortran) and rerun")
    (tmp_path / "prog.f90").write_text(F_PROGRAM)
    flags = client_config("--fflags", "--libs")
    assert (cache / "pdestream_client.mod").exists()
    out = subprocess.run(["gfortran", "prog.f90", "-o", "prog", *flags], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with ClientSource("127.0.0.1:0", max_inflight=4, overlap=1, channels=("u", "v"), grid=(6, 5),
                      n_params=2) as src:  # runs until closed: the second, refused connect meets a running job
        consumer = Consumer(src)
        # one process sends both slabs of simulation 6: each frame ships at once (batch 1) and the window (4)
        # holds all 3 frames, so neither slab waits for the other's acknowledgements
        run = subprocess.run([str(tmp_path / "prog"), src.address], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PDESTREAM_BATCH_STEPS": "1"})
    consumer.join()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "refused code=-3" in run.stdout and "fields ['nope']" in run.stdout
    assert consumer.reports() == [(4, "done"), (6, "done")]
    j, i = np.meshgrid(np.arange(1, 7), np.arange(1, 6), indexing="ij")  # job's [j-1, i-1] = Fortran t(i, j)
    for sim, n in ((4, 7), (6, 3)):  # sim 6: assembled from the two slabs
        got = consumer.frames(sim)
        assert sorted(got) == list(range(n))
        for k in range(n):
            np.testing.assert_array_equal(got[k][0], 100 * k + 10 * j + i)
            np.testing.assert_array_equal(got[k][1], -(100 * k + 10 * j + i))
    assert [m.params.tolist() for m in consumer.got if isinstance(m, Chunk)][0] == [2.5, -1.0]


def test_client_config_rebuilds_a_stale_library_and_needs_an_option(cache, c_program):
    lib = cache / "libpdestream_client.a"
    os.utime(lib, (0, 0))  # older than the sources: the next use rebuilds it
    assert client_config("--libs") == [f"-L{cache}", "-lpdestream_client"]
    assert lib.stat().st_mtime > 0
    out = subprocess.run([str(BIN / "pdestream"), "client-config"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "pass --cflags, --fflags and/or --libs" in out.stderr


def test_default_cache_has_one_folder_per_version_of_the_sources(tmp_path, monkeypatch):
    """Two installed versions of pdestream (different client sources) never link each other's library."""
    import shutil

    from streaming import client_config

    monkeypatch.delenv("PDESTREAM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    here = client_config.cache_dir()
    assert here == tmp_path / "xdg" / "pdestream" / "clib" / client_config.sources_tag()
    other = tmp_path / "clib"
    shutil.copytree(client_config.CLIB, other)
    (other / "pdestream_client.c").write_text((other / "pdestream_client.c").read_text() + "\n/* changed */\n")
    monkeypatch.setattr(client_config, "CLIB", other)
    assert client_config.cache_dir() != here and client_config.cache_dir().parent == here.parent
