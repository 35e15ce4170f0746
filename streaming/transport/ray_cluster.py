"""Connecting the job to Ray: a local cluster of its own, or a running cluster at an address.

- No address: a new local cluster for this job (Ray's ``address="local"``), whatever Ray left on the
  machine. A ``ray start`` head records its address in Ray's temp folder and the file outlives the head
  (``ray stop`` and a killed head both leave it); plain ``ray.init()`` would join that address or stop with
  "num_cpus ... must not be provided". It is ignored, with one line saying so.
- An address (``host:port`` of a head started by ``ray start --head``): token authentication is taken
  the way ``ray start --head`` takes it. With ``RAY_AUTH_MODE`` unset and a token at hand
  (``RAY_AUTH_TOKEN``, the file in ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``), the driver sends
  it; an explicit ``RAY_AUTH_MODE`` is respected. Ray >= 2.59 turns authentication on for a head whenever
  such a token exists, while a driver given an explicit address sends none unless told to, so
  without this step the first run of the quickstart (which writes ``~/.ray/auth_token``) locks the
  user out of every later ``ray start`` head on the same machine.
- A head that cannot be reached or refuses the driver ends the job with :class:`RayConnectError`: one
  line naming the address and what to set or check (exit status 2 on the command line). Ray's own
  retry log of the failed attempt (a line a second for about 20 s) is held back and replaced by that line.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from streaming.errors import JobFailed

TOKEN_SOURCES = "RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"


class RayConnectError(JobFailed):
    """The Ray cluster at the given address could not be joined; the message says what to set or check."""


def ensure_ray(address: str | None, n_workers: int) -> bool:
    """Connect this process to Ray (a new local cluster if ``address`` is None); True if this call started it."""
    if ray.is_initialized():
        return False
    with warnings.catch_warnings():  # Ray starts its processes with fork + exec, which JAX's fork hook warns about
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        if address is None:
            _start_local(n_workers)
        else:
            join(address)
    return True


def _start_local(n_workers: int) -> None:
    notice = ignored_address_notice()
    if notice:
        print(f"pdestream: {notice}", file=sys.stderr, flush=True)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, n_workers), include_dashboard=False,
             log_to_driver=False, configure_logging=False)


def ignored_address_notice() -> str | None:
    """The line to print when a local cluster starts although Ray's address file or RAY_ADDRESS names one."""
    recorded, env = recorded_address(), os.environ.get("RAY_ADDRESS")
    if env:
        return (f"RAY_ADDRESS={env} is not read; this job starts a local Ray cluster of its own "
                f"(pass --address {env} to join that cluster)")
    if recorded is None:
        return None
    if reachable(recorded):
        return (f"a Ray cluster runs at {recorded}; this job starts a local cluster of its own "
                f"(pass --address {recorded} to join that one)")
    return (f"ignoring the address of a Ray cluster that no longer runs ({recorded}, in {address_file()}); "
            "starting a local Ray cluster for this job")


def address_file() -> str:
    """Where ``ray start --head`` records the address of the latest cluster (Ray's temp-folder rule)."""
    tmp = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    if tmp is None:
        tmp = "/tmp" if sys.platform.startswith(("linux", "darwin")) else tempfile.gettempdir()
    return os.path.join(tmp, "ray", "ray_current_cluster")


def logs_dir() -> str:
    """The logs of the latest local Ray session (the workers' stderr among them)."""
    return os.path.join(os.path.dirname(address_file()), "session_latest", "logs")


def recorded_address() -> str | None:
    try:
        with open(address_file()) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        return None
    return host.strip("[]"), int(port)


def reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (addresses of another form count as reachable)."""
    hp = _host_port(address)
    if hp is None:
        return True
    try:
        with socket.create_connection(hp, timeout=timeout):
            return True
    except OSError:
        return False


def enable_token_if_available() -> bool:
    """Send the token with every request when ``RAY_AUTH_MODE`` is unset and a token is at hand, as
    ``ray start --head`` decides; an explicit ``RAY_AUTH_MODE`` wins. True if token mode is on."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication (< 2.52)
        return False
    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def join(address: str) -> None:
    """``ray.init(address=...)`` with the token handled; :class:`RayConnectError` on failure."""
    if not reachable(address, timeout=5.0):
        port = _host_port(address)[1]
        raise RayConnectError(
            f"cannot join the Ray cluster at {address}: nothing accepts connections there; start a head with "
            f"`ray start --head --port={port}` on that host, or check --address (HOST:PORT of the head)")
    with_token = enable_token_if_available()
    with _stderr_held_back() as held:
        try:
            ray.init(address=address, log_to_driver=False)
            held.release()
        except (ConnectionError, RuntimeError) as e:
            raise RayConnectError(connect_failure(address, e, held.text(), with_token)) from e


def connect_failure(address: str, error: BaseException, log: str, with_token: bool) -> str:
    """The one-line reason a join failed, with what to set or check."""
    text = log + "".join(f" {type(x).__name__}: {x}" for x in _chain(error))
    if "InvalidAuthToken" in text or "Unauthenticated" in text or "AuthenticationError" in text:
        if with_token:
            return (f"cannot join the Ray cluster at {address}: its head refused this process's token (taken from "
                    f"{TOKEN_SOURCES}); give the head's token, which `ray get-auth-token` prints on the head, "
                    "in RAY_AUTH_TOKEN")
        mode = os.environ.get("RAY_AUTH_MODE")
        if mode:
            return (f"cannot join the Ray cluster at {address}: its head requires token authentication and "
                    f"RAY_AUTH_MODE={mode} turns it off here; set RAY_AUTH_MODE=token (or unset it) with the head's "
                    f"token in {TOKEN_SOURCES} (`ray get-auth-token` on the head prints it)")
        return (f"cannot join the Ray cluster at {address}: its head requires token authentication and this "
                f"process has no token (looked in {TOKEN_SOURCES}); set RAY_AUTH_TOKEN to the head's token "
                "(`ray get-auth-token` on the head prints it) or RAY_AUTH_TOKEN_PATH to a file holding it")
    last = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (f"cannot join the Ray cluster at {address}: {last}; check that `ray status --address {address}` "
            "answers from this machine and that this Ray version matches the head's")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


class _HeldStderr:
    def __init__(self, file) -> None:  # noqa: ANN001
        self.file, self.released = file, False

    def text(self) -> str:
        self.file.seek(0)
        return self.file.read().decode(errors="replace")

    def release(self) -> None:
        """Keep what was held back: it is written to stderr when the block ends."""
        self.released = True


@contextmanager
def _stderr_held_back() -> Iterator[_HeldStderr]:
    """Send file descriptor 2 (Ray's C++ core logs there) to a temporary file inside the block; what was
    written is copied to the real stderr at the end if ``release()`` was called, dropped otherwise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        held = _HeldStderr(f)
        os.dup2(f.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if held.released:
                sys.stderr.write(held.text())
                sys.stderr.flush()
