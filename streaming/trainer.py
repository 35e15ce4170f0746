"""The online trainer: messages in, gradient steps out.

The trainer consumes an iterable of messages (chunks and simulation reports) and knows nothing of
the transport behind it. Two ingestion modes:

- ``background`` (Ray, MPI): a receiver thread cuts chunks into samples and puts them into the
  buffer (waiting for room when the buffer blocks producers), while a prefetch thread draws
  batches and ``device_put`` s them ahead of the train step (double buffering), so the device
  does not wait on the host.
- ``sync`` (local backend): before each step the trainer pulls messages until a batch's worth of
  new samples (``buffer.ingest_ratio`` batches' worth, when set) entered the buffer; no threads, so
  a run and its resume are reproducible step for step.

With ``buffer.ingest_ratio`` the receiver thread stops reading once the buffer is full and the stream
is that many new samples per drawn sample ahead (:meth:`~streaming.buffers.Buffer.wait_for_demand`);
the transport's in-flight bound then holds the workers, so solvers faster than the train step do not
take its CPU (the quickstart on 2 CPU cores shared with its workers: about 0.6 -> 1.0 of the from-memory
step rate, ``benchmarks/studies/throughput.py``).

The normaliser is fitted on the first ``watermark`` samples and frozen. Every
``validation.interval`` steps the model is scored on held-out simulations (one-step and rollout
relative L2, physical units, through the surrogate's own ``step``/``rollout``, boundary constraint
included); the best one by ``validation.select`` (the rollout error by default) is exported as a
:class:`~surrogates.Surrogate` to ``run_dir/surrogate`` and its step and scores go to the summary
(``best_step``, ``best_val_one_step_rel_l2``, ``best_val_rollout_rel_l2``; ``val_rollout_full``: at the end,
the exported surrogate rolled out over the whole validation trajectories, per channel, beside the identity
baseline). Checkpoints hold the train
state, buffer, normaliser and design cursor.

Training goes through the surrogate's model-space output map (``model.predict = "increment"``, the
solver's frozen border held), over ``optim.unroll`` autoregressive model calls per sample (a linear
curriculum, ``surrogates.training.linear_unroll``; samples are then cut with the targets of every call,
the workers' chunks carry the frames they need), with ``optim.input_noise``. Where the solver holds cells
that depend on the parameters (obstacles: ``Solver.held_cells``), every batch carries each sample's mask
(``"hold"``, from its parameters) and the train step holds those cells in every call, as validation and
the exported surrogate do.

With ``solver.design = "adaptive"`` every batch carries its samples' simulation ids; every
``solver.adaptive.loss_every`` steps the train step's own per-sample loss (its forward pass before the
update, the mean over the calls it unrolls; ``relative``: each over the loss of predicting zero) is
added to a running per-simulation mean, which goes up to the design through ``design.report_losses``
every ``report_every`` steps and before each checkpoint (:mod:`streaming.adaptive`); validation adds the
rollout error per parameter bin and the logs a histogram per parameter of the simulations handed out.

With a :class:`~streaming.distributed.Parallel` the trainer is one of N processes: it draws its share
of the global batch from its own buffer, the normaliser's moments are pooled over the processes when
the watermarks are reached, and only process 0 validates, logs and exports.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from streaming.adaptive import SimLosses, per_sim_errors, region_errors
from streaming.assembly import model_calls
from streaming.buffers import Buffer
from streaming.checkpoint import Checkpoints
from streaming.chunk import Chunk
from streaming.distributed import Parallel, SurrogateExporter, local_copy
from streaming.errors import JobFailed
from streaming.metrics import MetricsLog
from streaming.progress import progress_bar
from streaming.samples import SampleSpec, cut
from streaming.worker import SimReport
from surrogates.normalizer import Normalizer
from surrogates.surrogate import Surrogate
from surrogates.training import linear_unroll, make_train_step


class _CtrlCGuard:
    """While installed (a context manager), a Ctrl-C (SIGINT) raises KeyboardInterrupt at once, except inside
    ``hold``, where it is held until the block has finished.

    A jitted train step donates the previous state's buffers: an interrupt between the call's return and the
    assignment of the new state would leave nothing but deleted arrays to checkpoint. The handler is set once per
    run, so a step pays only for a flag. Outside the main thread (no signal handlers there) nothing is installed.
    """

    def __init__(self) -> None:
        self.holding = self.held = False

    def _handler(self, signum: int, frame: object) -> None:
        if not self.holding:
            raise KeyboardInterrupt
        self.held = True

    def __enter__(self) -> _CtrlCGuard:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.held:
            raise KeyboardInterrupt


class StreamEnded(JobFailed):
    """The stream ended before the buffer reached its watermark (a one-line error on the command line)."""


@dataclass
class Validation:
    """Held-out simulations: frames ``(S, T, C, *grid)``, parameters ``(S, P)`` and, where the solver imposes
    values that depend on the parameters (obstacles), the cells the surrogate holds, bool ``(S, C, *grid)``."""

    frames: np.ndarray
    params: np.ndarray
    rollout_steps: int
    hold: np.ndarray | None = None

    def score(self, sur: Surrogate, spec: SampleSpec) -> dict[str, float]:
        """One-step and rollout relative L2 (mean over samples / frames), physical units."""
        t_len = self.frames.shape[1]
        cond = self.params.astype(np.float32) if spec.condition_on_params else None
        def rel(p: np.ndarray, y: np.ndarray) -> np.ndarray:
            """Per-sample relative L2 error."""
            err = np.linalg.norm((p - y).reshape(len(p), -1), axis=1)
            return err / np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), 1e-12)

        if spec.kind == "field":
            pred = np.asarray(sur.rollout(None, t_len - 1, cond=cond, t0=0.0))  # (S, T, C, *grid)
            err = rel(pred.reshape(-1, *pred.shape[2:]), self.frames.reshape(-1, *pred.shape[2:]))
            return {"val_one_step_rel_l2": float(err.mean()), "val_rollout_rel_l2": float(err.mean())}
        w = spec.window
        one = []
        for j in range(w, t_len - spec.horizon + 1):
            win = self.frames[:, j - w : j]
            pred = np.asarray(sur.step(win if w > 1 else win[:, 0], cond=cond, t=(j - 1) * spec.frame_dt,
                                       hold=self.hold))
            truth = self.frames[:, j : j + spec.horizon] if spec.kind == "bundle" else self.frames[:, j]
            one.append(rel(pred, truth))
        n_roll = min(self.rollout_steps, t_len - w)
        start = self.frames[:, :w]
        roll = np.asarray(sur.rollout(start if w > 1 else start[:, 0], n_roll, cond=cond, t0=(w - 1) * spec.frame_dt,
                                      hold=self.hold))
        truth = self.frames[:, w - 1 : w + n_roll]
        r = [rel(roll[:, i], truth[:, i]) for i in range(1, n_roll + 1)]
        return {"val_one_step_rel_l2": float(np.mean(one)), "val_rollout_rel_l2": float(np.mean(r))}

    def rollout_full(self, sur: Surrogate, spec: SampleSpec) -> dict[str, Any]:
        """Per-channel relative L2 of the rollout over every validation frame after the first window (mean over
        simulations and frames), beside the identity baseline (the last input frame held); kind "field" has no
        input frame, so its identity is None."""
        t_len, w = self.frames.shape[1], spec.window
        cond = self.params.astype(np.float32) if spec.condition_on_params else None
        truth = self.frames[:, max(w, 1):]  # (S, n, C, *grid)
        if spec.kind == "field":
            pred = np.asarray(sur.rollout(None, t_len - 1, cond=cond, t0=0.0))[:, 1:]
        else:
            start = self.frames[:, :w]
            pred = np.asarray(sur.rollout(start if w > 1 else start[:, 0], t_len - w, cond=cond,
                                          t0=(w - 1) * spec.frame_dt, hold=self.hold))[:, 1:]

        def per_channel(p: np.ndarray) -> list[float]:
            """(S, n, C, *grid) -> mean over (S, n) of the per-channel relative L2, one per channel."""
            axes = tuple(range(3, truth.ndim))
            err = np.sqrt(((p - truth) ** 2).sum(axis=axes))
            return (err / np.maximum(np.sqrt((truth ** 2).sum(axis=axes)), 1e-12)).mean(axis=(0, 1)).tolist()

        names = list(sur.channels)
        identity = None if spec.kind == "field" else dict(zip(names, per_channel(
            np.broadcast_to(self.frames[:, w - 1 : w], truth.shape)), strict=True))
        return {"steps": int(truth.shape[1]), "surrogate": dict(zip(names, per_channel(pred), strict=True)),
                "identity": identity}


@dataclass
class Counters:
    chunks: int = 0
    samples_in: int = 0
    samples_new: int = 0
    bytes_in: int = 0
    sims_done: int = 0
    sims_dropped: int = 0
    dropped_messages: list[str] = field(default_factory=list)


class HeldCells:
    """The held cells of parameter rows, ``held_cells(params (N, P)) -> bool (N, C, *grid) | None`` (the solver's),
    kept per distinct row (a batch draws from a few hundred simulations; at most ``limit`` rows are kept)."""

    def __init__(self, held_cells: Callable[[np.ndarray], np.ndarray | None], channels: int, grid: tuple[int, ...],
                 limit: int = 4096) -> None:
        self.held_cells, self.shape, self.limit = held_cells, (channels, *grid), limit
        self._masks: dict[bytes, np.ndarray] = {}

    def __call__(self, params: np.ndarray) -> np.ndarray:
        """``(B, P)`` -> bool ``(B, C, *grid)``."""
        keys = [r.tobytes() for r in np.ascontiguousarray(params)]
        rows = dict(zip(keys, params, strict=True))
        missing = [k for k in rows if k not in self._masks]
        if missing:
            if len(self._masks) + len(missing) > self.limit:
                self._masks.clear()
                missing = list(rows)
            held = self.held_cells(np.stack([rows[k] for k in missing]))
            for i, k in enumerate(missing):
                self._masks[k] = np.zeros(self.shape, bool) if held is None else held[i]
        return np.stack([self._masks[k] for k in keys])


class Trainer:
    """Runs ``optim.steps`` gradient steps on samples streamed through ``buffer``."""

    def __init__(self, *, cfg: Any, spec: SampleSpec, model: nnx.Module, optimizer: nnx.Optimizer,
                 schedule: Any, buffer: Buffer, normalizer: Normalizer, metadata: Any, validation: Validation | None,
                 run_dir: Path, metrics: MetricsLog, checkpoints: Checkpoints, mode: str,
                 cursor_state: Callable[[], dict], parallel: Parallel | None = None, design: Any = None,
                 held_cells: Callable[[np.ndarray], np.ndarray | None] | None = None) -> None:
        self.cfg, self.spec, self.model, self.optimizer = cfg, spec, model, optimizer
        self.schedule, self.buffer, self.normalizer, self.metadata = schedule, buffer, normalizer, metadata
        self.validation, self.run_dir, self.metrics, self.checkpoints = validation, run_dir, metrics, checkpoints
        self.mode, self.cursor_state, self.parallel = mode, cursor_state, parallel
        # design = "adaptive": per-sample losses go up to ``design`` (the dispatcher) as per-simulation means
        self.design = design if cfg.solver.design == "adaptive" else None
        # obstacle cells of each sample from its parameters (samples carry them as cond); None: nothing held
        self._held = None if held_cells is None else HeldCells(held_cells, len(metadata.channels), tuple(metadata.grid))
        self._sim_losses = SimLosses()
        self._admitted: dict[int, int] = {}  # loss-steered design: samples each running simulation got into the buffer
        self.is_main = parallel is None or parallel.is_main
        self.step = 0
        self.best_val = float("inf")  # the validation.select error of the exported surrogate
        self.best: dict[str, Any] = {}  # its step and scores
        self.rollout_full: dict[str, Any] | None = None  # the exported surrogate's full rollout per channel
        self.history: list[dict] = []
        self.counters = Counters()
        o = cfg.optim
        kind = None if self.design is None else ("relative" if cfg.solver.adaptive.relative else "absolute")
        self.train_step = make_train_step(model, optimizer, loss=o.loss, pushforward=o.pushforward,
                                          output_map=self.metadata.output_map(), input_noise=o.input_noise,
                                          seed=o.seed, sample_losses=kind)
        self.unroll = linear_unroll(o.unroll.start, o.unroll.end, o.unroll.ramp_steps)
        if spec.calls != model_calls(cfg):
            raise ValueError(f"the sample spec holds the targets of {spec.calls} model call(s) but optim trains "
                             f"through {model_calls(cfg)}; build it with streaming.assembly.sample_spec(cfg, solver)")
        self.surrogate: Surrogate | None = None
        self.totals: dict[str, int] | None = None  # N processes: counters summed over them, at the end
        self._exporter = SurrogateExporter(run_dir) if parallel is not None and parallel.is_main else None
        self._encode = None
        self._norm_samples = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._source_done = threading.Event()
        self._norm_ready = threading.Event()
        if parallel is not None:  # one of N processes: global mesh, this process's share of the batch
            self.mesh, self._batch_sharding = parallel.mesh, parallel.batch_sharding
            self.local_batch = parallel.local_batch_size(cfg.optim.batch_size)
            self.train_step._state = parallel.replicate(self.train_step._state)
            # a stream that can run dry (samples leave the buffer, finitely many simulations) ends collectively
            self._agree_each_step = buffer.reuse_limit is not None and cfg.solver.n_sims > 0
        else:
            devices = jax.local_devices()
            self.mesh = Mesh(np.array(devices), ("data",))
            if cfg.optim.batch_size % len(devices):
                raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must be a multiple of the "
                                 f"{len(devices)} local devices (data parallelism)")
            self._batch_sharding = NamedSharding(self.mesh, P("data"))
            self.local_batch = cfg.optim.batch_size
            # parameters replicated on every device, on one device too: the step returns its state on the mesh,
            # and a first state without it would make the second step compile the whole step again
            self.train_step._state = jax.device_put(self.train_step._state, NamedSharding(self.mesh, P()))
        # a buffer restored from a checkpoint that stacked the frames on the channel axis ((W*C, *grid)) takes the
        # layout cut() gives today ((W, C, *grid)): the same values, read in the same order
        buffer.reshape_samples(spec.frame_shapes(len(metadata.channels), tuple(metadata.grid)))
        if normalizer.frozen:
            self._on_normalizer_frozen()

    # ------------------------------------------------------------------ samples in
    def _ingest(self, msg: Chunk | SimReport) -> int:
        """Put one message into the buffer; returns the number of new samples."""
        c = self.counters
        if isinstance(msg, SimReport):
            if msg.status == "done":
                c.sims_done += 1
            else:
                c.sims_dropped += 1
                c.dropped_messages.append(msg.message)
            self.buffer.forget([msg.sim_id])  # finished: its keys cannot come again (bounded de-dup memory)
            if self.design is not None and not self._admitted.pop(msg.sim_id, 0):
                self.design.no_loss(np.asarray([msg.sim_id]))  # none in the buffer: no loss will ever come
            return 0
        keys, samples = cut(msg, self.spec)
        c.chunks += 1
        c.bytes_in += msg.nbytes
        c.samples_in += len(keys)
        if not len(keys):
            return 0
        if not self.normalizer.frozen and self._norm_samples < self.cfg.buffer.watermark:
            self._fit_normalizer(samples)
        if self.buffer.blocks_producers:
            while not self.buffer.wait_for_room(len(keys), timeout=0.5):
                if self._stop.is_set():
                    return 0
        turned_away = self.buffer.n_discarded  # this thread is the buffer's one producer: the difference is ours
        new = int(self.buffer.put_many(keys, samples).sum())
        c.samples_new += new
        if self.design is not None:
            kept = new - (self.buffer.n_discarded - turned_away)
            self._admitted[msg.sim_id] = self._admitted.get(msg.sim_id, 0) + kept
        return new

    def _fit_normalizer(self, samples: dict[str, np.ndarray]) -> None:
        y = samples["y"]  # (n, S*K, C, *grid)
        frames = y.reshape(-1, *y.shape[2:])
        cond = []
        if "cond" in samples:
            cond.append(samples["cond"])
        if self.spec.time_in_cond:
            cond.append(samples["t"][:, None])
        self.normalizer.update(frames, np.concatenate(cond, 1) if cond else None)
        self._norm_samples += len(y)
        if self._norm_samples >= self.cfg.buffer.watermark and self.parallel is None:  # N processes: _agree_ready
            self.normalizer.freeze()
            self._on_normalizer_frozen()

    def _norm_fitted(self) -> bool:
        """The normaliser is frozen, or (N processes) this process has fitted its share and waits to pool it."""
        if self.parallel is None or self.normalizer.frozen:
            return self._norm_ready.is_set()
        return self._norm_samples >= self.cfg.buffer.watermark

    def _agree_ready(self) -> None:
        """N processes: stop together if one stream ended below its watermark, else pool and freeze the normaliser."""
        if self.parallel is None:
            return
        ready = self.buffer.ready() and self._norm_fitted() and self._error is None
        if not self.parallel.all_true(ready):
            if not ready:
                self._check_ready()  # raises this process's own reason
            raise StreamEnded("another trainer process's stream ended below buffer.watermark (see its log); raise "
                              "solver.n_sims or solver.steps, or lower buffer.watermark")
        if not self.normalizer.frozen:
            from streaming.distributed import merge_normalizers

            self.normalizer = merge_normalizers(self.normalizer).freeze()
            self._on_normalizer_frozen()

    def _put(self, batch: dict[str, np.ndarray]) -> dict:
        """A host batch on the devices: sharded over the local devices, or (N processes) the global batch."""
        if self.parallel is not None:
            return self.parallel.global_batch(batch)
        return jax.device_put(batch, self._batch_sharding)

    def _on_normalizer_frozen(self) -> None:
        self.surrogate = Surrogate.from_model(self.model, self.normalizer, self.metadata)
        sur = self.surrogate

        def encode(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
            """Samples as cut (streaming.samples) -> the model-space batch of the train step."""
            out = sur.encode_batch(batch.get("x"), batch["y"], batch.get("cond"), batch["t"])
            return out if "hold" not in batch else {**out, "hold": batch["hold"]}

        self._encode = jax.jit(encode)
        self._norm_ready.set()

    def _receiver(self, source: Iterable) -> None:
        # On Linux a thread has its own nice value: the receiver yields the CPU to the train step.
        if self.cfg.workers.nice and sys.platform.startswith("linux"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.cfg.workers.nice)
        ratio = self.cfg.buffer.ingest_ratio
        try:
            for msg in source:
                self._ingest(msg)
                if ratio is not None:  # rate matching: the workers wait (backpressure) until training draws
                    while not self.buffer.wait_for_demand(ratio, timeout=0.5) and not self._stop.is_set():
                        pass
                if self._stop.is_set():
                    break
        except BaseException as e:  # handed to the train loop, which re-raises it
            self._error = e
        finally:
            self._source_done.set()
            if self.buffer.ends_with_the_stream and not self._stop.is_set():
                self.buffer.end_reception()

    # ------------------------------------------------------------------ batches out
    def _draw(self) -> dict[str, np.ndarray] | None:
        """A batch from the buffer, or None when the stream and the buffer are exhausted."""
        b = self.local_batch
        while True:
            got = self.buffer.sample_batch(b)
            if got is not None:
                return self._finish(got)
            if self._error is not None or self._stop.is_set():
                return None
            if self.buffer.is_exhausted(b) or (self._source_done.is_set() and len(self.buffer) < b):
                return None
            self.buffer.wait_for_batch(b, timeout=0.5)

    def _prefetcher(self, out: queue.Queue) -> None:
        try:
            while not self._stop.is_set():
                batch = self._draw()
                if batch is None:
                    break
                dev = self._put(batch)
                while not self._stop.is_set():
                    try:
                        out.put(dev, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:
            self._error = e
        finally:
            if not self._stop.is_set():  # the loop still reads: tell it the stream ended
                with contextlib.suppress(queue.Full):
                    out.put(None, timeout=5)

    def _start_thread(self, target: Callable, arg: Any, name: str) -> None:
        t = threading.Thread(target=target, args=(arg,), daemon=True, name=name)
        self._threads.append(t)
        t.start()

    def join_threads(self, timeout: float = 10.0) -> None:
        """Stop the receiver and prefetch threads and wait for them (the source closed first, so the receiver's
        read returns). A thread left running at interpreter exit would drop the last reference to this trainer
        there and free device arrays after JAX has shut down, which aborts the process."""
        self._stop.set()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(end - time.monotonic(), 0.0))

    def _batches(self, source: Iterable) -> Iterator[dict]:
        if self.mode == "sync":
            it = iter(source)
            done = False

            def pull(n_new: int) -> None:
                nonlocal done
                got = 0
                while not done and got < n_new:
                    try:
                        got += self._ingest(next(it))
                    except StopIteration:
                        done = True
                        self._source_done.set()
                        if self.buffer.ends_with_the_stream:
                            self.buffer.end_reception()

            while not done and not (self.buffer.ready() and self._norm_fitted()):
                pull(1)
            self._agree_ready()
            self._check_ready()
            ratio = self.cfg.buffer.ingest_ratio  # sync: a batch's worth of new samples per step unless set
            per_step = self.local_batch if ratio is None else max(1, round(ratio * self.local_batch))
            while True:  # pull, draw, step: a checkpoint taken after a step resumes at the next pull
                pull(per_step)
                batch = self.buffer.sample_batch(self.local_batch)
                if not self._agreed(batch is not None) or batch is None:
                    return
                yield self._put(self._finish(batch))
        else:
            self._start_thread(self._receiver, source, name="receiver")
            while not (self._norm_fitted() and self.buffer.ready()):
                if self._error is not None and self.parallel is None:
                    raise self._error
                if self._source_done.is_set() or self._error is not None:
                    break
                time.sleep(0.05)
            self._agree_ready()
            self._check_ready()
            q: queue.Queue = queue.Queue(maxsize=2)
            self._start_thread(self._prefetcher, q, name="prefetch")
            while self._agreed((batch := q.get()) is not None) and batch is not None:
                yield batch
            if self._error is not None:
                raise self._error

    def _agreed(self, have_batch: bool) -> bool:
        """N processes whose streams can run dry: a step is taken only when every process has a batch."""
        if self.parallel is None or not self._agree_each_step:
            return have_batch
        return self.parallel.all_true(have_batch)

    def _check_ready(self) -> None:
        if self._error is not None:
            raise self._error
        if not (self.buffer.ready() and self._norm_ready.is_set()):
            raise StreamEnded(
                f"the stream ended with {len(self.buffer)} samples in the buffer, below buffer.watermark="
                f"{self.buffer.watermark}; raise solver.n_sims or solver.steps, or lower buffer.watermark"
            )

    # ------------------------------------------------------------------ the loop
    def run(self, source: Iterable) -> dict:
        cfg = self.cfg
        total = cfg.optim.steps
        t0 = time.time()
        last_t, last_step, last_samples = t0, self.step, 0
        losses: list[jax.Array] = []
        extra = "loss {task.fields[loss]} val {task.fields[val]} | {task.fields[rate]}"
        interrupted = False
        try:
            with _CtrlCGuard() as ctrl_c, progress_bar("train", total=total, enabled=cfg.logging.progress and
                                                       self.is_main, extra=extra,
                                                       fields={"loss": "-", "val": "-", "rate": ""}) as bar:
                bar.advance(self.step)
                for batch in self._batches(source):
                    if self.step >= total:
                        break
                    with ctrl_c.hold():  # the step donates the old state: never stop half-way through it
                        encoded = self._encode(batch)
                        losses.append(self.train_step(encoded, self.unroll(self.step)))
                        if self.design is not None and self.step % cfg.solver.adaptive.loss_every == 0:
                            # the step's own per-sample losses (before its update); read at the next report
                            self._sim_losses.add(batch["sim_id"], self.train_step.sample_losses)
                        self.step += 1
                        if self.design is not None and self.step % cfg.solver.adaptive.report_every == 0:
                            self._report_losses()
                    record: dict[str, Any] = {}
                    if self.step % cfg.logging.interval == 0 or self.step == total:
                        now = time.time()
                        loss = self._mean_loss(losses)
                        losses = []
                        if not np.isfinite(loss):
                            raise FloatingPointError(
                                f"training loss is {loss} at step {self.step}; lower optim.lr or set optim.clip_norm")
                        dt = max(now - last_t, 1e-9)
                        stats = self.buffer.stats()
                        counts = self._counts()  # N processes: summed over every process
                        record = {
                            "loss": loss, "lr": float(self.schedule(self.step)),
                            "samples_received_per_s": (counts["samples_new"] - last_samples) / dt,
                            "batches_per_s": (self.step - last_step) / dt,
                            "buffer_size": stats["size"], "put_get_balance": stats["put_get_balance"],
                            "samples_received": counts["samples_new"], "sims_done": counts["sims_done"],
                            "sims_dropped": counts["sims_dropped"],
                        }
                        last_t, last_step, last_samples = now, self.step, counts["samples_new"]
                    if (self.step % cfg.validation.interval == 0 or self.step == total) and self.is_main:
                        record.update(self.validate())
                    if record:
                        hists = {} if self.design is None else self.design.design_histograms()
                        self.metrics.log(self.step, record, {"seen_counts": self.buffer.seen_counts(), **hists})
                        self.history.append({"step": self.step, **record})
                        fill = f"buf {len(self.buffer)}/{self.buffer.capacity}"
                        rate = (f"{record.get('batches_per_s', 0):.1f} it/s "
                                f"{record.get('samples_received_per_s', 0):.0f} smp/s {fill}")
                        bar.advance(0, loss=f"{record.get('loss', float('nan')):.3e}",
                                    val=f"{self.best_val:.3e}", rate=rate)
                    bar.advance(1)
                    if self.step % cfg.checkpoint.interval == 0:
                        self.save_checkpoint()
                    if self.step >= total:
                        break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self._stop.set()
        # N processes: an interrupted process cannot count on the others to join a collective save
        if (interrupted and self.parallel is None) or (not interrupted and self.step % cfg.checkpoint.interval):
            self.save_checkpoint()
        if self.parallel is not None and not interrupted:
            self.totals = self._counts()
        if self.best_val == float("inf") and self.is_main and self.surrogate is not None:  # None: stopped early
            self.validate()
        if self._exporter is not None:
            self._exporter.close()
        if not interrupted:
            self.rollout_full = self.validate_exported()
        summary = self.summary(time.time() - t0, interrupted)
        if interrupted:
            raise KeyboardInterrupt(summary)
        return summary

    def _mean_loss(self, losses: list[jax.Array]) -> float:
        """Mean of the device losses since the last log line (N processes: from the local replica)."""
        if self.parallel is None:
            return float(jnp.mean(jnp.stack(losses)))
        return float(np.mean([np.asarray(loss) for loss in local_copy(losses)]))

    def _counts(self) -> dict[str, int]:
        """Samples and simulations received; with N processes, summed over them (a collective)."""
        c = self.counters
        names = ("samples_new", "sims_done", "sims_dropped", "chunks", "bytes_in", "samples_in")
        values = np.asarray([getattr(c, k) for k in names], np.int64)
        if self.parallel is not None:
            values = self.parallel.sum(values)
        return dict(zip(names, (int(v) for v in values), strict=True))

    def validate(self) -> dict[str, float]:
        assert self.surrogate is not None
        state = self.train_step.model_state
        self.surrogate.set_state(state if self.parallel is None else local_copy(state))
        scores = self.validation.score(self.surrogate, self.spec)
        if self.design is not None:  # where in parameter space the error is: per parameter bin
            v = self.validation
            errs = per_sim_errors(self.surrogate, self.spec, v.frames, v.params, v.rollout_steps)
            scores.update(region_errors(errs, v.params, self.design.cursor.solver.param_space))
        if scores[f"val_{self.cfg.validation.select}_rel_l2"] < self.best_val:
            self.best_val = scores[f"val_{self.cfg.validation.select}_rel_l2"]
            self.best = {"step": self.step, **scores}
            if self._exporter is None:
                self.surrogate.save(self.run_dir / "surrogate", overwrite=True)
            else:  # N processes: from a child process (see SurrogateExporter)
                self._exporter.export(nnx.to_pure_dict(local_copy(self.train_step.model_state)),
                                      self.normalizer.state_dict())
        return scores

    def validate_exported(self) -> dict[str, Any] | None:
        """The exported surrogate (``run_dir/surrogate``) over the full validation rollout, per channel, beside the
        identity baseline (:meth:`Validation.rollout_full`); None where this process exports nothing, and with
        several trainer processes, where an Orbax load by process 0 alone would wait at Orbax's multi-process
        barrier (``pdestream eval RUN`` scores the exported surrogate afterwards)."""
        path = self.run_dir / "surrogate"
        if self.validation is None or not self.is_main or self.parallel is not None or not path.exists():
            return None
        return self.validation.rollout_full(Surrogate.load(path), self.spec)

    # ------------------------------------------------------------------ checkpoints
    def state_tree(self) -> tuple[Any, dict]:
        return nnx.to_pure_dict(self.train_step._state), {
            "buffer": self.buffer.state_dict(), "normalizer": self.normalizer.state_dict()}

    def _report_losses(self) -> None:
        """Send the per-simulation mean losses gathered since the last report up to the design."""
        ids, values = self._sim_losses.take()
        if len(ids):
            self.design.report_losses(ids, values)

    def _finish(self, got: tuple[np.ndarray, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """A drawn batch with what the step needs beside the samples: with a loss-steered design each sample's
        simulation id (``sim_id`` (B,)), where the solver holds parameter-dependent cells their masks (``hold``
        bool (B, C, *grid))."""
        keys, batch = got
        if self.design is not None:
            batch = {**batch, "sim_id": keys[:, 0].astype(np.int32)}
        if self._held is not None:
            batch = {**batch, "hold": self._held(batch["cond"])}
        return batch

    def save_checkpoint(self) -> None:
        if self.design is not None:  # losses gathered so far go into the design state this checkpoint holds
            self._report_losses()
        train, tree = self.state_tree()
        meta = {"step": self.step, "best_val": self.best_val, "best": self.best, "cursor": self.cursor_state(),
                "counters": {k: v for k, v in vars(self.counters).items() if k != "dropped_messages"}}
        self.checkpoints.save(self.step, train, tree, meta)

    def restore(self, train: Any, meta: dict) -> None:
        state = self.train_step._state
        nnx.replace_by_pure_dict(state, train)
        nnx.update((self.model, self.optimizer), state)
        self.train_step.resplit()
        self.step = int(meta["step"])
        self.best_val = float(meta["best_val"])
        self.best = meta.get("best", {})
        for k, v in meta.get("counters", {}).items():
            setattr(self.counters, k, v)

    def summary(self, seconds: float, interrupted: bool) -> dict:
        c = self.counters
        last = next((h for h in reversed(self.history) if "loss" in h), {})
        return {
            "steps": self.step, "seconds": round(seconds, 2), "interrupted": interrupted,
            "final_loss": last.get("loss"), "select": self.cfg.validation.select, "best_step": self.best.get("step"),
            "best_val_one_step_rel_l2": self.best.get("val_one_step_rel_l2"),
            "best_val_rollout_rel_l2": self.best.get("val_rollout_rel_l2"), "val_rollout_full": self.rollout_full,
            "last_val": next((h for h in reversed(self.history) if "val_one_step_rel_l2" in h), {}),
            "chunks_received": c.chunks, "samples_received": c.samples_new, "duplicates": c.samples_in - c.samples_new,
            "megabytes_received": round(c.bytes_in / 2**20, 2), "sims_done": c.sims_done,
            "sims_dropped": c.sims_dropped, "dropped": c.dropped_messages[:20],
            "buffer": self.buffer.stats(),
            **({} if self.parallel is None else {"processes": self.parallel.num_processes,
                                                  "all_processes": self.totals}),
        }
