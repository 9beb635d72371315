"""Continuous batching for language models: `max_batch` decode slots over one KV cache.

Every step runs the model's own `decode_step` once over the slots (the cache's rows: a
power of two that follows the load, see `Slots`). Between steps, queued
requests are prefilled (the model's own `prefill`, all newcomers in one batch) and their
rows placed into free slots; a row that finishes (eos, a stop string, max_tokens) or whose
client left frees its slot at once. As in JetStream's and levanter's servers, a slot is a
row of the cache and prefill is separate from the decode step; unlike theirs, the model's
cache has one write column (`cache_index`) for all rows, so every row's tokens end at that
column: a newcomer's prefilled cache row is rolled to end there, and the column is moved
(all rows rolled together) when a newcomer needs more room behind it than the rows
running now. Rows never see each other (attention is per row, and each row's `offset`
masks the columns before its prompt), so what a row generates does not depend on what
else runs beside it.

Sampling draws choice i's token t with key(mix(seed + i, t)) (`batcher.mixed_seeds`): the
same choice of the same request gets the same text whatever else is in the batch and
whenever it joined, and the same as from the bucketed path.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from bigflax.infer.serve import api
from bigflax.infer.serve import batcher as batcher_lib


@jax.jit
def roll(cache, shift):
  """The cache's columns rolled by `shift`: every row's tokens end `shift` further on."""

  def one(leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):  # a write index
      return leaf
    return jnp.roll(leaf, shift, axis=leaf.ndim - 3)  # keys and values: (..., B, max_len, K, D)

  return jax.tree.map(one, cache)


@functools.partial(jax.jit, donate_argnums=0)  # written in place, not copied
def place(cache, new_cache, slot_ids, new_shift, pointer):
  """The slots' cache with the newcomers' rows (`new_cache`, rolled by `new_shift`) written
  into rows `slot_ids` (an id past the end: a padding row, dropped), and the write index
  at `pointer`."""

  def one(old, new):
    if not jnp.issubdtype(old.dtype, jnp.floating):  # a write index
      return jnp.full_like(old, pointer)
    rows = old.ndim - 4  # keys and values: (..., B, max_len, K, D)
    new = jnp.roll(new, new_shift, axis=rows + 1)
    return old.at[(slice(None),) * rows + (slot_ids,)].set(new, mode="drop")

  return jax.tree.map(one, cache, new_cache)


@jax.jit
def regather(cache, index):
  """The cache's rows `index` (an index past the end: a row of zeros)."""

  def one(leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):  # a write index
      return leaf
    return jnp.take(leaf, index, axis=leaf.ndim - 4, mode="fill", fill_value=0)

  return jax.tree.map(one, cache)


class Row:
  """One choice of one request in a slot; its text is `out`, which outlives the slot."""

  def __init__(self, job, choice: int, prompt: list[int], out: batcher_lib.Completion):
    self.job, self.choice, self.out = job, choice, out
    self.used = len(prompt)  # tokens in the cache
    self.seed = (job.seed + choice) % 2**31

  def room(self) -> int:
    """Cache columns the row may still write: one decode step per token to come."""
    return self.job.max_tokens - len(self.out.ids)


