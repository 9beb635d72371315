"""The FastAPI app: API key, metrics, health, reload and registry following, feedback; the
served kind's endpoint comes from `kinds.KINDS`, its batches from `batcher`."""

import asyncio
import contextlib
import os
import secrets
import time
from typing import Any, Callable

import fastapi
from fastapi import responses
import prometheus_client as prom
import pydantic
import uvicorn

from bigflax import registry as registry_lib
from bigflax.infer import bundle as bundle_lib
from bigflax.infer import feedback_log
from bigflax.infer.serve import api
from bigflax.infer.serve import batcher as batcher_lib
from bigflax.infer.serve import kinds


class FeedbackRequest(pydantic.BaseModel):
  """A user's word on one answer: the response's id (and choice index), a rating of +1
  (good), -1 (bad) or 0 (no verdict), and optionally the answer they wanted (which
  becomes the training answer whatever the rating)."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  id: str
  index: int = pydantic.Field(0, ge=0)
  rating: int = pydantic.Field(ge=-1, le=1)
  correction: str | None = None


class ReloadRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  source: str | None = None  # default: the source the server runs


class Server:
  """What the handlers share (`app.state.server`): the batcher, whose `model` is the one
  served, the `source` it came from (and the `step`, when the registry names one), the
  feedback `log` (or None), the metrics and `max_n` (the most choices per completion)."""

  def __init__(self, load: Callable[[str, int | None], bundle_lib.Bundle], source: str,
               step: int | None, batcher: batcher_lib.Batcher,
               log: feedback_log.FeedbackLog | None, max_n: int):
    self.load, self.source, self.step = load, source, step
    self.batcher, self.log, self.max_n = batcher, log, max_n
    self.metrics = batcher.metrics
    self._reload_lock = asyncio.Lock()

  async def swap(self, source: str, step: int | None = None) -> bundle_lib.Bundle:
    """Loads a model aside, then swaps it in between two batches: requests in flight
    finish on the old one."""
    async with self._reload_lock:
      model = await asyncio.to_thread(self.load, source, step)
      if model.task != self.batcher.model.task:
        raise ValueError(f"{source!r} holds a {model.task!r} model; this server serves "
                         f"{self.batcher.model.task!r}")
      self.batcher.model, self.source, self.step = model, source, step
    return model

  async def follow(self, registry: str, poll_seconds: float):
    """Swaps in each run that served.json comes to name. A run that fails to load is
    reported once and the served model stays."""
    def read():
      try:
        return registry_lib.served(registry)
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
        print(f"bigflax: cannot read {registry}/{registry_lib.SERVED}, keeping "
              f"{self.source!r}: {entry['error']}", flush=True)
        continue
      try:
        await self.swap(entry["workdir"], entry.get("step"))
        print(f"bigflax: now serving {entry['workdir']} (promoted, step {entry.get('step')})",
              flush=True)
      except Exception as e:  # pylint: disable=broad-except
        print(f"bigflax: cannot serve promoted run {entry.get('workdir')!r}, keeping "
              f"{self.source!r}: {e}", flush=True)


def served_source(registry: str) -> tuple[str, int]:
  """(run, step) that the registry's served.json names: the step that was evaluated, not
  whatever the run has saved since; a clear error when there is none yet."""
  entry = registry_lib.served(registry)
  if not entry:
    raise FileNotFoundError(f"--registry={registry} has no {registry_lib.SERVED} yet: "
                            f"promote a run first (bigflax promote --registry {registry} ...).")
  return entry["workdir"], entry.get("step")


def make_app(load: Callable[[str, int | None], bundle_lib.Bundle], source: str | None, *,
             api_key=None, max_batch: int = 8, max_wait_ms: float = 10.0,
             max_n: int | None = None, warmup: bool = False,
             feedback_dir: str | None = None, registry: str | None = None,
             poll_seconds: float = 2.0):
  """The FastAPI app serving `load(source, step)`; `load` is also what /admin/reload calls.
  `warmup` compiles every batch shape before serving. With a `registry`, serves `source`
  or else the run and step its served.json names, checks the file every `poll_seconds`
  and swaps in each run and step it comes to name."""
  step = None  # the newest intact checkpoint
  if source is None:
    source, step = served_source(registry)
  model = load(source, step)
  batcher = batcher_lib.Batcher(model, kinds.get(model.task).batching, max_batch,
                                max_wait_ms, api.Metrics())
  if warmup:
    batcher.warmup()
  log = feedback_log.FeedbackLog(feedback_dir) if feedback_dir else None
  server = Server(load, source, step, batcher, log, max_n or max_batch)

  @contextlib.asynccontextmanager
  async def lifespan(app_):
    del app_
    watcher = asyncio.create_task(server.follow(registry, poll_seconds)) if registry else None
    yield
    if watcher:
      watcher.cancel()

  app = fastapi.FastAPI(title="bigflax", lifespan=lifespan)
  app.state.server = server

  @app.middleware("http")
  async def count_and_authorize(request: fastapi.Request, call_next):
    started = time.monotonic()
    if api_key and request.url.path != "/health":
      given = request.headers.get("authorization", "")
      if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        response = api.error_response(401, "missing or wrong API key: send 'Authorization: "
                                      "Bearer KEY'", "authorization")
        response.headers["WWW-Authenticate"] = "Bearer"
      else:
        response = await call_next(request)
    else:
      response = await call_next(request)
    endpoint, metrics = request.url.path, server.metrics
    metrics.requests.labels(endpoint, response.status_code).inc()
    if response.status_code >= 400:
      metrics.errors.labels(endpoint, response.status_code).inc()
    metrics.latency.labels(endpoint).observe(time.monotonic() - started)
    return response

  app.exception_handler(api.RequestError)(unservable)
  for task, kind in kinds.KINDS.items():
    app.post(kind.path, name=kind.endpoint.__name__)(served_only(task, kind))
  app.post("/v1/feedback")(feedback)
  app.get("/health")(health)
  app.get("/metrics")(prometheus_metrics)
  app.post("/admin/reload")(reload)
  return app


async def unservable(request, exc: api.RequestError):
  del request
  return api.error_response(400, str(exc), exc.param)


def served_only(task: str, kind: kinds.Kind):
  """`kind`'s endpoint, refusing requests unless the server runs a `task` model."""

  async def endpoint(request: fastapi.Request):
    server = request.app.state.server
    served = server.batcher.model.task
    if served != task:
      raise api.RequestError("url", f"this server runs a {served!r} model; this endpoint "
                             f"serves {task}")
    return await kind.endpoint(request, server)
  return endpoint


