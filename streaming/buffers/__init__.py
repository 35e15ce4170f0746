"""Training buffers between the transport and the batcher: FIFO, FIRO, Reservoir and Epoch (pure numpy).

The buffers follow Melissa's online-training buffers (Meyer et al., "High Throughput Training of
Deep Surrogates from Large Ensemble Runs", SC23 workshops, arXiv 2309.16743; Melissa's
``melissa.server.deep_learning.reservoir``); the exact rules below are ours and are stated here.

Pieces
    One storage class (:class:`~streaming.buffers.storage.SlotStorage`: preallocated slots) and one
    small policy object per kind (:mod:`streaming.buffers.policies`: ``admit`` new samples,
    ``choose`` a batch, ``evict`` drawn samples), held together by :class:`~streaming.buffers.buffer.Buffer`
    (de-duplication, counters, watermark, flow control, checkpoints).

Samples and keys
    A *sample* is one numpy record: a ``dict`` of arrays (str keys), a ``tuple`` of arrays, or a
    single array. The first put fixes the structure, per-sample shapes and dtypes
    (:class:`~streaming.buffers.layout.SampleLayout`); storage is then preallocated as one array
    ``(capacity, *sample_shape)`` per leaf, so a batch is one fancy-index gather per leaf. Every
    sample carries a key ``(sim_id, frame)`` with ``0 <= sim_id < 2**31`` and ``0 <= frame < 2**32``.

    ``put(key, sample)`` takes one sample; ``put_many(keys, samples)`` takes ``keys`` int ``(n, 2)``
    (e.g. :meth:`streaming.chunk.Chunk.sample_keys`) and the same structure with a leading axis
    ``n`` on every leaf (e.g. ``{"u": chunk.fields, "p": np.broadcast_to(chunk.params, (n, P))}``).

De-duplication
    A key already seen (by this buffer, or earlier in the same call) is dropped and ``put``
    returns False. Seen steps live in a Python ``set`` per simulation, about 60-70 bytes per key;
    :meth:`Buffer.forget` drops the sets of finished simulations (whose keys cannot come again),
    so memory stays bounded by the simulations in flight over a job of any length (the trainer
    forgets a simulation when its done/dropped report arrives). ``dedup=False`` skips it all.

Kinds (``max_reuse``: how many draws a sample survives; ``None`` picks the kind's default)
    ``fifo``       Draws the ``batch_size`` oldest samples, in insertion order. A sample leaves
                   after ``max_reuse`` draws (default 1: each sample is used once; with ``k > 1``
                   the same oldest batch is served ``k`` times in a row). Put on a full FIFO raises
                   :class:`BufferFullError`; producers wait for ``has_room(n)``.
    ``firo``       First-in random-out: draws uniformly without replacement among the present
                   samples; a sample leaves after ``max_reuse`` draws (default 1, like Melissa's
                   FIRO where a read consumes). Backpressure as for FIFO.
    ``reservoir``  Uniform over everything offered (Vitter's Algorithm R, ACM TOMS 11(1), 1985):
                   while a slot is free the sample takes it; otherwise the ``n``-th new sample
                   overall replaces a uniformly chosen slot with probability ``capacity / n``.
                   Draws as FIRO. Samples are kept however often drawn (default ``max_reuse=None``);
                   with ``max_reuse`` they leave after that many draws, freeing a slot that the
                   next put fills directly. Never blocks producers (``has_room`` is always True).
    ``epoch``      A fixed dataset served by epochs (the offline baseline, ``pdestream train --offline``):
                   each epoch draws every sample present when it starts exactly once, in a fresh
                   random order. When the dataset size is not a multiple of the batch size, the batch
                   that straddles two epochs takes the ``r`` samples left from the old epoch and the
                   first ``batch_size - r`` samples of the new epoch's order that are not among them
                   (the new epoch is still a permutation of all samples), so a batch never holds one
                   sample twice. Samples put during an epoch join at the next one. Samples never
                   leave (``max_reuse`` must be None) and ``end_reception`` stops puts without
                   draining. A put beyond ``capacity`` raises :class:`BufferFullError`: size the
                   buffer to hold the whole dataset.

Watermark and end of reception
    ``ready()`` is ``len(buf) >= watermark``; ``sample_batch`` serves only when ready and at least
    ``batch_size`` samples are present, else returns None. After ``end_reception()`` the
    watermark no longer applies, every drawn sample leaves (the buffer drains, as Melissa's does
    at the end of a study), puts raise, and ``is_exhausted(batch_size)`` turns True when fewer than
    ``batch_size`` samples remain (the remainder is dropped, so batch shapes never change).
    The ``epoch`` buffer does not drain: it keeps serving epochs of its fixed dataset.

Counters
    ``n_put`` new (non-duplicate) samples offered, ``n_duplicates`` dropped keys, ``n_discarded``
    new samples the reservoir did not keep, ``n_evicted`` samples that left (consumed, replaced or
    drained), ``n_drawn`` sample draws (``batch_size`` per batch); ``put_get_balance = n_put -
    n_drawn`` (Melissa's ``put_get_inc``: near 0 means training keeps pace with generation).
    Invariant: ``len(buf) == n_put - n_discarded - n_evicted``.

Threads
    All public methods take one lock, so a receiver thread may ``put`` while the train loop draws;
    ``wait_for_room`` and ``wait_for_batch`` block on a condition instead of polling.

Rate matching
    ``wants_more(ratio)`` is ``n_put < capacity + ratio * n_drawn``: a producer that waits for it
    (``wait_for_demand``) fills the buffer at full speed and then takes at most ``ratio`` new samples
    per sample drawn. The trainer does so when ``buffer.ingest_ratio`` is set, so workers faster
    than training are held by the transport's backpressure instead of sending samples that a
    reservoir would mostly discard (Algorithm R keeps the ``n``-th sample with probability
    ``capacity / n``).

Checkpoints
    ``state_dict()`` returns ints and numpy arrays only (contents, counters, RNG state, seen keys);
    ``load_state_dict`` on a buffer built with the same settings, or
    :func:`buffer_from_state_dict`, continues with identical draws.
"""

from streaming.buffers.buffer import Buffer, buffer_from_state_dict, make_buffer
from streaming.buffers.errors import BufferConfigError, BufferFullError, BufferStateError
from streaming.buffers.keys import decode_keys, encode_keys
from streaming.buffers.policies import FIFO, FIRO, POLICIES, Epoch, Policy, Reservoir

__all__ = [
    "FIFO", "FIRO", "POLICIES", "Buffer", "BufferConfigError", "BufferFullError", "BufferStateError", "Epoch",
    "Policy", "Reservoir", "buffer_from_state_dict", "decode_keys", "encode_keys", "make_buffer",
]
