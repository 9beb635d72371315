"""TFDS builder: what users sent back to a served model, as fine-tuning examples.

`bigflax serve --feedback_dir DIR` appends JSON lines to DIR/*.jsonl (`infer/feedback_log`):
  {"id", "index", "kind": "completion", "prompt", "completion"}       every answer given
  {"id", "index", "kind": "feedback", "rating": 1 | -1, "correction"}  what a user said
"index" is the choice of a request that asked for several (n > 1); absent means 0.
A completion becomes an example (`prompt`, `answer`) when its latest feedback gives a
correction (the answer is the correction) or a positive rating (the answer is the model's
own completion); unrated and negatively rated completions are left out. Split by a hash
of the id: 10 % validation.
"""

import hashlib
import json

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from bigflax.data import local_builder

VALIDATION_FRACTION = 0.1


def key(record: dict) -> str:
  """One answer's name: its request's id, and the choice when there were several."""
  index = record.get("index", 0)
  return f"{record['id']}:{index}" if index else record["id"]


def examples(records) -> dict[str, dict]:
  """{key: {prompt, answer, rating}} of the completions the feedback approves or corrects."""
  completions, feedback = {}, {}
  for record in records:
    if record.get("kind") == "completion":
      completions[key(record)] = record
    elif record.get("kind") == "feedback":
      feedback[key(record)] = record  # the latest word counts
  result = {}
  for id_, said in feedback.items():
    if id_ not in completions:
      continue
    answer = said.get("correction") or (
      completions[id_]["completion"] if said.get("rating", 0) > 0 else None
    )
    if answer:
      result[id_] = {
        "prompt": completions[id_]["prompt"],
        "answer": answer,
        "rating": float(said.get("rating", 0)),
      }
  return result


def read_records(directory) -> list[dict]:
  """Every JSON line of DIR/*.jsonl, in file then line order; names a malformed line."""
  records = []
  for path in sorted(epath.Path(directory).glob("*.jsonl")):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number} is not JSON ({e}); fix or remove it.") from e
  return records


def snapshot_name(directory) -> str:
  """A name for the directory's current records: new feedback means a new dataset."""
  digest = hashlib.sha256()
  for path in sorted(epath.Path(directory).glob("*.jsonl")):
    digest.update(path.name.encode() + b"\0" + path.read_bytes())
  return f"snapshot_{digest.hexdigest()[:16]}"


def is_validation(id_: str) -> bool:
  digest = hashlib.sha256(id_.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < VALIDATION_FRACTION * 2**64


class Feedback(local_builder.LocalBuilder):
  """Approved or corrected completions from a feedback directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Completions with a positive rating or a correction."}

  FEATURES = {
    "id": tfds.features.Text(),
    "prompt": tfds.features.Text(),
    "answer": tfds.features.Text(),
    "rating": tfds.features.Scalar(dtype=np.float32),
  }
  INFO = dict(description=__doc__)

  def __init__(self, *, source_dir, **kwargs):
    if not source_dir or not epath.Path(source_dir).is_dir():
      raise ValueError(
        f"data.source_dir={source_dir!r} must be the feedback directory "
        f"(the server's --feedback_dir)."
      )
    super().__init__(source_dir=source_dir, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    found = examples(read_records(self._source_dir))
    return {
      "train": self._generate_examples(found, lambda i: not is_validation(i)),
      "validation": self._generate_examples(found, is_validation),
    }

  def _generate_examples(self, found, keep):
    for id_, example in sorted(found.items()):
      if keep(id_):
        yield id_, dict(example, id=id_)
