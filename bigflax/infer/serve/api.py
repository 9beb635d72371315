"""What every room of the server shares: a request body parsed into its model, the 400
that names the bad field, the error body, and the Prometheus metrics."""

import json

import fastapi
from fastapi import responses
import prometheus_client as prom
import pydantic


class RequestError(Exception):
  """A request the model cannot serve: 400 naming `param`."""

  def __init__(self, param: str, message: str):
    super().__init__(message)
    self.param = param


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


def error_response(status: int, message: str, param: str | None = None):
  return responses.JSONResponse(status_code=status, content={"error": {
      "message": message, "type": "invalid_request_error" if status < 500 else "server_error",
      "param": param}})


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
