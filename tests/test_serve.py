"""`bigflax serve` as a client meets it: a real server process on a free local port, driven
over HTTP by httpx."""

import asyncio
import json
import time

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax import registry as registry_lib
from bigflax.data import feedback
from bigflax.infer import decode
from helpers import framework_model, free_port, run, server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("feedback")


@pytest.fixture(scope="module")
def lm_server(tiny_gpt_run, feedback_dir):
  # The key from the environment: `ps` does not show it.
  with server(
    "--workdir",
    str(tiny_gpt_run),
    "--max_batch",
    "8",
    "--max_wait_ms",
    "50",
    "--feedback_dir",
    str(feedback_dir),
    BIGFLAX_API_KEY=KEY,
  ) as url:
    yield url


def complete(url, **body):
  response = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=120)
  assert response.status_code == 200, response.text
  return response.json()


def metric(url, name) -> float:
  text = httpx.get(f"{url}/metrics", headers=AUTH).text
  return sum(
    float(line.split()[-1])
    for line in text.splitlines()
    if line.startswith(name + " ") or line.startswith(name + "{")
  )


async def concurrently(url, bodies, path="/v1/completions"):
  async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
    return await asyncio.gather(*(client.post(f"{url}{path}", json=b) for b in bodies))


def test_concurrent_greedy_completions_are_batched_and_equal_the_framework(lm_server, tiny_gpt_run):
  # Two prompt lengths, so batches mix left-padded rows.
  prompts = [
    "def a",
    "def b",
    "class",
    "x = 1",
    "import os\n",
    "while True",
    "return xyz",
    "# comment!",
  ]
  batches = metric(lm_server, "bigflax_batches_total")
  responses = asyncio.run(
    concurrently(lm_server, [{"prompt": p, "max_tokens": 10, "temperature": 0.0} for p in prompts])
  )
  assert all(r.status_code == 200 for r in responses)
  ran = metric(lm_server, "bigflax_batches_total") - batches
  # Continuous batching: rows share decode steps (a step serves every row running).
  assert 1 <= ran < 10 * len(prompts) / 2, ran

  _, tokenizer, model, params = framework_model(tiny_gpt_run)
  ids = [[tokenizer.eos_id] + tokenizer.encode(p) for p in prompts]
  expected = {}
  for length in {len(i) for i in ids}:  # the framework's own sampler, one batch per length
    same = [i for i in ids if len(i) == length]
    tokens = decode.generate(
      model.clone(decode=True),
      params,
      jnp.asarray(same),
      jax.random.key(0),
      max_new_tokens=10,
      temperature=0.0,
      vocab_size=tokenizer.vocab_size,
    )
    expected.update({tuple(i): row.tolist() for i, row in zip(same, tokens)})
  for prompt_ids, response in zip(ids, responses):
    tokens = expected[tuple(prompt_ids)]
    if tokenizer.eos_id in tokens:
      tokens = tokens[: tokens.index(tokenizer.eos_id)]
    choice = response.json()["choices"][0]
    assert choice["text"] == tokenizer.decode(tokens), prompt_ids
    assert choice["finish_reason"] == ("length" if len(tokens) == 10 else "stop")


def test_stream_equals_the_plain_response_and_stop_strings_cut(lm_server):
  body = {
    "prompt": "def ",
    "max_tokens": 12,
    "temperature": 1.0,
    "top_k": 20,
    "top_p": 0.95,
    "seed": 7,
    "n": 2,
  }
  plain = complete(lm_server, **body)
  assert plain["usage"]["completion_tokens"] <= 24
  texts = {0: "", 1: ""}
  with httpx.stream(
    "POST", f"{lm_server}/v1/completions", json={**body, "stream": True}, headers=AUTH, timeout=120
  ) as response:
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
  assert events[-1] == "[DONE]" and len(events) > 3  # token by token, not one blob
  for event in events[:-1]:
    for choice in json.loads(event)["choices"]:
      texts[choice["index"]] += choice["text"]
  assert [texts[0], texts[1]] == [c["text"] for c in plain["choices"]]

  greedy = complete(lm_server, prompt="import ", max_tokens=20, temperature=0.0, n=3)
  text = greedy["choices"][0]["text"]
  assert all(c["text"] == text for c in greedy["choices"])
  stop = text[6:8]
  stopped = complete(lm_server, prompt="import ", max_tokens=20, temperature=0.0, stop=[stop])
  assert stopped["choices"][0] == {
    "index": 0,
    "text": text[: text.find(stop)],
    "finish_reason": "stop",
    "logprobs": None,
  }


