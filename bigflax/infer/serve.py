"""HTTP serving of a `bundle.Bundle` (an exported bundle or a run's latest checkpoint).

FastAPI + uvicorn. Endpoints: POST /v1/completions (task "lm", OpenAI-style, streaming as
server-sent events), POST /v1/classify (task "classify"), POST /v1/translate (task
"seq2seq"), GET /health, GET /metrics (Prometheus), POST /admin/reload (swap in a new model
between batches). With a feedback directory, every answer is logged and POST /v1/feedback
records a user's rating or correction of one (`feedback_log`); with a registry, the server
follows its served.json (`bigflax promote`) and swaps in each newly promoted run.

Requests go into one queue. A worker thread takes up to `max_batch` rows (prompts x n, or
inputs), waiting at most `max_wait_ms` for more after the first, pads them to one of a few
bucketed shapes (powers of two) so that jit compiles a handful of programs, and runs them
as one batch: throughput grows with load. Generation runs step by step so that streams see
each token as it comes and rows stop at eos, a stop string or max_tokens.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import secrets
import threading
import time
from typing import Any, Callable

import fastapi
from fastapi import responses
import numpy as np
import prometheus_client as prom
import pydantic
import uvicorn

from bigflax import promote
from bigflax.infer import bundle as bundle_lib
from bigflax.infer import feedback_log

MAX_STOPS = 4
MIN_PROMPT_BUCKET = 16  # prompt lengths are padded to 16, 32, 64, ... tokens


class CompletionRequest(pydantic.BaseModel):
  """OpenAI's completions fields that bigflax serves; others are refused by name."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  prompt: str
  max_tokens: int = pydantic.Field(16, ge=1)
  temperature: float = pydantic.Field(1.0, ge=0.0)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
  top_k: int = pydantic.Field(0, ge=0)
  n: int = pydantic.Field(1, ge=1)
  stop: str | list[str] | None = None
  stream: bool = False
  seed: int | None = pydantic.Field(None, ge=0, lt=2**31)
  model: str | None = None  # accepted for OpenAI clients, ignored: one model is served
  user: str | None = None


class ClassifyRequest(pydantic.BaseModel):
  """Texts, feature vectors or images (pixel rows, 0-255), as the classifier takes."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  input: str | list[str] | list[list[Any]] = pydantic.Field(min_length=1)


class TranslateRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  input: str | list[str] = pydantic.Field(min_length=1)


class FeedbackRequest(pydantic.BaseModel):
  """A user's word on one answer: the response's id (and choice index), a rating of +1
  (good), -1 (bad) or 0 (no verdict), and optionally the answer they wanted (which
  becomes the training answer whatever the rating)."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  id: str
  index: int = pydantic.Field(0, ge=0)
  rating: int = pydantic.Field(ge=-1, le=1)
  correction: str | None = None


class RequestError(Exception):
  """A request the model cannot serve: 400 naming `param`."""

  def __init__(self, param: str, message: str):
    super().__init__(message)
    self.param = param


@dataclasses.dataclass
class Job:
  """One request in the queue. `emit(event)` hands events to the request's handler (from
  the worker thread); the last event has "done" or "error"."""
  rows: list  # prompt ids per row (lm), inputs (classify), texts (seq2seq)
  emit: Callable[[dict], None]
  max_tokens: int = 0
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple = ()
  stream: bool = False


