"""The FastAPI app: metrics, health, reload and registry following, feedback; the served
kind's endpoint comes from `kinds.KINDS`, its batches from `batcher` (or `slots`), the
keys and limits at the door from `guard`."""

import asyncio
from collections.abc import Callable
import contextlib
import dataclasses
import ipaddress
import logging
import os
from typing import Any

import fastapi
from fastapi import responses
import prometheus_client as prom
import pydantic
import uvicorn

from bigflax import registry as registry_lib
from bigflax.configs import UsageError
from bigflax.infer import bundle as bundle_lib
from bigflax.infer import feedback_log
from bigflax.infer.serve import api, guard, kinds
from bigflax.infer.serve import batcher as batcher_lib

log = logging.getLogger("bigflax.serve")


class FeedbackRequest(pydantic.BaseModel):
  """A user's word on one answer: the response's id (and choice index), a rating of +1
  (good), -1 (bad) or 0 (no verdict), and optionally the answer they wanted (which
  becomes the training answer whatever the rating)."""

  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  id: str = pydantic.Field(max_length=64)
  index: int = pydantic.Field(0, ge=0, le=1024)
  rating: int = pydantic.Field(ge=-1, le=1)
  correction: str | None = pydantic.Field(None, max_length=8192)


class ReloadRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  source: str | None = pydantic.Field(None, max_length=4096)  # default: the one served


class Server:
  """What the handlers share (`app.state.server`): the batcher, whose `model` is the one
  served, the `source` it came from (and the `step`, when the registry names one), the
  feedback `log` (or None), the metrics, the `limits`, and the directories /admin/reload
  may load from (`reload_roots`)."""

  def __init__(
    self,
    load: Callable[[str, int | None], bundle_lib.Bundle],
    source: str,
    step: int | None,
    batcher: batcher_lib.Batcher,
    log: feedback_log.FeedbackLog | None,
    reload_roots: list[str],
  ):
    self.load, self.source, self.step = load, source, step
    self.batcher, self.log, self.limits = batcher, log, batcher.limits
    self.reload_roots = [os.path.realpath(r) for r in reload_roots]
    self.metrics = batcher.metrics
    self._reload_lock = asyncio.Lock()

  def may_reload(self, source: str) -> bool:
    """Whether `source` (symlinks resolved) is the one served or lies under a reload root."""
    real = os.path.realpath(source)
    return real == os.path.realpath(self.source) or any(
      os.path.commonpath([real, root]) == root for root in self.reload_roots
    )

  async def swap(self, source: str, step: int | None = None) -> bundle_lib.Bundle:
    """Loads a model aside, then swaps it in between two batches: requests in flight
    finish on the old one."""
    async with self._reload_lock:
      model = await asyncio.to_thread(self.load, source, step)
      if model.task != self.batcher.model.task:
        raise ValueError(
          f"{source!r} holds a {model.task!r} model; this server serves {self.batcher.model.task!r}"
        )
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
        print(
          f"bigflax: cannot read {registry}/{registry_lib.SERVED}, keeping "
          f"{self.source!r}: {entry['error']}",
          flush=True,
        )
        continue
      try:
        await self.swap(entry["workdir"], entry.get("step"))
        print(
          f"bigflax: now serving {entry['workdir']} (promoted, step {entry.get('step')})",
          flush=True,
        )
      except Exception as e:  # pylint: disable=broad-except
        print(
          f"bigflax: cannot serve promoted run {entry.get('workdir')!r}, keeping "
          f"{self.source!r}: {e}",
          flush=True,
        )
        log.exception("loading %s", entry.get("workdir"))


def served_source(registry: str) -> tuple[str, int]:
  """(run, step) that the registry's served.json names: the step that was evaluated, not
  whatever the run has saved since; a clear error when there is none yet."""
  entry = registry_lib.served(registry)
  if not entry:
    raise FileNotFoundError(
      f"--registry={registry} has no {registry_lib.SERVED} yet: "
      f"promote a run first (bigflax promote --registry {registry} ...)."
    )
  return entry["workdir"], entry.get("step")


def make_app(
  load: Callable[[str, int | None], bundle_lib.Bundle],
  source: str | None,
  *,
  api_key=None,
  admin_key=None,
  max_batch: int = 8,
  max_wait_ms: float = 10.0,
  limits: api.Limits = api.Limits(),
  continuous: bool = True,
  warmup: bool = False,
  feedback_dir: str | None = None,
  registry: str | None = None,
  reload_roots: tuple = (),
  poll_seconds: float = 2.0,
):
  """The FastAPI app serving `load(source, step)`; `load` is also what /admin/reload calls,
  for sources under `registry` or `reload_roots` only. `continuous` batching (a language
  model's rows join and leave at every step) or bucketed batches; `warmup` compiles every
  batch shape before serving. With a `registry`, serves `source` or else the run and step
  its served.json names, checks the file every `poll_seconds` and swaps in each run and
  step it comes to name."""
  step = None  # the newest intact checkpoint
  if source is None:
    source, step = served_source(registry)
  model = load(source, step)
  served = kinds.get(model.task)
  limits = dataclasses.replace(limits, max_n=min(limits.max_n or max_batch, max_batch))
  batching = served.continuous if continuous and served.continuous else served.batching
  batcher = batcher_lib.Batcher(model, batching, max_batch, max_wait_ms, api.Metrics(), limits)
  if warmup:
    batcher.warmup()
  feedback = feedback_log.FeedbackLog(feedback_dir) if feedback_dir else None
  server = Server(
    load, source, step, batcher, feedback, [*reload_roots, *([registry] if registry else [])]
  )

  @contextlib.asynccontextmanager
  async def lifespan(app_):
    del app_
    watcher = asyncio.create_task(server.follow(registry, poll_seconds)) if registry else None
    yield
    if watcher:
      watcher.cancel()

  app = fastapi.FastAPI(title="bigflax", lifespan=lifespan)
  app.state.server = server
  app.exception_handler(api.RequestError)(unservable)
  for task, kind in kinds.KINDS.items():
    app.post(kind.path, name=kind.endpoint.__name__, openapi_extra=api.json_body(kind.schema))(
      served_only(task, kind)
    )
  app.post("/v1/feedback", openapi_extra=api.json_body(FeedbackRequest))(record_feedback)
  app.get("/health")(health)
  app.get("/metrics")(prometheus_metrics)
  app.post("/admin/reload", openapi_extra=api.json_body(ReloadRequest))(reload)
  app.add_middleware(
    guard.Guard,
    api_key=api_key,
    admin_key=admin_key,
    max_body_bytes=limits.max_body_bytes,
    metrics=server.metrics,
    paths={route.path for route in app.routes},
  )
  return app