BAD = [
  (b'{"prompt": "def ", ', "body", "malformed JSON"),
  (b'["def "]', "body", "dictionary"),
  ({"prompt": 3}, "prompt", "string"),
  ({"prompt": "a", "max_tokens": "5"}, "max_tokens", "integer"),
  ({"prompt": "a", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
  ({"prompt": "a", "max_tokens": 64}, "max_tokens", "exceeds the context of 64"),
  ({"prompt": "x" * 70}, "prompt", "context is 64 tokens"),
  ({"prompt": "a", "n": 9}, "n", "limit of 8"),
  ({"prompt": "a", "temperature": -1}, "temperature", "greater than or equal to 0"),
  ({"prompt": "a", "top_p": 1.5}, "top_p", "less than or equal to 1"),
  ({"prompt": "a", "stream": "yes"}, "stream", "boolean"),
  ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
  ({"prompt": "a", "max_token": 5}, "max_token", "Extra inputs"),
]


@pytest.mark.parametrize("body,param,message", BAD)
def test_bad_input_names_the_field_and_the_server_keeps_serving(lm_server, body, param, message):
  kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
  response = httpx.post(
    f"{lm_server}/v1/completions",
    timeout=60,
    **kwargs,
    headers={**AUTH, "Content-Type": "application/json"},
  )
  assert response.status_code == 400, response.text
  error = response.json()["error"]
  assert error["param"] == param and message in error["message"], error
  assert httpx.get(f"{lm_server}/health").json()["status"] == "ok"


def test_health_metrics_and_api_key(lm_server):
  assert httpx.post(f"{lm_server}/v1/completions", json={"prompt": "a"}).status_code == 401
  wrong = httpx.post(
    f"{lm_server}/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Bearer nope"}
  )
  assert wrong.status_code == 401 and wrong.json()["error"]["param"] == "authorization"
  health = httpx.get(f"{lm_server}/health").json()  # open: load balancers probe it
  assert health["task"] == "lm" and health["trained_steps"] == 30
  assert (
    httpx.post(f"{lm_server}/v1/classify", json={"input": "a"}, headers=AUTH).status_code == 400
  )  # the wrong task's endpoint
  errors = metric(lm_server, "bigflax_request_errors_total")
  complete(lm_server, prompt="def ", max_tokens=4, temperature=0.0)
  text = httpx.get(f"{lm_server}/metrics", headers=AUTH).text
  for name in (
    "bigflax_requests_total",
    "bigflax_request_latency_seconds_bucket",
    "bigflax_generated_tokens_total",
    "bigflax_generated_tokens_per_second",
  ):
    assert name in text
  assert errors >= 3 and metric(lm_server, "bigflax_generated_tokens_total") >= 4


def test_classifier_bundle_serving_and_reload_without_dropping_requests(
  tiny_classifier_runs, tmp_path
):
  (first, second), bundle = tiny_classifier_runs, tmp_path / "bundle"
  assert run("export", first, "--out", str(bundle)).returncode == 0
  features = [[-1.0, -0.5], [0.3, 0.2], [1.5, 2.0]]

  def probability_of_1(workdir):
    _, _, model, params = framework_model(workdir)
    p = 1 / (1 + np.exp(-np.asarray(model.apply({"params": params}, jnp.asarray(features)))))
    return p[:, 0]

  expected = {first: probability_of_1(first), second: probability_of_1(second)}

  with server(
    "--bundle", str(bundle), "--api_key", KEY, "--admin_key", "admin", "--reload_roots", str(second)
  ) as url:
    response = httpx.post(f"{url}/v1/classify", json={"input": features}, headers=AUTH)
    data = response.json()["data"]
    np.testing.assert_allclose([d["probabilities"]["1"] for d in data], expected[first], atol=1e-6)
    assert [d["label"] for d in data] == ["1" if p > 0.5 else "0" for p in expected[first]]
    for bad in ({"input": "a sentence"}, {"input": [[1.0]]}, {"input": []}):
      response = httpx.post(f"{url}/v1/classify", json=bad, headers=AUTH)
      assert response.status_code == 400 and response.json()["error"]["param"] == "input"

    async def reload_under_load():
      async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
        requests = [client.post(f"{url}/v1/classify", json={"input": features}) for _ in range(30)]
        reload = client.post(
          f"{url}/admin/reload",
          json={"source": str(second)},
          headers={"Authorization": "Bearer admin"},
        )
        return await asyncio.gather(reload, *requests)

    reloaded, *answers = asyncio.run(reload_under_load())
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["trained_steps"] == 40
    assert all(a.status_code == 200 for a in answers)  # none dropped
    # Each answer came whole from one model or the other.
    for a in answers:
      got = [d["probabilities"]["1"] for d in a.json()["data"]]
      assert any(np.allclose(got, expected[w], atol=1e-6) for w in (first, second))
    after = httpx.post(f"{url}/v1/classify", json={"input": features}, headers=AUTH)
    np.testing.assert_allclose(
      [d["probabilities"]["1"] for d in after.json()["data"]], expected[second], atol=1e-6
    )
    bad = httpx.post(
      f"{url}/admin/reload",
      json={"source": str(second / "none")},
      headers={"Authorization": "Bearer admin"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "source"
    outside = httpx.post(
      f"{url}/admin/reload", json={"source": str(bundle)}, headers={"Authorization": "Bearer admin"}
    )
    assert outside.status_code == 403 and outside.json()["error"]["param"] == "source"
    assert httpx.get(f"{url}/health").json()["trained_steps"] == 40


def test_answers_and_feedback_are_logged_as_a_dataset(lm_server, feedback_dir):
  two = complete(lm_server, prompt="import ", max_tokens=6, temperature=1.0, n=2, seed=3)
  one = complete(lm_server, prompt="def ", max_tokens=4, temperature=0.0)
  send = lambda **body: httpx.post(f"{lm_server}/v1/feedback", json=body, headers=AUTH)
  assert send(id=one["id"], rating=1).json()["status"] == "recorded"
  assert send(id=two["id"], index=1, rating=-1, correction="import os").status_code == 200
  for body, param in [
    ({"id": "cmpl-unknown", "rating": 1}, "id"),
    ({"id": one["id"], "index": 1, "rating": 1}, "index"),
    ({"id": one["id"], "rating": 2}, "rating"),
    ({"id": one["id"]}, "rating"),
    ({"id": one["id"], "rating": 1, "extra": 0}, "extra"),
  ]:
    response = send(**body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, body
  found = feedback.examples(feedback.read_records(feedback_dir))
  assert found[one["id"]] == {"prompt": "def ", "answer": one["choices"][0]["text"], "rating": 1.0}
  assert found[f"{two['id']}:1"] == {"prompt": "import ", "answer": "import os", "rating": -1.0}
  assert f"{two['id']}" not in found  # choice 0 was never rated


def promotion(workdir, step: int) -> dict:
  return {
    "promoted": True,
    "candidate": str(workdir),
    "candidate_step": step,
    "candidate_metrics": {},
  }


def test_a_registry_server_follows_promotions(tiny_classifier_runs, tmp_path):
  first, second = tiny_classifier_runs
  registry = tmp_path / "registry"
  registry_lib.record(str(registry), promotion(first, 5))
  with server("--registry", str(registry), "--feedback_dir", str(tmp_path / "fb")) as url:
    assert httpx.get(f"{url}/health").json()["trained_steps"] == 5
    answer = httpx.post(f"{url}/v1/classify", json={"input": [[0.5, 0.5]]}).json()
    assert (
      httpx.post(f"{url}/v1/feedback", json={"id": answer["id"], "rating": 1}).status_code == 200
    )
    (registry / registry_lib.SERVED).write_text("{half a file")  # a hand edit gone wrong
    time.sleep(3)
    assert httpx.get(f"{url}/health").json()["source"] == first.name
    registry_lib.record(str(registry), promotion(second, 40))
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/health").json()["source"] != second.name:
      assert time.monotonic() < deadline, "the promoted run was not swapped in"
      time.sleep(0.5)
    assert httpx.get(f"{url}/health").json()["trained_steps"] == 40
    records = feedback.read_records(tmp_path / "fb")
    assert [r["kind"] for r in records] == ["classification", "feedback"]


def test_a_registry_server_serves_the_promoted_step(tmp_path):
  """The step that was evaluated and promoted, not what the run has saved since."""
  workdir = tmp_path / "run"
  trained = run(
    "train",
    workdir,
    "--config",
    "experiments/seed_classifier.py",
    "--config.train.num_steps=10",
    "--config.train.checkpoint_every=5",
    "--config.train.eval_every=10",
    devices=1,
  )
  assert trained.returncode == 0, trained.stderr
  registry = tmp_path / "registry"
  registry_lib.record(str(registry), promotion(workdir, 5))
  with server("--registry", str(registry)) as url:
    assert httpx.get(f"{url}/health").json()["trained_steps"] == 5
    registry_lib.record(str(registry), promotion(workdir, 10))  # the same run, promoted again
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/health").json()["trained_steps"] != 10:
      assert time.monotonic() < deadline, "the promoted step was not swapped in"
      time.sleep(0.5)


def test_a_public_address_without_a_key_is_refused(tiny_gpt_run):
  refused = run(
    "serve", tiny_gpt_run, "--host", "0.0.0.0", "--port", str(free_port()), devices=1, timeout=120
  )
  assert refused.returncode != 0 and "--insecure" in refused.stderr
