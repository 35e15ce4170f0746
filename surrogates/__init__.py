"""pdestream surrogates: Flax NNX models, losses and jitted train/eval steps.

Ground floor: depends on jax, flax (NNX), optax and orbax only.

    from surrogates import get_model, make_train_step
    model = get_model("fno", in_channels=1, out_channels=1, ndim=2, modes=12, width=32)
    step = make_train_step(model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param))
    loss = step({"x": x, "y": y})      # x, y: (B, C, Nx, Ny)
"""

from surrogates.errors import SurrogateError
from surrogates.models import get_model, list_models, model_config
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate, SurrogateMetadata
from surrogates.training import (
    LOSSES,
    EvalStep,
    OutputMap,
    TrainStep,
    chain,
    hold,
    increment,
    linear_unroll,
    make_eval_step,
    make_train_step,
    mse,
    nrmse,
    relative_l2,
)

#: Loss / metric functions by name: {"mse", "relative_l2", "nrmse"} -> (pred, target) -> scalar.
losses = LOSSES

__all__ = [
    "LOSSES",
    "EvalStep",
    "Normalizer",
    "OutputMap",
    "Surrogate",
    "SurrogateMetadata",
    "SurrogateError",
    "TrainStep",
    "chain",
    "get_model",
    "hold",
    "increment",
    "linear_unroll",
    "list_models",
    "losses",
    "make_eval_step",
    "make_train_step",
    "model_config",
    "mse",
    "nrmse",
    "relative_l2",
]
