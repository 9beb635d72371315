"""The job queue and the worker thread that batches rows and runs them on the served model.

Requests go into one queue. The worker takes up to `max_batch` rows (prompts x n, or
inputs), waiting at most `max_wait_ms` for more after the first, pads them to one of a few
bucketed shapes (powers of two) so that jit compiles a handful of programs, and runs them
as one batch: throughput grows with load. A served kind says how its batches run: as one
forward pass (`forward`), or generated step by step (`DECODE`) so that streams see each
token as it comes and rows stop at eos, a stop string or max_tokens.

All scheduling is in this file: the queue, which jobs share a batch, the decode loop, and
how a request handler waits for its job's events.
"""

import asyncio
import dataclasses
import queue
import threading
import time
from typing import Callable

import numpy as np

from bigflax.infer import bundle as bundle_lib
from bigflax.infer.serve import api

MIN_PROMPT_BUCKET = 16  # prompt lengths are padded to 16, 32, 64, ... tokens


@dataclasses.dataclass
class Job:
  """One request in the queue. `emit(event)` hands events to the request's handler (from
  the worker thread); the last event has "done" or "error"."""
  rows: list  # prompt ids per row (lm), inputs (classify), texts (seq2seq)
  emit: Callable[[dict], None]
  max_tokens: int = 0  # the rest: how DECODE generates the rows
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple = ()
  stream: bool = False


@dataclasses.dataclass(frozen=True)
class Batching:
  """How a kind's jobs share a batch and run."""
  # (model, batch: list[Job], rows, metrics): runs the batch padded to `rows` rows and
  # emits each job's events.
  run: Callable
  # (model, rows): compiles what `run` runs for `rows` rows.
  warmup: Callable
  # (model, jobs): whether `jobs` may share one batch (the row count aside).
  fits: Callable = lambda model, jobs: True


def bucket(n: int, limit: int) -> int:
  """The smallest power of two >= n, at most `limit`: few shapes, few compiles."""
  return min(1 << max(n - 1, 0).bit_length(), limit)


class Batcher:
  """The queue and the worker thread that runs batches of jobs on `self.model`.

  `self.model` is read once per batch, so assigning a new one (`reload`) takes effect
  between batches: no request is dropped or sees two models.
  """

  def __init__(self, model: bundle_lib.Bundle, batching: Batching, max_batch: int,
               max_wait_ms: float, metrics: api.Metrics):
    self.model, self.batching = model, batching
    self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
    self.metrics = metrics
    self.queue: queue.Queue = queue.Queue()
    self._held: Job | None = None  # a job that did not fit the last batch
    threading.Thread(target=self._work, daemon=True, name="bigflax-batcher").start()

  def submit(self, **job) -> asyncio.Queue:
    """Queues a Job of these fields; call it on the event loop, which gets the job's
    events on the queue returned."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    self.queue.put(Job(emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                       **job))
    return events

  async def run_rows(self, inputs: list) -> dict:
    """Inputs of a kind that runs in one pass, one row each, as one job: its last event."""
    if len(inputs) > self.max_batch:
      raise api.RequestError("input", f"{len(inputs)} inputs exceed this server's batch "
                             f"limit of {self.max_batch}")
    return await final(self.submit(rows=inputs))

  def warmup(self):
    """Compiles every batch shape the worker can meet, so no request waits for jit."""
    for rows in sorted({bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)}):
      self.batching.warmup(self.model, rows)

  def _fits(self, batch: list[Job], job: Job) -> bool:
    if sum(len(j.rows) for j in batch) + len(job.rows) > self.max_batch:
      return False
    return self.batching.fits(self.model, batch + [job])

  def _next_batch(self) -> list[Job]:
    batch = [self._held or self.queue.get()]
    self._held = None
    deadline = time.monotonic() + self.max_wait
    while sum(len(j.rows) for j in batch) < self.max_batch:
      try:
        job = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
      except queue.Empty:
        break
      if not self._fits(batch, job):
        self._held = job
        break
      batch.append(job)
    return batch

  def _work(self):
    while True:
      batch = self._next_batch()
      model = self.model
      num_rows = sum(len(j.rows) for j in batch)
      try:
        self.batching.run(model, batch, bucket(num_rows, self.max_batch), self.metrics)
      except Exception as e:  # pylint: disable=broad-except
        for job in batch:  # the server keeps serving; these requests get a 500
          job.emit({"error": f"{type(e).__name__}: {e}"})
      self.metrics.batches.inc()
      self.metrics.batch_rows.observe(num_rows)


async def final(events: asyncio.Queue) -> dict:
  """A job's last event ("done" or "error")."""
  while True:
    event = await events.get()
    if "done" in event or "error" in event:
      return event


