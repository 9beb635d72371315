"""How documents become LM training data: the split each goes to (a hash of its id) and
their packing into token windows."""

import hashlib
from typing import Sequence

import numpy as np


def held_out(doc_id: str, fraction: float) -> bool:
  """Whether the document `doc_id` belongs to the validation split (hash of the id)."""
  digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < fraction * 2**64


def pack_documents(
    token_lists: Sequence[Sequence[int]], eos_id: int, seq_len: int
) -> np.ndarray:
  """Documents, each followed by eos, cut into int32[num_windows, seq_len + 1].

  A window gives inputs w[:-1] and targets w[1:]; the tail is dropped.
  """
  if not token_lists:
    return np.zeros((0, seq_len + 1), np.int32)
  eos = np.array([eos_id], np.int32)
  stream = np.concatenate(
      [part for ids in token_lists for part in (np.asarray(ids, np.int32), eos)]
  )
  num_windows = len(stream) // (seq_len + 1)
  return stream[: num_windows * (seq_len + 1)].reshape(num_windows, seq_len + 1)
