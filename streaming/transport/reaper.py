"""Runs one solver program and takes it down with the process that started it.

``python -I -S reaper.py PARENT_PID NICE -- PROGRAM ARGS...`` (built by :func:`reaped_argv`). The launcher
starts every external solver program through this shim, in a process group of its own that the program and
its children share. A parent that exits cleanly kills that group itself; a parent that dies without cleaning
up (a Ray actor SIGKILLed or lost to OOM, a trainer killed with SIGKILL) cannot, so the shim watches it:
once ``PARENT_PID`` is no longer its parent (checked every :data:`POLL_S`), it SIGTERMs the group and
SIGKILLs it :data:`GRACE_S` later. No orphaned program keeps computing and streaming into a job that has
forgotten it.

The shim ignores SIGTERM itself (the group's SIGTERM is for the program, whose exit it waits for), lowers
its priority by ``NICE`` before starting the program, and exits with the program's status (a program killed
by signal ``s``: the shim kills itself with ``s``, so the parent sees the same). A program that cannot be
started: a line on stderr and status 127, as a shell gives. Standard library only, so it starts fast (~20 ms).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

POLL_S = 0.2  # how often the parent is checked
GRACE_S = 2.0  # SIGTERM to the group, then SIGKILL this long after


def reaped_argv(argv: list[str], nice: int = 0) -> list[str]:
    """The command line that runs ``argv`` under this shim, watched on behalf of the calling process."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), str(int(nice)), "--", *argv]


def _watch(parent: int, proc: subprocess.Popen) -> None:
    while os.getppid() == parent:
        if proc.poll() is not None:
            return
        time.sleep(POLL_S)
    os.killpg(0, signal.SIGTERM)  # the program and its children; this shim ignores it
    deadline = time.monotonic() + GRACE_S
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # whatever is left of the group, this shim included


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: reaper.py PARENT_PID NICE -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    parent, nice, argv = int(args[0]), int(args[1]), args[3:]
    if os.getpgrp() != os.getpid():  # the group it kills must be its own, never its parent's
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler, not SIG_IGN: the program gets the default back
    if nice:
        os.nice(nice)
    try:
        proc = subprocess.Popen(argv)
    except OSError as e:
        print(f"cannot start {argv[0]!r} in {os.getcwd()!r}: {e}", file=sys.stderr)
        return 127
    threading.Thread(target=_watch, args=(parent, proc), daemon=True).start()
    rc = proc.wait()
    if rc < 0:
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