def forward(outputs: Callable, example: Callable) -> Batching:
  """Rows that run as one forward pass: `outputs(model, inputs, rows)` is one output per
  input (the batch padded to `rows`), `example(model)` an input to compile with."""

  def run(model, batch: list[Job], rows: int, metrics):
    del metrics
    results = outputs(model, [x for job in batch for x in job.rows], rows)
    start = 0
    for job in batch:
      job.emit({"done": results[start:start + len(job.rows)]})
      start += len(job.rows)

  return Batching(run, lambda model, rows: outputs(model, [example(model)], rows))


# ------------------------------------------------------------ generation step by step

def prompt_bucket(model, length: int) -> int:
  return bucket(max(length, MIN_PROMPT_BUCKET), model.meta["max_len"])


def fits_context(model, jobs: list[Job]) -> bool:
  # Rows share one cache: the longest prompt, padded to its bucket, and the most tokens
  # must fit together.
  longest = max(len(ids) for j in jobs for ids in j.rows)
  steps = max(j.max_tokens for j in jobs)
  return prompt_bucket(model, longest) + steps <= model.meta["max_len"]


def warmup_decoding(model, rows: int):
  max_len = model.meta["max_len"]
  for length in sorted({prompt_bucket(model, n) for n in range(1, max_len)}):
    logits, state = model.prefill([[model.meta["pad_id"]]], length=length, rows=rows)
  model.decode_step(state, model.sample(logits, 0, 0, 0.0, 0, 1.0))


def generate(model, batch: list[Job], num_rows: int, metrics: api.Metrics):
  started = time.monotonic()
  rows = [(job, i, ids) for job in batch for i, ids in enumerate(job.rows)]
  steps = max(job.max_tokens for job in batch)
  max_len = model.meta["max_len"]
  longest = max(len(ids) for _, _, ids in rows)
  length = prompt_bucket(model, longest)
  if length + steps > max_len:  # a lone request near the context limit: no padding
    length = longest

  def per_row(field, default, dtype):
    values = [getattr(job, field) for job, _, _ in rows]
    return np.asarray(values + [default] * (num_rows - len(rows)), dtype)

  choices = np.asarray([i for _, i, _ in rows] + [0] * (num_rows - len(rows)))
  seeds = ((per_row("seed", 0, np.int64) + choices) % 2**31).astype(np.int32)  # choice i: seed + i
  sampling = (per_row("temperature", 0.0, np.float32), per_row("top_k", 0, np.int32),
              per_row("top_p", 1.0, np.float32))
  outputs = [Completion(job, model.tokenizer) for job, _, _ in rows]
  logits, state = model.prefill([ids for _, _, ids in rows], length=length, rows=num_rows)
  generated = 0
  for step in range(steps):
    tokens = model.sample(logits, seeds, step, *sampling)
    host_tokens = np.asarray(tokens)
    for i, out in enumerate(outputs):
      if out.finish_reason is None:
        generated += 1
        out.add(int(host_tokens[i]), model.meta["eos_id"])
    for job in batch:
      if job.stream:
        job.emit({"delta": [(i, out.delta(), out.finish_reason)
                            for i, out in enumerate(outputs) if out.job is job]})
    if all(out.finish_reason for out in outputs):
      break
    logits, state = model.decode_step(state, tokens)
  metrics.tokens.inc(generated)
  metrics.tokens_per_second.set(generated / (time.monotonic() - started))
  for job in batch:
    mine = [out for out in outputs if out.job is job]
    job.emit({"done": [(out.text, out.finish_reason) for out in mine],
              "usage": {"prompt_tokens": sum(len(ids) for ids in job.rows[:1]),
                        "completion_tokens": sum(len(out.ids) for out in mine)}})


DECODE = Batching(generate, warmup_decoding, fits_context)


class Completion:
  """One row's generated text: stops at eos, a stop string, or max_tokens."""

  def __init__(self, job: Job, tokenizer):
    self.job, self.tokenizer = job, tokenizer
    self.ids: list[int] = []
    self.text, self.sent = "", 0
    self.finish_reason = None

  def add(self, token: int, eos_id: int):
    if token == eos_id:
      self.finish_reason = "stop"
      return
    self.ids.append(token)
    self.text = self.tokenizer.decode(self.ids)
    cuts = [self.text.find(s) for s in self.job.stop if s in self.text]
    if cuts:
      self.text, self.finish_reason = self.text[:min(cuts)], "stop"
    elif len(self.ids) >= self.job.max_tokens:
      self.finish_reason = "length"

  def delta(self) -> str:
    """Text not sent yet. While running, hold back what may be the start of a stop string
    or of a multi-byte character."""
    end = len(self.text)
    if self.finish_reason is None:
      end -= max((len(s) - 1 for s in self.job.stop), default=0)
      while end > self.sent and self.text[end - 1] == "\ufffd":
        end -= 1
    if end <= self.sent:
      return ""
    delta, self.sent = self.text[self.sent:end], end
    return delta
