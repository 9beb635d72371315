"""What every room of the server shares: the limits, the types of a request's inputs, a
request body parsed into its model, the error that names the bad field, the error body,
and the Prometheus metrics."""

import dataclasses
import json
from typing import Annotated, TypeVar

import fastapi
from fastapi import responses
import prometheus_client as prom
import pydantic


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask of the server, checked before any work is done."""

  max_body_bytes: int = 1 << 20  # 413 beyond, counted while the body is read
  max_queue: int = 256  # jobs waiting for the worker; 429 beyond
  timeout_s: float = 60.0  # per request, queueing included; 504 beyond
  max_n: int | None = None  # choices per completion (default and at most: max_batch)


T = TypeVar("T")
MAX_INPUTS = 256  # the server's max_batch is checked after
Text = Annotated[str, pydantic.StringConstraints(max_length=100_000)]
Inputs = Annotated[list[T], pydantic.Field(min_length=1, max_length=MAX_INPUTS)]
# A request's "input": one text, or a list of them.
Texts = Annotated[Text, pydantic.Field(min_length=1)] | Inputs[Text]


class RequestError(Exception):
  """A request the server will not serve: `status` (400 unless said) naming `param`."""

  def __init__(self, param: str, message: str, status: int = 400, headers=None):
    super().__init__(message)
    self.param, self.status, self.headers = param, status, headers


async def parse(request: fastapi.Request, schema: type[pydantic.BaseModel]):
  """The request's JSON body (its size and content type were checked by `guard`) as
  `schema`; RequestError naming the first bad field otherwise."""
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


def json_body(schema: type[pydantic.BaseModel]) -> dict:
  """`schema` as the OpenAPI request body of an endpoint that parses its own body, so that
  /openapi.json (and schemathesis, from it) knows what the endpoint takes."""
  return {
    "requestBody": {
      "required": True,
      "content": {"application/json": {"schema": schema.model_json_schema()}},
    }
  }


def error_response(
  status: int, message: str, param: str | None = None, request_id: str | None = None, headers=None
):
  return responses.JSONResponse(
    status_code=status,
    headers=headers,
    content={
      "error": {
        "message": message,
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": param,
        "request_id": request_id,
      }
    },
  )


def internal_error(request: fastapi.Request):
  """The generic 500: what went wrong is in the server's log under the request id."""
  request_id = request.state.request_id
  return error_response(
    500,
    f"internal error; the server log has the details under request id {request_id}",
    request_id=request_id,
  )


class Metrics:
  """Prometheus metrics in a registry of the server's own."""

  def __init__(self):
    self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter(
      "bigflax_requests",
      "HTTP requests by status (499: the client left before the whole response was sent)",
      ["endpoint", "status"],
      registry=self.registry,
    )
    self.errors = prom.Counter(
      "bigflax_request_errors",
      "HTTP requests answered with a 4xx or 5xx",
      ["endpoint", "status"],
      registry=self.registry,
    )
    self.latency = prom.Histogram(
      "bigflax_request_latency_seconds",
      "Time to the full response",
      ["endpoint"],
      registry=self.registry,
    )
    self.batches = prom.Counter(
      "bigflax_batches", "Forward batches (or decode steps) run", registry=self.registry
    )
    self.batch_rows = prom.Histogram(
      "bigflax_batch_rows",
      "Rows in a batch (before padding)",
      buckets=(1, 2, 4, 8, 16, 32, 64),
      registry=self.registry,
    )
    self.tokens = prom.Counter(
      "bigflax_generated_tokens", "Tokens generated", registry=self.registry
    )
    self.tokens_per_second = prom.Gauge(
      "bigflax_generated_tokens_per_second",
      "Tokens per second of the last generation batch",
      registry=self.registry,
    )
    self.cancelled = prom.Counter(
      "bigflax_cancelled_rows",
      "Rows stopped because their client left or their deadline passed",
      registry=self.registry,
    )