class Slots:
  """The decode slots of one model: its cache, the write column, the row in each slot,
  and the jobs whose rows run (job -> its choices' texts).

  The cache holds `capacity` rows, a power of two up to `num_slots`: it grows when rows
  join and shrinks (rows moved to the front) when a quarter or less is used, so that a
  lightly loaded server steps few rows (on a CPU a step costs in proportion to its rows).
  """

  def __init__(self, model, num_slots: int):
    self.model, self.num_slots = model, num_slots
    self.max_len = model.meta["max_len"]
    _, state = model.prefill([[model.meta["pad_id"]]], length=1, rows=1)
    self.cache, self.pointer = state["cache"], 1
    self.rows: list[Row | None] = [None]
    self.tokens = np.zeros(1, np.int32)  # each slot's last token, fed next
    self.jobs: dict[batcher_lib.Job, list[batcher_lib.Completion]] = {}

  @property
  def capacity(self) -> int:
    return len(self.rows)

  def active(self) -> list[int]:
    return [i for i, row in enumerate(self.rows) if row is not None]

  def resize(self, capacity: int):
    """`capacity` rows, the running ones first."""
    keep = self.active()
    index = np.asarray(keep + [self.capacity] * (capacity - len(keep)), np.int32)
    self.cache = regather(self.cache, index)
    self.rows = [self.rows[i] for i in keep] + [None] * (capacity - len(keep))
    self.tokens = np.concatenate([self.tokens[keep], np.zeros(capacity - len(keep), np.int32)])

  def fit(self):
    """Shrinks the cache once a quarter or less of it is used."""
    used = len(self.active())
    if used and used <= self.capacity // 4:
      self.resize(batcher_lib.bucket(used, self.num_slots))

  def where_to_join(self, jobs) -> int | None:
    """The write column at which `jobs` can join the rows running now, or None."""
    running = [self.rows[i] for i in self.active()]
    behind = max([r.used for r in running] + [len(ids) for j in jobs for ids in j.rows])
    # A newcomer's first token comes from its prefill: it needs max_tokens - 1 steps.
    ahead = max([r.room() for r in running] + [j.max_tokens - 1 for j in jobs])
    free = self.num_slots - len(running)
    if sum(len(j.rows) for j in jobs) > free or behind + ahead > self.max_len:
      return None
    return behind

  def join(self, jobs, metrics):
    """Prefills `jobs` in one batch and places their rows in free slots."""
    pointer = self.where_to_join(jobs)
    rows = [(job, i, ids) for job in jobs for i, ids in enumerate(job.rows)]
    length = batcher_lib.prompt_bucket(self.model, max(len(ids) for _, _, ids in rows))
    padded = batcher_lib.bucket(len(rows), self.num_slots)
    needed = len(self.active()) + len(rows)
    if needed > self.capacity:
      self.resize(batcher_lib.bucket(needed, self.num_slots))
    logits, state = self.model.prefill([ids for _, _, ids in rows], length=length, rows=padded)
    free = [i for i, row in enumerate(self.rows) if row is None][: len(rows)]
    slot_ids = np.asarray(free + [self.capacity] * (padded - len(rows)), np.int32)
    if pointer != self.pointer:  # rare: a newcomer needs more room behind the column
      self.cache = roll(self.cache, np.int32(pointer - self.pointer))
    self.cache = place(
      self.cache, state["cache"], slot_ids, np.int32(pointer - length), np.int32(pointer)
    )
    self.pointer = pointer
    for job in jobs:
      self.jobs[job] = [batcher_lib.Completion(job, self.model.tokenizer) for _ in job.rows]
    for slot, (job, i, ids) in zip(free, rows):
      self.rows[slot] = Row(job, i, ids, self.jobs[job][i])
    self._sample(padded_logits(logits, free, self.capacity), free, metrics)

  def step(self, metrics):
    """One decode step of every slot; then each running row's next token."""
    running = self.active()
    if self.pointer >= self.max_len:  # where_to_join is wrong: fail loudly, not silently
      raise RuntimeError(f"no cache column left to write ({self.pointer})")
    offsets = np.full(self.capacity, self.pointer, np.int32)
    positions = np.zeros(self.capacity, np.int32)
    for i in running:
      offsets[i], positions[i] = self.pointer - self.rows[i].used, self.rows[i].used
    logits, state = self.model.decode_step(
      {"cache": self.cache, "offset": offsets, "position": positions}, self.tokens
    )
    self.cache, self.pointer = state["cache"], self.pointer + 1
    for i in running:
      self.rows[i].used += 1
    self._sample(logits, running, metrics)
    metrics.batches.inc()
    metrics.batch_rows.observe(len(running))

  def _sample(self, logits, slots: list[int], metrics):
    """The next token of the rows in `slots` (logits: one row per slot), each with its own
    sampling; a row that is done leaves its slot."""
    rows = [self.rows[i] if i in slots else None for i in range(self.capacity)]
    per_row = lambda f, default, dtype: np.asarray(
      [default if r is None else f(r) for r in rows], dtype
    )
    seeds = batcher_lib.mixed_seeds(
      per_row(lambda r: r.seed, 0, np.int64), per_row(lambda r: len(r.out.ids), 0, np.int64)
    )
    tokens = np.asarray(
      self.model.sample(
        logits,
        seeds,
        0,
        per_row(lambda r: r.job.temperature, 0.0, np.float32),
        per_row(lambda r: r.job.top_k, 0, np.int32),
        per_row(lambda r: r.job.top_p, 1.0, np.float32),
      )
    )
    for i in slots:
      self.tokens[i] = tokens[i]
      self.rows[i].out.add(int(tokens[i]), self.model.meta["eos_id"])
      if self.rows[i].out.finish_reason:
        self.rows[i] = None
    metrics.tokens.inc(len(slots))

  def report(self, metrics):
    """Streams get their new text; a job whose rows are all done gets its answer; a job
    whose client left (or whose deadline passed) frees its slots at once."""
    for job, outs in list(self.jobs.items()):
      if job.dropped():
        mine = [i for i, row in enumerate(self.rows) if row and row.job is job]
        metrics.cancelled.inc(len(mine))
        for i in mine:
          self.rows[i] = None
        del self.jobs[job]
        continue
      if job.stream:
        job.emit({"delta": [(i, out.delta(), out.finish_reason) for i, out in enumerate(outs)]})
      if all(out.finish_reason for out in outs):
        job.emit(batcher_lib.answer(job, outs))
        del self.jobs[job]