class Metrics:
  """Prometheus metrics in a registry of the server's own."""

  def __init__(self):
    self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter("bigflax_requests", "HTTP requests", ["endpoint", "status"],
                                 registry=self.registry)
    self.errors = prom.Counter("bigflax_request_errors", "HTTP requests answered with a 4xx "
                               "or 5xx", ["endpoint", "status"], registry=self.registry)
    self.latency = prom.Histogram("bigflax_request_latency_seconds", "Time to the full "
                                  "response", ["endpoint"], registry=self.registry)
    self.batches = prom.Counter("bigflax_batches", "Forward batches run",
                                registry=self.registry)
    self.batch_rows = prom.Histogram("bigflax_batch_rows", "Rows in a batch (before padding)",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
    self.tokens = prom.Counter("bigflax_generated_tokens", "Tokens generated",
                               registry=self.registry)
    self.tokens_per_second = prom.Gauge("bigflax_generated_tokens_per_second", "Tokens per "
                                        "second of the last generation batch",
                                        registry=self.registry)


def bucket(n: int, limit: int) -> int:
  """The smallest power of two >= n, at most `limit`: few shapes, few compiles."""
  return min(1 << max(n - 1, 0).bit_length(), limit)


class Batcher:
  """The queue and the worker thread that runs batches of jobs on `self.model`.

  `self.model` is read once per batch, so assigning a new one (`reload`) takes effect
  between batches: no request is dropped or sees two models.
  """

  def __init__(self, model: bundle_lib.Bundle, max_batch: int, max_wait_ms: float,
               metrics: Metrics):
    self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
    self.metrics = metrics
    self.queue: queue.Queue = queue.Queue()
    self._held: Job | None = None  # a job that did not fit the last batch
    threading.Thread(target=self._work, daemon=True, name="bigflax-batcher").start()

  def submit(self, job: Job):
    self.queue.put(job)

  def _fits(self, batch: list[Job], job: Job) -> bool:
    if sum(len(j.rows) for j in batch) + len(job.rows) > self.max_batch:
      return False
    if self.model.task != "lm":
      return True
    # Rows share one cache: the longest prompt, padded to its bucket, and the most tokens
    # must fit together.
    longest = max(len(ids) for j in batch + [job] for ids in j.rows)
    steps = max(j.max_tokens for j in batch + [job])
    return self.prompt_bucket(longest) + steps <= self.model.meta["max_len"]

  def prompt_bucket(self, length: int) -> int:
    return bucket(max(length, MIN_PROMPT_BUCKET), self.model.meta["max_len"])

  def warmup(self):
    """Compiles every batch shape the worker can meet, so no request waits for jit."""
    model = self.model
    for rows in sorted({bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)}):
      if model.task == "seq2seq":
        model.translate_ids([""], rows=rows)
        continue
      if model.task == "classify":
        text = model.meta["input"] == "text"
        model.logits(["" if text else np.zeros(model.meta["input_shape"])], rows=rows)
        continue
      max_len = model.meta["max_len"]
      for length in sorted({self.prompt_bucket(n) for n in range(1, max_len)}):
        logits, state = model.prefill([[model.meta["pad_id"]]], length=length, rows=rows)
      model.decode_step(state, model.sample(logits, 0, 0, 0.0, 0, 1.0))

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
      run_batch = {"lm": self._generate, "classify": self._classify,
                   "seq2seq": self._translate}[model.task]
      try:
        run_batch(model, batch)
      except Exception as e:  # pylint: disable=broad-except
        for job in batch:  # the server keeps serving; these requests get a 500
          job.emit({"error": f"{type(e).__name__}: {e}"})
      self.metrics.batches.inc()
      self.metrics.batch_rows.observe(sum(len(j.rows) for j in batch))

  def _classify(self, model, batch: list[Job]):
    inputs = [x for job in batch for x in job.rows]
    probs = bundle_lib.probabilities(model.logits(inputs, rows=bucket(len(inputs),
                                                                      self.max_batch)))
    start = 0
    for job in batch:
      job.emit({"done": probs[start:start + len(job.rows)]})
      start += len(job.rows)

  def _translate(self, model, batch: list[Job]):
    texts = [x for job in batch for x in job.rows]
    ids = model.translate_ids(texts, rows=bucket(len(texts), self.max_batch))
    start = 0
    for job in batch:
      job.emit({"done": [model.detokenize(row) for row in ids[start:start + len(job.rows)]]})
      start += len(job.rows)

  def _generate(self, model, batch: list[Job]):
    started = time.monotonic()
    rows = [(job, i, ids) for job in batch for i, ids in enumerate(job.rows)]
    num_rows = bucket(len(rows), self.max_batch)
    steps = max(job.max_tokens for job in batch)
    max_len = model.meta["max_len"]
    longest = max(len(ids) for _, _, ids in rows)
    length = self.prompt_bucket(longest)
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
    self.metrics.tokens.inc(generated)
    self.metrics.tokens_per_second.set(generated / (time.monotonic() - started))
    for job in batch:
      mine = [out for out in outputs if out.job is job]
      job.emit({"done": [(out.text, out.finish_reason) for out in mine],
                "usage": {"prompt_tokens": sum(len(ids) for ids in job.rows[:1]),
                          "completion_tokens": sum(len(out.ids) for out in mine)}})


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


