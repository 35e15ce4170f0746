"""Losses, metrics and the jitted train / eval steps for surrogate models.

Batches are dicts of arrays:
  "x"    (B, C_in, *grid)   model input (may be absent for the MLP, which reads only cond)
  "y"    (B, C_out, *grid)  target
  "cond" (B, cond_dim)      optional conditioning vector (PDE parameters and/or time)
  "unroll" ()               optional int, pushed-forward steps for this batch (see make_train_step)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from surrogates.errors import SurrogateError

__all__ = [
    "LOSSES",
    "EvalStep",
    "TrainStep",
    "make_eval_step",
    "make_train_step",
    "mse",
    "nrmse",
    "relative_l2",
]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------- losses / metrics
def _safe_sqrt(s: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN) gradient at 0, e.g. for a sample whose error is exactly zero."""
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def _check_pair(pred: jax.Array, target: jax.Array, name: str) -> None:
    if pred.shape != target.shape:
        raise SurrogateError(
            f"{name}: pred shape {pred.shape} differs from target shape {target.shape}; "
            "compare arrays of the same (B, C, *grid) shape"
        )


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over every element; scalar."""
    _check_pair(pred, target, "mse")
    return jnp.mean(jnp.square(pred - target))


def relative_l2(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean over the batch of ||pred_b - target_b||_2 / ||target_b||_2, norms over all non-batch
    axes (channels pooled), as FNO's `LpLoss.rel` (Li et al. 2020, utilities3.py); scalar.

    pred, target: (B, ...). A sample with an all-zero target gives inf/NaN, as in the reference.
    """
    _check_pair(pred, target, "relative_l2")
    b = pred.shape[0]
    err = jnp.sum(jnp.square(pred - target).reshape(b, -1), axis=1)
    ref = jnp.sum(jnp.square(target).reshape(b, -1), axis=1)
    return jnp.mean(_safe_sqrt(err) / jnp.sqrt(ref))


def nrmse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Normalised RMSE, PDEBench convention (Takamoto et al. 2022, `metrics.py` err_nMSE): per
    sample and channel, RMSE over the grid divided by the RMS of the target over the grid, then
    averaged over batch and channels; scalar. pred, target: (B, C, *grid).

    Differs from `relative_l2` only when C > 1 (channels are normalised separately).
    """
    _check_pair(pred, target, "nrmse")
    if pred.ndim < 3:
        raise SurrogateError(f"nrmse: expects (B, C, *grid) arrays, got shape {pred.shape}")
    b, c = pred.shape[:2]
    err = jnp.mean(jnp.square(pred - target).reshape(b, c, -1), axis=2)
    ref = jnp.mean(jnp.square(target).reshape(b, c, -1), axis=2)
    return jnp.mean(_safe_sqrt(err) / jnp.sqrt(ref))


LOSSES: dict[str, LossFn] = {"mse": mse, "relative_l2": relative_l2, "nrmse": nrmse}


def _resolve_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise SurrogateError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    return LOSSES[loss]


# --------------------------------------------------------------------------- batches
def _check_batch(batch: Mapping[str, Any], needs_x: bool) -> None:
    if not isinstance(batch, Mapping) or "y" not in batch:
        raise SurrogateError('a batch must be a dict with keys "x", "y" and optionally "cond"')
    if needs_x and batch.get("x") is None:
        raise SurrogateError('this batch has no "x"; pushforward needs the input field x')
    unknown = set(batch) - {"x", "y", "cond", "unroll"}
    if unknown:
        raise SurrogateError(
            f"unknown batch key(s) {sorted(unknown)}; allowed: x, y, cond, unroll"
        )


def _push(model: nnx.Module, x: jax.Array, cond: jax.Array | None, n: Any) -> jax.Array:
    """x advanced n times through the model (n static int or traced int scalar), no gradient."""
    x = jax.lax.fori_loop(0, n, lambda _, u: model(u, cond), x)
    return jax.lax.stop_gradient(x)


# --------------------------------------------------------------------------- train step
class TrainStep:
    """A jitted, in-place training step over the split state of (model, optimizer).

    `step(batch) -> loss` (a device scalar; no host sync) updates the state held by this object.
    Each call *donates* the previous state's buffers (with `donate=True`), so the arrays inside
    `model` and `optimizer` go stale (deleted) at the first step after a split or a `sync()`.
    Call `sync()` before using the nnx objects directly, after the last step you want reflected:
    evaluation with the model, `nnx.state(model)`, checkpointing, handing them to other code.
    `model_state` gives the current parameters without a sync; it is valid until the next step.
    If you change the nnx objects yourself (e.g. restore a checkpoint into them), call
    `resplit()` before the next step.
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        loss: str | LossFn = "mse",
        pushforward: int = 0,
        donate: bool = True,
    ) -> None:
        if isinstance(pushforward, bool) or not isinstance(pushforward, int) or pushforward < 0:
            raise SurrogateError(f"pushforward={pushforward!r} must be an integer >= 0")
        if pushforward and getattr(model, "in_channels", None) != getattr(model, "out_channels", None):
            raise SurrogateError(
                f"pushforward needs a model whose output can be fed back as input, but in_channels="
                f"{getattr(model, 'in_channels', None)} != out_channels={getattr(model, 'out_channels', None)}"
            )
        self.model = model
        self.optimizer = optimizer
        self.pushforward = pushforward
        self.loss_fn = _resolve_loss(loss)
        self._donate = donate
        self.resplit()

    def _step(self, state: nnx.State, batch: dict[str, Any]) -> tuple[nnx.State, jax.Array]:
        model, optimizer = nnx.merge(self._graphdef, state)
        x, y, cond = batch.get("x"), batch["y"], batch.get("cond")
        if self.pushforward:
            n = batch.get("unroll", self.pushforward)
            if not isinstance(n, int):  # traced: clip so a bad value cannot run away
                n = jnp.clip(n, 0, self.pushforward)
            x = _push(model, x, cond, n)

        def loss_of(m: nnx.Module) -> jax.Array:
            return self.loss_fn(m(x, cond), y)

        loss, grads = nnx.value_and_grad(loss_of)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    def __call__(self, batch: Mapping[str, Any]) -> jax.Array:
        """One optimisation step on `batch`; returns the loss before the update (device scalar)."""
        _check_batch(batch, needs_x=self.pushforward > 0)
        self._state, loss = self._jitted(self._state, dict(batch))
        self._synced = False
        return loss

    @property
    def model_state(self) -> nnx.State:
        """The model's current state, without touching the nnx objects; valid until the next step
        (its buffers are donated to it)."""
        return self._state[0]

    def sync(self) -> tuple[nnx.Module, nnx.Optimizer]:
        """Write the current state into `model` and `optimizer`; returns them."""
        if not self._synced:
            nnx.update((self.model, self.optimizer), self._state)
            self._synced = True
        return self.model, self.optimizer

    def resplit(self) -> None:
        """Re-read the state from `model` and `optimizer` after the caller changed them."""
        self._graphdef, self._state = nnx.split((self.model, self.optimizer))
        self._synced = True
        # A fresh jit: the traced function reads self._graphdef, which may have changed.
        self._jitted = jax.jit(self._step, donate_argnums=(0,) if self._donate else ())


