"""The server's door and limits, on stand-in models (numpy, no jax: no compiles), served
in-process over real HTTP: keys, admin, content types, body and prompt limits, the queue,
deadlines, a dead worker, feedback limits and generic errors. Each test here failed on
the server before these limits."""

import asyncio
import threading

import httpx
import numpy as np
import pytest

from bigflax.infer import bundle as bundle_lib
from bigflax.infer.serve import api
from bigflax.infer.serve import app as app_lib
from serve_utils import serving

KEY, ADMIN = "inference-key", "admin-key"
AUTH, ADMIN_AUTH = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}


class Gate:
  """A stand-in classifier's forward pass: the probability of "1" is the first feature,
  and it waits while the gate is shut (a busy worker)."""

  def __init__(self):
    self.open, self.fail = threading.Event(), None
    self.open.set()

  def __call__(self, params, features):
    del params
    self.open.wait()
    if self.fail:
      raise RuntimeError(self.fail)
    p = np.clip(features[:, :1], 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def classifier(gate, name="runs/cls"):
  meta = {"input": "features", "input_shape": [2], "labels": ["0", "1"]}
  return bundle_lib.Bundle(
    "classify", meta, None, {"forward": gate}, None, info={"source": name, "trained_steps": 7}
  )


class CountingTokenizer:
  """Bytes as ids, counting the characters it was asked to tokenize."""

  pad_id, eos_id, vocab_size = 0, 2, 259

  def __init__(self):
    self.chars = 0

  def encode(self, text):
    self.chars += len(text)
    return [b + 3 for b in text.encode()]


def language_model(tokenizer):
  meta = {"max_len": 64, "vocab_size": 259, "eos_id": 2, "pad_id": 0, "prompt_prefix": [2]}
  return bundle_lib.Bundle("lm", meta, None, {}, tokenizer, info={"source": "lm"})


@pytest.fixture
def gate():
  return Gate()


def serve(model, source="/abs/secret/runs/cls", **kwargs):
  models = {source: model}
  load = lambda source, step: models[source]
  return serving(app_lib.make_app(load, source, **kwargs))


def post(url, path, body=None, headers=AUTH, **kwargs):
  kwargs = {"json": body} if body is not None else kwargs
  return httpx.post(url + path, headers=headers, timeout=30, **kwargs)


def test_admin_needs_its_own_key_json_and_an_allowed_root(gate, tmp_path):
  allowed, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
  allowed.mkdir(), elsewhere.mkdir()
  with serve(classifier(gate), api_key=KEY) as url:  # no admin key: admin is off
    assert post(url, "/admin/reload", {}).status_code == 403
    assert post(url, "/admin/reload", {}, headers={}).status_code == 403
  source = str(allowed / "a")
  models = {
    source: classifier(gate),
    str(allowed / "b"): classifier(gate, "b"),
    str(elsewhere / "nan"): classifier(gate, "nan"),
  }
  app = app_lib.make_app(
    lambda s, step: models[s], source, api_key=KEY, admin_key=ADMIN, reload_roots=(str(allowed),)
  )
  with serving(app) as url:
    assert post(url, "/admin/reload", {}).status_code == 401  # the inference key: no
    # A cross-site form post: text/plain, any origin. Refused before anything runs.
    forged = post(
      url,
      "/admin/reload",
      content=b'{"source": "%s"}' % str(elsewhere / "nan").encode(),
      headers={**ADMIN_AUTH, "Content-Type": "text/plain", "Origin": "http://evil.example"},
    )
    assert forged.status_code == 415 and forged.json()["error"]["param"] == "content-type"
    outside = post(url, "/admin/reload", {"source": str(elsewhere / "nan")}, headers=ADMIN_AUTH)
    assert outside.status_code == 403 and outside.json()["error"]["param"] == "source"
    sneaky = post(
      url,
      "/admin/reload",
      {"source": str(allowed / ".." / "elsewhere" / "nan")},
      headers=ADMIN_AUTH,
    )
    assert sneaky.status_code == 403
    assert (
      post(url, "/admin/reload", {"source": str(allowed / "b")}, headers=ADMIN_AUTH).status_code
      == 200
    )
    assert (
      post(url, "/v1/classify", {"input": [[0.5, 0.5]]}, headers=ADMIN_AUTH).status_code == 401
    )  # and the admin key is not an inference key
    # Every POST is JSON-only, not just admin's.
    assert (
      post(
        url,
        "/v1/classify",
        content=b'{"input": [[0.5, 0.5]]}',
        headers={**AUTH, "Content-Type": "text/plain"},
      ).status_code
      == 415
    )


def test_bodies_and_prompts_are_bounded_before_any_work(gate):
  with serve(classifier(gate), limits=api.Limits(max_body_bytes=10_000)) as url:
    big = post(url, "/v1/classify", {"input": [[0.5, 0.5]] * 2000})
    assert big.status_code == 413 and big.json()["error"]["param"] == "body"

    async def chunked():  # no Content-Length: the limit counts while the body is read
      async def body():
        for _ in range(100):
          yield b" " * 1000

      async with httpx.AsyncClient() as client:
        return await client.post(
          url + "/v1/classify", content=body(), headers={"Content-Type": "application/json"}
        )

    assert asyncio.run(chunked()).status_code == 413
    too_many = post(url, "/v1/classify", {"input": [[0.5, 0.5]] * 300})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "input"
    assert post(url, "/v1/classify", {"input": [[0.5, 0.5]]}).status_code == 200

  tokenizer = CountingTokenizer()
  with serve(language_model(tokenizer), "lm") as url:
    long = post(url, "/v1/completions", {"prompt": "x" * 100_000})
    assert long.status_code == 400 and long.json()["error"]["param"] == "prompt"
    assert tokenizer.chars == 0  # refused by its length in characters, not tokenized
    for body, param in [
      ({"prompt": "a", "n": 10_000}, "n"),
      ({"prompt": "a", "max_tokens": 10**9}, "max_tokens"),
      ({"prompt": "a", "stop": ["x" * 1000]}, "stop"),
      ({"prompt": "a", "user": "u" * 10_000}, "user"),
    ]:
      response = post(url, "/v1/completions", body)
      assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_queue_answers_429_a_late_one_504_and_a_dead_worker_503(gate):
  gate.open.clear()
  limits = api.Limits(max_queue=2, timeout_s=1.0)
  with serve(classifier(gate), limits=limits, max_batch=1) as url:

    async def flood():
      async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
          *(client.post(url + "/v1/classify", json={"input": [[0.5, 0.5]]}) for _ in range(8))
        )

    responses = asyncio.run(flood())
    codes = sorted(r.status_code for r in responses)
    busy = [r for r in responses if r.status_code == 429]
    assert len(busy) >= 4 and busy[0].headers["Retry-After"], codes
    assert set(codes) <= {429, 504}, codes  # the worker is stuck: the rest time out
    metrics = httpx.get(url + "/metrics").text
    assert 'status="429"' in metrics and 'status="504"' in metrics
    assert 'endpoint="/v1/classify",status="200"' not in metrics  # none counted as served
    gate.fail = "boom"
    gate.open.set()
    assert httpx.get(url + "/health").status_code == 200

  class Died(BaseException):  # what no handler catches: the worker thread ends
    pass

  def die(params, features):
    raise Died()

  with serve(classifier(die), limits=limits) as url:
    assert post(url, "/v1/classify", {"input": [[0.5, 0.5]]}).status_code == 504
    health = httpx.get(url + "/health")
    assert health.status_code == 503 and health.json()["status"] == "worker stopped"
    assert post(url, "/v1/classify", {"input": [[0.5, 0.5]]}).status_code == 503