async def parse(request: fastapi.Request, schema: type[pydantic.BaseModel]):
  """The request's JSON body as `schema`, whatever its content type; RequestError naming
  the first bad field otherwise."""
  try:
    data = json.loads(await request.body())
  except ValueError as e:
    raise RequestError("body", f"malformed JSON body: {e}") from e
  try:
    return schema.model_validate(data)
  except pydantic.ValidationError as e:
    params = [str(error["loc"][0]) if error["loc"] else "body" for error in e.errors()]
    problems = [f"{param}: {error['msg']}" for param, error in zip(params, e.errors())]
    raise RequestError(params[0], "; ".join(dict.fromkeys(problems))) from e


def check_inputs(meta: dict, inputs: list):
  """RequestError naming "input" unless `inputs` are what the classifier takes."""
  if meta["input"] == "text":
    if not all(isinstance(x, str) for x in inputs):
      raise RequestError("input", "this classifier takes text: a string or a list of "
                         "strings")
    return
  shape = meta["input_shape"]
  # A grayscale image may come without its channel axis.
  shapes = [shape, shape[:-1]] if meta["input"] == "image" and shape[-1] == 1 else [shape]
  what = ("feature vectors: a list of lists of {} numbers" if meta["input"] == "features"
          else "images: a list of {} arrays of pixel values 0-255")
  try:
    array = np.asarray(inputs, np.float64)
  except (ValueError, TypeError):
    array = None
  if array is None or list(array.shape[1:]) not in shapes or (
      meta["input"] == "image" and ((array < 0) | (array > 255)).any()):
    raise RequestError("input", "this classifier takes " + what.format(
        "x".join(map(str, shape))))


def error_response(status: int, message: str, param: str | None = None):
  return responses.JSONResponse(status_code=status, content={"error": {
      "message": message, "type": "invalid_request_error" if status < 500 else "server_error",
      "param": param}})


def served_source(registry: str) -> str:
  """The run the registry's served.json names; a clear error when there is none yet."""
  entry = promote.served(registry)
  if not entry:
    raise FileNotFoundError(f"--registry={registry} has no {promote.SERVED} yet: promote a "
                            f"run first (bigflax promote --registry {registry} ...).")
  return entry["workdir"]


