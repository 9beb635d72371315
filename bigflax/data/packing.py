"""How documents become LM training data: the split each goes to (a hash of its id) and
their packing into token windows; and a sentence framed alone in a window of its own."""

from collections.abc import Sequence
import hashlib
import itertools

import numpy as np


def held_out(doc_id: str, fraction: float) -> bool:
  """Whether the document `doc_id` belongs to the validation split (hash of the id)."""
  digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < fraction * 2**64


def pack_documents(token_lists: Sequence[Sequence[int]], eos_id: int, seq_len: int) -> np.ndarray:
  """Documents, each followed by eos, cut into int32[num_windows, seq_len + 1].

  A window gives inputs w[:-1] and targets w[1:]; the tail is dropped.
  """
  return cut_windows(np.zeros(0, np.int32), token_lists, eos_id, seq_len + 1)[0]


def cut_windows(
  carry: np.ndarray, token_lists: Sequence[Sequence[int]], eos_id: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
  """`carry`, then each document followed by eos, cut into int32[n, length] windows; and
  the tokens left over, which the next call continues from (a stream of any length is
  packed a chunk at a time, exactly as if it were packed whole)."""
  eos = np.array([eos_id], np.int32)
  stream = np.concatenate(
    [np.asarray(carry, np.int32)]
    + [part for ids in token_lists for part in (np.asarray(ids, np.int32), eos)]
  )
  whole = len(stream) // length * length
  return stream[:whole].reshape(-1, length), stream[whole:]


def document_segments(inputs: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
  """Segment ids and positions of packed LM inputs int[N, T], where each eos begins a
  document (it is the token the document's first token is predicted from): ids count
  the documents of a row from 1, positions restart at 0 at each eos."""
  starts = inputs == eos_id
  index = np.arange(inputs.shape[1])
  last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
  return {
    "segment_ids": (1 + np.cumsum(starts, axis=1)).astype(np.int32),
    "positions": (index - last_start).astype(np.int32),
  }


def pack_examples(
  windows: np.ndarray,
  weights: np.ndarray,
  pad_id: int,
) -> dict[str, np.ndarray]:
  """Framed examples (windows int[N, T + 1], the target weights float[N, T]; padded with
  `pad_id`) packed several to a row, first fit in the given order.

  Returns inputs, targets, weights, segment_ids (1, 2, ... per row; 0 at padding) and
  positions (restarting at each example) as arrays [rows, T]. An example keeps its
  inputs up to its last weighted target; one with no weighted target is dropped.
  """
  seq_len = weights.shape[1]
  weighted = weights > 0
  lengths = np.where(weighted.any(axis=1), seq_len - np.argmax(weighted[:, ::-1], axis=1), 0)
  rows, free = [], []  # per row: [(example, start)], and the slots it has left
  for i, length in enumerate(lengths):
    if not length:
      continue
    row = next((r for r, room in enumerate(free) if room >= length), len(rows))
    if row == len(rows):
      rows.append([])
      free.append(seq_len)
    rows[row].append((i, seq_len - free[row]))
    free[row] -= length
  shape = (len(rows), seq_len)
  packed = {
    "inputs": np.full(shape, pad_id, np.int32),
    "targets": np.full(shape, pad_id, np.int32),
    "weights": np.zeros(shape, np.float32),
    "segment_ids": np.zeros(shape, np.int32),
    "positions": np.zeros(shape, np.int32),
  }
  for r, members in enumerate(rows):
    for segment, (i, start) in enumerate(members, 1):
      span = slice(start, start + lengths[i])
      packed["inputs"][r, span] = windows[i, : lengths[i]]
      packed["targets"][r, span] = windows[i, 1 : lengths[i] + 1]
      packed["weights"][r, span] = weights[i, : lengths[i]]
      packed["segment_ids"][r, span] = segment
      packed["positions"][r, span] = np.arange(lengths[i])
  return packed


def frame_sentences(
  token_lists: Sequence[Sequence[int]],
  seq_len: int,
  *,
  bos_id: int,
  eos_id: int,
  pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Each sentence as [bos] ids [eos] + padding: int32 tokens and mask (1 = real), [N, seq_len].

  A sentence longer than seq_len - 2 keeps its first seq_len - 2 ids.
  """
  body = seq_len - 2
  lengths = np.array([min(len(ids), body) for ids in token_lists], np.int64)
  tokens = np.full((len(token_lists), seq_len), pad_id, np.int32)
  tokens[:, 0] = bos_id
  # A boolean assignment fills row by row, so each row's first `length` slots get
  # that sentence's ids, in order.
  tokens[:, 1:-1][np.arange(body) < lengths[:, None]] = np.fromiter(
    itertools.chain.from_iterable(ids[:body] for ids in token_lists),
    np.int32,
    count=lengths.sum(),
  )
  tokens[np.arange(len(tokens)), lengths + 1] = eos_id
  mask = (np.arange(seq_len) < lengths[:, None] + 2).astype(np.int32)
  return tokens, mask


def frame_texts(tokenizer, sentences: Sequence[str], seq_len: int):
  """frame_sentences of the sentences' tokens: (tokens, mask)."""
  return frame_sentences(
    tokenizer.encode_batch(sentences),
    seq_len,
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
  )
