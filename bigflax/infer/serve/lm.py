"""Task "lm" served: POST /v1/completions, OpenAI-style, streaming as server-sent events."""

import asyncio
import json
import secrets
import time
from typing import Annotated

import fastapi
from fastapi import responses
import pydantic

from bigflax.infer.serve import api
from bigflax.infer.serve import batcher as batcher_lib

MAX_STOPS = 4
# Caps of the schema, whatever the model: what no served model can use is refused before
# anything else is done. The model's own limits (its context, the server's max_n) follow.
MAX_PROMPT_CHARS = 200_000
CHARS_PER_TOKEN = 32  # more characters than this per context token cannot fit any tokenizer
Stop = Annotated[str, pydantic.StringConstraints(max_length=64)]
Name = Annotated[str, pydantic.StringConstraints(max_length=256)]


class CompletionRequest(pydantic.BaseModel):
  """OpenAI's completions fields that bigflax serves; others are refused by name."""

  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  prompt: str = pydantic.Field(max_length=MAX_PROMPT_CHARS)
  max_tokens: int = pydantic.Field(16, ge=1, le=1 << 16)
  temperature: float = pydantic.Field(1.0, ge=0.0, le=100.0, allow_inf_nan=False)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
  top_k: int = pydantic.Field(0, ge=0, lt=2**31)
  n: int = pydantic.Field(1, ge=1, le=64)
  stop: Stop | list[Stop] | None = pydantic.Field(None, max_length=MAX_STOPS)
  stream: bool = False
  seed: int | None = pydantic.Field(None, ge=0, lt=2**31)
  model: Name | None = None  # accepted for OpenAI clients, ignored: one model is served
  user: Name | None = None


async def checked_ids(body: CompletionRequest, model, max_n: int) -> list[int]:
  """The prompt's token ids, once the request is one the model can serve; RequestError
  naming the field otherwise. The prompt is tokenized off the event loop, and only once
  its length in characters could fit."""
  stops = stop_strings(body)
  if len(stops) > MAX_STOPS or not all(stops):
    raise api.RequestError("stop", f"stop takes at most {MAX_STOPS} non-empty strings")
  if body.n > max_n:
    raise api.RequestError("n", f"n={body.n} exceeds this server's limit of {max_n}")
  max_len = model.meta["max_len"]
  if len(body.prompt) > CHARS_PER_TOKEN * max_len:
    raise api.RequestError(
      "prompt",
      f"the prompt is {len(body.prompt)} characters; the model's context is {max_len} tokens",
    )
  ids = await asyncio.to_thread(model.prompt_ids, body.prompt)
  if len(ids) >= max_len:
    raise api.RequestError(
      "prompt",
      f"the prompt is {len(ids)} tokens; the model's context "
      f"is {max_len} tokens, and generation needs one more",
    )
  if len(ids) + body.max_tokens > max_len:
    raise api.RequestError(
      "max_tokens",
      f"max_tokens={body.max_tokens} plus the prompt's "
      f"{len(ids)} tokens exceeds the context of {max_len}; at most "
      f"{max_len - len(ids)}",
    )
  return ids


def stop_strings(body: CompletionRequest) -> list[str]:
  return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])


async def completions(request: fastapi.Request, server):
  body = await api.parse(request, CompletionRequest)
  model = server.batcher.model
  ids = await checked_ids(body, model, server.limits.max_n)
  seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
  job = server.batcher.submit(
    request,
    rows=[ids] * body.n,
    max_tokens=body.max_tokens,
    temperature=body.temperature,
    top_k=body.top_k,
    top_p=body.top_p,
    seed=seed,
    stop=tuple(stop_strings(body)),
    stream=body.stream,
  )
  created, completion_id = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
  header = {
    "id": completion_id,
    "object": "text_completion",
    "created": created,
    "model": model.info.get("source", "bigflax"),
  }

  def log_answers(texts):
    if server.log:
      server.log.write(
        [
          {
            "id": completion_id,
            "index": i,
            "kind": "completion",
            "prompt": body.prompt,
            "completion": text,
            "source": server.source,
          }
          for i, text in enumerate(texts)
        ]
      )

  if not body.stream:
    event = await batcher_lib.wait(request, job)
    if event is None:  # the client left
      return api.error_response(499, "client closed the request")
    if "error" in event:
      return api.internal_error(request)
    log_answers([text for text, _ in event["done"]])
    return {
      **header,
      "usage": {**event["usage"], "total_tokens": sum(event["usage"].values())},
      "choices": [
        {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
        for i, (text, reason) in enumerate(event["done"])
      ],
    }

  async def stream():
    try:
      while True:
        try:
          event = await asyncio.wait_for(job.events.get(), max(job.deadline - time.monotonic(), 0))
        except TimeoutError:
          event = {"error": "the request did not finish within the server's time limit"}
        if "error" in event:
          message = (
            event["error"]
            if event["error"] != "internal"
            else f"internal error; request id {request.state.request_id}"
          )
          yield f"data: {json.dumps({'error': {'message': message}})}\n\n"
          return
        if "done" in event:
          log_answers([text for text, _ in event["done"]])
          yield "data: [DONE]\n\n"
          return
        for i, text, reason in event["delta"]:
          if text or reason:
            choice = {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
            yield f"data: {json.dumps({**header, 'choices': [choice]})}\n\n"
    finally:  # done, or the client left (the response is cancelled): its rows stop
      job.cancelled = True

  return responses.StreamingResponse(stream(), media_type="text/event-stream")
