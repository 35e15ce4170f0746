"""Shared test setup: CPU JAX, and a context for tests that need 64-bit floats."""

import contextlib
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import solvers  # noqa: E402, F401  (sets the project-wide JAX PRNG configuration)


@contextlib.contextmanager
def x64():
    """Enable 64-bit JAX inside the block and restore the previous setting afterwards."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


@pytest.fixture
def enable_x64():
    with x64():
        yield
