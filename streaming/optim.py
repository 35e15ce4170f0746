"""The Optax optimiser of a job: adam/adamw, a learning-rate schedule and gradient clipping."""

from __future__ import annotations

import optax

from streaming.config import OptimSection


def make_schedule(cfg: OptimSection) -> optax.Schedule:
    """Learning rate as a function of the step."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.lr, decay_steps=cfg.steps, alpha=0.01)
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup_steps=max(cfg.warmup_steps, 1),
                                              decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.lr * 0.01)


def make_optimizer(cfg: OptimSection) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``chain(clip_by_global_norm, adam|adamw)`` with the configured schedule."""
    schedule = make_schedule(cfg)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    return optax.chain(*parts, opt), schedule
