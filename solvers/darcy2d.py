"""Steady Darcy flow on the unit square (the FNO benchmark):

    -div(a(x) grad u(x)) = f(x)  in (0, 1)^2,   u = 0 on the boundary,   f = 1,

with a piecewise-constant permeability ``a``: a Gaussian random field ``N(0, (-Laplacian + 9 I)^(-2))``
(Neumann Laplacian; alpha = 2, tau = 3) thresholded to ``a_pos`` where it is >= 0 and ``a_neg`` where
it is < 0. The paper says 12 and 3 (Li et al. 2020, arXiv:2010.08895, Sec. 5.2); the shipped script
(``data_generation/darcy/demo.m``) uses 12 and 4. Parameters: ``a_pos`` in [8, 16] and ``a_neg`` in
[2, 4], which hold both (default point of a study: 12 / 3).

Discretisation: second-order finite differences on ``n x n`` nodes ``x_i = i / (n - 1)`` (boundary
nodes included, as the FNO grids 421 and 85), ``a`` given at the nodes. The flux between neighbouring
nodes uses the harmonic mean of their ``a`` (flux continuity across jumps), so the unknowns are the
``(n - 2)^2`` interior values and

    (A u)_ij = sum over the 4 neighbours q of a_{ij,q} (u_ij - u_q) / h^2,   h = 1 / (n - 1),

a symmetric positive definite matrix, applied matrix-free. (The FNO generator ``solve_gwf.m`` uses
arithmetic-mean faces and spline-interpolates ``a`` from cell centres to the nodes.)

Solver: preconditioned conjugate gradients (``jax.scipy.sparse.linalg.cg``) with the fast Poisson
solver (type-I sine transforms) for ``mean(a) * (-Laplacian_h)`` as preconditioner. Since every face
coefficient lies in ``[min a, max a]``, the preconditioned condition number is at most
``a_pos / a_neg`` (<= 8 here), so CG needs ~20 iterations at any ``n`` for ``tol = 1e-6``.
It stops when ``||f - A u|| <= tol ||f||`` (CG's recursively updated residual) or after ``maxiter``
iterations; the true relative residual is recomputed and kept in the state. In float32 that true
residual cannot go below the round-off of evaluating ``A u`` (~5e-5 at n = 64, 1e-3 at n = 256), while
the solution itself agrees with a float64 solve to ~3e-7 relative.

As a steady problem the solver's "time" is trivial: ``initial_state`` draws ``a`` and sets ``u = 0``;
one ``step`` solves the system (warm-started from the current ``u``, so further steps only polish
the solution); ``dt = 1``. Output channels ``("a", "u")`` on the nodes, optionally every r-th node
(``out``; the FNO's 421 -> 85 is ``n=421, out=85``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import cg

from solvers.base import Solver
from solvers.errors import SolverError
from solvers.initial_conditions import cosine_random_field
from solvers.params import Param, ParamSpace


def face_coefficients(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Harmonic means of nodal ``a`` ``(n, n)`` across x-faces ``(n - 1, n)`` and y-faces ``(n, n - 1)``."""
    ax = 2 * a[1:, :] * a[:-1, :] / (a[1:, :] + a[:-1, :])
    ay = 2 * a[:, 1:] * a[:, :-1] / (a[:, 1:] + a[:, :-1])
    return ax, ay


def apply_operator(faces: tuple[jax.Array, jax.Array], u: jax.Array, h: float) -> jax.Array:
    """``A u`` ``(n - 2, n - 2)``: ``-div(a grad u)`` for interior values ``u`` (zero on the boundary)."""
    ax, ay = faces
    full = jnp.pad(u, 1)
    gx = ax * (full[1:, :] - full[:-1, :])  # a du/dx * h on x-faces, (n - 1, n)
    gy = ay * (full[:, 1:] - full[:, :-1])
    div = (gx[1:, 1:-1] - gx[:-1, 1:-1]) + (gy[1:-1, 1:] - gy[1:-1, :-1])
    return -div / h**2


