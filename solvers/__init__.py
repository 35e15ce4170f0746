"""Numerical PDE solvers in JAX (jit + vmap over many simulations) following one contract.

``get_solver(name, **config)`` builds a solver; ``list_solvers()`` names them. See
:mod:`solvers.base` for the contract.
"""

from __future__ import annotations

import importlib
from typing import Any

from solvers.base import Solver, check_finite
from solvers.errors import SimulationBlowUp, SolverError
from solvers.params import Param, ParamSpace

_REGISTRY = {
    "heat2d": "solvers.heat2d:Heat2D",
    "burgers1d": "solvers.burgers1d:Burgers1D",
    "ks1d": "solvers.ks1d:KS1D",
    "ns2d": "solvers.ns2d:NS2D",
    "darcy2d": "solvers.darcy2d:Darcy2D",
    "cavity": "solvers.cfd.cavity:Cavity",
    "tube": "solvers.cfd.tube:Tube",
    "dam": "solvers.cfd.dam:Dam",
    "cylinder": "solvers.cfd.cylinder:Cylinder",
}


def register(name: str, target: str) -> None:
    """Register a solver class under ``name`` as ``'module:Class'`` (imported lazily)."""
    _REGISTRY[name] = target


def solver_class(name: str) -> type[Solver]:
    """The solver class registered under ``name``."""
    if name not in _REGISTRY:
        raise SolverError(f"unknown solver {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_solver(name: str, **config: Any) -> Solver:
    """Build the solver ``name`` with configuration overrides (validated)."""
    return solver_class(name)(**config)


def list_solvers() -> list[str]:
    """Names of the registered solvers whose module is installed."""
    names = []
    for name in sorted(_REGISTRY):
        module = _REGISTRY[name].split(":")[0]
        try:
            solver_class(name)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        names.append(name)
    return names


__all__ = [
    "Param",
    "ParamSpace",
    "SimulationBlowUp",
    "Solver",
    "SolverError",
    "check_finite",
    "get_solver",
    "list_solvers",
    "register",
    "solver_class",
]
