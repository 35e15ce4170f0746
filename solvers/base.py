"""The solver contract every PDE solver in ``solvers/`` follows.

A solver is a class with

- ``name``, ``channels`` (names of the output fields) and ``param_space`` (a :class:`ParamSpace`);
- ``Config``: a frozen dataclass of its configuration (grid size, time step, ...) with defaults;
  ``Solver(**overrides)`` validates overrides (unknown key, wrong type or bad value -> SolverError);
- ``initial_state(key, params) -> state`` and a pure, jit-able ``step(state, params) -> state``
  (one time step of length ``dt``), with ``state`` any pytree;
- ``fields(state) -> (C, *grid)`` array of the named channels;
- ``boundary(params) -> (mask, values)``: the output values it imposes (hard constraints a surrogate
  can hold exactly); the default derives them from ``frozen_border`` (nothing imposed when it is 0).

From those the base class builds ``rollout(key, params, n_steps, every=k)`` on ``lax.scan``: the
frames at steps ``0, k, 2k, ..., n_steps`` as ``(n_steps // k + 1, C, *grid)``; with a batch of
parameters ``(B, P)`` and keys ``(B,)`` it is ``vmap`` -ed to ``(B, n_out, C, *grid)``, and a batched
rollout equals a loop of single ones with the same keys.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from solvers.errors import SimulationBlowUp, SolverError
from solvers.params import ParamSpace

State = Any


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` (possibly a string from the command line) to the field type ``typ``."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
        if origin is tuple:
            (item,) = {a for a in typing.get_args(typ) if a is not Ellipsis}
            if isinstance(value, str):
                value = [v for v in value.strip("()[] ").split(",") if v.strip()]
            return tuple(_coerce(name, v, item) for v in value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise SolverError(f"config key {name!r}: cannot read {value!r} as {getattr(typ, '__name__', typ)}")


class Solver:
    """Base class of all solvers; see the module docstring for the contract."""

    name: ClassVar[str]
    channels: ClassVar[tuple[str, ...]]
    param_space: ClassVar[ParamSpace]
    Config: ClassVar[type]
    frozen_border: ClassVar[int] = 0  # cells at each edge of the output held fixed (Dirichlet walls in the grid)

    def __init__(self, **overrides: Any) -> None:
        fields = {f.name: f for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            allowed = ", ".join(f"{k}={getattr(self.Config(), k)!r}" for k in fields)
            raise SolverError(f"{self.name}: unknown config key(s) {', '.join(unknown)}; allowed: {allowed}")
        hints = typing.get_type_hints(self.Config)
        values = {k: _coerce(k, v, hints[k]) for k, v in overrides.items()}
        self.config = self.Config(**values)
        if getattr(self.config, "dtype", "float32") not in ("float32", "float64"):
            raise SolverError(f"{self.name}: dtype must be 'float32' or 'float64', got {self.config.dtype!r}")
        if self.dtype == jnp.float64 and not jax.config.jax_enable_x64:
            raise SolverError(
                f"{self.name}: dtype='float64' needs 64-bit JAX; set JAX_ENABLE_X64=1 in the environment "
                "or call jax.config.update('jax_enable_x64', True) first"
            )
        self._jitted: dict[tuple, Callable] = {}

    # --- to be provided by each solver ------------------------------------------------------
    @property
    def grid(self) -> tuple[int, ...]:
        """Shape of the output grid."""
        raise NotImplementedError

    @property
    def dt(self) -> float:
        """Length of one ``step`` in the solver's time unit."""
        return float(self.config.dt)

    def coords(self) -> dict[str, np.ndarray]:
        """Coordinates of the output grid, one 1D array per axis (``x``, ``y``)."""
        raise NotImplementedError

    def initial_state(self, key: jax.Array, params: jax.Array) -> State:
        raise NotImplementedError

    def step(self, state: State, params: jax.Array) -> State:
        raise NotImplementedError

    def fields(self, state: State) -> jax.Array:
        raise NotImplementedError

    def boundary(self, params: jax.Array) -> tuple[np.ndarray, jax.Array]:
        """The values every output frame holds, whatever the state, for parameters ``params`` ``(P,)``.

        Returns ``mask`` bool ``(C, *grid)``, True where a value is imposed, and ``values`` ``(C, *grid)``
        (the solver's dtype, 0 where nothing is imposed). Default: the ``frozen_border`` ring of every
        channel, with the values of the initial frame; an all-False mask when ``frozen_border`` is 0.
        """
        shape = (len(self.channels), *self.grid)
        w = self.frozen_border
        mask = np.ones(shape, bool)
        mask[(slice(None), *(slice(w, n - w) for n in self.grid))] = False
        if not w:
            return mask, jnp.zeros(shape, self.dtype)
        frame = self.fields(self.initial_state(jax.random.key(0), jnp.asarray(params, self.dtype)))
        return mask, jnp.where(mask, frame, 0)

    def held_cells(self, params: np.ndarray) -> np.ndarray | None:
        """The :meth:`boundary` masks of parameter rows ``(N, P)``, bool ``(N, C, *grid)``; None when nothing is
        imposed (what ``Surrogate.rollout(..., hold=)`` takes)."""
        masks = np.stack([self.boundary(p)[0] for p in np.asarray(params)])
        return masks if masks.any() else None

    # --- shared machinery ------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        return jnp.float64 if getattr(self.config, "dtype", "float32") == "float64" else jnp.float32

    def sample_params(self, key: jax.Array, n: int, design: str = "uniform") -> np.ndarray:
        """``n`` parameter vectors ``(n, P)`` from the solver's space (``uniform``/``lhs``/``sobol``)."""
        return self.param_space.sample(key, n, design)

    def describe(self) -> dict:
        """Plain-dict description: name, channels, grid, dt, config and parameter space."""
        return {
            "name": self.name,
            "channels": list(self.channels),
            "grid": list(self.grid),
            "dt": self.dt,
            "config": dataclasses.asdict(self.config),
            "params": self.param_space.describe(),
        }

    def _rollout_single(self, key: jax.Array, params: jax.Array, n_out: int, every: int) -> jax.Array:
        state0 = self.initial_state(key, params)

        def advance(state: State, _: None) -> tuple[State, jax.Array]:
            state = jax.lax.fori_loop(0, every, lambda i, s: self.step(s, params), state)
            return state, self.fields(state)

        _, frames = jax.lax.scan(advance, state0, None, length=n_out - 1)
        return jnp.concatenate([self.fields(state0)[None], frames], axis=0)

    def rollout(self, key: jax.Array, params: Any, n_steps: int, every: int = 1) -> jax.Array:
        """Run ``n_steps`` steps and return every ``every``-th frame, the initial one included.

        Args:
            key: a PRNG key, or a batch of keys ``(B,)`` for batched parameters (a single key with
                batched parameters is split into ``B`` keys).
            params: ``(P,)`` or ``(B, P)`` parameter vectors inside ``param_space``.
            n_steps: number of solver steps, a multiple of ``every``.
            every: output cadence in steps.

        Returns:
            ``(n_steps // every + 1, C, *grid)``, or ``(B, n_steps // every + 1, C, *grid)``.
        """
        if every < 1 or n_steps < 0 or n_steps % every:
            raise SolverError(
                f"n_steps={n_steps} must be a non-negative multiple of every={every} (every >= 1)"
            )
        p = jnp.asarray(self.param_space.validate(params), dtype=self.dtype)
        batched = p.ndim == 2
        if batched:
            keys = key if _is_key_batch(key) else jax.random.split(key, p.shape[0])
            if keys.shape[0] != p.shape[0]:
                raise SolverError(f"got {keys.shape[0]} keys for {p.shape[0]} parameter vectors; pass one key each")
        else:
            keys = key
        n_out = n_steps // every + 1
        sig = (n_out, every, batched)
        if sig not in self._jitted:
            fn = lambda k, q: self._rollout_single(k, q, n_out, every)  # noqa: E731
            self._jitted[sig] = jax.jit(jax.vmap(fn) if batched else fn)
        return self._jitted[sig](keys, p)


def _is_key_batch(key: jax.Array) -> bool:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2  # raw uint32 keys: (B, 2)


def check_finite(frames: Any, params: Any, names: tuple[str, ...], sim_ids: Any = None) -> None:
    """Raise :class:`SimulationBlowUp` naming the parameters of the first simulation with NaN/Inf.

    ``frames`` is ``(B, ...)`` and ``params`` ``(B, P)``.
    """
    flat = np.asarray(frames).reshape(len(frames), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        sid = i if sim_ids is None else int(np.asarray(sim_ids)[i])
        vals = ", ".join(f"{n}={v:g}" for n, v in zip(names, np.asarray(params)[i], strict=True))
        raise SimulationBlowUp(
            f"simulation {sid} blew up (NaN/Inf) with parameters {vals}; "
            f"{int(bad.sum())} of {len(bad)} simulations affected - reduce dt or the parameter range"
        )
