"""A solver that is not one of pdestream's: a program declared in the job config and started by the launcher.

The ``[solver]`` section names ``"external"`` and describes the program's output instead of naming a
JAX solver::

    [solver]
    name = "external"
    n_sims = 16                        # the design, as for any solver (design, seed, fixed apply too)

    [solver.external]
    channels = ["T"]                   # field names, in the order the program sends them
    grid = [32, 32]                    # global grid shape (cells)
    extent = [1.0, 1.0]                # physical size of each axis (default 1 per axis)
    dt = 0.002                         # time between two frames
    frames = 41                        # frames per simulation (frame 0 is the initial condition)
    command = "./heat --sim-id {sim_id} --kappa {kappa} --address {address}"
    cwd = "examples/c"                 # working directory of the command ("" = where pdestream runs)

    [solver.external.params]
    kappa = { low = 0.1, high = 1.0, log = true }

:class:`ExternalSection` validates it (pydantic); :class:`ExternalSolver` is what the job needs of a
solver (parameter space and designs through :mod:`solvers.params`, channels and grid to size the model,
the frame spacing) without a ``rollout``: the frames come from the program over TCP
(:mod:`streaming.transport.launcher`). Command placeholders: :data:`PLACEHOLDERS` and one per parameter.
"""

from __future__ import annotations

import keyword
import shlex
import string
from typing import Any

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from solvers.errors import SolverError
from solvers.params import Param, ParamSpace

NAME = "external"

PLACEHOLDERS = {
    "sim_id": "the simulation id to connect with (pds_connect / streaming.client.connect)",
    "address": "the job's listener HOST:PORT",
    "token": "the listener's token ('' when it needs none); also in $PDESTREAM_TOKEN",
    "params_file": "a JSON file with sim_id, address, frames, dt and every parameter by name",
    "frames": "frames to send (solver.external.frames)",
    "dt": "time between frames (solver.external.dt)",
    "seed": "a seed for the simulation's random initial condition, the same on every retry",
    "attempt": "0 for the first run of a simulation, 1, 2, ... for its retries",
    "python": "the Python interpreter running the job (its virtual environment's)",
}


class ParamBounds(BaseModel):
    """One parameter of the program: uniform in ``[low, high]``, or in log10 when ``log``."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False
    unit: str = "1"

    @model_validator(mode="after")
    def _order(self) -> ParamBounds:
        if not self.low <= self.high:
            raise ValueError(f"low={self.low} is above high={self.high}; swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0, got low={self.low}; use log = false or a positive range")
        return self


class ExternalSection(BaseModel):
    """``[solver.external]``: what the program sends and how to start one simulation of it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    channels: list[str] = Field(min_length=1, description="field names in the order the program sends them")
    grid: list[int] = Field(min_length=1, max_length=3, description="global grid shape")
    extent: list[float] = Field(default_factory=list, description="physical length of each axis; [] = 1 each")
    dt: float = Field(gt=0, description="time between two frames")
    frames: int = Field(ge=2, description="frames per simulation, the initial one included")
    params: dict[str, ParamBounds] = Field(default_factory=dict, description="name = { low, high, log, unit }")
    command: str = Field("", description="starts one simulation; '' = clients are started by hand")
    cwd: str = Field("", description="working directory of the command; '' = the current one")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables of the command")
    timeout: float = Field(0.0, ge=0, description="seconds a run may take before it is killed and retried; 0 = none")
    frozen_border: int = Field(0, ge=0, description="cells at each edge the program holds fixed (Dirichlet walls)")
    validation_file: str = Field("", description="a `pdestream solve` trajectory file with the validation "
                                 "simulations; '' = run the command with held-out parameters")

    @field_validator("channels")
    @classmethod
    def _channels(cls, names: list[str]) -> list[str]:
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"channels={names}: give unique, non-empty field names, e.g. ['u', 'v']")
        return names

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: list[int]) -> list[int]:
        if any(n < 1 for n in grid):
            raise ValueError(f"grid={grid}: every axis needs at least 1 cell")
        return grid

    @field_validator("params")
    @classmethod
    def _param_names(cls, params: dict[str, ParamBounds]) -> dict[str, ParamBounds]:
        for name in params:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError(f"parameter name {name!r} is not usable as a {{placeholder}}; use letters, digits "
                                 "and underscores, e.g. nu or T_left")
            if name in PLACEHOLDERS:
                raise ValueError(f"parameter name {name!r} is taken by the placeholder {{{name}}}; rename it")
        return params

    @model_validator(mode="after")
    def _consistent(self) -> ExternalSection:
        if self.extent and len(self.extent) != len(self.grid):
            raise ValueError(f"extent={self.extent} has {len(self.extent)} axes but grid={self.grid} has "
                             f"{len(self.grid)}; give one length per axis")
        if any(e <= 0 for e in self.extent):
            raise ValueError(f"extent={self.extent}: lengths must be > 0")
        if self.frozen_border and 2 * self.frozen_border >= min(self.grid):
            raise ValueError(f"frozen_border={self.frozen_border} must be below half the smallest grid axis "
                             f"({min(self.grid)})")
        return self

    @field_validator("command")
    @classmethod
    def _command(cls, command: str, info: ValidationInfo) -> str:
        if command and "params" in info.data:  # parameters are validated first (field order); bad ones: no check
            command_argv(command, (*PLACEHOLDERS, *info.data.get("params", {})))  # raises naming the placeholder
        return command

    def placeholder_names(self) -> tuple[str, ...]:
        return (*PLACEHOLDERS, *self.params)


