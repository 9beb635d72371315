"""Supervised fine-tuning: the stdlib Q/A set, answer-only loss, feedback data with replay."""

import json

import jax
import numpy as np
import pytest

from bigflax import run as run_lib
from bigflax import trained
from bigflax.data import feedback, pipeline, stdlib_qa, tokenizers
from bigflax.tasks import sft
from bigflax.train import loop, partitioning, writers
from helpers import tiny_config


def test_only_answer_tokens_are_targets():
  windows, weights = sft.frame_prompt_answers([([5, 6, 7], [8, 9])], 8, eos_id=1, pad_id=0)
  np.testing.assert_array_equal(windows[0], [1, 5, 6, 7, 8, 9, 1, 0, 0])
  # targets = windows[1:] = 5 6 7 8 9 1 0 0: the answer and its closing eos count.
  np.testing.assert_array_equal(weights[0], [0, 0, 0, 1, 1, 1, 0, 0])
  windows, weights = sft.frame_prompt_answers([([5, 6, 7], [8, 9])], 4, eos_id=1, pad_id=0)
  np.testing.assert_array_equal(windows[0], [1, 5, 6, 7, 8])
  np.testing.assert_array_equal(weights[0], [0, 0, 0, 1])


def test_questions_come_from_docstrings():
  source = (
    'def dumps(obj, *, indent=None):\n  """Serialize obj.\n\n  More."""\n'
    'def _private():\n  """Hidden."""\nclass Encoder:\n  """Encodes."""\n'
    '  def encode(self, o):\n    """Return a string."""\n'
  )
  assert list(stdlib_qa.questions("json", source)) == [
    ("What does the function json.dumps(obj, *, indent=None) do?", "Serialize obj."),
    ("What does the class json.Encoder do?", "Encodes."),
    ("What does the function json.Encoder.encode(self, o) do?", "Return a string."),
  ]
  assert stdlib_qa.module_name("json/__init__.py") == "json"
  assert stdlib_qa.module_name("os.py") == "os"


def test_stdlib_qa_splits_by_module(tfds_dir):
  train = pipeline.load_prompt_answers("stdlib_qa", "train", tfds_dir)
  validation = pipeline.load_prompt_answers("stdlib_qa", "validation", tfds_dir)
  assert len(train) > 3000 and len(validation) > 50
  module = lambda prompt: prompt.split(" ")[5].split("(")[0].rsplit(".", 1)[0]
  assert not {module(p) for p, _ in train} & {module(p) for p, _ in validation}
  assert all(p.startswith("Q: What does the ") and p.endswith("do?\nA:") for p, _ in train)


def write_feedback(directory, records):
  directory.mkdir(exist_ok=True)
  with open(directory / "server.jsonl", "a") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def test_feedback_becomes_examples(tmp_path):
  records = [
    {"id": "a", "kind": "completion", "prompt": "Q: a?\nA:", "completion": " good"},
    {"id": "b", "kind": "completion", "prompt": "Q: b?\nA:", "completion": " wrong"},
    {"id": "c", "kind": "completion", "prompt": "Q: c?\nA:", "completion": " bad"},
    {"id": "d", "kind": "completion", "prompt": "Q: d?\nA:", "completion": " unrated"},
    {"id": "a", "kind": "feedback", "rating": 1},
    {"id": "b", "kind": "feedback", "rating": -1, "correction": " right"},
    {"id": "c", "kind": "feedback", "rating": 1},
    {"id": "c", "kind": "feedback", "rating": -1},  # changed their mind: the latest counts
  ]
  assert feedback.examples(records) == {
    "a": {"prompt": "Q: a?\nA:", "answer": " good", "rating": 1.0},
    "b": {"prompt": "Q: b?\nA:", "answer": " right", "rating": -1.0},
  }
  write_feedback(tmp_path / "fb", records)
  before = feedback.snapshot_name(tmp_path / "fb")
  (tmp_path / "fb" / "server.jsonl").open("a").write("{not json\n")
  assert feedback.snapshot_name(tmp_path / "fb") != before
  with pytest.raises(ValueError, match=r"server.jsonl:9 is not JSON"):
    feedback.read_records(tmp_path / "fb")


def test_feedback_is_mixed_with_replay(tfds_dir, tmp_path):
  records = []
  for i in range(40):
    records += [
      {"id": f"q{i}", "kind": "completion", "prompt": f"Q: {i}?\nA:", "completion": f" {i}"},
      {"id": f"q{i}", "kind": "feedback", "rating": 1},
    ]
  write_feedback(tmp_path / "fb", records)
  config = tiny_config(tfds_dir).data
  config.update(
    name="feedback",
    source_dir=str(tmp_path / "fb"),
    replay_name="stdlib_qa",
    replay_fraction=0.25,
    seq_len=256,
    global_batch_size=4,
  )
  tokenizer = tokenizers.ByteTokenizer()
  batches = sft.make_sft_batches(config, tokenizer, "train", process_index=0, process_count=1)
  feedback_train = len(
    [r for r in records if r["kind"] == "completion" and not feedback.is_validation(r["id"])]
  )
  arrays = batches.arrays  # several examples packed to a row, one segment each
  examples = [
    row[segments == s]
    for row, segments in zip(arrays["inputs"], arrays["segment_ids"])
    for s in range(1, segments.max() + 1)
  ]
  assert len(examples) == feedback_train + round(feedback_train / 3)
  assert len(arrays["inputs"]) < len(examples)
  replayed = [tokenizer.decode(ids[1:20].tolist()).startswith("Q: What does") for ids in examples]
  assert sum(replayed) == round(feedback_train / 3)


def test_fine_tuning_learns_answers_not_questions(tfds_dir, tmp_path):
  mesh = partitioning.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  pretrain = tiny_config(tfds_dir)
  pretrain.train.update(num_steps=5, checkpoint_every=5)
  loop.train(run_lib.build_training(pretrain, str(tmp_path / "pretrained"), mesh=mesh).job)
  config = tiny_config(tfds_dir)
  config.task.name = "sft"
  config.init_from = str(tmp_path / "pretrained")
  config.data.update(name="stdlib_qa", seq_len=64)
  config.train.update(num_steps=25, eval_every=25, eval_steps=0, checkpoint_every=25)
  run = run_lib.build_training(config, str(tmp_path / "sft"), mesh=mesh).job
  batch = run.train_batches(0).__next__()
  assert 0 < batch["weights"].mean() < 1  # some positions are prompt, some answer
  loop.train(run)
  train = writers.read(str(tmp_path / "sft"), "train")
  assert train[25]["loss"] < train[1]["loss"] - 0.3
  validation = writers.read(str(tmp_path / "sft"), "validation")[25]
  assert {"perplexity", "accuracy", "recall/macro", "f1/macro"} <= set(validation)
  # Served (and exported) as a language model whose prompts open with eos, as in training.
  served = trained.load_served_model(str(tmp_path / "sft"))
  assert served.task == "lm" and served.meta["prompt_prefix"] == [served.meta["eos_id"]]
  assert isinstance(served.complete(["Q: What does json.dumps do?\nA:"], 4)[0], str)
