"""Export: a bundle runs where bigflax cannot be imported, and gives the framework's own
generations and logits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax.data import packing
from bigflax.infer import decode
from conftest import SHARED_DATA
from helpers import export, framework_model, minilm_path, run, run_blocked


@pytest.mark.slow
def test_lm_bundle_matches_the_framework_without_bigflax(tiny_gpt_run, tmp_path):
  bundle_dir = tmp_path / "bundle"
  card = export(tiny_gpt_run, bundle_dir)
  config, tokenizer, model, params = framework_model(tiny_gpt_run)
  assert card["task"] == "lm" and card["trained_steps"] == 30
  assert card["parameters"] == sum(x.size for x in jax.tree.leaves(params))
  assert card["metrics_step"] == 30 and card["metrics"]["loss"] > 0
  assert json.loads((bundle_dir / "config.json").read_text()) == json.loads(config.to_json())

  # Prompts of different lengths share one left-padded batch in the bundle.
  prompts = ["def ", "import os\n\nclass Parser(", "x"]
  out = run_blocked(bundle_dir, {"prompts": prompts, "max_new_tokens": 12}, tmp_path)
  decoder = model.clone(decode=True)
  for prompt, ids, tokens, logits in zip(prompts, out["prompt_ids"], out["tokens"], out["logits"]):
    assert ids == [tokenizer.eos_id] + tokenizer.encode(prompt)  # as `bigflax sample`
    expected = decode.generate(
      decoder,
      params,
      jnp.asarray([ids]),
      jax.random.key(0),
      max_new_tokens=12,
      temperature=0.0,
      vocab_size=tokenizer.vocab_size,
    )
    assert tokens == expected[0].tolist(), prompt
    full = model.apply({"params": params}, jnp.asarray([ids]))[0, -1]
    np.testing.assert_allclose(logits, full, atol=2e-5)
  assert all(isinstance(s, str) for s in out["sampled"])


@pytest.mark.slow
def test_classifier_bundle_matches_the_framework_without_bigflax(tiny_classifier_runs, tmp_path):
  workdir, bundle_dir = tiny_classifier_runs[1], tmp_path / "bundle"
  card = export(workdir, bundle_dir)
  assert card["task"] == "classify" and card["parameters"] == 2 * 16 + 16 + 16 + 1
  features = [[-1.5, -1.0], [2.0, 1.0], [0.1, -0.3]]
  out = run_blocked(bundle_dir, {"inputs": features}, tmp_path)
  _, _, model, params = framework_model(workdir)
  logits = model.apply({"params": params}, jnp.asarray(features))
  np.testing.assert_allclose(out["logits"], logits, atol=1e-6)
  p = 1 / (1 + np.exp(-np.asarray(logits)[:, 0]))
  np.testing.assert_allclose(out["probabilities"], np.stack([1 - p, p], 1), atol=1e-6)


@pytest.mark.slow
def test_text_classifier_bundle_matches_the_framework(tmp_path):
  tokenizer_file = minilm_path() / "tokenizer.json"
  if not (SHARED_DATA / "sst2").is_dir():
    pytest.skip(f"no SST-2 files in {SHARED_DATA / 'sst2'}")
  workdir, bundle_dir = tmp_path / "run", tmp_path / "bundle"
  trained = run(
    "train",
    workdir,
    "--config",
    "experiments/sst2_minilm.py",
    "--config.init_from=",
    "--config.model.num_layers=1",
    "--config.model.embed_dim=32",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=64",
    "--config.data.seq_len=16",
    "--config.data.global_batch_size=8",
    f"--config.tokenizer.path={tokenizer_file}",
    f"--config.data.source_dir={SHARED_DATA / 'sst2'}",
    f"--config.data.data_dir={tmp_path / 'tfds'}",
    "--config.train.num_steps=2",
    "--config.train.eval_every=0",
    "--config.train.checkpoint_every=2",
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  card = export(workdir, bundle_dir)
  assert card["task"] == "classify"
  assert json.loads((bundle_dir / "bundle.json").read_text())["meta"]["labels"] == [
    "negative",
    "positive",
  ]
  sentences = ["a gorgeous , witty film", "", "the plot is a dull and overlong mess " * 3]
  out = run_blocked(bundle_dir, {"inputs": sentences}, tmp_path)
  config, tokenizer, model, params = framework_model(workdir)
  tokens, mask = packing.frame_sentences(
    tokenizer.encode_batch(sentences),
    config.data.seq_len,
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
  )
  logits = model.apply({"params": params}, tokens, np.zeros_like(tokens), mask, "classify")
  np.testing.assert_allclose(out["logits"], logits, atol=1e-5)


def test_per_row_sampling_filters_equal_the_scalar_ones():
  logits = jax.random.normal(jax.random.key(0), (4, 50))
  top_k, top_p = [0, 3, 10, 1], [1.0, 0.5, 0.9, 0.3]
  rows = decode.filter_logits(logits, jnp.asarray(top_k), jnp.asarray(top_p))
  for i in range(4):
    expected = np.asarray(logits[i])
    if top_k[i]:  # the reference: numpy, one row at a time
      expected = np.where(expected < np.sort(expected)[::-1][top_k[i] - 1], -np.inf, expected)
    order = np.argsort(-expected)
    p = np.exp(expected[order] - expected[order][0])
    p /= p.sum()
    keep = order[: int(np.searchsorted(np.cumsum(p), top_p[i]) + 1)]
    expected = np.where(np.isin(np.arange(50), keep), expected, -np.inf)
    np.testing.assert_array_equal(np.isfinite(rows[i]), np.isfinite(expected), err_msg=str(i))
  greedy = decode.sample_rows(
    logits, jnp.arange(4), 0, jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.ones(4)
  )
  np.testing.assert_array_equal(greedy, logits.argmax(-1))
  sampled = decode.sample_rows(
    logits, jnp.arange(4), 0, jnp.ones(4), jnp.asarray(top_k), jnp.ones(4)
  )
  assert all(np.isfinite(rows[i, int(t)]) or not top_k[i] for i, t in enumerate(sampled))