def command_argv(command: str, known: tuple[str, ...] | None = None) -> list[str]:
    """Split ``command`` into argument templates (shell quoting rules; no shell runs it) and check that every
    ``{placeholder}`` is one of ``known``; raises ValueError naming the bad one."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ValueError(f"command={command!r} cannot be split into arguments ({e}); check its quotes") from None
    if not argv:
        raise ValueError("command is empty; give the program and its arguments, or leave command out")
    for arg in argv:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
        except ValueError as e:
            raise ValueError(f"command argument {arg!r}: {e}; write a literal brace as {{{{ or }}}}") from None
        for f in fields:
            base = f.split(".")[0].split("[")[0]
            if known is not None and base not in known:
                raise ValueError(f"command has the unknown placeholder {{{f}}}; known: "
                                 f"{', '.join('{' + k + '}' for k in known)} (parameters come from "
                                 "[solver.external.params])")
    return argv


def fill_command(argv: list[str], values: dict[str, Any]) -> list[str]:
    """The argument templates ``argv`` with their placeholders replaced by ``values``."""
    return [arg.format(**values) for arg in argv]


class ExternalSolver:
    """What the job needs of a solver, for a program declared in ``[solver.external]``.

    ``channels``, ``grid`` and ``frozen_border`` size the model, ``param_space`` and ``sample_params``
    give the design (uniform/LHS/Sobol, log-scaled parameters in log10), ``dt`` is the time between
    frames. There is no ``rollout``: the launcher starts the program and the frames come over TCP.
    """

    name = NAME

    def __init__(self, section: ExternalSection) -> None:
        self.config = section
        self.channels = tuple(section.channels)
        self.frozen_border = section.frozen_border
        self.param_space = ParamSpace(tuple(Param(n, b.low, b.high, b.unit, log=b.log)
                                            for n, b in section.params.items()))
        self.extent = tuple(section.extent) or (1.0,) * len(section.grid)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.config.grid)

    @property
    def dt(self) -> float:
        """Time between two frames."""
        return float(self.config.dt)

    @property
    def frames(self) -> int:
        return int(self.config.frames)

    def coords(self) -> dict[str, np.ndarray]:
        """Cell-centre coordinates of each axis (``x``, ``y``, ``z``) over ``extent``."""
        return {ax: (np.arange(n) + 0.5) * (e / n) for ax, n, e in zip("xyz", self.grid, self.extent, strict=False)}

    def sample_params(self, key: jax.Array, n: int, design: str = "uniform") -> np.ndarray:
        """``n`` parameter vectors ``(n, P)`` (float64) with a ``uniform``, ``lhs`` or ``sobol`` design."""
        return self.param_space.sample(key, n, design)

    def describe(self) -> dict:
        return {"name": self.name, "channels": list(self.channels), "grid": list(self.grid), "dt": self.dt,
                "config": self.config.model_dump(), "params": self.param_space.describe()}

    def rollout(self, *_: Any, **__: Any) -> Any:
        raise SolverError("an external solver is a program, not a JAX rollout: its frames come through the launcher "
                          "(solver.external.command) or from clients started by hand (workers.backend = 'external')")