def _dst1(v: jax.Array, axis: int) -> jax.Array:
    """Type-I sine transform ``X_k = sum_j v_j sin(pi (j + 1)(k + 1) / (m + 1))`` along ``axis``.

    Via the real FFT of the odd extension ``[0, v, 0, -v reversed]`` (length ``2 (m + 1)``).
    """
    v = jnp.moveaxis(v, axis, -1)
    m = v.shape[-1]
    zero = jnp.zeros(v.shape[:-1] + (1,), v.dtype)
    ext = jnp.concatenate([zero, v, zero, -v[..., ::-1]], axis=-1)
    out = -0.5 * jnp.fft.rfft(ext, axis=-1).imag[..., 1 : m + 1]
    return jnp.moveaxis(out.astype(v.dtype), -1, axis)


def poisson_eigenvalues(m: int, h: float) -> np.ndarray:
    """Eigenvalues ``(m, m)`` of the 5-point ``-Laplacian_h`` with Dirichlet walls on ``m x m`` interior nodes."""
    lam = (2 - 2 * np.cos(np.pi * np.arange(1, m + 1) / (m + 1))) / h**2
    return lam[:, None] + lam[None, :]


def solve_darcy(
    a: jax.Array, f: jax.Array, tol: float = 1e-6, maxiter: int = 1000, x0: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Solve ``-div(a grad u) = f`` with ``u = 0`` on the boundary by preconditioned CG.

    Args:
        a: nodal coefficient ``(n, n)`` on ``x_i = i / (n - 1)`` (boundary nodes included), > 0.
        f: right-hand side at the interior nodes ``(n - 2, n - 2)``.
        tol: relative residual ``||f - A u|| / ||f||`` at which CG stops.
        maxiter: iteration cap.
        x0: initial guess ``(n - 2, n - 2)`` (zeros if None).

    Returns:
        ``u`` at the interior nodes ``(n - 2, n - 2)`` and its true relative residual (a scalar).
    """
    n = a.shape[-1]
    if a.ndim != 2 or a.shape[0] != n or n < 3 or f.shape != (n - 2, n - 2):
        raise SolverError(
            f"darcy2d: expected a of shape (n, n) with n >= 3 and f of shape (n - 2, n - 2), got {a.shape}, "
            f"{f.shape}; f lives on the interior nodes"
        )
    h = 1.0 / (n - 1)
    m = n - 2
    faces = face_coefficients(a)
    inv_eig = jnp.asarray(1.0 / poisson_eigenvalues(m, h), a.dtype) / jnp.mean(a)
    scale = (2.0 / (m + 1)) ** 2  # DST-I is its own inverse up to this factor per pair of axes

    def precondition(r: jax.Array) -> jax.Array:
        return scale * _dst1(_dst1(_dst1(_dst1(r, 0), 1) * inv_eig, 0), 1)

    operator = lambda u: apply_operator(faces, u, h)
    x0 = jnp.zeros_like(f) if x0 is None else x0
    u, _ = cg(operator, f, x0=x0, tol=tol, atol=0.0, maxiter=maxiter, M=precondition)
    residual = jnp.linalg.norm(f - operator(u)) / jnp.linalg.norm(f)
    return u, residual


@dataclass(frozen=True)
class Darcy2DConfig:
    """n: nodes per axis with the boundary; out: output nodes per axis (0 = n; (n - 1) must be a multiple
    of (out - 1)); alpha, tau: GRF smoothness and inverse length scale; tol: CG relative residual;
    maxiter: CG iteration cap."""

    n: int = 64
    out: int = 0
    alpha: float = 2.0
    tau: float = 3.0
    tol: float = 1e-6
    maxiter: int = 1000
    dtype: str = "float32"


class Darcy2D(Solver):
    """2D steady Darcy flow with a thresholded-GRF permeability, FNO setting; one step = one PCG solve."""

    name = "darcy2d"
    channels = ("a", "u")
    param_space = ParamSpace(
        (
            # Li et al. 2020 (arXiv:2010.08895), Sec. 5.2: a = 12 where the GRF >= 0, 3 where it is < 0.
            Param("a_pos", 8.0, 16.0, "1", "permeability where the GRF is >= 0 (FNO: 12)"),
            Param("a_neg", 2.0, 4.0, "1", "permeability where the GRF is < 0 (FNO paper: 3, script: 4)"),
        )
    )
    Config = Darcy2DConfig

    def __init__(self, **overrides: object) -> None:
        super().__init__(**overrides)
        c = self.config
        if not 3 <= c.n <= 4097:
            raise SolverError(f"darcy2d: n={c.n} nodes per axis is not supported; use 3 <= n <= 4097")
        out = c.out or c.n
        if not 2 <= out <= c.n or (c.n - 1) % (out - 1):
            raise SolverError(
                f"darcy2d: out={c.out} needs (n - 1) = {c.n - 1} to be a multiple of (out - 1) (or out = 0); "
                "e.g. n=421, out=85"
            )
        if not (c.alpha > 1 and c.tau > 0):
            raise SolverError(f"darcy2d: the GRF needs alpha > 1 and tau > 0, got alpha={c.alpha}, tau={c.tau}")
        if not (0 < c.tol < 1 and math.isfinite(c.tol)):
            raise SolverError(f"darcy2d: tol must be in (0, 1), got {c.tol}")
        if c.maxiter < 1:
            raise SolverError(f"darcy2d: maxiter must be >= 1, got {c.maxiter}")
        self._out = out

    @property
    def grid(self) -> tuple[int, ...]:
        return (self._out, self._out)

    @property
    def dt(self) -> float:
        """A steady problem: one step is one solve; nominal length 1."""
        return 1.0

    def coords(self) -> dict[str, np.ndarray]:
        x = np.linspace(0.0, 1.0, self._out)
        return {"x": x, "y": x.copy()}

    def coefficient(self, key: jax.Array, params: jax.Array) -> jax.Array:
        """Nodal permeability ``(n, n)``: the thresholded GRF for ``params = (a_pos, a_neg)``."""
        c = self.config
        g = cosine_random_field(key, (c.n, c.n), c.alpha, c.tau, dtype=self.dtype)
        p = jnp.asarray(params, self.dtype)
        return jnp.where(g >= 0, p[0], p[1])

    def state_from_coefficient(self, a: jax.Array) -> dict[str, jax.Array]:
        """State for a given nodal coefficient ``a`` ``(n, n)``: ``u = 0``, residual 1."""
        n = self.config.n
        if a.shape != (n, n):
            raise SolverError(f"darcy2d: coefficient must have shape ({n}, {n}) (the node grid), got {a.shape}")
        a = jnp.asarray(a, self.dtype)
        return {"a": a, "u": jnp.zeros((n - 2, n - 2), self.dtype), "residual": jnp.ones((), self.dtype)}

    def initial_state(self, key: jax.Array, params: jax.Array) -> dict[str, jax.Array]:
        return self.state_from_coefficient(self.coefficient(key, params))

    def step(self, state: dict[str, jax.Array], params: jax.Array) -> dict[str, jax.Array]:
        """Solve for ``u`` with ``f = 1`` (PCG warm-started from ``state['u']``)."""
        n = self.config.n
        f = jnp.ones((n - 2, n - 2), self.dtype)
        u, residual = solve_darcy(state["a"], f, self.config.tol, self.config.maxiter, x0=state["u"])
        return {**state, "u": u, "residual": residual.astype(self.dtype)}

    def fields(self, state: dict[str, jax.Array]) -> jax.Array:
        """``(2, out, out)``: permeability ``a`` and pressure ``u`` (zero on the boundary) at the nodes."""
        r = (self.config.n - 1) // (self._out - 1)
        out = jnp.stack([state["a"], jnp.pad(state["u"], 1)])
        return out[:, ::r, ::r].astype(self.dtype)
