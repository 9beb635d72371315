"""Continuous batching of a language model (`infer/serve/slots`), in-process over real HTTP
on a tiny random-weight GPT: rows join at the next step and leave when done, greedy
answers equal the framework's sampler for every row whatever else runs, a client that
leaves stops its rows, and 64 clients (a third of them leaving early) leave nothing behind."""

import asyncio
import json
import random
import time

import httpx
import pytest

from bigflax.infer.serve import api
from bigflax.infer.serve import app as app_lib
from bigflax.infer.serve import batcher as batcher_lib
from bigflax.infer.serve import slots as slots_lib
import serve_utils
from serve_utils import expected_choice, greedy_tokens, serving, wait_until

pytestmark = pytest.mark.slow
PROMPTS = ["def ", "for ", "if x", "import os", "class Foo", "x"]  # 3 lengths: 3 compiles
LONGEST = 40  # the most tokens most requests here ask for
room = lambda prompt: 63 - len(prompt)  # the most tokens a prompt can have: the context


@pytest.fixture(scope="module")
def lm():
  """The tiny LM, each decode step >= 10 ms (so that joins and departures are visible),
  and the framework's greedy tokens for each prompt."""
  bundle, model, params, tokenizer = serve_utils.tiny_lm(step_seconds=0.01)
  greedy = {p: greedy_tokens(model, params, tokenizer, p, room(p)) for p in PROMPTS}
  return bundle, tokenizer, greedy


def serve(bundle, **kwargs):
  return serving(app_lib.make_app(lambda source, step: bundle, "tiny", **kwargs))


def metric(url, name) -> float:
  text = httpx.get(f"{url}/metrics").text
  return sum(
    float(line.split()[-1])
    for line in text.splitlines()
    if line.startswith(name + " ") or line.startswith(name + "{")
  )


def check(choices, prompt, max_tokens, greedy, tokenizer):
  text, reason = expected_choice(greedy[prompt], max_tokens, tokenizer)
  for choice in choices:
    assert (choice["text"], choice["finish_reason"]) == (text, reason), (prompt, max_tokens)


async def timed(client, url, body, delay):
  await asyncio.sleep(delay)
  started = time.monotonic()
  response = await client.post(url + "/v1/completions", json=body)
  return response, started, time.monotonic()


def test_rows_join_at_the_next_step_and_equal_the_framework_whatever_runs_beside(lm):
  bundle, tokenizer, greedy = lm
  rng = random.Random(0)
  # Up to the whole context: rows that need every column of the cache.
  bodies = [
    {"prompt": PROMPTS[i % len(PROMPTS)], "temperature": 0.0, "n": 1 + (i % 3 == 0)}
    for i in range(14)
  ]
  for body in bodies:
    body["max_tokens"] = rng.randint(1, room(body["prompt"]))
  bodies[0]["max_tokens"] = room(bodies[0]["prompt"])  # long, while others come and go
  bodies[1]["max_tokens"] = 5
  with serve(bundle, max_batch=4) as url:
    before = metric(url, "bigflax_batches_total")

    async def go():
      async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(
          *(timed(client, url, body, 0.0 if i == 0 else 0.05 * i) for i, body in enumerate(bodies))
        )

    results = asyncio.run(go())
    steps = metric(url, "bigflax_batches_total") - before
    assert httpx.get(url + "/health").json()["busy_rows"] == 0
  for body, (response, _, _) in zip(bodies, results):
    assert response.status_code == 200, response.text
    check(response.json()["choices"], body["prompt"], body["max_tokens"], greedy, tokenizer)
  # The second request (short) joined the running long one and finished first: it did not
  # wait for the long one's batch to end.
  (_, _, long_done), (_, _, short_done) = results[0], results[1]
  assert short_done < long_done
  rows = sum(b["n"] * b["max_tokens"] for b in bodies)
  assert steps < rows * 0.75, (steps, rows)  # rows shared decode steps


def test_a_newcomer_joins_exactly_when_the_cache_has_room_for_every_row(lm):
  bundle, tokenizer, greedy = lm
  answers = {}

  def job(prompt, max_tokens):
    return batcher_lib.Job(
      rows=[bundle.prompt_ids(prompt)],
      events=None,
      emit=lambda event: answers.setdefault(prompt, event),
      deadline=float("inf"),
      max_tokens=max_tokens,
    )

  slots, metrics = slots_lib.Slots(bundle, 4), api.Metrics()
  slots.join([job("x", room("x"))], metrics)  # 2 prompt tokens, then every cache column
  newcomer = job("import os", 3)  # 10 prompt tokens: it moves the write column to 10
  # The long row needs room("x") - generated more columns.
  for generated in range(1, 10):  # noqa: B007  (read after the loop)
    if slots.where_to_join([newcomer]) is not None:
      break
    slots.step(metrics)
  assert 10 + room("x") - generated == 64  # the first step at which both fit
  slots.join([newcomer], metrics)
  while slots.jobs:  # to the last column of the cache
    slots.step(metrics)
    slots.report(metrics)
  for prompt, max_tokens in (("x", room("x")), ("import os", 3)):
    assert answers[prompt]["done"] == [expected_choice(greedy[prompt], max_tokens, tokenizer)]


