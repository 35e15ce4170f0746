"""Losses, metrics and the jitted train / eval steps for surrogate models.

Batches are dicts of arrays:
  "x"    (B, C_in, *grid)   model input (may be absent for the MLP, which reads only cond)
  "y"    (B, S*C_out, *grid) target: S = 1 frame group, or S >= the model calls of an unrolled step
  "cond" (B, cond_dim)      optional conditioning vector (PDE parameters and/or time)
  "unroll" ()               optional int, pushed-forward steps for this batch (see make_train_step)
  "hold" (B, C, *grid)      optional bool, cells each sample's output frames copy from its last input frame
                            (obstacles whose place depends on the parameters; see `hold_each`)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from surrogates.errors import SurrogateError

__all__ = [
    "LOSSES",
    "EvalStep",
    "OutputMap",
    "TrainStep",
    "chain",
    "hold",
    "hold_each",
    "increment",
    "linear_unroll",
    "make_eval_step",
    "make_train_step",
    "mse",
    "nrmse",
    "relative_l2",
]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
#: (x (B, W*C, *grid), raw model output (B, K*C, *grid)) -> the frames the model call predicts (B, K*C, *grid).
OutputMap = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------- output maps
def _last_frame(x: jax.Array, y: jax.Array, channels: int) -> jax.Array:
    """The last C-channel frame of x (B, W*C, *grid), repeated to y's shape (B, K*C, *grid)."""
    return jnp.tile(x[:, -channels:], (1, y.shape[1] // channels) + (1,) * (x.ndim - 2))


def increment(channels: int) -> OutputMap:
    """The model predicts increments: each output frame is the last input frame plus the model's output.

    Frames are frame-major stacks of ``channels`` channels (the Surrogate's layout); in normalised units
    (same affine map per channel for inputs and outputs) this is u(t + k dt) = u(t) + model(x)_k.
    """
    return lambda x, y: y + _last_frame(x, y, channels)


def hold(mask: Any, channels: int) -> OutputMap:
    """A hard constraint: where ``mask`` (bool ``(*grid)``, every channel) is True the output frames take the
    last input frame's values exactly (imposed values that do not change in time, e.g. Dirichlet walls)."""
    mask = np.asarray(mask, bool)
    return lambda x, y: jnp.where(mask, _last_frame(x, y, channels), y)


def hold_each(mask: jax.Array) -> OutputMap:
    """``hold`` with a mask per sample: bool ``(B, C, *grid)``, C the channels of one frame (e.g. a batch's
    obstacle cells, from each simulation's parameters)."""
    channels = mask.shape[1]

    def apply(x: jax.Array, y: jax.Array) -> jax.Array:
        every_frame = jnp.tile(mask, (1, y.shape[1] // channels) + (1,) * (mask.ndim - 2))
        return jnp.where(every_frame, _last_frame(x, y, channels), y)

    return apply


def chain(*maps: OutputMap | None) -> OutputMap:
    """The output maps applied in order, None entries skipped (``chain()`` is the identity)."""

    def apply(x: jax.Array, y: jax.Array) -> jax.Array:
        for m in maps:
            if m is not None:
                y = m(x, y)
        return y

    return apply


def linear_unroll(start: int, end: int, ramp_steps: int) -> Callable[[int], int]:
    """Curriculum on the unroll length: ``start`` model calls at step 0, growing linearly to ``end`` at
    ``ramp_steps`` (held after; ``ramp_steps`` = 0: ``end`` from the start). Integer steps, like an Optax
    schedule: ``n(step) = start + floor((end - start) * min(step / ramp_steps, 1))``."""
    if not 1 <= start <= end or ramp_steps < 0:
        raise SurrogateError(f"unroll curriculum: need 1 <= start <= end and ramp_steps >= 0, got "
                             f"start={start}, end={end}, ramp_steps={ramp_steps}")

    def n(step: int) -> int:
        frac = 1.0 if ramp_steps == 0 else min(step / ramp_steps, 1.0)
        return start + math.floor((end - start) * frac)

    return n


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
        raise SurrogateError('this batch has no "x"; pushforward, unrolled steps, input noise and held cells need '
                             "the input field x")
    unknown = set(batch) - {"x", "y", "cond", "unroll", "hold"}
    if unknown:
        raise SurrogateError(
            f"unknown batch key(s) {sorted(unknown)}; allowed: x, y, cond, unroll, hold"
        )
    if "hold" in batch and np.shape(batch["hold"])[0] != np.shape(batch["y"])[0]:
        raise SurrogateError(
            f'batch["hold"] {np.shape(batch["hold"])}: need one bool mask (C, *grid) per sample of batch["y"] '
            f'{np.shape(batch["y"])}'
        )


def _next(out: jax.Array, x: jax.Array) -> jax.Array:
    """The next model input: the last W frames of x followed by the predicted frames ``out``."""
    return jnp.concatenate([x, out], axis=1)[:, -x.shape[1]:]


def _push(call: Callable, x: jax.Array, cond: jax.Array | None, n: Any) -> jax.Array:
    """x advanced n times through ``call(x, cond)`` (n static int or traced int scalar), no gradient."""
    x = jax.lax.fori_loop(0, n, lambda _, u: _next(call(u, cond), u), x)
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
        *,
        output_map: OutputMap | None = None,
        input_noise: float = 0.0,
        seed: int = 0,
        sample_losses: str | None = None,
    ) -> None:
        if sample_losses not in (None, "absolute", "relative"):
            raise SurrogateError(f"sample_losses={sample_losses!r}: use None, 'absolute' or 'relative'")
        if isinstance(pushforward, bool) or not isinstance(pushforward, int) or pushforward < 0:
            raise SurrogateError(f"pushforward={pushforward!r} must be an integer >= 0")
        if pushforward and getattr(model, "in_channels", None) != getattr(model, "out_channels", None):
            raise SurrogateError(
                f"pushforward needs a model whose output can be fed back as input, but in_channels="
                f"{getattr(model, 'in_channels', None)} != out_channels={getattr(model, 'out_channels', None)}"
            )
        if not input_noise >= 0:
            raise SurrogateError(f"input_noise={input_noise!r} must be a standard deviation >= 0")
        self.model = model
        self.optimizer = optimizer
        self.pushforward = pushforward
        self.loss_fn = _resolve_loss(loss)
        self.output_map = output_map
        self.input_noise = float(input_noise)
        self._key = jax.random.key(seed)
        self._donate = donate
        self._sample_losses_kind = sample_losses
        self.sample_losses: jax.Array | None = None
        self.resplit()

    def _call(self, model: nnx.Module, hold: jax.Array | None) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
        """One model call ``(x, cond) -> frames``, through the output map, then the batch's held cells."""
        if self.output_map is None and hold is None:
            return model
        out_map = chain(self.output_map, None if hold is None else hold_each(hold))
        return lambda x, cond: out_map(x, model(x, cond))

    def _per_sample(self, out: jax.Array, target: jax.Array) -> jax.Array:
        """Each sample's loss ``(B,)`` of one call (no gradient); ``relative``: over the loss of predicting zero."""
        out, target = jax.lax.stop_gradient(out), jax.lax.stop_gradient(target)
        li = jax.vmap(lambda p, t: self.loss_fn(p[None], t[None]))(out, target)
        if self._sample_losses_kind == "relative":
            li = li / jnp.maximum(jax.vmap(lambda t: self.loss_fn(jnp.zeros_like(t)[None], t[None]))(target), 1e-12)
        return li

    def _step(self, state: nnx.State, batch: dict[str, Any],
              steps: int) -> tuple[nnx.State, jax.Array, jax.Array | None]:
        model, optimizer = nnx.merge(self._graphdef, state)
        x, y, cond, hold = batch.get("x"), batch["y"], batch.get("cond"), batch.get("hold")
        if self.input_noise:  # a fresh draw per optimiser step: reproducible, and resumes with the optimiser;
            # drawn flat (see models.common)
            key = jax.random.fold_in(self._key, optimizer.step[...])
            x = x + self.input_noise * jax.random.normal(key, (x.size,), x.dtype).reshape(x.shape)
        group = self._group(y)
        start = 0
        if self.pushforward:
            n = batch.get("unroll", self.pushforward)
            if not isinstance(n, int):  # traced: clip so a bad value cannot run away
                n = jnp.clip(n, 0, self.pushforward)
            x = _push(self._call(model, hold), x, cond, n)
            if y.shape[1] > group:  # a target per model call: the ones after the pushed steps
                start = n
        y = jax.lax.dynamic_slice_in_dim(y, start * group, steps * group, axis=1)

        def loss_of(m: nnx.Module) -> tuple[jax.Array, jax.Array | None]:
            call, u, total, per = self._call(m, hold), x, 0.0, None
            for i in range(steps):  # back-propagation through the whole unroll
                out = call(u, cond)
                t = y[:, i * group : (i + 1) * group]
                total = total + self.loss_fn(out, t)
                if self._sample_losses_kind is not None:
                    per = self._per_sample(out, t) + (0.0 if per is None else per)
                if i + 1 < steps:
                    u = _next(out, u)
            return total / steps, None if per is None else per / steps

        (loss, per), grads = nnx.value_and_grad(loss_of, has_aux=True)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss, per

    def _group(self, y: Any) -> int:
        """Channels of one model call's output (the model's out_channels; y's own when it has none)."""
        return int(getattr(self.model, "out_channels", None) or y.shape[1])

    def __call__(self, batch: Mapping[str, Any], steps: int = 1) -> jax.Array:
        """One optimisation step on `batch`, through `steps` autoregressive model calls; returns the loss
        before the update (device scalar)."""
        _check_batch(batch, needs_x=self.pushforward > 0 or steps > 1 or self.input_noise > 0 or "hold" in batch)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise SurrogateError(f"steps={steps!r} must be an integer >= 1")
        groups = batch["y"].shape[1] // self._group(batch["y"])
        need = steps + (self.pushforward if groups > 1 else 0)
        if groups < need if groups > 1 else steps > 1:
            raise SurrogateError(
                f'batch["y"] holds {groups} model call(s) of targets; {steps} unrolled call(s) after up to '
                f"{self.pushforward} pushed one(s) need {need}"
            )
        self._state, loss, self.sample_losses = self._jitted(self._state, dict(batch), steps)
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
        self._jitted = jax.jit(self._step, static_argnums=(2,), donate_argnums=(0,) if self._donate else ())


def make_train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    loss: str | LossFn = "mse",
    pushforward: int = 0,
    *,
    donate: bool = True,
    output_map: OutputMap | None = None,
    input_noise: float = 0.0,
    seed: int = 0,
    sample_losses: str | None = None,
) -> TrainStep:
    """A jitted training step `step(batch, steps=1) -> loss` that updates model/optimizer state in place.

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
        With a target per model call in batch["y"] (see steps), the targets after the k pushed calls are used.
      donate: donate the state buffers to the jitted step (default; halves the memory).
      output_map: applied to every model output, `(x, out) -> frames` (`increment`, `hold`, `chain` of
        them), in the pushed and unrolled calls alike, so training sees what the Surrogate computes.
        A batch's "hold" masks (`hold_each`) are applied after it, in every call too.
      input_noise: standard deviation (normalised units) of Gaussian noise added to batch["x"] before the
        first call, so the model learns to correct the small errors of its own rollouts (noise injection,
        Sanchez-Gonzalez et al. 2020, "Learning to simulate complex physics with graph networks", ICML,
        sec. 4.3). Drawn from `seed` folded with the optimiser's step count. 0 (default): off, the step
        computes exactly what it did without the option.
      seed: the noise's PRNG seed.
      sample_losses: None (default), "absolute" or "relative": each step also keeps each sample's loss, the mean
        over the step's unrolled calls (the same forward pass, no gradient), in `step.sample_losses` (B,)
        (a device array, valid until the next step); "relative": each call's loss over the loss of predicting
        zero (for mse the squared relative L2 error).

    Unrolled training: `step(batch, steps=n)` with batch["y"] holding the targets of S >= n consecutive
    model calls `(B, S * C_out, *grid)` (frame groups in time order) advances x autoregressively through
    n calls (each call's input: the last W input frames, the previous outputs appended), back-propagating
    through all of them, and returns the mean over the n calls of L(call_i, y_i). The unrolled graph is
    compiled once per distinct n (`linear_unroll` grows n in a few steps); steps=1 with a one-call target
    is the ordinary one-step loss.

    Returns:
      A `TrainStep`; call `.sync()` before using `model`/`optimizer` directly (see `TrainStep`).

    Implementation: `graphdef, state = nnx.split((model, optimizer))` once, then
    `jax.jit(step, donate_argnums=0)` over the state (the functional loop of the Flax performance
    guide): `nnx.jit` walks the object graph in Python on every call, the split form pays only
    jax.jit's pytree flattening of the state, which matters for small models.
    """
    return TrainStep(model, optimizer, loss, pushforward, donate, output_map=output_map,
                     input_noise=input_noise, seed=seed, sample_losses=sample_losses)


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
