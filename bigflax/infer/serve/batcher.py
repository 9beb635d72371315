"""The job queue and the worker thread that batches rows and runs them on the served model.

Requests go into one bounded queue (429 when full). A served kind says how its rows run:
as one forward pass (`forward`: classify, translate), generated step by step in bucketed
batches (`DECODE`: a batch starts, runs to its longest row, then the next starts), or in
decode slots that rows join and leave at every step (`slots.CONTINUOUS`, the default for
language models). Bucketed: the worker takes up to `max_batch` rows (prompts x n, or
inputs), waiting at most `max_wait_ms` for more after the first, and pads them to one of a
few shapes (powers of two) so that jit compiles a handful of programs.

A job carries its deadline and a `cancelled` flag (its client left): the worker drops such
jobs from the queue and stops their rows at the next decode step. `wait` is how a request
handler waits for its job: until the deadline (504) or until its client leaves.
"""

import asyncio
from collections.abc import Callable
import dataclasses
import logging
import queue
import threading
import time

import fastapi
import numpy as np

from bigflax.infer import bundle as bundle_lib
from bigflax.infer.serve import api

MIN_PROMPT_BUCKET = 16  # prompt lengths are padded to 16, 32, 64, ... tokens
DISCONNECT_POLL_S = 0.05  # how often a waiting handler checks that its client is there
log = logging.getLogger("bigflax.serve")


@dataclasses.dataclass(eq=False)  # a job is itself (a dict key), not its fields
class Job:
  """One request in the queue. `emit(event)` hands events to the request's handler (from
  the worker thread) on `events`; the last event has "done" or "error"."""

  rows: list  # prompt ids per row (lm), inputs (classify), texts (seq2seq)
  emit: Callable[[dict], None]
  events: asyncio.Queue
  deadline: float  # time.monotonic() after which nobody waits for the answer
  request_id: str = ""
  max_tokens: int = 0  # the rest: how DECODE generates the rows
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple = ()
  stream: bool = False
  cancelled: bool = False  # set by the handler when its client leaves

  def dropped(self) -> bool:
    """Whether nobody waits for this job's answer any more."""
    return self.cancelled or time.monotonic() > self.deadline


@dataclasses.dataclass(frozen=True)
class Batching:
  """How a kind's jobs share a batch and run."""

  # (model, batch: list[Job], rows, metrics): runs the batch padded to `rows` rows and
  # emits each job's events.
  run: Callable | None
  # (model, rows): compiles what `run` runs for `rows` rows.
  warmup: Callable
  # (model, jobs): whether `jobs` may share one batch (the row count aside).
  fits: Callable = lambda model, jobs: True
  # (batcher): a worker loop of its own instead of batch after batch (`slots`).
  loop: Callable | None = None


def bucket(n: int, limit: int) -> int:
  """The smallest power of two >= n, at most `limit`: few shapes, few compiles."""
  return min(1 << max(n - 1, 0).bit_length(), limit)


