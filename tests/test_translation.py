"""Translation data and metrics: the Multi30k builder, sentence-pair batches, BLEU/chrF
wiring against sacrebleu called directly, and the seq2seq task end to end."""

import json

import flax.linen as nn
import httpx
import jax
import ml_collections
import numpy as np
import optax
import pytest
import sacrebleu

from bigflax import metrics
from bigflax.data import multi30k, packing, pipeline, tokenizers
from bigflax.models import seq2seq as seq2seq_model
from bigflax.tasks import seq2seq
from conftest import SHARED_DATA
from helpers import export, framework_model, run, run_blocked, server

MULTI30K = SHARED_DATA / "multi30k"
needs_data = pytest.mark.skipif(
  not MULTI30K.is_dir(), reason=f"{MULTI30K} absent (set BIGFLAX_SHARED_DATA)"
)


def test_bleu_and_chrf_are_sacrebleus():
  hypotheses = [
    "A man is riding a bicycle down the street.",
    "Two dogs play in the grass.",
    "A woman in a red dress sings on stage.",
    "The child eats.",
  ]
  references = [
    "A man rides a bike down the street.",
    "Two dogs are playing in the grass.",
    "A woman wearing a red dress is singing on a stage.",
    "A little child is eating an apple.",
  ]
  assert metrics.bleu(hypotheses, references) == pytest.approx(
    sacrebleu.corpus_bleu(hypotheses, [references]).score
  )
  assert metrics.chrf(hypotheses, references) == pytest.approx(
    sacrebleu.corpus_chrf(hypotheses, [references]).score
  )
  assert 10 < metrics.bleu(hypotheses, references) < 60
  assert metrics.bleu(references, references) == pytest.approx(100.0)
  assert metrics.chrf(references, references) == pytest.approx(100.0)
  with pytest.raises(ValueError, match="3 hypotheses but 4 references"):
    metrics.bleu(hypotheses[:3], references)


def test_detokenize_stops_at_eos():
  tokenizer = tokenizers.ByteTokenizer()
  ids = tokenizer.encode("Hi there") + [tokenizer.eos_id] + tokenizer.encode("junk")
  assert seq2seq.detokenize(tokenizer, ids) == "Hi there"


@needs_data
def test_multi30k_builder(tfds_dir):
  multi30k.Multi30k(data_dir=tfds_dir, source_dir=MULTI30K).download_and_prepare(
    file_format="array_record"
  )
  for split, stem, size in (("train", "train", 29_000), ("validation", "val", 1_014)):
    de, en = pipeline.load_translation_pairs("multi30k", split, "de", "en", tfds_dir)
    assert len(de) == len(en) == size
    assert de == (MULTI30K / f"{stem}.de").read_text().splitlines()  # file order
    assert en == (MULTI30K / f"{stem}.en").read_text().splitlines()
  texts = pipeline.load_text_split("multi30k", "validation", tfds_dir)
  assert len(texts) == 2 * 1_014  # both languages train the joint vocabulary


def test_sha256_is_checked(tmp_path):
  (tmp_path / "val.de").write_text("Ein Mann.\n")
  with pytest.raises(ValueError, match="is not Multi30k's"):
    multi30k.read_lines(tmp_path / "val.de", multi30k.SHA256["val", "de"])


def pair_config(**kw):
  return ml_collections.ConfigDict(
    dict(
      dict(
        name="multi30k",
        data_dir=None,
        source_dir=None,
        source_lang="de",
        target_lang="en",
        seq_len=12,
        global_batch_size=4,
        seed=0,
      ),
      **kw,
    )
  )


def test_translation_batches(monkeypatch):
  pairs = (["Ein Hund.", "Zwei Katzen schlafen.", "Ja."], ["A dog.", "Two cats sleep.", "Yes."])
  monkeypatch.setattr(pipeline, "load_translation_pairs", lambda *args: pairs)
  tokenizer = tokenizers.ByteTokenizer()
  data = seq2seq.make_translation_batches(
    pair_config(seq_len=24), tokenizer, "validation", process_index=0, process_count=1
  )
  batch = data.batch(0)  # 3 pairs + 1 weight-0 padding pair, in file order
  assert data.steps_per_epoch == 1
  ids = tokenizer.encode("A dog.")
  assert batch["target_inputs"][0, : len(ids) + 1].tolist() == [tokenizer.bos_id] + ids
  assert batch["targets"][0, : len(ids) + 1].tolist() == ids + [tokenizer.eos_id]
  assert batch["target_weights"][0].tolist() == [1] * (len(ids) + 1) + [0] * (23 - len(ids))
  assert batch["target_weights"][3].sum() == 0
  source = tokenizer.encode("Zwei Katzen schlafen.")
  assert batch["source"][1, : len(source) + 2].tolist() == (
    [tokenizer.bos_id] + source + [tokenizer.eos_id]
  )
  assert batch["source_mask"][1].sum() == len(source) + 2

  trimmed = seq2seq.trim_pair_padding(0, batch)
  assert trimmed["source"].shape == (4, 24)  # 23 tokens -> a multiple of 8
  assert trimmed["targets"].shape == (4, 16)  # 16 tokens
  np.testing.assert_array_equal(trimmed["targets"], batch["targets"][:, :16])
  train = seq2seq.make_translation_batches(
    pair_config(seq_len=24, global_batch_size=2),
    tokenizer,
    "train",
    process_index=0,
    process_count=1,
  )
  assert train.batch(0)["source"].shape[1] in (8, 16, 24)


