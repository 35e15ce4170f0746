"""Figures people would rather look at than read: snapshots of trajectories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.trajectories import Trajectories, TrajectoryFileError  # noqa: E402


def plot_trajectory(traj: Trajectories, sim: int, n_frames: int, out: str | Path) -> Path:
    """Snapshots of simulation ``sim``: ``n_frames`` evenly spaced frames (columns) x channels (rows).

    1D fields are drawn as a space-time image per channel plus line plots of the chosen frames.
    """
    n_sims, n_t = traj.shape[:2]
    if not 0 <= sim < n_sims:
        raise TrajectoryFileError(f"--sim {sim} is out of range; the file holds simulations 0..{n_sims - 1}")
    data = traj.fields(sim)  # (T, C, *grid)
    idx = np.unique(np.linspace(0, n_t - 1, max(1, min(n_frames, n_t))).round().astype(int))
    channels = traj.channels
    params = ", ".join(f"{n}={v:.3g}" for n, v in zip(traj.param_names, traj.params[sim], strict=True))
    if data.ndim == 3:  # 1D
        fig, axes = plt.subplots(len(channels), 2, figsize=(10, 3 * len(channels)), squeeze=False)
        x = traj.coords.get("x", np.arange(data.shape[-1]))
        for c, name in enumerate(channels):
            im = axes[c, 0].imshow(data[:, c], aspect="auto", origin="lower", cmap="RdBu_r",
                                   extent=(x[0], x[-1], traj.t[0], traj.t[-1]))
            axes[c, 0].set(xlabel="x", ylabel="t", title=f"{name}(x, t)")
            fig.colorbar(im, ax=axes[c, 0])
            for i in idx:
                axes[c, 1].plot(x, data[i, c], label=f"t={traj.t[i]:.3g}")
            axes[c, 1].set(xlabel="x", title=name)
            axes[c, 1].legend(fontsize=7)
    else:
        fig, axes = plt.subplots(len(channels), len(idx), figsize=(2.6 * len(idx), 2.5 * len(channels)),
                                 squeeze=False)
        for c, name in enumerate(channels):
            lo, hi = float(np.nanmin(data[:, c])), float(np.nanmax(data[:, c]))
            for j, i in enumerate(idx):
                ax = axes[c, j]
                im = ax.imshow(data[i, c].T, origin="lower", cmap="viridis", vmin=lo, vmax=hi)
                ax.set_title(f"{name}, t={traj.t[i]:.3g}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            fig.colorbar(im, ax=axes[c, :].tolist(), shrink=0.8)
    fig.suptitle(f"{traj.solver} sim {sim}: {params}", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
