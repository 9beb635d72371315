"""An in-process server for the serving tests: a tiny byte-level GPT with random weights
(nothing trained, nothing downloaded: seconds to build) as a `bundle.Bundle`, served by
uvicorn on a free local port in a thread of the test process."""

import contextlib
import threading
import time

import flax.linen as nn
import httpx
import jax
import jax.numpy as jnp

from bigflax import configs, run, tasks
from bigflax.data import tokenizers
from bigflax.infer import bundle as bundle_lib
from helpers import free_port

TINY_LM = dict(
  name="gpt",
  vocab_size=0,
  num_layers=2,
  num_heads=2,
  embed_dim=32,
  mlp_dim=64,
  max_len=64,
  position="learned",
  dropout_rate=0.0,
  scan_layers=False,
  remat="none",
  dtype="float32",
  lora=configs.lora(),
)


def tiny_lm(seed: int = 0, scale: float = 4.0, step_seconds: float = 0.0):
  """(Bundle, model, params, tokenizer): a random-weight byte GPT, as `serve` runs one.
  Weights `scale`d up so that greedy texts vary (at init scale they repeat the prompt's
  last byte); each decode step at least `step_seconds` long (a stand-in for a big model,
  so that a test sees what happens between steps)."""
  config = configs.base()
  config.model = dict(TINY_LM)
  config.data.seq_len = TINY_LM["max_len"]
  tokenizer = tokenizers.ByteTokenizer()
  model = run.build_model(config, tokenizer)
  params = nn.unbox(run.model_init(config, tasks.get("lm"), model)(jax.random.key(seed)))
  params = jax.tree.map(lambda x: x * scale, params)
  functions, meta = tasks.get("lm").serving(config, model, params, tokenizer)
  jitted = {name: jax.jit(fn) for name, (fn, _) in functions.items()}
  if step_seconds:
    jitted["decode_step"] = slowed(jitted["decode_step"], step_seconds)
  bundle = bundle_lib.Bundle(
    "lm",
    meta,
    jax.tree.map(jnp.asarray, params),
    jitted,
    tokenizer,
    info={"source": "/abs/path/tiny", "trained_steps": 0},
  )
  return bundle, model, params, tokenizer


def slowed(fn, seconds):
  def slow(*args):
    started = time.monotonic()
    out = jax.block_until_ready(fn(*args))
    time.sleep(max(seconds - (time.monotonic() - started), 0))
    return out

  return slow


def greedy_tokens(model, params, tokenizer, prompt: str, max_tokens: int) -> list[int]:
  """Greedy decoding by the framework's own sampler (`infer/decode.generate`), one prompt
  alone: what the server must answer."""
  from bigflax.infer import decode  # pylint: disable=import-outside-toplevel

  ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
  return decode.generate(
    model.clone(decode=True),
    params,
    jnp.asarray([ids]),
    jax.random.key(0),
    max_new_tokens=max_tokens,
    temperature=0.0,
    vocab_size=tokenizer.vocab_size,
  )[0].tolist()


def expected_choice(tokens: list[int], max_tokens: int, tokenizer) -> tuple[str, str]:
  """(text, finish_reason) of the first `max_tokens` of greedy `tokens`."""
  tokens = tokens[:max_tokens]
  if tokenizer.eos_id in tokens:
    return tokenizer.decode(tokens[: tokens.index(tokenizer.eos_id)]), "stop"
  return tokenizer.decode(tokens), "length"


@contextlib.contextmanager
def serving(app):
  """`app` served over real HTTP (disconnects are real): its URL."""
  import uvicorn  # pylint: disable=import-outside-toplevel

  port = free_port()
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + 30
  while not server.started:
    assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
    time.sleep(0.05)
  try:
    yield url
  finally:
    server.should_exit = True
    thread.join(timeout=10)


def wait_until(condition, seconds=10.0, what="the condition"):
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
    time.sleep(0.05)


def get(url, path, **kwargs):
  return httpx.get(url + path, timeout=30, **kwargs)
