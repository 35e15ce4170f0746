"""Transports: how solver workers' messages reach the trainer. One module per transport, one line each
in :data:`BACKENDS` below (config, command line and the multi-trainer checks read this registry).

Every transport module has ``from_config(cfg, cursor, worker_args, *, comm, layout, worker_cls)``
returning a :class:`~streaming.transport.source.Source`, and leaves the design to a
:class:`~streaming.transport.dispatcher.Dispatcher`. ``python -m streaming.transport`` lists them;
``docs/transports.md`` shows how to add one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    """A registered transport: ``target`` is ``"module:function"`` of its ``from_config`` (imported lazily)."""

    name: str
    target: str
    summary: str
    several_trainers: bool  # usable with several data-parallel trainer processes

    def factory(self) -> Callable[..., Any]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("ray", "streaming.transport.ray_actors:from_config",
            "Ray actors on a local or running Ray cluster; a lost actor is restarted and its task re-run", True),
    Backend("mpi", "streaming.transport.mpi_ranks:from_config",
            "MPI ranks under mpiexec: the first ranks train, the others solve; credit-based flow control", True),
    Backend("local", "streaming.transport.in_process:from_config",
            "one solver worker inside the trainer's process, deterministic (tests, debugging, exact resume)", True),
    Backend("external", "streaming.transport.launcher:from_config",
            "a TCP listener that external solver programs stream to (C, Fortran, Python clients); with "
            "[solver.external] command, the launcher starts one program per simulation", False),
)}


def register(backend: Backend) -> None:
    """Add a transport (or replace the one of the same name); config and jobs accept it from then on."""
    BACKENDS[backend.name] = backend


class UnknownBackend(ValueError):
    """A backend name that is not registered."""


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownBackend(f"workers.backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}") from None


def backend_names() -> list[str]:
    return list(BACKENDS)


def make_source(cfg: Any, cursor: Any, worker_args: dict[str, Any], **context: Any) -> Any:
    """The running transport of ``cfg.workers.backend`` (``context``: ``comm``, ``layout``, ``worker_cls``)."""
    return get_backend(cfg.workers.backend).factory()(cfg, cursor, worker_args, **context)
