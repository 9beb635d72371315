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
  return cut_windows(np.zeros(0, np.int32), token_lists, eos_id, seq_len + 1)[0]


def cut_windows(carry: np.ndarray, token_lists: Sequence[Sequence[int]], eos_id: int,
                length: int) -> tuple[np.ndarray, np.ndarray]:
  """`carry`, then each document followed by eos, cut into int32[n, length] windows; and
  the tokens left over, which the next call continues from (a stream of any length is
  packed a chunk at a time, exactly as if it were packed whole)."""
  eos = np.array([eos_id], np.int32)
  stream = np.concatenate([np.asarray(carry, np.int32)] + [
      part for ids in token_lists for part in (np.asarray(ids, np.int32), eos)])
  whole = len(stream) // length * length
  return stream[:whole].reshape(-1, length), stream[whole:]