def test_loss_goes_down_on_a_copy_task():
  """Teacher forcing with label smoothing learns to reverse random strings: the targets
  are uniform over 9 symbols, so a loss below log(9) needs the source."""
  rng = np.random.default_rng(0)
  words = rng.integers(3, 12, size=(64, 6))
  batch = {
    "source": words,
    "source_mask": np.ones_like(words),
    "target_inputs": np.concatenate([np.ones((64, 1), int), words[:, ::-1]], 1)[:, :-1],
    "targets": words[:, ::-1],
    "target_weights": np.ones(words.shape, np.float32),
  }
  model = seq2seq_model.Seq2Seq(
    vocab_size=16,
    num_encoder_layers=1,
    num_decoder_layers=1,
    num_heads=4,
    embed_dim=64,
    mlp_dim=128,
    max_len=8,
    dropout_rate=0.0,
  )
  params = nn.unbox(model.init(jax.random.key(0), words, words)["params"])
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    (_, m), grads = jax.value_and_grad(seq2seq.loss_fn, argnums=1, has_aux=True)(
      model, params, batch, jax.random.key(0), label_smoothing=0.1
    )
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, m

  for _ in range(200):
    params, opt_state, m = step(params, opt_state)
  assert m["nll"] < np.log(9) - 0.3
  assert m["loss"] > m["nll"]  # the smoothed loss is what is optimised, nll is reported
  sums = seq2seq.eval_fn(model, params, batch)
  assert float(sums["tokens"]) == words.size


@pytest.mark.slow
@needs_data
def test_train_eval_and_translate_from_the_command_line(tfds_dir, tmp_path):
  tiny = [
    "--config",
    "experiments/multi30k_de_en.py",
    f"--config.data.data_dir={tfds_dir}",
    f"--config.data.source_dir={MULTI30K}",
    "--config.tokenizer.vocab_size=1000",
    "--config.model.num_encoder_layers=1",
    "--config.model.num_decoder_layers=1",
    "--config.model.embed_dim=32",
    "--config.model.mlp_dim=64",
    "--config.model.num_heads=2",
    "--config.data.seq_len=32",
    "--config.data.global_batch_size=8",
    "--config.train.num_steps=2",
    "--config.train.eval_every=0",
    "--config.train.eval_steps=2",
    "--config.task.beam_size=2",
  ]
  trained = run("train", tmp_path, *tiny)
  assert trained.returncode == 0, trained.stderr
  evaluated = run("eval", tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr
  report = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert {"loss", "accuracy", "perplexity", "bleu", "chrf"} <= set(report["metrics"])
  saved = json.loads((tmp_path / "eval_validation_2.json").read_text())
  assert saved["metrics"]["chrf"] == report["metrics"]["chrf"]
  translated = run("sample", tmp_path, "--prompt", "Ein Mann fährt Fahrrad.")
  assert translated.returncode == 0, translated.stderr
  assert "Ein Mann fährt Fahrrad." in translated.stdout

  # The exported bundle (encoder + beam search over the decoder's KV cache, one program)
  # translates as the framework does, without bigflax; so does a server on it.
  bundle = tmp_path / "bundle"
  assert export(tmp_path, bundle)["task"] == "seq2seq"
  sentences = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", ""]
  out = run_blocked(bundle, {"inputs": sentences}, tmp_path)
  config, tokenizer, model, params = framework_model(tmp_path)
  source, source_mask = packing.frame_sentences(
    tokenizer.encode_batch(sentences),
    config.data.seq_len,
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
  )
  expected = seq2seq.predict_fn(
    model, config, tokenizer, params, {"source": source, "source_mask": source_mask}
  )
  assert out["ids"] == np.asarray(expected).tolist()
  assert out["translations"] == [seq2seq.detokenize(tokenizer, row) for row in out["ids"]]
  with server("--bundle", str(bundle)) as url:
    response = httpx.post(f"{url}/v1/translate", json={"input": sentences}, timeout=120)
    assert [d["translation"] for d in response.json()["data"]] == out["translations"]
    wrong = httpx.post(f"{url}/v1/completions", json={"prompt": "a"}, timeout=60)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "url"
