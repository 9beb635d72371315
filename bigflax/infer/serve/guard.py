"""The server's door, an ASGI middleware in front of every request: a request id, the keys
(the inference key everywhere but /health, the admin key on /admin/*), JSON-only POSTs,
the body size counted while it is read, a generic 500, and the request counted under the
status it really got (499 when the client left before the whole response was sent)."""

import logging
import secrets
import time

from bigflax.infer.serve import api

log = logging.getLogger("bigflax.serve")
OPEN_PATHS = ("/health",)  # load balancers probe it without a key


class BodyTooLarge(Exception):
  pass


def bearer(scope) -> bytes:
  for name, value in scope["headers"]:
    if name == b"authorization":
      return value
  return b""


def header(scope, key: bytes) -> str:
  return next((v.decode("latin-1") for k, v in scope["headers"] if k == key), "")


def refusal(scope, api_key, admin_key, max_body_bytes, request_id):
  """The error response to send instead of running the request, or None."""
  path = scope["path"]
  if path.startswith("/admin"):
    if not admin_key:
      return api.error_response(
        403,
        "admin endpoints are off: start the server with --admin_key (or BIGFLAX_ADMIN_KEY)",
        "authorization",
        request_id,
      )
    key = admin_key
  else:
    key = api_key if path not in OPEN_PATHS else None
  if key and not secrets.compare_digest(bearer(scope), f"Bearer {key}".encode()):
    response = api.error_response(
      401, "missing or wrong key: send 'Authorization: Bearer KEY'", "authorization", request_id
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response
  if scope["method"] == "POST":
    media_type = header(scope, b"content-type").split(";")[0].strip().lower()
    if media_type != "application/json":
      return api.error_response(
        415,
        "POST bodies must be JSON: send 'Content-Type: application/json'",
        "content-type",
        request_id,
      )
    length = header(scope, b"content-length")
    if length.isdigit() and int(length) > max_body_bytes:
      return too_large(max_body_bytes, request_id)
  return None


def too_large(max_body_bytes, request_id):
  return api.error_response(
    413, f"the body exceeds this server's limit of {max_body_bytes} bytes", "body", request_id
  )


class Guard:
  def __init__(self, app, *, api_key, admin_key, max_body_bytes, metrics, paths):
    self.app, self.api_key, self.admin_key = app, api_key, admin_key
    self.max_body_bytes, self.metrics = max_body_bytes, metrics
    self.paths = paths  # metrics are labelled by these; any other path is "other"

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    request_id = secrets.token_hex(8)
    scope.setdefault("state", {})["request_id"] = request_id
    started, sent = time.monotonic(), {"status": None, "complete": False}
    received = 0

    async def counted_receive():
      nonlocal received
      message = await receive()
      received += len(message.get("body", b""))
      if received > self.max_body_bytes:
        raise BodyTooLarge()
      return message

    async def tracked_send(message):
      if message["type"] == "http.response.start":
        sent["status"] = message["status"]
        message = {
          **message,
          "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
        }
      elif message["type"] == "http.response.body" and not message.get("more_body"):
        sent["complete"] = True
      await send(message)

    response = refusal(scope, self.api_key, self.admin_key, self.max_body_bytes, request_id)
    try:
      if response is not None:
        await response(scope, receive, tracked_send)
      else:
        await self.app(scope, counted_receive, tracked_send)
    except BodyTooLarge:
      if sent["status"] is None:
        await too_large(self.max_body_bytes, request_id)(scope, receive, tracked_send)
    except Exception:  # pylint: disable=broad-except
      log.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
      if sent["status"] is None:
        await api.error_response(
          500,
          f"internal error; the server log has the details under request id {request_id}",
          request_id=request_id,
        )(scope, receive, tracked_send)
    finally:
      status = sent["status"] if sent["complete"] else 499
      path = scope["path"] if scope["path"] in self.paths else "other"
      self.metrics.requests.labels(path, status).inc()
      if status >= 400:
        self.metrics.errors.labels(path, status).inc()
      self.metrics.latency.labels(path).observe(time.monotonic() - started)
