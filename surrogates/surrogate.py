"""`Surrogate`: a trained model with its normalisation and metadata, used like a numerical solver.

A surrogate predicts frames of the ``C`` channels ``metadata.channels`` on a grid; consecutive
frames are ``metadata.dt`` apart (the data's ``dt * every``). Three task kinds:

``"next_step"``  u(t-(W-1)dt) .. u(t)  ->  u(t+dt). ``window`` W >= 1 input frames, one output frame.
``"bundle"``     u(t-(W-1)dt) .. u(t)  ->  u(t+dt) .. u(t+K dt): ``horizon`` K output frames per model
                 call (temporal bundling, MP-PDE; usually W = K).
``"field"``      cond (and time) -> u(t): the model reads only the conditioning vector; it is called
                 as ``model(None, cond)`` (the MLP).

Model space. Frames are normalised per channel with the frozen field statistics (the same for
inputs and outputs, so an output can be fed back as an input) and stacked frame-major along the
channel axis, oldest first: ``x[b, w*C + c] = (frame_w[c] - mean_c) / std_c``, so
``x`` is ``(B, W*C, *grid)`` and the model's output is ``(B, K*C, *grid)``, read back the same
way. The conditioning vector the model sees is the caller's ``cond`` (entries ``cond_names``)
followed, when ``time_in_cond`` is set, by the time ``t`` of the last input frame (``next_step``,
``bundle``) or of the predicted field (``field``); it is normalised with the conditioning
statistics. ``encode_batch`` builds training batches with exactly this layout. With ``predict =
"increment"`` the model's output is added to the last input frame (model space) before it is read
back; a ``frozen_border`` is then copied from the last input frame (physical units), a hard
constraint applied after every model call, and so are the cells of a ``hold`` mask given to ``step`` /
``rollout`` (a solver's ``boundary(params)`` mask, e.g. obstacle cells that depend on the parameters).
``metadata.output_map()`` is the same map in model space for the train step (the frozen border; a
per-simulation ``hold`` mask is imposed at validation and use), so training, validation and a loaded
surrogate compute the same thing.

Solver-like interface (shapes; a leading batch axis B is optional everywhere):

``step(fields, cond=None, t=0.0, hold=None)``
  next_step: ``(C, *grid)`` (``W`` = 1) or ``(W, C, *grid)``  ->  ``(C, *grid)``, the next frame.
  bundle:    ``(C, *grid)`` (``W`` = 1) or ``(W, C, *grid)``  ->  ``(K, C, *grid)``, the next K frames.
  field:     ``fields`` is ignored (may be None)              ->  ``(C, *grid)`` at ``t + dt``.
``rollout(fields0, n_steps, cond=None, t0=0.0, hold=None)`` -> ``(n_steps + 1, C, *grid)``: frames at
  ``t0, t0 + dt, ..., t0 + n_steps dt``, where ``t0`` is the time of the last frame of ``fields0``
  and frame 0 is that frame (as a solver's rollout starts with its initial condition). The model is
  applied autoregressively inside one ``lax.scan`` (bundle: ``ceil(n_steps / K)`` calls, the
  surplus frames of the last call dropped). For ``field`` the model is evaluated at each requested
  time (a scan over times; needs ``time_in_cond``); frame 0 is ``fields0`` when given, else the
  model's own prediction at ``t0``.
``cond`` holds the ``cond_names`` entries, ``(P,)`` or ``(B, P)`` (broadcast over the batch); the
surrogate appends the time itself. ``t`` / ``t0`` are scalars or ``(B,)``.

The grid of a call may differ from ``metadata.grid`` (the training grid) when the model allows it
(FNO); only the number of axes is checked here.

Persistence. ``save(path)`` writes ``path/surrogate.json`` (format, model config, metadata) and
``path/state/``, an Orbax checkpoint of ``{"model": <parameters>, "normalizer": <accumulators>}``
whose custom metadata repeats the model config. ``Surrogate.load(path)`` rebuilds the model with
``get_model`` from the JSON and restores the arrays; a model config or array shape that does not
match the checkpoint raises :class:`SurrogateError` naming both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models import get_model, model_config
from surrogates.normalizer import FrozenStats, Normalizer
from surrogates.training import OutputMap, chain, hold, increment

__all__ = ["KINDS", "Surrogate", "SurrogateMetadata"]

KINDS = ("next_step", "field", "bundle")
PREDICTS = ("state", "increment")
FORMAT = "pdestream-surrogate"
VERSION = 1
_JSON = "surrogate.json"
_STATE = "state"


# --------------------------------------------------------------------------- metadata
@dataclasses.dataclass(frozen=True)
class SurrogateMetadata:
    """What a surrogate predicts (everything but the model's own config).

    kind: "next_step", "field" or "bundle" (see the module docstring).
    solver: name of the solver that produced the training data (e.g. "heat2d").
    grid: the training grid, e.g. (64, 64).
    dt: time between consecutive frames (the data's solver dt * every), in the solver's unit.
    channels: names of the C field channels, e.g. ("u",).
    cond_names: names of the conditioning entries the caller passes (PDE parameters); () for none.
    time_in_cond: the model's conditioning vector ends with the time (added by the surrogate).
    window: W, input frames per model call (1 for "field").
    horizon: K, output frames per model call (1 for "next_step" and "field").
    frozen_border: width in cells of a grid border whose values never change (Dirichlet walls
        included in the output, e.g. heat2d's; the solver's ``boundary`` mask): a hard constraint,
        ``step``/``rollout`` copy it, exactly, from the last input frame after every model call instead
        of trusting the model there; 0 (default) for none. Not for "field".
    predict: "state" (default): the model outputs the next frames; "increment": it outputs their
        difference to the last input frame (in normalised units), which the surrogate adds back.
        Not for "field".
    extra: free-form JSON-serialisable information (e.g. a training summary).
    """

    kind: str
    solver: str
    grid: tuple[int, ...]
    dt: float
    channels: tuple[str, ...]
    cond_names: tuple[str, ...] = ()
    time_in_cond: bool = False
    window: int = 1
    horizon: int = 1
    frozen_border: int = 0
    predict: str = "state"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, want: str) -> SurrogateError:
            return SurrogateError(f"surrogate metadata: {name}={value!r} must be {want}")

        if self.kind not in KINDS:
            raise bad("kind", self.kind, f"one of {list(KINDS)}")
        if not isinstance(self.solver, str) or not self.solver:
            raise bad("solver", self.solver, "the solver's name (a non-empty string)")
        grid = tuple(self.grid) if isinstance(self.grid, list | tuple) else self.grid
        if not isinstance(grid, tuple) or not grid or any(_not_int(n, 1) for n in grid):
            raise bad("grid", self.grid, "a tuple of positive grid sizes, e.g. (64, 64)")
        object.__setattr__(self, "grid", tuple(int(n) for n in grid))
        if (
            isinstance(self.dt, bool)
            or not isinstance(self.dt, int | float)
            or not (math.isfinite(self.dt) and self.dt > 0)
        ):
            raise bad("dt", self.dt, "a positive number (time between consecutive frames)")
        object.__setattr__(self, "dt", float(self.dt))
        for name in ("channels", "cond_names"):
            value = getattr(self, name)
            value = tuple(value) if isinstance(value, list | tuple) else value
            if not isinstance(value, tuple) or any(not isinstance(v, str) or not v for v in value):
                raise bad(name, getattr(self, name), "a tuple of names (strings)")
            if len(set(value)) != len(value):
                raise bad(name, value, "a tuple of distinct names")
            object.__setattr__(self, name, value)
        if not self.channels:
            raise bad("channels", self.channels, "at least one channel name")
        if not isinstance(self.time_in_cond, bool):
            raise bad("time_in_cond", self.time_in_cond, "True or False")
        for name in ("window", "horizon"):
            if _not_int(getattr(self, name), 1):
                raise bad(name, getattr(self, name), "an integer >= 1")
        if _not_int(self.frozen_border, 0) or 2 * self.frozen_border >= min(self.grid):
            raise bad("frozen_border", self.frozen_border, f"an integer >= 0 below half the grid {self.grid}")
        if self.kind == "field" and self.frozen_border:
            raise bad("frozen_border", self.frozen_border, '0 for kind="field" (it reads no input frame to copy from)')
        if self.predict not in PREDICTS or (self.kind == "field" and self.predict != "state"):
            raise bad("predict", self.predict, f'one of {list(PREDICTS)} ("state" for kind="field")')
        if self.kind == "next_step" and self.horizon != 1:
            raise bad("horizon", self.horizon, '1 for kind="next_step" (use kind="bundle" for K > 1)')
        if self.kind == "field" and (self.window, self.horizon) != (1, 1):
            raise SurrogateError(
                f'surrogate metadata: kind="field" reads no input frames and predicts one field; '
                f"window={self.window} and horizon={self.horizon} must both be 1"
            )
        if self.kind == "field" and not (self.cond_names or self.time_in_cond):
            raise SurrogateError(
                'surrogate metadata: kind="field" maps the conditioning vector to a field; give '
                "cond_names and/or time_in_cond=True"
            )
        if not isinstance(self.extra, Mapping):
            raise bad("extra", self.extra, "a dict")
        try:
            json.dumps(dict(self.extra))
        except (TypeError, ValueError) as e:
            raise bad("extra", self.extra, f"JSON-serialisable ({e})") from None

    def output_map(self) -> OutputMap:
        """What ``step``/``rollout`` do to a model output, as a model-space map for training
        (``surrogates.training``'s ``output_map``): the increment added, the frozen border held."""
        c = len(self.channels)
        maps = [increment(c)] if self.predict == "increment" else []
        if self.frozen_border:
            maps.append(hold(_border_mask(self.grid, self.frozen_border), c))
        return chain(*maps)

    @property
    def cond_dim(self) -> int:
        """Length of the model's conditioning vector (cond_names plus the time, if any)."""
        return len(self.cond_names) + int(self.time_in_cond)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out.update(
            grid=list(self.grid),
            channels=list(self.channels),
            cond_names=list(self.cond_names),
            extra=dict(self.extra),
        )
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SurrogateMetadata:
        """Inverse of ``to_dict``; unknown keys are an error."""
        if not isinstance(d, Mapping):
            raise SurrogateError(f"surrogate metadata must be a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise SurrogateError(f"surrogate metadata: unknown key(s) {unknown}; allowed: {names}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f)]
        if missing:
            raise SurrogateError(f"surrogate metadata: missing key(s) {missing}")
        return cls(**d)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _not_int(value: Any, lo: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo


def _canon(obj: Any) -> Any:
    """JSON round trip (tuples -> lists) so that configs compare as saved."""
    return json.loads(json.dumps(obj))


def _describe(config: Mapping[str, Any] | None) -> str:
    if config is None:
        return "<unknown model>"
    rest = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "name")
    return f"{config.get('name', '?')}({rest})"


def _config_diff(a: Mapping[str, Any] | None, b: Mapping[str, Any], a_name: str, b_name: str) -> str:
    """'width=64 in a_name but 32 in b_name, ...' for the keys whose values differ."""
    if a is None:
        return ""
    a, b = _canon(a), _canon(b)
    keys = [k for k in {**a, **b} if a.get(k, "<absent>") != b.get(k, "<absent>")]
    return ", ".join(f"{k}={a.get(k, '<absent>')!r} in {a_name} but {b.get(k, '<absent>')!r} in {b_name}" for k in keys)


def _check_compat(config: Mapping[str, Any], meta: SurrogateMetadata, norm: Normalizer) -> None:
    """The model config, metadata and normaliser must describe the same task."""
    c, w, k = len(meta.channels), meta.window, meta.horizon
    want: dict[str, int] = {} if meta.kind == "field" else {"in_channels": w * c}
    want.update(out_channels=k * c, ndim=len(meta.grid), cond_dim=meta.cond_dim)
    for key, value in want.items():
        if config.get(key) != value:
            raise SurrogateError(
                f"model {_describe(config)} does not fit the surrogate metadata: {key} is "
                f"{config.get(key)!r} but kind={meta.kind!r} with {c} channel(s) {list(meta.channels)}, "
                f"window={w}, horizon={k}, grid={meta.grid} and cond_dim={meta.cond_dim} "
                f"(cond_names={list(meta.cond_names)}, time_in_cond={meta.time_in_cond}) needs {value}"
            )
    grid = config.get("grid")
    if meta.kind == "field" and grid is not None and tuple(grid) != meta.grid:
        raise SurrogateError(
            f"model {_describe(config)} predicts on grid {tuple(grid)} but the metadata says grid={meta.grid}"
        )
    got = (norm.channels, norm.ndim, norm.cond_dim)
    need = (c, len(meta.grid), meta.cond_dim)
    if got != need:
        raise SurrogateError(
            f"normaliser {norm!r} does not fit the metadata: (channels, ndim, cond_dim) = {got} but the "
            f"surrogate needs {need}; fit Normalizer({c}, {len(meta.grid)}, cond_dim={meta.cond_dim})"
        )
    if not norm.frozen:
        raise SurrogateError("the normaliser is not frozen; call normalizer.freeze() after fitting it")


# --------------------------------------------------------------------------- pytree helpers
def _str_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{"a.0.b": (shape, dtype name)} for every array-like leaf of a nested dict."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    )
    out = {}
    for path, leaf in leaves:
        key = ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = (tuple(int(n) for n in leaf.shape), np.dtype(leaf.dtype).name)
    return out


def _shape_diffs(found: dict, expected: dict) -> list[str]:
    diffs = [
        f"{k}: {found[k][0]} {found[k][1]} in the checkpoint but {expected[k][0]} {expected[k][1]} in the model"
        for k in sorted(set(found) & set(expected))
        if found[k] != expected[k]
    ]
    diffs += [f"{k}: in the model, missing from the checkpoint" for k in sorted(set(expected) - set(found))]
    diffs += [f"{k}: in the checkpoint, not in the model" for k in sorted(set(found) - set(expected))]
    return diffs


def _model_pure(state: nnx.State) -> dict[str, Any]:
    return _str_keys(nnx.to_pure_dict(state))


# --------------------------------------------------------------------------- jitted core
class _Spec(NamedTuple):
    """The hashable part of the metadata that the compiled functions depend on."""

    channels: int
    window: int
    horizon: int
    dt: float
    time_in_cond: bool
    frozen_border: int
    predict: str


def _full_cond(spec: _Spec, cond: jax.Array | None, t: jax.Array) -> jax.Array | None:
    """cond (B, P) or None, t (B,) -> the model's raw conditioning vector (B, cond_dim) or None."""
    if not spec.time_in_cond:
        return cond
    tcol = t[:, None].astype(jnp.float32)
    return tcol if cond is None else jnp.concatenate([cond, tcol], axis=-1)


def _apply(
    model: nnx.Module,
    stats: FrozenStats,
    spec: _Spec,
    window: jax.Array | None,
    cond: jax.Array | None,
    hold_mask: jax.Array | None = None,
) -> jax.Array:
    """Raw frames (B, W, C, *grid) (None for "field") + raw cond -> raw frames (B, K, C, *grid).

    An increment is added in model space; the frozen border and the cells of ``hold_mask`` (bool (B, C, *grid))
    are copied after denormalising, in physical units, so that they are bitwise the input's."""
    c = spec.channels
    if window is None:
        y = model(None, stats.normalize_cond(cond))
    else:
        b, w = window.shape[:2]
        x = stats.normalize(window).reshape((b, w * c) + window.shape[3:])
        y = model(x, stats.normalize_cond(cond))
        if spec.predict == "increment":
            y = increment(c)(x, y)
    y = stats.denormalize(y.reshape((y.shape[0], y.shape[1] // c, c) + y.shape[2:]))
    if spec.frozen_border and window is not None:
        flat = (y.shape[0], -1) + y.shape[3:]
        held = hold(_border_mask(y.shape[3:], spec.frozen_border), c)(window.reshape(flat), y.reshape(flat))
        y = held.reshape(y.shape)
    if hold_mask is not None:
        y = jnp.where(hold_mask[:, None], window[:, -1:], y)
    return y


def _border_mask(grid: tuple[int, ...], width: int) -> np.ndarray:
    """Boolean ``grid``: True on the cells within ``width`` of any edge."""
    mask = np.zeros(grid, dtype=bool)
    for axis, n in enumerate(grid):
        idx = [slice(None)] * len(grid)
        for sl in (slice(0, width), slice(n - width, n)):
            idx[axis] = sl
            mask[tuple(idx)] = True
    return mask


# The compiled functions take the graph definition and the spec as static arguments, so two
# surrogates of the same architecture and task (e.g. a saved one and its reloaded copy) share
# their compiled programs; parameters and statistics are ordinary (traced) arguments.
@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _step_jit(
    graphdef: Any,
    spec: _Spec,
    state: nnx.State,
    stats: FrozenStats,
    window: jax.Array | None,
    cond: jax.Array | None,
    t: jax.Array,
    hold_mask: jax.Array | None = None,
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    return _apply(model, stats, spec, window, _full_cond(spec, cond, t), hold_mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "n_steps"))
def _rollout_jit(
    graphdef: Any,
    spec: _Spec,
    state: nnx.State,
    stats: FrozenStats,
    window0: jax.Array,
    cond: jax.Array | None,
    t0: jax.Array,
    n_steps: int,
    hold_mask: jax.Array | None = None,
) -> jax.Array:
    model = nnx.merge(graphdef, state)
    w, k = spec.window, spec.horizon
    b = window0.shape[0]

    def call(win: jax.Array, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = t0 + (i * k) * spec.dt  # time of the last frame of win (no drift from repeated adds)
        pred = _apply(model, stats, spec, win, _full_cond(spec, cond, t), hold_mask)  # (B, K, C, *grid)
        return jnp.concatenate([win, pred], axis=1)[:, -w:], pred

    n_calls = -(-n_steps // k)
    _, preds = jax.lax.scan(call, window0, jnp.arange(n_calls))  # (n_calls, B, K, C, *grid)
    preds = jnp.moveaxis(preds, 0, 1).reshape((b, n_calls * k) + window0.shape[2:])[:, :n_steps]
    return jnp.concatenate([window0[:, -1:], preds], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "n_steps"))
def _field_rollout_jit(
    graphdef: Any,
    spec: _Spec,
    state: nnx.State,
    stats: FrozenStats,
    first: jax.Array | None,
    cond: jax.Array | None,
    t0: jax.Array,
    n_steps: int,
) -> jax.Array:
    model = nnx.merge(graphdef, state)

    def at(_: None, i: jax.Array) -> tuple[None, jax.Array]:
        return None, _apply(model, stats, spec, None, _full_cond(spec, cond, t0 + i * spec.dt))[:, 0]

    start = 0 if first is None else 1
    _, fields = jax.lax.scan(at, None, jnp.arange(start, n_steps + 1))  # (n, B, C, *grid)
    fields = jnp.moveaxis(fields, 0, 1)
    return fields if first is None else jnp.concatenate([first[:, None], fields], axis=1)


# --------------------------------------------------------------------------- the surrogate
class Surrogate:
    """A trained model + frozen normalisation + metadata; ``step`` / ``rollout`` like a solver.

    Build one with :meth:`from_model` (after training) or :meth:`load` (from disk). The object holds
    its own copy of the model's parameters and its jitted ``step`` / ``rollout`` functions (compiled
    once per input shape, and per ``n_steps`` for ``rollout``; surrogates of the same architecture
    and task share the compiled programs). A trainer can build one as soon as the normaliser is
    frozen, feed ``encode_batch`` output to its train step, and refresh the parameters with
    :meth:`set_state` (after ``train_step.sync()``) before evaluating or saving.
    """

    def __init__(
        self,
        graphdef: Any,
        state: nnx.State,
        normalizer: Normalizer,
        metadata: SurrogateMetadata,
        config: Mapping[str, Any],
    ) -> None:
        self._graphdef = graphdef
        self._state = state
        self._normalizer = normalizer
        self._meta = metadata
        self._config = dict(config)
        self._stats: FrozenStats = normalizer.stats
        m = metadata
        self._spec = spec = _Spec(len(m.channels), m.window, m.horizon, m.dt, m.time_in_cond, m.frozen_border,
                                  m.predict)
        # The jitted functions, bound to this surrogate's architecture and task.
        self._step_fn = functools.partial(_step_jit, graphdef=graphdef, spec=spec)
        self._rollout_fn = functools.partial(_rollout_jit, graphdef=graphdef, spec=spec)
        self._field_fn = functools.partial(_field_rollout_jit, graphdef=graphdef, spec=spec)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_model(
        cls,
        model: nnx.Module,
        normalizer: Normalizer,
        metadata: SurrogateMetadata | Mapping[str, Any],
    ) -> Surrogate:
        """A surrogate from a (trained) registered model, its frozen normaliser and the metadata.

        The parameters are copied, so later training of ``model`` (or a train step that donates
        its buffers) does not change this surrogate; use :meth:`set_state` to refresh it.
        """
        meta = metadata if isinstance(metadata, SurrogateMetadata) else SurrogateMetadata.from_dict(metadata)
        if not isinstance(normalizer, Normalizer):
            raise SurrogateError(
                f"normalizer must be a surrogates.normalizer.Normalizer, got {type(normalizer).__name__}"
            )
        config = model_config(model)
        _check_compat(config, meta, normalizer)
        graphdef, state = nnx.split(model)
        return cls(graphdef, jax.tree.map(jnp.copy, state), normalizer, meta, config)

    def set_state(self, params: nnx.Module | nnx.State | Mapping[str, Any]) -> None:
        """Replace the parameters (copied) by those of a model, an ``nnx.State`` or a pure dict
        (``nnx.to_pure_dict``) of the same architecture. The compiled functions are reused."""
        if isinstance(params, nnx.Module):
            pure = nnx.to_pure_dict(nnx.state(params))
        elif isinstance(params, nnx.State):
            pure = nnx.to_pure_dict(params)
        elif isinstance(params, Mapping):
            pure = params
        else:
            raise SurrogateError(
                f"set_state: expected a model, an nnx.State or a dict of arrays, got {type(params).__name__}"
            )
        diffs = _shape_diffs(_flat_shapes(_str_keys(pure)), _flat_shapes(_model_pure(self._state)))
        if diffs:
            raise SurrogateError(
                f"set_state: the new parameters do not fit {_describe(self._config)}: {'; '.join(diffs[:3])}"
            )
        new = nnx.state(nnx.merge(self._graphdef, self._state))  # fresh Variables, same structure
        nnx.replace_by_pure_dict(new, jax.tree.map(lambda a: jnp.array(a, copy=True), pure))
        self._state = new

    # ------------------------------------------------------------------ properties
    @property
    def metadata(self) -> SurrogateMetadata:
        return self._meta

    @property
    def normalizer(self) -> Normalizer:
        return self._normalizer

    @property
    def model_config(self) -> dict[str, Any]:
        """``get_model`` keyword arguments (with ``name``) that rebuild the architecture."""
        return dict(self._config)

    @property
    def model(self) -> nnx.Module:
        """The model (a fresh module object sharing this surrogate's parameter arrays)."""
        return nnx.merge(self._graphdef, self._state)

    @property
    def kind(self) -> str:
        return self._meta.kind

    @property
    def dt(self) -> float:
        return self._meta.dt

    @property
    def channels(self) -> tuple[str, ...]:
        return self._meta.channels

    @property
    def grid(self) -> tuple[int, ...]:
        return self._meta.grid

    def __repr__(self) -> str:
        m = self._meta
        return (
            f"Surrogate({_describe(self._config)}, kind={m.kind!r}, solver={m.solver!r}, grid={m.grid}, "
            f"dt={m.dt}, channels={list(m.channels)}, cond_names={list(m.cond_names)}, "
            f"time_in_cond={m.time_in_cond}, window={m.window}, horizon={m.horizon})"
        )

    # ------------------------------------------------------------------ pure model-space maps
    def encode_batch(
        self,
        inputs: jax.Array | None,
        targets: jax.Array | None = None,
        cond: jax.Array | None = None,
        t: jax.Array | float | None = None,
    ) -> dict[str, jax.Array]:
        """Raw samples -> a normalised model-space batch for ``surrogates.training`` (pure jnp).

        inputs: ``(B, W, C, *grid)`` (or ``(B, C, *grid)`` when W = 1); None for kind "field".
        targets: ``(B, K, C, *grid)`` (or ``(B, C, *grid)`` when K = 1), or None; for unrolled training
          the targets of S consecutive model calls, ``(B, S*K, C, *grid)``.
        cond: ``(B, P)`` entries ``cond_names`` (None when there are none).
        t: ``(B,)`` or scalar time of the last input frame / of the target field; needed when
          ``time_in_cond``.
        Returns ``{"x": (B, W*C, *grid), "y": (B, K*C, *grid), "cond": (B, cond_dim)}`` without the
        keys that do not apply (no "x" for "field", no "cond" when cond_dim = 0).
        """
        m, stats = self._meta, self._stats
        c = len(m.channels)
        out: dict[str, jax.Array] = {}
        if m.kind == "field":
            if inputs is not None:
                raise SurrogateError('encode_batch: kind="field" reads no input frames; pass inputs=None')
            if targets is None and cond is None and t is None:
                raise SurrogateError("encode_batch: give cond and/or t to size the batch")
            b = None
        else:
            win = self._frames(inputs, m.window, "inputs", batched=True)
            b = win.shape[0]
            out["x"] = stats.normalize(win).reshape((b, m.window * c) + win.shape[3:])
        if targets is not None:
            n = np.shape(targets)[1] if np.ndim(targets) == len(m.grid) + 3 else m.horizon
            if n % m.horizon:
                raise SurrogateError(f"encode_batch: {n} target frames are not whole model calls of {m.horizon}")
            y = self._frames(targets, n, "targets", batched=True)
            b = y.shape[0] if b is None else b
            if y.shape[0] != b:
                raise SurrogateError(f"encode_batch: {y.shape[0]} targets for {b} inputs")
            out["y"] = stats.normalize(y).reshape((b, n * c) + y.shape[3:])
        if b is None:
            b = int(np.shape(cond)[0]) if cond is not None else int(np.size(t))
        full = _full_cond(self._spec, self._cond(cond, b), self._times(t, b))
        if full is not None:
            out["cond"] = stats.normalize_cond(full)
        return out

    def decode_outputs(self, y: jax.Array) -> jax.Array:
        """Model output ``(B, K*C, *grid)`` -> raw frames ``(B, K, C, *grid)`` (pure jnp)."""
        c = len(self._meta.channels)
        if y.ndim != len(self._meta.grid) + 2 or y.shape[1] % c:
            raise SurrogateError(
                f"decode_outputs: got shape {y.shape}; expected (B, K*{c}, *grid) with a {len(self._meta.grid)}D grid"
            )
        return self._stats.denormalize(y.reshape((y.shape[0], y.shape[1] // c, c) + y.shape[2:]))

    # ------------------------------------------------------------------ argument checks (host side)
    def _frames(self, fields: Any, n: int, what: str, batched: bool | None = None) -> jax.Array:
        """fields -> (B, n, C, *grid) float32.

        Accepted: ``(C, *grid)`` when n = 1, else ``(n, C, *grid)``, with a leading batch axis
        when ``batched`` (None: inferred from the number of axes); a batched n = 1 array may also
        carry its frame axis, ``(B, 1, C, *grid)``.
        """
        m = self._meta
        c, nd = len(m.channels), len(m.grid)
        if fields is None:
            raise SurrogateError(f"{what}: got None; pass {n} frame(s) of the channels {list(m.channels)}")
        arr = jnp.asarray(fields, jnp.float32)
        single = nd + 1 if n == 1 else nd + 2
        if batched is None:
            batched = arr.ndim == single + 1
        if batched and n == 1 and arr.ndim == nd + 3 and arr.shape[1] == 1:
            arr = arr[:, 0]
        shown = f"({c}, *grid)" if n == 1 else f"({n}, {c}, *grid)"
        if arr.ndim != single + int(batched) or arr.shape[-nd - 1] != c or (n > 1 and arr.shape[-nd - 2] != n):
            raise SurrogateError(
                f"{what}: got shape {arr.shape}; expected {shown}{' with a leading batch axis' if batched else ''}"
                f"{'' if batched else ' or (B, *that)'}: {n} frame(s) of the {c} channel(s) "
                f"{list(m.channels)} on a {nd}D grid"
            )
        if not batched:
            arr = arr[None]
        return arr[:, None] if n == 1 else arr

    def _field_batch(self, cond: Any, t: Any) -> tuple[int, bool]:
        """(batch size, unbatched call?) of a "field" call from cond (P,)/(B, P) and t ()/(B,)."""
        if cond is not None and np.ndim(cond) == 2:
            return int(np.shape(cond)[0]), False
        if np.ndim(t) == 1:
            return int(np.shape(t)[0]), False
        return 1, True

    def _cond(self, cond: Any, b: int) -> jax.Array | None:
        names = self._meta.cond_names
        if not names:
            if cond is not None and np.size(cond) > 0:
                raise SurrogateError(
                    f"cond: this surrogate takes no conditioning parameters (cond_names=[]), got shape "
                    f"{np.shape(cond)}; pass cond=None"
                )
            return None
        if cond is None:
            raise SurrogateError(f"cond: this surrogate needs the parameters {list(names)}; pass cond=(P,) or (B, P)")
        arr = jnp.asarray(cond, jnp.float32)
        p = len(names)
        if arr.shape == (p,):
            return jnp.broadcast_to(arr, (b, p))
        if arr.shape != (b, p):
            raise SurrogateError(
                f"cond: got shape {arr.shape}; expected ({p},) or ({b}, {p}) for the parameters {list(names)}"
            )
        return arr

    def _times(self, t: Any, b: int) -> jax.Array:
        if t is None:
            if self._meta.time_in_cond:
                raise SurrogateError("t: this surrogate reads the time (time_in_cond=True); pass t")
            t = 0.0
        arr = jnp.asarray(t, jnp.float32)
        if arr.shape not in ((), (b,)):
            raise SurrogateError(f"t: got shape {arr.shape}; expected a scalar or ({b},)")
        return jnp.broadcast_to(arr, (b,))

    def _hold(self, hold: Any, b: int) -> jax.Array | None:
        """A ``hold`` mask ``(C, *grid)`` or ``(B, C, *grid)`` -> bool ``(B, C, *grid)`` (None stays None)."""
        if hold is None:
            return None
        m = self._meta
        if m.kind == "field":
            raise SurrogateError('hold: kind="field" reads no input frame to hold values from; pass hold=None')
        arr = jnp.asarray(hold)
        one = (len(m.channels), *m.grid)
        if arr.dtype != jnp.bool_ or arr.shape not in (one, (b, *one)):
            raise SurrogateError(
                f"hold: got {arr.dtype} {arr.shape}; expected a bool mask {one} or {(b, *one)} "
                "(e.g. the first value of the solver's boundary(params))"
            )
        return jnp.broadcast_to(arr, (b, *one))

    def _call_step(self, window: jax.Array | None, cond: Any, t: Any, b: int, hold: Any = None) -> jax.Array:
        return self._step_fn(
            state=self._state, stats=self._stats, window=window, cond=self._cond(cond, b), t=self._times(t, b),
            hold_mask=self._hold(hold, b),
        )

    # ------------------------------------------------------------------ solver-like interface
    def step(
        self,
        fields: jax.Array | None,
        cond: jax.Array | None = None,
        t: float | jax.Array = 0.0,
        hold: jax.Array | None = None,
    ) -> jax.Array:
        """One model call; see the module docstring for shapes. ``t``: time of the last input frame;
        ``hold``: bool ``(C, *grid)`` / ``(B, C, *grid)``, cells that keep the last input frame's values."""
        m = self._meta
        if m.kind == "field":
            self._hold(hold, 1)
            return self.predict(cond, jnp.asarray(t, jnp.float32) + m.dt)
        single = np.ndim(fields) == len(m.grid) + (1 if m.window == 1 else 2)
        win = self._frames(fields, m.window, "step: fields")
        b = win.shape[0]
        out = self._call_step(win, cond, t, b, hold)  # (B, K, C, *grid)
        if m.kind == "next_step":
            out = out[:, 0]
        return out[0] if single else out

    def predict(self, cond: jax.Array | None, t: float | jax.Array = 0.0) -> jax.Array:
        """Kind "field": the field at time t, ``(C, *grid)`` (or ``(B, C, *grid)`` for cond ``(B, P)``/t ``(B,)``)."""
        m = self._meta
        if m.kind != "field":
            raise SurrogateError(f'predict(cond, t) is for kind="field" surrogates; this one is {m.kind!r}: use step()')
        b, single = self._field_batch(cond, t)
        out = self._call_step(None, cond, t, b)[:, 0]
        return out[0] if single else out

    def rollout(
        self,
        fields0: jax.Array | None,
        n_steps: int,
        cond: jax.Array | None = None,
        t0: float | jax.Array = 0.0,
        hold: jax.Array | None = None,
    ) -> jax.Array:
        """``n_steps`` frames after ``fields0``: ``(n_steps + 1, C, *grid)`` (or ``(B, n_steps + 1, C, *grid)``).

        fields0: the initial window ``(C, *grid)`` / ``(W, C, *grid)`` (``(B, ...)`` batched); for
          kind "field" an optional ``(C, *grid)`` / ``(B, C, *grid)`` initial field.
        cond: the parameters ``(P,)`` or ``(B, P)``; t0: time of the last frame of ``fields0``.
        hold: bool ``(C, *grid)`` / ``(B, C, *grid)``: cells held at the last input frame's values after
          every model call (a solver's ``boundary(params)`` mask); not for kind "field".
        """
        if _not_int(n_steps, 0):
            raise SurrogateError(f"rollout: n_steps={n_steps!r} must be an integer >= 0")
        n_steps = int(n_steps)
        m = self._meta
        if m.kind == "field":
            self._hold(hold, 1)
            return self._rollout_field(fields0, n_steps, cond, t0)
        single = np.ndim(fields0) == len(m.grid) + (1 if m.window == 1 else 2)
        win = self._frames(fields0, m.window, "rollout: fields0")
        b = win.shape[0]
        out = self._rollout_fn(
            state=self._state,
            stats=self._stats,
            window0=win,
            cond=self._cond(cond, b),
            t0=self._times(t0, b),
            n_steps=n_steps,
            hold_mask=self._hold(hold, b),
        )
        return out[0] if single else out

    def _rollout_field(self, fields0: Any, n_steps: int, cond: Any, t0: Any) -> jax.Array:
        m = self._meta
        if not m.time_in_cond:
            raise SurrogateError(
                'rollout: this kind="field" surrogate has no time input (time_in_cond=False), so there is '
                "nothing to roll out; call predict(cond)"
            )
        first = None
        if fields0 is not None:
            single = np.ndim(fields0) == len(m.grid) + 1
            first = self._frames(fields0, 1, "rollout: fields0")[:, 0]
            b = first.shape[0]
        else:
            b, single = self._field_batch(cond, t0)
        out = self._field_fn(
            state=self._state,
            stats=self._stats,
            first=first,
            cond=self._cond(cond, b),
            t0=self._times(t0, b),
            n_steps=n_steps,
        )
        return out[0] if single else out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the surrogate to the directory ``path`` (``surrogate.json`` + Orbax ``state/``).

        The directory is written next to ``path`` under a temporary name and renamed at the end, so
        a crash leaves either the old surrogate or the new one. An existing surrogate directory is
        replaced only with ``overwrite=True``; any other non-empty directory is never touched.
        Returns the absolute path.
        """
        path = Path(path).expanduser().absolute()
        if path.exists():
            if not path.is_dir() or (any(path.iterdir()) and not (path / _JSON).exists()):
                raise SurrogateError(
                    f"save: {path} exists and is not a surrogate directory; choose a new or empty directory"
                )
            if (path / _JSON).exists() and not overwrite:
                raise SurrogateError(f"save: a surrogate already exists at {path}; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "model": _canon(self._config),
            "metadata": self._meta.to_dict(),
        }
        tree = {"model": _model_pure(self._state), "normalizer": self._normalizer.state_dict()}
        try:
            ckptr = ocp.StandardCheckpointer()
            try:
                ckptr.save(tmp / _STATE, tree, custom_metadata={"format": FORMAT, "model": doc["model"]})
                ckptr.wait_until_finished()
            finally:
                ckptr.close()
            (tmp / _JSON).write_text(json.dumps(doc, indent=2) + "\n")
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, *, model: nnx.Module | None = None) -> Surrogate:
        """Read a surrogate written by :meth:`save`.

        The model is rebuilt with ``get_model`` from ``surrogate.json``, or, with ``model=``, the
        given (registered) model's architecture is used instead. Raises :class:`SurrogateError`
        when the model config or any array shape differs from what the checkpoint holds.
        """
        path = Path(path).expanduser().absolute()
        json_file = path / _JSON
        if not json_file.is_file():
            raise SurrogateError(
                f"load: no surrogate at {path} (missing {_JSON}); pass a directory written by Surrogate.save"
            )
        try:
            doc = json.loads(json_file.read_text())
        except json.JSONDecodeError as e:
            raise SurrogateError(f"load: {json_file} is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SurrogateError(f"load: {json_file} is not a {FORMAT} file")
        if doc.get("version") != VERSION:
            raise SurrogateError(
                f"load: {json_file} has format version {doc.get('version')!r}; this code reads version {VERSION}"
            )
        meta = SurrogateMetadata.from_dict(doc["metadata"])

        # The architecture to restore into.
        if model is not None:
            target_cfg, source = model_config(model), "the model passed to load()"
            abstract = model  # only its structure and shapes are used; `model` is not modified
        else:
            target_cfg, source = dict(doc["model"]), f"{_JSON}"
            args = dict(target_cfg)
            name = args.pop("name", None)
            try:
                abstract = nnx.eval_shape(lambda: get_model(name, **args))
            except SurrogateError as e:
                raise SurrogateError(f"load: {json_file} describes a model that cannot be built: {e}") from None

        # What the checkpoint holds.
        state_dir = path / _STATE
        ckptr = ocp.StandardCheckpointer()
        try:
            try:
                md = ckptr.metadata(state_dir)
            except (FileNotFoundError, ValueError) as e:
                raise SurrogateError(f"load: no readable Orbax checkpoint under {state_dir} ({e})") from None
            saved_cfg = (md.custom_metadata or {}).get("model")
            tree_md = md.item_metadata.tree if hasattr(md.item_metadata, "tree") else md.item_metadata
            graphdef, abs_state = nnx.split(abstract)
            abs_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abs_state)
            expected = _flat_shapes(_model_pure(abs_state))
            found = _flat_shapes(tree_md.get("model", {}))
            diffs = _shape_diffs(found, expected)
            if (saved_cfg is not None and _canon(saved_cfg) != _canon(target_cfg)) or diffs:
                which = _config_diff(saved_cfg, target_cfg, "the checkpoint", source)
                detail = f" ({which})" if which else ""
                if diffs:
                    detail += f"; {len(diffs)} array(s) differ, e.g. {'; '.join(diffs[:2])}"
                raise SurrogateError(
                    f"load: the checkpoint at {state_dir} holds a {_describe(saved_cfg)} but {source} "
                    f"describes a {_describe(target_cfg)}{detail}; load it with the model it was saved from"
                )
            norm_md = tree_md.get("normalizer", {})
            device = jax.devices()[0]
            sharding = jax.sharding.SingleDeviceSharding(device)
            target = {
                "model": jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), _model_pure(abs_state)
                ),
                "normalizer": jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), norm_md),
            }
            restored = ckptr.restore(state_dir, target)
        finally:
            ckptr.close()

        nnx.replace_by_pure_dict(abs_state, restored["model"])
        normalizer = Normalizer.from_state_dict(restored["normalizer"])
        _check_compat(target_cfg, meta, normalizer)
        return cls(graphdef, abs_state, normalizer, meta, target_cfg)
