"""Registry of surrogate models: build any model by name with `get_model`.

Convention every model class follows (write a new model to it and add one line to `_REGISTRY`):

1. A class attribute `Hparams`: a frozen dataclass of the model's hyper-parameters. Every field
   has a documented default, except fields that cannot have one (e.g. the MLP's `grid`); those
   have no default and `get_model` reports them as missing. Tuple fields are tuples (`get_model`
   turns lists from a TOML/JSON config into tuples before building the dataclass).
2. `Hparams.__post_init__` validates the values and raises `SurrogateError` (from
   `surrogates.errors`) naming the field, the bad value and the allowed range
   (`surrogates.models.common.check_int / check_ints / check_choice` do this in one line).
3. A class attribute `supported_ndims: tuple[int, ...]`, e.g. `(1, 2)`; `get_model` rejects other
   `ndim` values with a message listing them.
4. The constructor is keyword-only:
   `Model(*, in_channels: int, out_channels: int, ndim: int, cond_dim: int, hparams: Hparams,
   rngs: nnx.Rngs)`. It stores these five values as attributes of the same names (static: ints
   and a frozen dataclass) so that `model_config(model)` can rebuild it later. Combination
   checks that need more than one argument (e.g. grid vs ndim) raise `SurrogateError` there.
5. The call is `model(x, cond=None) -> (B, out_channels, *grid)` with x of shape
   `(B, in_channels, *grid)` (len(grid) == ndim) and cond `(B, cond_dim)` or None when
   cond_dim == 0 (PDE parameters and/or time). Shapes are checked at the door with
   `surrogates.models.common.check_inputs` (trace-time only, free under jit). Channels-first
   on the outside; a model may go channels-last inside.
6. Float32 parameters; no numpy on traced values; no BatchNorm-style mutable statistics (the
   train step does not switch train/eval modes).

Models are imported lazily: importing this package does not import any model module.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from flax import nnx

from surrogates.errors import SurrogateError

__all__ = ["REQUIRED", "get_model", "list_models", "model_config"]

# name -> "module:Class". Modules are imported on first use.
_REGISTRY: dict[str, str] = {
    "mlp": "surrogates.models.mlp:MLP",
    "fno": "surrogates.models.fno:FNO",
    "unet": "surrogates.models.unet:UNet",
    "lsm": "surrogates.models.lsm:LSM",
    "mppde": "surrogates.models.mppde:MPPDE",
}

#: Placeholder shown by `list_models` for a hyper-parameter without a default.
REQUIRED = "<required>"


class _NotInstalled(Exception):
    pass


def _load(name: str) -> type:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise SurrogateError(f"unknown model {name!r}; choose one of {sorted(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:  # the model file itself is absent (not a broken import inside it)
            raise _NotInstalled(module_name) from e
        raise
    return getattr(module, cls_name)


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls.Hparams):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED
    return out


def list_models() -> dict[str, dict[str, Any]]:
    """Registered models -> their hyper-parameter defaults (`REQUIRED` where there is none).

    A model whose module is not present in this installation is left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in _REGISTRY:
        try:
            out[name] = _defaults(_load(name))
        except _NotInstalled:
            continue
    return out


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _check_sizes(in_channels: Any, out_channels: Any, ndim: Any, cond_dim: Any) -> None:
    for arg, value, lo in (
        ("in_channels", in_channels, 0),
        ("out_channels", out_channels, 1),
        ("ndim", ndim, 1),
        ("cond_dim", cond_dim, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise SurrogateError(f"get_model: {arg}={value!r} must be an integer >= {lo}")


def get_model(
    name: str,
    *,
    in_channels: int,
    out_channels: int,
    ndim: int,
    cond_dim: int = 0,
    rngs: nnx.Rngs | None = None,
    **hparams: Any,
) -> nnx.Module:
    """Build the registered model `name` with the given sizes and hyper-parameters.

    Args:
      name: a key of `list_models()` ("mlp", "fno", "unet", "lsm", "mppde").
      in_channels: C_in of x (B, C_in, *grid).
      out_channels: C_out of the prediction (B, C_out, *grid).
      ndim: number of grid axes (1 or 2; see each model's `supported_ndims`).
      cond_dim: length of the conditioning vector cond (B, cond_dim); 0 for none.
      rngs: parameter initialisation RNGs (default `nnx.Rngs(0)`).
      **hparams: the model's hyper-parameters (see `list_models()[name]`); lists become tuples.

    Raises:
      SurrogateError: unknown model or hyper-parameter, missing required hyper-parameter,
        out-of-range value or unsupported ndim.
    """
    try:
        cls = _load(name)
    except _NotInstalled as e:
        raise SurrogateError(
            f"model {name!r} is registered but its module {e.args[0]} is not present in this installation"
        ) from None
    _check_sizes(in_channels, out_channels, ndim, cond_dim)
    defaults = _defaults(cls)
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        raise SurrogateError(
            f"{name}: unknown hyper-parameter(s) {unknown}; allowed (with defaults): {allowed}"
        )
    missing = [k for k, v in defaults.items() if v is REQUIRED and k not in hparams]
    if missing:
        raise SurrogateError(
            f"{name}: hyper-parameter(s) {missing} are required; pass them to get_model, e.g. "
            + ", ".join(f"{k}=..." for k in missing)
        )
    supported = getattr(cls, "supported_ndims", None)  # without it, the constructor checks ndim
    if supported is not None and ndim not in supported:
        raise SurrogateError(
            f"{name}: ndim={ndim} is not supported; this model handles ndim in {list(supported)}"
        )
    hp = cls.Hparams(**{k: _tuplify(v) for k, v in hparams.items()})
    validate = getattr(hp, "validate", None)
    if callable(validate):  # models that validate in a method rather than in __post_init__
        validate()
    return cls(
        in_channels=in_channels,
        out_channels=out_channels,
        ndim=ndim,
        cond_dim=cond_dim,
        hparams=hp,
        rngs=rngs if rngs is not None else nnx.Rngs(0),
    )


def model_config(model: nnx.Module) -> dict[str, Any]:
    """The `get_model` keyword arguments that rebuild `model`'s architecture (JSON-friendly).

    `get_model(**model_config(m))` gives a model with the same structure (fresh parameters).
    """
    cls = type(model)
    names = [k for k, v in _REGISTRY.items() if v == f"{cls.__module__}:{cls.__name__}"]
    if not names:
        raise SurrogateError(f"{cls.__name__} is not a registered surrogate model")
    name = names[0]
    return {
        "name": name,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "ndim": model.ndim,
        "cond_dim": model.cond_dim,
        **{
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(model.hparams).items()
        },
    }