def padded_logits(logits, slots: list[int], num_slots: int):
  """The newcomers' logits (one row each, in order) as one row per slot."""
  index = np.zeros(num_slots, np.int32)
  index[slots] = np.arange(len(slots))
  return jnp.asarray(logits)[index]


def serve(batcher):
  """The worker loop: join what fits, step, hand each job its events. A new model
  (reload) is taken up once no row runs on the old one."""
  slots, waiting, metrics = None, None, batcher.metrics
  while True:
    if waiting and waiting.dropped():
      metrics.cancelled.inc(len(waiting.rows))
      waiting = None
    if slots is None or not slots.jobs:  # nothing to step: block until a request comes
      waiting = waiting or batcher.next_job(None)
    joining = []
    started = time.monotonic()
    try:
      if slots is None or (batcher.model is not slots.model and not slots.jobs):
        slots = Slots(batcher.model, batcher.max_batch)
      while batcher.model is slots.model:
        job = waiting or batcher.next_job(0)
        waiting = None
        if job is None:
          break
        if slots.where_to_join(joining + [job]) is None:
          waiting = job  # first come, first served: it joins when rows leave
          break
        joining.append(job)
      if joining:
        slots.join(joining, metrics)
      slots.report(metrics)
      if slots.active():
        slots.step(metrics)
        slots.report(metrics)
        slots.fit()
    except Exception:  # pylint: disable=broad-except
      batcher_lib.fail(
        [*(slots.jobs if slots else ()), *(j for j in joining if not slots or j not in slots.jobs)]
      )
      slots = None
    batcher.busy_rows = len(slots.active()) if slots else 0
    if batcher.busy_rows:
      metrics.tokens_per_second.set(batcher.busy_rows / (time.monotonic() - started))


def warmup(model, num_slots: int):
  """Compiles what the loop runs: prefill of every row and prompt bucket, and for every
  capacity: placing each row bucket, the decode step, the sampler and resizing."""
  slots, pad = Slots(model, num_slots), model.meta["pad_id"]
  lengths = {batcher_lib.prompt_bucket(model, n) for n in range(1, model.meta["max_len"])}
  buckets = sorted({batcher_lib.bucket(n, num_slots) for n in range(1, num_slots + 1)})
  states = {}
  for rows in buckets:
    for length in sorted(lengths):
      states[rows] = model.prefill([[pad]], length=length, rows=rows)
  for capacity in buckets:
    slots.resize(capacity)
    for rows in (r for r in buckets if r <= capacity):
      logits, state = states[rows]
      slots.cache = place(
        slots.cache, state["cache"], np.full(rows, capacity, np.int32), np.int32(0), np.int32(1)
      )
      padded_logits(logits, [0], capacity)
    slots.step(api.Metrics())
    slots.cache = roll(slots.cache, np.int32(0))
    for other in buckets:
      regather(slots.cache, np.zeros(other, np.int32))


CONTINUOUS = batcher_lib.Batching(None, warmup, loop=serve)