def test_sampled_answers_do_not_depend_on_the_batch_and_streams_match(lm):
  bundle, _, _ = lm
  body = {"prompt": "def ", "max_tokens": 12, "temperature": 1.0, "top_k": 20, "seed": 5, "n": 2}
  answers = []
  for batching in (True, False):  # continuous, then bucketed
    with serve(bundle, max_batch=4, continuous=batching) as url:
      alone = httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"]

      async def crowded():
        async with httpx.AsyncClient(timeout=60) as client:
          others = [
            client.post(
              url + "/v1/completions",
              json={"prompt": p, "max_tokens": 20, "temperature": 0.7, "seed": 1},
            )
            for p in PROMPTS
          ]
          return (await asyncio.gather(client.post(url + "/v1/completions", json=body), *others))[
            0
          ].json()["choices"]

      assert asyncio.run(crowded()) == alone
      texts = {0: "", 1: ""}
      with httpx.stream(
        "POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60
      ) as response:
        for line in response.iter_lines():
          if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
              texts[choice["index"]] += choice["text"]
      assert [texts[0], texts[1]] == [c["text"] for c in alone]
      answers.append(alone)
  assert answers[0] == answers[1]  # the same draws on either path


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_its_rows_at_the_next_step(lm, stream):
  bundle, _, _ = lm
  with serve(bundle, max_batch=4) as url:
    body = {"prompt": "def ", "max_tokens": LONGEST, "temperature": 0.0, "n": 2, "stream": stream}
    httpx.post(url + "/v1/completions", json={**body, "stream": False}, timeout=60)  # jit
    tokens_before = metric(url, "bigflax_generated_tokens_total")
    if stream:  # reads a few tokens, then hangs up
      with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        for i, _ in enumerate(r.iter_lines()):
          if i == 6:
            break
    else:
      with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, timeout=0.15)
    wait_until(
      lambda: httpx.get(url + "/health").json()["busy_rows"] == 0, 5, "the rows being freed"
    )
    generated = metric(url, "bigflax_generated_tokens_total") - tokens_before
    assert generated < LONGEST, generated  # of 2 x 40: stopped soon after the client left
    wait_until(lambda: metric(url, "bigflax_cancelled_rows_total") == 2, 5, "counting")
    text = httpx.get(url + "/metrics").text
    assert 'endpoint="/v1/completions",status="499"} 1.0' in text  # not counted as served
    assert 'endpoint="/v1/completions",status="200"} 1.0' in text  # the first only


def test_64_clients_a_third_leaving_early_leave_an_empty_queue_and_free_slots(lm):
  bundle, tokenizer, greedy = lm
  rng = random.Random(1)
  finished, left = [], 0
  with serve(bundle, max_batch=8, limits=api.Limits(max_queue=128)) as url:

    async def client(c, http, deadline):
      nonlocal left
      while time.monotonic() < deadline:
        prompt = rng.choice(PROMPTS)
        body = {
          "prompt": prompt,
          "max_tokens": rng.randint(1, room(prompt)),
          "temperature": 0.0,
          "n": rng.choice([1, 1, 2]),
        }
        if c % 3 == 0:  # hangs up after a moment (unless answered by then)
          try:
            await http.post(
              url + "/v1/completions",
              json={**body, "max_tokens": LONGEST},
              timeout=0.05 + rng.random() / 5,
            )
          except httpx.TimeoutException:
            left += 1
          continue
        response = await http.post(url + "/v1/completions", json=body, timeout=120)
        if response.status_code == 429:  # the leavers' requests filled the queue: back off
          assert int(response.headers["Retry-After"]) >= 1
          await asyncio.sleep(0.5)
          continue
        assert response.status_code == 200, response.text
        finished.append((body, response.json()))

    async def go():
      deadline = time.monotonic() + 8
      async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as http:
        await asyncio.gather(*(client(c, http, deadline) for c in range(64)))

    asyncio.run(go())
    wait_until(lambda: httpx.get(url + "/health").json()["busy_rows"] == 0, 10, "idle")
    health = httpx.get(url + "/health").json()
    assert health["queued"] == 0 and health["status"] == "ok"
  assert len(finished) > 20 and left > 10, (len(finished), left)
  for body, answer in finished:
    check(answer["choices"], body["prompt"], body["max_tokens"], greedy, tokenizer)