def make_app(load: Callable[[str], bundle_lib.Bundle], source: str | None, *, api_key=None,
             max_batch: int = 8, max_wait_ms: float = 10.0, max_n: int | None = None,
             warmup: bool = False, feedback_dir: str | None = None,
             registry: str | None = None, poll_seconds: float = 2.0):
  """The FastAPI app serving `load(source)`; `load` is also what /admin/reload calls.
  `warmup` compiles every batch shape before serving. With a `registry`, serves `source`
  or else the run its served.json names, checks the file every `poll_seconds` and swaps
  in each run it comes to name."""
  source = source or served_source(registry)
  metrics = Metrics()
  batcher = Batcher(load(source), max_batch, max_wait_ms, metrics)
  if warmup:
    batcher.warmup()
  max_n = max_n or max_batch
  log = feedback_log.FeedbackLog(feedback_dir) if feedback_dir else None
  reload_lock = asyncio.Lock()

  async def swap(new_source: str):
    """Loads a model aside, then swaps it in between two batches: requests in flight
    finish on the old one."""
    async with reload_lock:
      model = await asyncio.to_thread(load, new_source)
      if model.task != batcher.model.task:
        raise ValueError(f"{new_source!r} holds a {model.task!r} model; this server serves "
                         f"{batcher.model.task!r}")
      batcher.model, app.state.source = model, new_source
    return model

  @contextlib.asynccontextmanager
  async def lifespan(app_):
    del app_
    watcher = asyncio.create_task(follow(registry)) if registry else None
    yield
    if watcher:
      watcher.cancel()

  async def follow(registry: str):
    """Swaps in each run that served.json comes to name. A run that fails to load is
    reported once and the served model stays."""
    def read():
      try:
        return promote.served(registry)
      except (OSError, ValueError) as e:  # a hand-edited file: say so, keep serving
        return {"error": str(e)}

    seen = read()
    while True:
      await asyncio.sleep(poll_seconds)
      entry = read()
      if not entry or entry == seen:
        continue
      seen = entry
      if "error" in entry:
        print(f"bigflax: cannot read {registry}/{promote.SERVED}, keeping "
              f"{app.state.source!r}: {entry['error']}", flush=True)
        continue
      try:
        await swap(entry["workdir"])
        print(f"bigflax: now serving {entry['workdir']} (promoted, step {entry.get('step')})",
              flush=True)
      except Exception as e:  # pylint: disable=broad-except
        print(f"bigflax: cannot serve promoted run {entry.get('workdir')!r}, keeping "
              f"{app.state.source!r}: {e}", flush=True)

  app = fastapi.FastAPI(title="bigflax", lifespan=lifespan)
  app.state.batcher, app.state.source = batcher, source

  @app.middleware("http")
  async def count_and_authorize(request: fastapi.Request, call_next):
    started = time.monotonic()
    if api_key and request.url.path != "/health":
      given = request.headers.get("authorization", "")
      if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        response = error_response(401, "missing or wrong API key: send 'Authorization: "
                                  "Bearer KEY'", "authorization")
        response.headers["WWW-Authenticate"] = "Bearer"
      else:
        response = await call_next(request)
    else:
      response = await call_next(request)
    endpoint = request.url.path
    metrics.requests.labels(endpoint, response.status_code).inc()
    if response.status_code >= 400:
      metrics.errors.labels(endpoint, response.status_code).inc()
    metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    return response

  @app.exception_handler(RequestError)
  async def unservable(request, exc: RequestError):
    del request
    return error_response(400, str(exc), exc.param)

  def require_task(*names):
    if batcher.model.task not in names:
      raise RequestError("url", f"this server runs a {batcher.model.task!r} model; this "
                         f"endpoint serves {' or '.join(names)}")

  async def run_job(job_kwargs) -> tuple[Job, asyncio.Queue]:
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
              **job_kwargs)
    batcher.submit(job)
    return job, events

  async def final(events: asyncio.Queue) -> dict:
    while True:
      event = await events.get()
      if "done" in event or "error" in event:
        return event

  async def run_rows(inputs: list) -> dict:
    """A classify or translate request's inputs, one row each, as one job: its last event."""
    if len(inputs) > max_batch:
      raise RequestError("input", f"{len(inputs)} inputs exceed this server's batch limit "
                         f"of {max_batch}")
    _, events = await run_job(dict(rows=inputs))
    return await final(events)

  @app.post("/v1/completions")
  async def completions(request: fastapi.Request):
    require_task("lm")
    body = await parse(request, CompletionRequest)
    model = batcher.model
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS or not all(stops):
      raise RequestError("stop", f"stop takes at most {MAX_STOPS} non-empty strings")
    if body.n > max_n:
      raise RequestError("n", f"n={body.n} exceeds this server's limit of {max_n}")
    ids = model.prompt_ids(body.prompt)
    max_len = model.meta["max_len"]
    if len(ids) >= max_len:
      raise RequestError("prompt", f"the prompt is {len(ids)} tokens; the model's context "
                         f"is {max_len} tokens, and generation needs one more")
    if len(ids) + body.max_tokens > max_len:
      raise RequestError("max_tokens", f"max_tokens={body.max_tokens} plus the prompt's "
                         f"{len(ids)} tokens exceeds the context of {max_len}; at most "
                         f"{max_len - len(ids)}")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    _, events = await run_job(dict(
        rows=[ids] * body.n, max_tokens=body.max_tokens, temperature=body.temperature,
        top_k=body.top_k, top_p=body.top_p, seed=seed, stop=tuple(stops), stream=body.stream))
    created, completion_id = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
    header = {"id": completion_id, "object": "text_completion", "created": created,
              "model": model.info.get("source", "bigflax")}

    def log_answers(texts):
      if log:
        log.write([{"id": completion_id, "index": i, "kind": "completion",
                    "prompt": body.prompt, "completion": text, "source": app.state.source}
                   for i, text in enumerate(texts)])

    if not body.stream:
      event = await final(events)
      if "error" in event:
        return error_response(500, event["error"])
      log_answers([text for text, _ in event["done"]])
      return {**header, "usage": {**event["usage"], "total_tokens": sum(event["usage"].values())},
              "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                          for i, (text, reason) in enumerate(event["done"])]}

    async def stream():
      while True:
        event = await events.get()
        if "error" in event:
          yield f"data: {json.dumps({'error': {'message': event['error']}})}\n\n"
          return
        if "done" in event:
          log_answers([text for text, _ in event["done"]])
          yield "data: [DONE]\n\n"
          return
        for i, text, reason in event["delta"]:
          if text or reason:
            choice = {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
            yield f"data: {json.dumps({**header, 'choices': [choice]})}\n\n"
    return responses.StreamingResponse(stream(), media_type="text/event-stream")

  @app.post("/v1/classify")
  async def classify(request: fastapi.Request):
    require_task("classify")
    body = await parse(request, ClassifyRequest)
    model = batcher.model
    inputs = [body.input] if isinstance(body.input, str) else body.input
    check_inputs(model.meta, inputs)
    event = await run_rows(inputs)
    if "error" in event:
      return error_response(500, event["error"])
    labels = model.meta["labels"]
    data = [{"index": i, "label": labels[int(np.argmax(p))],
             "probabilities": dict(zip(labels, map(float, p)))}
            for i, p in enumerate(event["done"])]
    response_id = f"clf-{secrets.token_hex(12)}"
    if log:
      log.write([{"id": response_id, "index": d["index"], "kind": "classification",
                  "input": x, "label": d["label"], "source": app.state.source}
                 for x, d in zip(inputs, data)])
    return {"id": response_id, "object": "list", "data": data}

  @app.post("/v1/translate")
  async def translate(request: fastapi.Request):
    require_task("seq2seq")
    body = await parse(request, TranslateRequest)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    event = await run_rows(inputs)
    if "error" in event:
      return error_response(500, event["error"])
    response_id = f"tr-{secrets.token_hex(12)}"
    if log:
      log.write([{"id": response_id, "index": i, "kind": "translation", "input": x,
                  "translation": t, "source": app.state.source}
                 for i, (x, t) in enumerate(zip(inputs, event["done"]))])
    return {"id": response_id, "object": "list", "data": [
        {"index": i, "translation": t} for i, t in enumerate(event["done"])]}

  @app.post("/v1/feedback")
  async def feedback(request: fastapi.Request):
    if not log:
      raise RequestError("url", "this server keeps no feedback: start it with "
                         "--feedback_dir DIR")
    body = await parse(request, FeedbackRequest)
    wrong = log.answered(body.id, body.index)
    if wrong == "id":
      raise RequestError("id", f"no answer with id {body.id!r} was logged in "
                         f"{os.path.dirname(log.path)}")
    if wrong == "index":
      raise RequestError("index", f"answer {body.id!r} has {log.answers[body.id]} "
                         f"choice(s); index={body.index} is out of range")
    log.write([{"id": body.id, "index": body.index, "kind": "feedback",
                "rating": body.rating, "correction": body.correction}])
    return {"status": "recorded", "id": body.id, "index": body.index}

  @app.get("/health")
  async def health():
    model = batcher.model
    return {"status": "ok", "task": model.task, "source": app.state.source,
            "trained_steps": model.info.get("trained_steps"),
            "context": model.meta.get("max_len"),  # LMs: prompt + max_tokens must fit
            "queued": batcher.queue.qsize()}

  @app.get("/metrics")
  async def prometheus_metrics():
    return responses.Response(prom.generate_latest(metrics.registry),
                              media_type=prom.CONTENT_TYPE_LATEST)

  class ReloadRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    source: str | None = None  # default: the source the server runs

  @app.post("/admin/reload")
  async def reload(request: fastapi.Request):
    """Swaps in a model (e.g. a newly promoted run or bundle) without dropping requests."""
    body = await parse(request, ReloadRequest)
    source = body.source or app.state.source
    try:
      model = await swap(source)
    except Exception as e:  # pylint: disable=broad-except
      raise RequestError("source", f"cannot serve {source!r}: {e}") from e
    return {"status": "reloaded", "source": source,
            "trained_steps": model.info.get("trained_steps")}

  return app


def run(load: Callable[[str], Any], source: str | None, *, host: str = "127.0.0.1",
        port: int = 8000, **kwargs):
  app = make_app(load, source, **kwargs)
  print(f"bigflax: serving {app.state.source} ({app.state.batcher.model.task}) on "
        f"http://{host}:{port}", flush=True)
  uvicorn.run(app, host=host, port=port, log_level="warning")