def make_train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss: str | LossFn = "mse",
    pushforward: int = 0,
    *,
    donate: bool = True,
) -> TrainStep:
    """A jitted training step `step(batch) -> loss` that updates model/optimizer state in place.

    Args:
      model: a surrogate (`model(x, cond) -> pred`).
      optimizer: `nnx.Optimizer(model, tx, wrt=nnx.Param)`.
      loss: "mse", "relative_l2", "nrmse" or a callable `(pred, target) -> scalar`.
      pushforward: the pushforward trick (Brandstetter et al. 2022, arXiv:2202.03376, sec. 2.3).
        With pushforward = n > 0 the step expects batch["x"] = u(t) and batch["y"] = u(t + (k+1) dt),
        the true field k+1 solver steps (of the model's step dt) after x, where k = batch["unroll"]
        if given (an int in [0, n]; may change from batch to batch without recompiling when passed
        as a jnp scalar), else k = n. The input is advanced k times through the current model, with
        no gradient (computed outside the differentiated function and passed through
        `stop_gradient`), and the loss is L(model(x_k), y): one model step from a pushed input
        against the truth. This is what Brandstetter et al.'s `train_helper.py` does (labels are the
        true fields after the unrolled steps), with the unroll count chosen by the caller (they
        draw it uniformly from 0..min(epoch, N) per batch). cond is held fixed over the pushed
        steps (right when cond holds PDE parameters only). Requires in_channels == out_channels.
      donate: donate the state buffers to the jitted step (default; halves the memory).

    Returns:
      A `TrainStep`; call `.sync()` before using `model`/`optimizer` directly (see `TrainStep`).

    Implementation: `graphdef, state = nnx.split((model, optimizer))` once, then
    `jax.jit(step, donate_argnums=0)` over the state (the functional loop of the Flax performance
    guide). Measured with `python -m surrogates.training` (best of 5 interleaved runs, Adam,
    flax 0.12.8 / jax 0.10.2, the shared 2-core CPU machine under load ~5-7), ms per step:

      FNO(width 16, modes 8, depth 4), batch 4x1x32x32:   split+jax.jit 25.1, nnx.jit 33.6,
                                                            nnx.jit+cached_partial 29.9
      FNO(width 4, modes 2), batch 1x1x8x8 (overhead):    split+jax.jit 0.93, nnx.jit 9.66,
                                                            nnx.jit+cached_partial 2.86

    nnx.jit walks the object graph in Python on every call (~9 ms here); the split form pays only
    jax.jit's pytree flattening of the state, so it is kept.
    """
    return TrainStep(model, optimizer, loss, pushforward, donate)


# --------------------------------------------------------------------------- eval step
class EvalStep:
    """Jitted prediction `eval_step(x, cond=None, *, state=None) -> pred`.

    Reads the model's current parameters on every call (`nnx.state(model)`), or uses `state` when
    given (e.g. `train_step.model_state`, which avoids a `train_step.sync()`).
    """

    def __init__(self, model: nnx.Module) -> None:
        self.model = model
        self._graphdef = nnx.graphdef(model)
        self._jitted = jax.jit(self._predict)

    def _predict(self, state: nnx.State, x: jax.Array | None, cond: jax.Array | None) -> jax.Array:
        return nnx.merge(self._graphdef, state)(x, cond)

    def __call__(
        self, x: jax.Array | None, cond: jax.Array | None = None, *, state: nnx.State | None = None
    ) -> jax.Array:
        return self._jitted(nnx.state(self.model) if state is None else state, x, cond)


def make_eval_step(model: nnx.Module) -> EvalStep:
    """A jitted `predict(x, cond=None, *, state=None) -> (B, C_out, *grid)` for `model`.

    If a `TrainStep` is training this model, call its `sync()` first or pass
    `state=train_step.model_state`.
    """
    return EvalStep(model)