def test_errors_are_generic_with_a_request_id_and_health_shows_no_paths(gate):
  gate.fail = "secret detail /abs/secret/path"
  with serve(classifier(gate)) as url:
    health = httpx.get(url + "/health").json()
    assert health["source"] == "cls" and "/" not in str(health), health
    failed = post(url, "/v1/classify", {"input": [[0.5, 0.5]]})
    assert failed.status_code == 500, failed.text
    error = failed.json()["error"]
    assert "secret" not in failed.text and "RuntimeError" not in failed.text
    assert error["request_id"] and error["request_id"] in error["message"]
    assert failed.headers["x-request-id"] == error["request_id"]


def test_feedback_takes_one_rating_per_answer_and_bounded_corrections(gate, tmp_path):
  with serve(classifier(gate), feedback_dir=str(tmp_path)) as url:
    answer = post(url, "/v1/classify", {"input": [[0.2, 0.1], [0.9, 0.1]]}).json()
    assert post(url, "/v1/feedback", {"id": answer["id"], "rating": 1}).status_code == 200
    again = post(url, "/v1/feedback", {"id": answer["id"], "rating": -1, "correction": "x"})
    assert again.status_code == 409 and again.json()["error"]["param"] == "index"
    huge = post(
      url,
      "/v1/feedback",
      {"id": answer["id"], "index": 1, "rating": 1, "correction": "x" * 100_000},
    )
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "correction"
    assert (
      post(url, "/v1/feedback", {"id": answer["id"], "index": 1, "rating": -1}).status_code == 200
    )
  with serve(classifier(gate), feedback_dir=str(tmp_path)) as url:  # after a restart
    assert post(url, "/v1/feedback", {"id": answer["id"], "rating": 1}).status_code == 409


def test_a_public_address_needs_a_key_or_insecure():
  with pytest.raises(app_lib.UsageError, match="--insecure"):
    app_lib.run(lambda s, step: None, "x", host="0.0.0.0")
  for host in ("127.0.0.1", "::1", "localhost"):
    assert app_lib.loopback(host)