async def unservable(request, exc: api.RequestError):
  return api.error_response(exc.status, str(exc), exc.param, request.state.request_id, exc.headers)


def served_only(task: str, kind: kinds.Kind):
  """`kind`'s endpoint, refusing requests unless the server runs a `task` model."""

  async def endpoint(request: fastapi.Request):
    server = request.app.state.server
    served = server.batcher.model.task
    if served != task:
      raise api.RequestError(
        "url", f"this server runs a {served!r} model; this endpoint serves {task}"
      )
    return await kind.endpoint(request, server)

  return endpoint


async def record_feedback(request: fastapi.Request):
  log = request.app.state.server.log
  if not log:
    raise api.RequestError("url", "this server keeps no feedback: start it with --feedback_dir DIR")
  body = await api.parse(request, FeedbackRequest)
  wrong = log.answered(body.id, body.index)
  if wrong == "id":
    raise api.RequestError("id", f"no answer with id {body.id!r} was logged")
  if wrong == "index":
    raise api.RequestError(
      "index",
      f"answer {body.id!r} has {log.answers[body.id]} "
      f"choice(s); index={body.index} is out of range",
    )
  if wrong == "rated":
    raise api.RequestError(
      "index",
      f"answer {body.id!r} choice {body.index} is rated already: one rating per answer",
      409,
    )
  log.write(
    [
      {
        "id": body.id,
        "index": body.index,
        "kind": "feedback",
        "rating": body.rating,
        "correction": body.correction,
      }
    ]
  )
  return {"status": "recorded", "id": body.id, "index": body.index}


async def health(request: fastapi.Request):
  """Open to all: so the served run by name only, not where it lies. 503 once the worker
  thread has died (nothing would be answered)."""
  server = request.app.state.server
  model, alive = server.batcher.model, server.batcher.thread.is_alive()
  content = {
    "status": "ok" if alive else "worker stopped",
    "task": model.task,
    "source": os.path.basename(os.path.normpath(server.source)),
    "trained_steps": model.info.get("trained_steps"),
    "context": model.meta.get("max_len"),  # LMs: prompt + max_tokens must fit
    "queued": server.batcher.queue.qsize(),
    "busy_rows": server.batcher.busy_rows,
  }
  return responses.JSONResponse(content, status_code=200 if alive else 503)


async def prometheus_metrics(request: fastapi.Request):
  return responses.Response(
    prom.generate_latest(request.app.state.server.metrics.registry),
    media_type=prom.CONTENT_TYPE_LATEST,
  )


async def reload(request: fastapi.Request):
  """Swaps in a model (e.g. a newly promoted run or bundle) without dropping requests."""
  server = request.app.state.server
  body = await api.parse(request, ReloadRequest)
  source = body.source or server.source
  step = None if body.source else server.step  # a run named anew: its newest checkpoint
  if not server.may_reload(source):
    raise api.RequestError(
      "source",
      f"{source!r} is outside the directories this server "
      "may load from (--registry, --reload_roots)",
      403,
    )
  try:
    model = await server.swap(source, step)
  except Exception as e:  # pylint: disable=broad-except
    log.exception("request %s: cannot load %s", request.state.request_id, source)
    raise api.RequestError(
      "source",
      f"cannot serve {source!r}: {type(e).__name__} (the "
      f"server log has the details under request id "
      f"{request.state.request_id})",
    ) from e
  return {"status": "reloaded", "source": source, "trained_steps": model.info.get("trained_steps")}


def loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == "localhost"


def run(
  load: Callable[[str, int | None], Any],
  source: str | None,
  *,
  host: str = "127.0.0.1",
  port: int = 8000,
  insecure: bool = False,
  **kwargs,
):
  if not (loopback(host) or kwargs.get("api_key") or insecure):
    raise UsageError(
      f"--host {host} exposes the server beyond this machine: give it a key "
      "(--api_key or BIGFLAX_API_KEY), or say --insecure."
    )
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
  app = make_app(load, source, **kwargs)
  server = app.state.server
  print(
    f"bigflax: serving {server.source} ({server.batcher.model.task}) on http://{host}:{port}",
    flush=True,
  )
  uvicorn.run(app, host=host, port=port, log_level="warning")
