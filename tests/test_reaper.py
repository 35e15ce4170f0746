"""The watcher every launched solver program runs under: it ends the program's process group when the process
that started it dies without cleaning up (a SIGKILLed Ray actor or trainer), and passes the exit status on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streaming.transport.launcher import LauncherError, LocalRunner
from streaming.transport.reaper import GRACE_S, POLL_S, reaped_argv

# the process that starts a program through the launcher's local runner (niced by 3), then waits to be killed
PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from streaming.transport.launcher import LocalRunner
    proc, _ = LocalRunner(nice=3).start(0, ["sh", "-c", sys.argv[1]], {}, sys.argv[2], Path(sys.argv[2]) / "log")
    print(proc.pid, flush=True)
    time.sleep(600)
""")
# the program: a child in its process group (a solver's helper process, an mpiexec's ranks), then waits
PROGRAM = "sleep 300 & echo $! > child.pid; echo $$ > program.pid; wait"


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _read_pid(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"{path.name} was never written")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_a_program_whose_starter_was_sigkilled_is_killed_with_its_children(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, PROGRAM, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        shim = int(parent.stdout.readline())
        program, child = _read_pid(tmp_path / "program.pid"), _read_pid(tmp_path / "child.pid")
        assert os.getpgid(program) == os.getpgid(child) == shim  # one group, led by the watcher
        assert os.getpriority(os.PRIO_PROCESS, program) == os.getpriority(os.PRIO_PROCESS, parent.pid) + 3
        time.sleep(2 * POLL_S)
        assert _alive(program) and _alive(child)  # a live starter: the program runs on
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10 * POLL_S + GRACE_S + 3.0  # 5.0 s: detection, SIGTERM, reaping
        while (_alive(program) or _alive(child) or _alive(shim)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(program) and not _alive(child) and not _alive(shim)
    finally:  # on failure, leave nothing running
        parent.kill()
        for f in ("program.pid", "child.pid"):
            text = (tmp_path / f).read_text().strip() if (tmp_path / f).exists() else ""
            if text and _alive(int(text)):
                os.kill(int(text), signal.SIGKILL)


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 7", 7), ("kill -TERM $$", -signal.SIGTERM)])
def test_the_programs_exit_status_is_passed_on(script: str, status: int) -> None:
    assert subprocess.run(reaped_argv(["sh", "-c", script])).returncode == status


def test_a_program_that_cannot_start_gives_127_and_says_why(tmp_path: Path) -> None:
    proc = subprocess.run(reaped_argv([str(tmp_path / "no-such-solver")]), capture_output=True, text=True)
    assert proc.returncode == 127 and "cannot start" in proc.stderr and "no-such-solver" in proc.stderr
    with pytest.raises(LauncherError, match=r"cannot start './no-such-solver'.*no such file.*solver.external.cwd"):
        LocalRunner().start(0, ["./no-such-solver"], {}, str(tmp_path), tmp_path / "log")
    (tmp_path / "data.txt").write_text("")
    with pytest.raises(LauncherError, match=r"not executable"):
        LocalRunner().start(0, ["./data.txt"], {}, str(tmp_path), tmp_path / "log")
