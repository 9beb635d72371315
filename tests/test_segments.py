"""Packed documents kept apart: the packers' segment ids and positions, and a model that
lets no document see another."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax.data import packing, tokenizers
from bigflax.models import gpt
from bigflax.tasks import lm, sft
from experiments import gpt_tiny

EOS = 2


def test_each_eos_begins_a_document_whose_positions_restart():
  inputs = np.array([[7, 8, EOS, 9, 9, 9, EOS, 5]])
  got = packing.document_segments(inputs, EOS)
  np.testing.assert_array_equal(got["segment_ids"], [[1, 1, 2, 2, 2, 2, 3, 3]])
  np.testing.assert_array_equal(got["positions"], [[0, 1, 0, 1, 2, 3, 0, 1]])


def test_examples_pack_first_fit_and_keep_their_weighted_targets():
  pad = 0
  framed = [([5, 6], [7]), ([5, 6, 6, 6], [8, 8]), ([9], [7])]  # (prompt, answer)
  windows, weights = sft.frame_prompt_answers(framed, 8, eos_id=EOS, pad_id=pad)
  packed = packing.pack_examples(windows, weights, pad)
  # Lengths 4, 7 and 3 in 8 slots: rows [ex0, ex2] and [ex1].
  np.testing.assert_array_equal(
    packed["segment_ids"], [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 0]]
  )
  np.testing.assert_array_equal(packed["positions"][0], [0, 1, 2, 3, 0, 1, 2, 0])
  np.testing.assert_array_equal(packed["inputs"][0], [EOS, 5, 6, 7, EOS, 9, 7, pad])
  np.testing.assert_array_equal(packed["targets"][0], [5, 6, 7, EOS, 9, 7, EOS, pad])
  # The loss counts exactly the answer tokens and closing eos of every example.
  assert packed["weights"].sum() == weights.sum() == 2 + 3 + 2
  np.testing.assert_array_equal(packed["weights"][0], [0, 0, 1, 1, 0, 1, 1, 0])


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_in_a_packed_row_a_document_is_computed_as_if_alone(position):
  """Document 2's logits depend on nothing of document 1 and equal its logits alone."""
  model = gpt.GPT(
    vocab_size=32,
    num_layers=2,
    num_heads=2,
    embed_dim=32,
    mlp_dim=64,
    max_len=16,
    position=position,
  )
  doc1 = np.array([EOS, 5, 6, 7, 8, 9])
  doc2 = np.array([EOS, 11, 12, 13, 14])
  row = np.concatenate([doc1, doc2])[None]
  params = model.init(jax.random.key(0), jnp.asarray(row))["params"]

  def logits(tokens):
    fields = packing.document_segments(tokens, EOS)
    return model.apply(
      {"params": params},
      jnp.asarray(tokens),
      positions=fields["positions"],
      segment_ids=fields["segment_ids"],
    )

  changed = row.copy()
  changed[0, 1 : len(doc1)] = [20, 21, 22, 23, 24]
  packed, other = logits(row), logits(changed)
  np.testing.assert_array_equal(packed[0, len(doc1) :], other[0, len(doc1) :])
  assert not np.allclose(packed[0, : len(doc1)], other[0, : len(doc1)])
  alone = model.apply({"params": params}, jnp.asarray(doc2[None]))
  np.testing.assert_allclose(packed[0, len(doc1) :], alone[0], atol=1e-5)
  # Without segment ids (GPT-2's windows) document 2 does see document 1.
  plain = lambda tokens: model.apply({"params": params}, jnp.asarray(tokens))
  assert not np.allclose(plain(row)[0, len(doc1) :], plain(changed)[0, len(doc1) :])


def test_document_mask_adds_segments_to_lm_batches_and_the_plan(tfds_dir):
  config = gpt_tiny.get_config()
  config.data.update(
    data_dir=tfds_dir, document_mask=True, skip_document_start=True, seq_len=64, global_batch_size=4
  )
  tokenizer = tokenizers.ByteTokenizer()
  batches = lm.make_data(config, tokenizer, "validation", process_index=0, process_count=1)
  batch = next(
    b
    for b in map(batches.batch, range(batches.steps_per_epoch))
    if (b["inputs"] == tokenizer.eos_id).any()
  )  # source files are long
  assert (
    set(batch)
    == set(lm.batch_spec(config))
    == {"inputs", "targets", "segment_ids", "positions", "weights"}
  )
  starts = batch["inputs"] == tokenizer.eos_id
  assert starts.any()
  np.testing.assert_array_equal(batch["positions"][starts], 0)
  np.testing.assert_array_equal(batch["weights"], ~starts)


def test_skip_document_start_without_document_mask_is_refused():
  config = gpt_tiny.get_config()
  config.data.skip_document_start = True
  with pytest.raises(ValueError, match="data.document_mask=True"):
    lm.document_fields(config.data, EOS)
