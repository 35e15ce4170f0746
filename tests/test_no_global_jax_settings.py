"""Importing pdestream's packages leaves JAX's global configuration as the user set it."""

import subprocess
import sys

PROBE = """
import jax
names = ("jax_threefry_partitionable", "jax_enable_x64", "jax_default_matmul_precision", "jax_platforms")
before = {n: getattr(jax.config, n) for n in names}
import solvers, surrogates, streaming, benchmarks  # noqa: E401,F401
from solvers import get_solver
from streaming import config, job  # noqa: F401
get_solver("heat2d")
after = {n: getattr(jax.config, n) for n in names}
changed = {n: (before[n], after[n]) for n in names if before[n] != after[n]}
print(changed)
raise SystemExit(1 if changed else 0)
"""


def test_importing_the_packages_changes_no_global_jax_setting():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    changed = out.stdout + out.stderr[-2000:]
    assert out.returncode == 0, f"global JAX settings changed on import (before, after): {changed}"
