"""Mixtures of prepared corpora: each step's rows drawn in the weights' proportions, as a
pure function of (seed, step), the same rows for any number of processes."""

import collections

import numpy as np
import pytest

from bigflax.data import mixture, prepare, tokenizers
from bigflax.tasks import lm
from helpers import data_config, make_text_corpus, read_all, text_corpus

WEIGHTS = {"big": 0.7, "mid": 0.2, "small": 0.1}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixture")
  corpora = {}
  for seed, (name, files) in enumerate((("big", 40), ("mid", 20), ("small", 4))):
    make_text_corpus(root / name, num_files=files, seed=seed)
    corpora[name] = text_corpus(root / name, fraction=0.3)
  config = data_config(root / "prepared", corpora, WEIGHTS, batch=16)
  prepare.prepare(config)
  return config


def batches(config, split="train", process_index=0, process_count=1, **changes):
  data = config.data.copy_and_resolve_references()
  data.update(changes)
  return lm.make_lm_batches(
    data,
    tokenizers.ByteTokenizer(),
    split,
    process_index=process_index,
    process_count=process_count,
  )


def test_realised_proportions_over_1000_steps_are_the_weights(prepared):
  train = batches(prepared)
  counts = collections.Counter()
  for step in range(1000):
    corpus, _ = train.positions(step)
    assert len(corpus) == 16
    counts.update(train.names[c] for c in corpus)
  for name, weight in WEIGHTS.items():
    assert abs(counts[name] / 16000 - weight) <= 0.01 * weight, counts
  # Every step is close to the weights too, not only the run: 16 * 0.1 = 1.6 'small' rows.
  assert all(1 <= sum(train.positions(s)[0] == 2) <= 2 for s in range(50))
  np.testing.assert_array_equal(train.rows(5)[:, 0], train.positions(5)[0])


def test_rows_are_the_corpora_windows(prepared):
  train = batches(prepared)
  rows, batch = train.rows(7), train.batch(7)
  windows = {name: read_all(prepared.data.prepared_dir, name, "train") for name in WEIGHTS}
  want = np.stack([windows[train.names[c]][w] for c, w in rows])
  np.testing.assert_array_equal(batch["inputs"], want[:, :-1])
  np.testing.assert_array_equal(batch["targets"], want[:, 1:])


def test_the_batch_of_a_step_is_a_function_of_seed_and_step(prepared):
  a, b = batches(prepared), batches(prepared)
  for step in (0, 5, 999, 10**7):
    np.testing.assert_array_equal(a.rows(step), b.rows(step))
  assert not np.array_equal(a.rows(3), a.rows(4))
  assert not np.array_equal(a.rows(3), batches(prepared, seed=1).rows(3))
  resumed = a.iterate(start_step=40)
  for step in range(40, 44):
    np.testing.assert_array_equal(next(resumed)["inputs"], a.batch(step)["inputs"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_read_their_rows_of_the_one_process_batch(prepared, process_count):
  whole = batches(prepared)
  parts = [
    batches(prepared, process_index=p, process_count=process_count) for p in range(process_count)
  ]
  for step in (0, 13, 250):
    np.testing.assert_array_equal(np.concatenate([p.rows(step) for p in parts]), whole.rows(step))
    np.testing.assert_array_equal(
      np.concatenate([p.batch(step)["inputs"] for p in parts]), whole.batch(step)["inputs"]
    )


def test_a_corpus_that_runs_out_wraps_with_a_new_permutation(prepared):
  train = batches(prepared)
  small = train.names.index("small")
  n = len(read_all(prepared.data.prepared_dir, "small", "train"))
  epochs = [[train.position_window(small, p) for p in range(e * n, (e + 1) * n)] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert epochs[0] != epochs[1] != epochs[2]
  # The batches walk each stream in order: steps [0, 400) hold exactly 'small's positions
  # 0 .. T-1, so more than three whole epochs of it.
  drawn = [p for s in range(400) for c, p in zip(*train.positions(s)) if c == small]
  assert sorted(drawn) == list(range(len(drawn))) and len(drawn) > 3 * n
  assert [w for c, w in train.rows(0) if c == small] == [
    epochs[0][p] for c, p in zip(*train.positions(0)) if c == small
  ]


def test_validation_reads_each_corpus_in_order(prepared):
  validation = batches(prepared, "validation")
  seen = collections.defaultdict(list)
  for step in range(validation.steps_per_epoch):
    for c, w in validation.rows(step):
      seen[validation.names[c]].append(w)
  for name, windows in seen.items():
    n = len(read_all(prepared.data.prepared_dir, name, "validation"))
    # Positions 0, 1, 2, ... of an unshuffled stream: windows in order, wrapping at n.
    assert collections.Counter(windows) == collections.Counter(p % n for p in range(len(windows)))


def test_weights_the_batch_cannot_hold_are_refused(prepared):
  with pytest.raises(ValueError, match=r"data.global_batch_size=2 is too small .* at least 6"):
    batches(prepared, global_batch_size=2, mixture={"big": 0.34, "mid": 0.33, "small": 0.33})
  assert mixture.rows_before(np.array([0.5, 0.3, 0.2]), 8, 10).tolist() == [40, 24, 16]