async def feedback(request: fastapi.Request):
  log = request.app.state.server.log
  if not log:
    raise api.RequestError("url", "this server keeps no feedback: start it with "
                           "--feedback_dir DIR")
  body = await api.parse(request, FeedbackRequest)
  wrong = log.answered(body.id, body.index)
  if wrong == "id":
    raise api.RequestError("id", f"no answer with id {body.id!r} was logged in "
                           f"{os.path.dirname(log.path)}")
  if wrong == "index":
    raise api.RequestError("index", f"answer {body.id!r} has {log.answers[body.id]} "
                           f"choice(s); index={body.index} is out of range")
  log.write([{"id": body.id, "index": body.index, "kind": "feedback",
              "rating": body.rating, "correction": body.correction}])
  return {"status": "recorded", "id": body.id, "index": body.index}


async def health(request: fastapi.Request):
  server = request.app.state.server
  model = server.batcher.model
  return {"status": "ok", "task": model.task, "source": server.source,
          "trained_steps": model.info.get("trained_steps"),
          "context": model.meta.get("max_len"),  # LMs: prompt + max_tokens must fit
          "queued": server.batcher.queue.qsize()}


async def prometheus_metrics(request: fastapi.Request):
  return responses.Response(prom.generate_latest(request.app.state.server.metrics.registry),
                            media_type=prom.CONTENT_TYPE_LATEST)


async def reload(request: fastapi.Request):
  """Swaps in a model (e.g. a newly promoted run or bundle) without dropping requests."""
  server = request.app.state.server
  body = await api.parse(request, ReloadRequest)
  source = body.source or server.source
  step = None if body.source else server.step  # a run named anew: its newest checkpoint
  try:
    model = await server.swap(source, step)
  except Exception as e:  # pylint: disable=broad-except
    raise api.RequestError("source", f"cannot serve {source!r}: {e}") from e
  return {"status": "reloaded", "source": source,
          "trained_steps": model.info.get("trained_steps")}


def run(load: Callable[[str, int | None], Any], source: str | None, *,
        host: str = "127.0.0.1", port: int = 8000, **kwargs):
  app = make_app(load, source, **kwargs)
  server = app.state.server
  print(f"bigflax: serving {server.source} ({server.batcher.model.task}) on "
        f"http://{host}:{port}", flush=True)
  uvicorn.run(app, host=host, port=port, log_level="warning")