class Batcher:
  """The queue and the worker thread that runs batches of jobs on `self.model`.

  `self.model` is read once per batch (or, in slots, whenever no row is running), so
  assigning a new one (`reload`) takes effect between batches: no request is dropped or
  sees two models.
  """

  def __init__(
    self,
    model: bundle_lib.Bundle,
    batching: Batching,
    max_batch: int,
    max_wait_ms: float,
    metrics: api.Metrics,
    limits: api.Limits = api.Limits(),
  ):
    self.model, self.batching, self.limits = model, batching, limits
    self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
    self.metrics = metrics
    self.queue: queue.Queue = queue.Queue(maxsize=limits.max_queue)
    self.busy_rows = 0  # rows the worker is running now (slots: occupied slots)
    self._held: Job | None = None  # a job that did not fit the last batch
    self.thread = threading.Thread(target=self._work, daemon=True, name="bigflax-batcher")
    self.thread.start()

  def submit(self, request: fastapi.Request, **fields) -> Job:
    """Queues a Job of these fields; call it on the event loop, which gets the job's
    events on `job.events`. 429 when the queue is full, 503 when the worker is dead."""
    if not self.thread.is_alive():
      raise api.RequestError("server", "the server's worker has stopped", 503)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(
      emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
      events=events,
      deadline=time.monotonic() + self.limits.timeout_s,
      request_id=request.state.request_id,
      **fields,
    )
    try:
      self.queue.put_nowait(job)
    except queue.Full as e:
      raise api.RequestError(
        "server",
        f"the server is busy ({self.limits.max_queue} requests queued); retry later",
        429,
        {"Retry-After": "1"},
      ) from e
    return job

  async def run_rows(self, request: fastapi.Request, inputs: list) -> dict | None:
    """Inputs of a kind that runs in one pass, one row each, as one job: its last event."""
    if len(inputs) > self.max_batch:
      raise api.RequestError(
        "input", f"{len(inputs)} inputs exceed this server's batch limit of {self.max_batch}"
      )
    return await wait(request, self.submit(request, rows=inputs))

  def warmup(self):
    """Compiles every batch shape the worker can meet, so no request waits for jit."""
    if self.batching.loop:  # one loop over all slots
      return self.batching.warmup(self.model, self.max_batch)
    for rows in sorted({bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)}):
      self.batching.warmup(self.model, rows)

  def next_job(self, timeout: float | None) -> Job | None:
    """The next job whose client still waits (None after `timeout` seconds)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
      try:
        job = self.queue.get(
          timeout=None if deadline is None else max(deadline - time.monotonic(), 0)
        )
      except queue.Empty:
        return None
      if not job.dropped():
        return job
      self.metrics.cancelled.inc(len(job.rows))

  def _fits(self, batch: list[Job], job: Job) -> bool:
    if sum(len(j.rows) for j in batch) + len(job.rows) > self.max_batch:
      return False
    return self.batching.fits(self.model, batch + [job])

  def _next_batch(self) -> list[Job]:
    batch = [self._held or self.next_job(None)]
    self._held = None
    deadline = time.monotonic() + self.max_wait
    while sum(len(j.rows) for j in batch) < self.max_batch:
      job = self.next_job(max(deadline - time.monotonic(), 0))
      if job is None:
        break
      if not self._fits(batch, job):
        self._held = job
        break
      batch.append(job)
    return batch

  def _work(self):
    if self.batching.loop:
      return self.batching.loop(self)
    while True:
      batch = self._next_batch()
      model = self.model
      num_rows = sum(len(j.rows) for j in batch)
      self.busy_rows = num_rows
      try:
        self.batching.run(model, batch, bucket(num_rows, self.max_batch), self.metrics)
      except Exception:  # pylint: disable=broad-except
        fail(batch)
      self.busy_rows = 0
      self.metrics.batches.inc()
      self.metrics.batch_rows.observe(num_rows)


def fail(jobs: list[Job]):
  """The server keeps serving; these requests get a generic 500, the log the details."""
  log.exception("batch of requests %s failed", [job.request_id for job in jobs])
  for job in jobs:
    job.emit({"error": "internal"})


async def wait(request: fastapi.Request, job: Job) -> dict | None:
  """A job's last event ("done" or "error"); None if the client left (the job is then
  cancelled); 504 once its deadline has passed."""
  while True:
    try:
      event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
    except TimeoutError:
      if time.monotonic() > job.deadline:
        job.cancelled = True
        raise api.RequestError(
          "timeout", "the request did not finish within the server's time limit (--timeout_s)", 504
        ) from None
      if await request.is_disconnected():
        job.cancelled = True
        return None
      continue
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
      job.emit({"done": results[start : start + len(job.rows)]})
      start += len(job.rows)

  return Batching(run, lambda model, rows: outputs(model, [example(model)], rows))


# ------------------------------------------------------------ generation step by step


def mixed_seeds(seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
  """One int32 seed per (seed, step) (a 64-bit multiplicative hash), for the model's
  sampler called with step 0."""
  x = (seeds.astype(np.uint64) << np.uint64(32)) | steps.astype(np.uint64)
  x = (x * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
  return (x % np.uint64(2**31)).astype(np.int32)


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
  seeds = (per_row("seed", 0, np.int64) + choices) % 2**31  # choice i: seed + i
  sampling = (
    per_row("temperature", 0.0, np.float32),
    per_row("top_k", 0, np.int32),
    per_row("top_p", 1.0, np.float32),
  )
  outputs = [Completion(job, model.tokenizer) for job, _, _ in rows]
  logits, state = model.prefill([ids for _, _, ids in rows], length=length, rows=num_rows)
  generated = 0
  for step in range(steps):
    for out in outputs:
      if out.finish_reason is None and out.job.dropped():  # its client left
        out.finish_reason = "cancelled"
        metrics.cancelled.inc()
    if all(out.finish_reason for out in outputs):
      break
    tokens = model.sample(logits, mixed_seeds(seeds, np.full(num_rows, step)), 0, *sampling)
    host_tokens = np.asarray(tokens)
    for i, out in enumerate(outputs):
      if out.finish_reason is None:
        generated += 1
        out.add(int(host_tokens[i]), model.meta["eos_id"])
    for job in batch:
      if job.stream:
        job.emit(
          {
            "delta": [
              (i, out.delta(), out.finish_reason) for i, out in enumerate(outputs) if out.job is job
            ]
          }
        )
    if all(out.finish_reason for out in outputs):
      break
    logits, state = model.decode_step(state, tokens)
  metrics.tokens.inc(generated)
  metrics.tokens_per_second.set(generated / (time.monotonic() - started))
  for job in batch:
    if not job.dropped():
      job.emit(answer(job, [out for out in outputs if out.job is job]))


def answer(job: Job, outs: list) -> dict:
  """A completion job's last event: each choice's (text, finish reason) and the usage."""
  return {
    "done": [(out.text, out.finish_reason) for out in outs],
    "usage": {
      "prompt_tokens": sum(len(ids) for ids in job.rows[:1]),
      "completion_tokens": sum(len(out.ids) for out in outs),
    },
  }


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
      self.text, self.finish_reason = self.text[: min(cuts)], "stop"
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
    delta, self.sent = self.text[self.sent : end], end
    return delta
