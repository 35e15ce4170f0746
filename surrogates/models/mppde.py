"""Message Passing Neural PDE Solver (MP-PDE) in Flax NNX, with its graph helpers.

Brandstetter, Worrall, Welling, "Message Passing Neural PDE Solvers", ICLR 2022 (arXiv:2202.03376).
No public JAX version existed; this is our own implementation, written from the paper and from facts
read in the authors' PyTorch code (brandstetter-johannes/MP-Neural-PDE-Solvers,
`experiments/models_gnn.py`, `common/utils.py`).

Model (paper Sec. 2-3, eqs. 8-10)
---------------------------------
Every node i carries the last `in_channels` time steps u_i of a scalar field (oldest first), its
position x_i and the PDE parameters theta (our `cond`: e.g. alpha, beta, gamma and the time t).

* Encoder: h_i = MLP([u_i, x_i / L, theta])  (two Linear + Swish layers, -> `hidden` = 128).
* Processor: `num_layers` = 6 message-passing layers, each
      m_ij = phi([h_i, h_j, u_i - u_j, (x_i - x_j) / L, theta])         (eq. 8, two Linear + Swish)
      h_i <- h_i + psi([h_i, mean_{j in N(i)} m_ij, theta])               (eq. 9, two Linear + Swish)
      h   <- InstanceNorm over the nodes of each graph (no affine parameters, eps 1e-5, as PyG's).
  Mean aggregation is `jax.ops.segment_sum` of the messages over receivers divided by the in-degree.
* Decoder (temporal bundling, eq. 10): a 1D CNN shared by all nodes reads h_i as a 1-channel signal
  of length `hidden` and emits K = `out_channels` increments d_i; the output is
      u_i(t_last + k dt) = u_i(t_last) + (k dt) d_ik,  k = 1..K.
  For hidden = 128 the authors' kernels are used: K = 25: Conv1d(1, 8, 16, stride 3) -> Swish ->
  Conv1d(8, 1, 14), since floor((128 - 16) / 3) + 1 = 38 and 38 - 14 + 1 = 25; K = 20: (15, s4) and
  10 (29 -> 20); K = 50: (12, s2) and 10 (59 -> 50). Any other (hidden, K) uses a Linear(hidden, K).

Graphs
------
A graph is a `Graph(senders, receivers, rel_pos)`: messages flow sender j -> receiver i, and
`rel_pos[e] = x_i - x_j` (minimum image on a periodic domain). `grid_graph` connects the nodes of a
regular 1D/2D grid within a radius (the reference joins each 1D node to its `neighbors` nearest
nodes on each side, through a radius graph of radius neighbors * dx); `point_graph` joins each
point of an arbitrary cloud to its k nearest neighbours. On grids the model builds the graph from
the input's static shape at trace time (cached), so a jitted call sees constant index arrays.

A batch of B samples is one disjoint graph of B * N nodes: node indices of sample b are offset by
b * N. All samples share the same N, so the per-graph instance norm is a reshape to (B, N, hidden).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from surrogates.errors import SurrogateError
from surrogates.models.common import check_cond, check_inputs, check_int, check_model_args

__all__ = ["MPPDE", "MPPDEHparams", "Graph", "grid_graph", "grid_points", "point_graph", "decoder_kernels"]

_NAME = "MPPDE"
_SUPPORTED_NDIM = (1, 2)
# Decoder 1D-CNN kernels (kernel1, stride1, kernel2) of the reference for hidden = 128
# (`experiments/models_gnn.py`, MP_PDE_Solver.__init__), keyed by K.
_PAPER_DECODERS = {20: (15, 4, 10), 25: (16, 3, 14), 50: (12, 2, 10)}
_NORM_EPS = 1e-5  # torch_geometric.nn.InstanceNorm default


# --------------------------------------------------------------------------- graphs
class Graph(NamedTuple):
    """Directed edges j -> i. senders (E,) int32 = j, receivers (E,) int32 = i, rel_pos (E, d) = x_i - x_j."""

    senders: np.ndarray | jax.Array
    receivers: np.ndarray | jax.Array
    rel_pos: np.ndarray | jax.Array


def _lengths(domain_length: float | Sequence[float], d: int) -> tuple[float, ...]:
    lengths = (domain_length,) * d if np.isscalar(domain_length) else tuple(domain_length)
    if len(lengths) != d or any(not np.isfinite(v) or v <= 0 for v in lengths):
        raise SurrogateError(
            f"domain_length={domain_length!r} must be a positive number or {d} positive numbers (one per axis)"
        )
    return tuple(float(v) for v in lengths)


def _check_grid_shape(grid_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in grid_shape)
    if len(shape) not in _SUPPORTED_NDIM or any(n < 2 for n in shape):
        raise SurrogateError(
            f"grid_shape={tuple(grid_shape)} must be a 1D or 2D grid with >= 2 points per axis, e.g. (100,) or (16, 16)"
        )
    return shape


def _spacing(shape: tuple[int, ...], periodic: bool, lengths: tuple[float, ...]) -> tuple[float, ...]:
    # Periodic: n points at i*L/n on [0, L); otherwise n points at i*L/(n-1) spanning [0, L].
    return tuple(L / (n if periodic else n - 1) for n, L in zip(shape, lengths, strict=True))


def grid_points(
    grid_shape: Sequence[int], *, periodic: bool = True, domain_length: float | Sequence[float] = 1.0
) -> np.ndarray:
    """Node positions of a regular grid, (N, d) float32, nodes in C order of their grid index.

    Periodic: x = i * L / n on [0, L); non-periodic: x = i * L / (n - 1) on [0, L].
    """
    shape = _check_grid_shape(grid_shape)
    lengths = _lengths(domain_length, len(shape))
    h = _spacing(shape, periodic, lengths)
    axes = [np.arange(n) * hx for n, hx in zip(shape, h, strict=True)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(shape))
    return pts.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _grid_graph_cached(
    shape: tuple[int, ...], n_neighbors: int | None, radius: float | None, periodic: bool, lengths: tuple[float, ...]
) -> Graph:
    d = len(shape)
    h = np.asarray(_spacing(shape, periodic, lengths))
    # Integer offsets o != 0 within the ball: |o| <= n_neighbors (index space) or |o * h| <= radius.
    if n_neighbors is not None:
        reach = [n_neighbors] * d
        scale, r = np.ones(d), float(n_neighbors)
    else:
        reach = [int(np.floor(radius / hx * (1 + 1e-9))) for hx in h]
        scale, r = h, float(radius)
    offsets = [
        o
        for o in itertools.product(*(range(-k, k + 1) for k in reach))
        if any(o) and np.sum((np.asarray(o) * scale) ** 2) <= r * r * (1 + 1e-9)
    ]
    if not offsets:
        raise SurrogateError(
            f"grid_graph: radius={radius} is smaller than the grid spacing {tuple(h)}; every node would be isolated. "
            "Use a larger radius or n_neighbors >= 1"
        )
    if periodic and any(2 * k >= n for k, n in zip(reach, shape, strict=True)):
        raise SurrogateError(
            f"grid_graph: neighbourhood reach {tuple(reach)} (grid steps) wraps around the periodic grid {shape}; "
            "use fewer neighbours or a finer grid (need 2 * reach < points per axis)"
        )
    offsets_arr = np.asarray(offsets, dtype=np.int64)  # (M, d)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, d)  # (N, d)
    nbr = idx[:, None, :] + offsets_arr[None, :, :]  # (N, M, d): sender j of receiver i
    dims = np.asarray(shape)
    if periodic:
        valid = np.ones(nbr.shape[:2], dtype=bool)
        nbr = nbr % dims
    else:
        valid = np.all((nbr >= 0) & (nbr < dims), axis=-1)
    receivers = np.broadcast_to(np.arange(len(idx))[:, None], valid.shape)[valid]
    senders = np.ravel_multi_index(tuple(nbr[valid].T), shape)
    rel = np.broadcast_to(-offsets_arr * h, (len(idx), *offsets_arr.shape))[valid]  # x_i - x_j = -o * h
    graph = Graph(senders.astype(np.int32), receivers.astype(np.int32), rel.astype(np.float32))
    for a in graph:
        a.setflags(write=False)
    return graph


def grid_graph(
    grid_shape: Sequence[int],
    *,
    n_neighbors: int | None = None,
    radius: float | None = None,
    periodic: bool = True,
    domain_length: float | Sequence[float] = 1.0,
) -> Graph:
    """Radius graph of a regular 1D/2D grid (numpy arrays, cached; node order as `grid_points`).

    Give exactly one of
      n_neighbors: join nodes whose index offset o satisfies 0 < |o| <= n_neighbors (1D: n_neighbors
        nodes on each side, the reference's `neighbors`; 2D: a disc of that many grid steps);
      radius: join nodes closer than `radius` (physical units of `domain_length`).
    periodic: wrap around (rel_pos is then the minimum-image x_i - x_j). No self-loops.
    Returns Graph(senders (E,), receivers (E,), rel_pos (E, d) in units of domain_length).
    """
    shape = _check_grid_shape(grid_shape)
    lengths = _lengths(domain_length, len(shape))
    if (n_neighbors is None) == (radius is None):
        raise SurrogateError("grid_graph: give exactly one of n_neighbors=<int> or radius=<float>")
    if n_neighbors is not None:
        check_int("grid_graph", "n_neighbors", n_neighbors, lo=1)
    elif not (np.isfinite(radius) and radius > 0):
        raise SurrogateError(f"grid_graph: radius={radius} must be a positive number")
    return _grid_graph_cached(shape, n_neighbors, None if radius is None else float(radius), bool(periodic), lengths)


def point_graph(
    points: jax.Array,
    k: int,
    *,
    periodic: bool = False,
    domain_length: float | Sequence[float] | None = None,
) -> Graph:
    """k-nearest-neighbour graph of a point cloud (jnp; jit-friendly with static k, O(N^2) memory).

    points: (N, d) positions. Each point i receives edges from its k nearest other points j.
    periodic: use minimum-image distances on a box of side `domain_length` (required then).
    Returns Graph(senders (N*k,), receivers (N*k,), rel_pos (N*k, d) = x_i - x_j).
    """
    if getattr(points, "ndim", None) != 2:
        raise SurrogateError(
            f"point_graph: points must have shape (N, d), got {getattr(points, 'shape', type(points))}"
        )
    n, d = points.shape
    if n < 2:
        raise SurrogateError(f"point_graph: got {n} point(s); a graph needs at least 2")
    check_int("point_graph", "k", k, lo=1, hi=n - 1)
    box = None
    if periodic:
        if domain_length is None:
            raise SurrogateError("point_graph: periodic=True needs domain_length (the box side)")
        box = _lengths(domain_length, d)
    return _knn_graph(jnp.asarray(points, jnp.float32), k, box)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _knn_graph(points: jax.Array, k: int, box: tuple[float, ...] | None) -> Graph:
    n = points.shape[0]
    diff = points[:, None, :] - points[None, :, :]  # (N, N, d): x_i - x_j
    if box is not None:
        side = jnp.asarray(box, jnp.float32)
        diff = diff - side * jnp.round(diff / side)  # minimum image
    dist2 = jnp.sum(diff**2, axis=-1) + jnp.diag(jnp.full((n,), jnp.inf, jnp.float32))
    _, nbrs = jax.lax.top_k(-dist2, k)  # (N, k) nearest senders of each receiver
    receivers = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
    senders = nbrs.reshape(-1).astype(jnp.int32)
    return Graph(senders, receivers, diff[receivers, senders])


# --------------------------------------------------------------------------- hyper-parameters
@dataclasses.dataclass(frozen=True)
class MPPDEHparams:
    """Hyper-parameters of MP-PDE. Defaults follow Brandstetter et al. (2022), experiments E1-E3.

    hidden: node feature width (paper: 128).
    num_layers: message-passing layers (paper: 6).
    neighbors: grid graphs join nodes within this many grid steps (paper's E tasks: 3).
    periodic: grid graphs wrap around (the E1-E3 equations are periodic).
    domain_length: L, the domain side in the units of the positions; positions enter as x / L.
        (E1-E3: L = 16; default 1 for unit-square data.)
    dt: time between two output steps, scaling the bundled increments: out_k = u_last + k * dt * d_k
        (E1: 4 / 250 = 0.016; default 1 means the network predicts per-step increments).
    """

    hidden: int = 128
    num_layers: int = 6
    neighbors: int = 3
    periodic: bool = True
    domain_length: float = 1.0
    dt: float = 1.0

    def __post_init__(self) -> None:
        check_int(_NAME, "hidden", self.hidden, lo=1)
        check_int(_NAME, "num_layers", self.num_layers, lo=1)
        check_int(_NAME, "neighbors", self.neighbors, lo=1)
        if not isinstance(self.periodic, bool):
            raise SurrogateError(f"{_NAME}: hyper-parameter periodic={self.periodic!r} must be True or False")
        for name in ("domain_length", "dt"):
            value = getattr(self, name)
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (is_number and math.isfinite(value) and value > 0):
                raise SurrogateError(f"{_NAME}: hyper-parameter {name}={value!r} must be a positive number")


def decoder_kernels(hidden: int, k: int) -> tuple[int, int, int] | None:
    """(kernel1, stride1, kernel2) of the reference's decoder CNN when it applies, else None (linear)."""
    return _PAPER_DECODERS.get(k) if hidden == 128 else None


# --------------------------------------------------------------------------- layers
def _swish(x: jax.Array) -> jax.Array:
    return jax.nn.silu(x)  # Swish with beta = 1, as the reference's Swish()


class _MLP2(nnx.Module):
    """Linear -> Swish -> Linear -> Swish."""

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.Linear(c_in, c_out, rngs=rngs)
        self.fc2 = nnx.Linear(c_out, c_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _swish(self.fc2(_swish(self.fc1(x))))


def _instance_norm(h: jax.Array, num_graphs: int) -> jax.Array:
    """Normalise each feature over the nodes of each graph: (B*N, H) viewed as (B, N, H)."""
    g = h.reshape(num_graphs, -1, h.shape[-1])
    mean = g.mean(axis=1, keepdims=True)
    var = jnp.mean((g - mean) ** 2, axis=1, keepdims=True)
    return ((g - mean) * jax.lax.rsqrt(var + _NORM_EPS)).reshape(h.shape)


class _MessagePassingLayer(nnx.Module):
    """One MP-PDE layer (eqs. 8-9) with residual update and instance norm."""

    def __init__(self, hidden: int, u_dim: int, pos_dim: int, cond_dim: int, *, rngs: nnx.Rngs) -> None:
        self.message = _MLP2(2 * hidden + u_dim + pos_dim + cond_dim, hidden, rngs=rngs)
        self.update = _MLP2(2 * hidden + cond_dim, hidden, rngs=rngs)

    def __call__(
        self,
        h: jax.Array,
        u: jax.Array,
        theta: jax.Array,
        rel_pos: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        num_graphs: int,
    ) -> jax.Array:
        """h (M, H), u (M, C), theta (M, P) over M = B*N nodes; rel_pos (E, d), senders/receivers (E,)."""
        m = h.shape[0]
        edge_in = jnp.concatenate(
            [h[receivers], h[senders], u[receivers] - u[senders], rel_pos, theta[receivers]], axis=-1
        )
        msg = self.message(edge_in)
        total = jax.ops.segment_sum(msg, receivers, num_segments=m)
        count = jax.ops.segment_sum(jnp.ones_like(receivers, h.dtype), receivers, num_segments=m)
        mean = total / jnp.maximum(count, 1.0)[:, None]
        h = h + self.update(jnp.concatenate([h, mean, theta], axis=-1))
        return _instance_norm(h, num_graphs)


class _Decoder(nnx.Module):
    """Shared per-node decoder (M, hidden) -> (M, K): the reference's 1D CNN, or a Linear."""

    def __init__(self, hidden: int, k: int, *, rngs: nnx.Rngs) -> None:
        kernels = decoder_kernels(hidden, k)
        self.use_cnn = kernels is not None
        if kernels is not None:
            k1, s1, k2 = kernels
            self.conv1 = nnx.Conv(1, 8, (k1,), strides=(s1,), padding="VALID", rngs=rngs)
            self.conv2 = nnx.Conv(8, 1, (k2,), padding="VALID", rngs=rngs)
        else:
            self.linear = nnx.Linear(hidden, k, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        if not self.use_cnn:
            return self.linear(h)
        return self.conv2(_swish(self.conv1(h[..., None])))[..., 0]


# --------------------------------------------------------------------------- model
class MPPDE(nnx.Module):
    """MP-PDE solver: (B, in_channels = time window, *grid) -> (B, out_channels = K future steps, *grid).

    `cond` (B, cond_dim) holds the PDE parameters (and, if wanted, the time); None when cond_dim == 0.
    On grids the graph is `grid_graph(grid, n_neighbors=hparams.neighbors, periodic=hparams.periodic,
    domain_length=hparams.domain_length)`; for arbitrary point sets use `apply_points`.
    """

    Hparams = MPPDEHparams
    supported_ndims: tuple[int, ...] = _SUPPORTED_NDIM

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        ndim: int,
        cond_dim: int,
        hparams: MPPDEHparams,
        rngs: nnx.Rngs,
    ) -> None:
        check_model_args(_NAME, in_channels, out_channels, ndim, cond_dim, hparams, MPPDEHparams, _SUPPORTED_NDIM)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ndim = ndim
        self.cond_dim = cond_dim
        self.hparams = hparams
        hp = hparams
        self.encoder = _MLP2(in_channels + ndim + cond_dim, hp.hidden, rngs=rngs)
        self.layers = nnx.List(
            [_MessagePassingLayer(hp.hidden, in_channels, ndim, cond_dim, rngs=rngs) for _ in range(hp.num_layers)]
        )
        self.decoder = _Decoder(hp.hidden, out_channels, rngs=rngs)

    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        """x: (B, in_channels, *grid), time steps oldest first; cond: (B, cond_dim) or None.
        Returns (B, out_channels, *grid): the next K steps."""
        batch = check_inputs(_NAME, x, cond, in_channels=self.in_channels, ndim=self.ndim, cond_dim=self.cond_dim)
        grid = tuple(x.shape[2:])
        hp = self.hparams
        try:
            graph = grid_graph(grid, n_neighbors=hp.neighbors, periodic=hp.periodic, domain_length=hp.domain_length)
        except SurrogateError as err:
            raise SurrogateError(f"{_NAME}: cannot build the grid graph for grid {grid}: {err}") from None
        pos = grid_points(grid, periodic=hp.periodic, domain_length=hp.domain_length)
        u = x.reshape(batch, self.in_channels, -1).transpose(0, 2, 1)  # (B, N, C_in)
        out = self._forward(u, jnp.asarray(pos), *(jnp.asarray(a) for a in graph), cond)
        return out.transpose(0, 2, 1).reshape(batch, self.out_channels, *grid)

    def apply_points(
        self,
        u: jax.Array,
        pos: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        cond: jax.Array | None = None,
        *,
        rel_pos: jax.Array | None = None,
    ) -> jax.Array:
        """MP-PDE on an arbitrary point set shared by the batch.

        u: (B, N, in_channels) time steps oldest first; pos: (N, ndim) positions (units of
        domain_length); senders/receivers: (E,) int edges j -> i (e.g. from `point_graph`);
        cond: (B, cond_dim) or None; rel_pos: (E, ndim) x_i - x_j, default pos[receivers] - pos[senders]
        (pass the graph's rel_pos on periodic domains). Returns (B, N, out_channels).
        """
        shape = tuple(getattr(u, "shape", ()))
        if len(shape) != 3 or shape[2] != self.in_channels:
            raise SurrogateError(
                f"{_NAME}.apply_points: u has shape {shape} but must be (B, N, {self.in_channels}) "
                "= batch, points, time window; move channels last"
            )
        batch, n = shape[0], shape[1]
        if tuple(getattr(pos, "shape", ())) != (n, self.ndim):
            raise SurrogateError(
                f"{_NAME}.apply_points: pos has shape {tuple(getattr(pos, 'shape', ()))} but must be ({n}, {self.ndim})"
            )
        s_shape, r_shape = tuple(getattr(senders, "shape", ())), tuple(getattr(receivers, "shape", ()))
        if len(s_shape) != 1 or s_shape != r_shape:
            raise SurrogateError(
                f"{_NAME}.apply_points: senders {s_shape} and receivers {r_shape} must be 1D index arrays "
                "of equal length (one entry per edge)"
            )
        if rel_pos is None:
            rel_pos = pos[receivers] - pos[senders]
        elif tuple(getattr(rel_pos, "shape", ())) != (s_shape[0], self.ndim):
            raise SurrogateError(
                f"{_NAME}.apply_points: rel_pos has shape {tuple(getattr(rel_pos, 'shape', ()))} "
                f"but must be ({s_shape[0]}, {self.ndim}), one row per edge"
            )
        check_cond(_NAME, cond, batch=batch, cond_dim=self.cond_dim)
        return self._forward(u, pos, senders, receivers, rel_pos, cond)

    def _forward(
        self,
        u: jax.Array,
        pos: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        rel_pos: jax.Array,
        cond: jax.Array | None,
    ) -> jax.Array:
        """u (B, N, C_in), pos (N, d), edges (E,), rel_pos (E, d), cond (B, P) | None -> (B, N, K)."""
        batch, n, c_in = u.shape
        inv_l = 1.0 / self.hparams.domain_length
        # One disjoint graph of B*N nodes: sample b's node indices are offset by b*N.
        offsets = (jnp.arange(batch, dtype=jnp.int32) * n)[:, None]
        snd = (senders.astype(jnp.int32)[None, :] + offsets).reshape(-1)
        rcv = (receivers.astype(jnp.int32)[None, :] + offsets).reshape(-1)
        rel = jnp.tile(rel_pos.astype(u.dtype) * inv_l, (batch, 1))  # (B*E, d)
        u_nodes = u.reshape(batch * n, c_in)
        x_nodes = jnp.broadcast_to(pos.astype(u.dtype) * inv_l, (batch, n, self.ndim)).reshape(batch * n, -1)
        if cond is None:
            theta = jnp.zeros((batch * n, 0), u.dtype)
        else:
            theta = jnp.broadcast_to(cond.astype(u.dtype)[:, None, :], (batch, n, self.cond_dim)).reshape(batch * n, -1)

        h = self.encoder(jnp.concatenate([u_nodes, x_nodes, theta], axis=-1))
        for layer in self.layers:
            h = layer(h, u_nodes, theta, rel, snd, rcv, batch)
        increments = self.decoder(h)  # (B*N, K)
        k = self.out_channels
        times = self.hparams.dt * jnp.arange(1, k + 1, dtype=u.dtype)  # cumsum of dt, eq. 10
        out = u_nodes[:, -1:] + times * increments
        return out.reshape(batch, n, k)
