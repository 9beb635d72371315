"""A bigflax language model as an lm-evaluation-harness model (`lm_eval`'s `TemplateLM`):
parameters in hand on a mesh, scored by the model's forward pass and decoded with its KV
cache, following lm-eval's own Hugging Face adapter in what it scores (context and
continuation split, left truncation, rolling windows, stop sequences).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, postprocess_generated_text
import numpy as np
from tqdm import tqdm

from bigflax.infer import decode
from bigflax.train import partitioning

MIN_BUCKET = 16  # padded lengths are powers of two from here: few compilations


def bucket(length: int, limit: int) -> int:
  return min(max(MIN_BUCKET, 1 << (length - 1).bit_length()), limit)


@dataclasses.dataclass
class Scorer:
  """The jitted functions of one model on one mesh; the parameters are an argument, so
  the training loop can score its live parameters."""

  model: nn.Module
  mesh: jax.sharding.Mesh
  rules: tuple
  rows_multiple: int  # a batch's rows are padded to a multiple of the batch axis' size

  def __post_init__(self):
    self.batch_sharding = partitioning.batch_sharding(self.mesh, self.rules)
    decode_model = self.model.clone(decode=True)
    # What the host reads comes back whole (replicated), as every process needs it.
    whole = partitioning.replicated(self.mesh)
    self._logprobs = jax.jit(self._token_logprobs, out_shardings=whole)
    self._prefill = jax.jit(lambda p, t, n: decode.prefill(decode_model, p, t, n))
    self._step = jax.jit(lambda p, s, t: decode.decode_step(decode_model, p, s, t))
    self._sample = jax.jit(decode.sample_rows, static_argnames="vocab_size", out_shardings=whole)

  def _token_logprobs(self, params, inputs, targets):
    logits = self.model.apply({"params": params}, inputs).astype(jnp.float32)
    logprobs = jax.nn.log_softmax(logits)
    chosen = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    return chosen, logits.argmax(-1) == targets

  def _put(self, array):
    return jax.device_put(array, self.batch_sharding)

  def rows(self, n: int) -> int:
    """`n` rounded up to a whole number of rows per batch shard."""
    return -(-n // self.rows_multiple) * self.rows_multiple

  def logprobs(self, params, inputs: np.ndarray, targets: np.ndarray):
    """(B, T) inputs and next-token targets -> numpy (log p(target), target is argmax)."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      chosen, greedy = self._logprobs(params, self._put(inputs), self._put(targets))
    return np.asarray(chosen), np.asarray(greedy)

  def prefill(self, params, tokens: np.ndarray, lengths: np.ndarray):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._prefill(params, self._put(tokens), self._put(lengths))

  def decode_step(self, params, state, tokens):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._step(params, state, tokens)

  def sample(self, logits, seeds, step, temperature, top_k, top_p, vocab_size):
    with jax.set_mesh(self.mesh):
      return self._sample(logits, seeds, step, temperature, top_k, top_p, vocab_size=vocab_size)


class BigflaxLM(TemplateLM):
  """lm-eval's model interface over `model` (a bigflax decoder) and its `params` (laid
  out on `mesh` under the logical axis `rules`); set `.params` to score others."""

  def __init__(
    self,
    model: nn.Module,
    params,
    tokenizer,
    mesh: jax.sharding.Mesh,
    rules: tuple,
    batch_size=8,
    max_gen_toks=256,
    seed=0,
  ):
    super().__init__()
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self._batch_size = int(batch_size)
    self.max_gen_toks = int(max_gen_toks)
    self.seed = int(seed)
    batch_axes = partitioning.batch_sharding(mesh, rules).spec[0] or ()
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else batch_axes
    self.scorer = Scorer(model, mesh, rules, int(np.prod([mesh.shape[a] for a in batch_axes])))
    # What the tokenizer puts before any text (Llama's and Gemma's bos; GPT-2 nothing).
    self._frame = tokenizer.encode("")

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def prefix_token_id(self) -> int:  # an empty context's stand-in, as lm-eval's HF model
    return self._frame[0] if self._frame else self.eot_token_id

  @property
  def max_length(self) -> int:
    return self.model.max_len

  def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
    del kwargs
    ids = self.tokenizer.encode(string)
    if add_special_tokens is False and self._frame and ids[: len(self._frame)] == self._frame:
      return ids[len(self._frame) :]
    return ids

  def tok_decode(self, tokens, **kwargs) -> str:
    del kwargs
    return self.tokenizer.decode([tokens] if isinstance(tokens, int) else list(tokens))

  # Scoring: (context, continuation) token lists -> (sum log p(continuation), greedy?).
  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    del kwargs
    # Longest first (as lm-eval's HF adapter): the first batch shows the memory needed.
    ordered = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
    results = []
    bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
    for chunk in ordered.get_batched(n=self._batch_size):
      # The model sees context + continuation minus its last token, cut from the left to
      # the context window; the continuation is scored at the last positions.
      windows = [(c + x)[-(self.max_length + 1) :] for _, c, x in chunk]
      length = bucket(max(len(w) - 1 for w in windows), self.max_length)
      rows = self.scorer.rows(len(chunk))
      inputs = np.zeros((rows, length), np.int32)
      targets = np.zeros((rows, length), np.int32)
      for i, w in enumerate(windows):
        inputs[i, : len(w) - 1], targets[i, : len(w) - 1] = w[:-1], w[1:]
      chosen, greedy = self.scorer.logprobs(self.params, inputs, targets)
      for i, ((_, _, continuation), w) in enumerate(zip(chunk, windows)):
        span = slice(len(w) - 1 - len(continuation), len(w) - 1)
        results.append(
          (float(chosen[i, span].astype(np.float64).sum()), bool(greedy[i, span].all()))
        )
      bar.update(len(chunk))
    bar.close()
    return ordered.get_original(results)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text scored whole, in disjoint windows at the model's context (each window
    conditioned on the one token before it), as lm-eval's HF adapter does."""
    windows, owners = [], []
    for i, (text,) in enumerate(r.args for r in requests):
      for context, continuation in map(
        lm_utils.make_disjoint_window,
        lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(text),
          prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length,
          context_len=1,
        ),
      ):
        windows.append((None, context, continuation))
        owners.append(i)
    scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, scores):
      totals[owner] += logprob
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """KV-cache decoding of left-padded batches, one jitted step per token, stopped when
    every row has produced a stop sequence or the end of text or max_gen_toks."""
    ordered = Collator(
      [r.args for r in requests],
      sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
      group_by="gen_kwargs",
      group_fn=lambda r: r[1],
    )
    results = []
    bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
    for chunk in ordered.get_batched(n=self._batch_size):
      contexts, options = zip(*chunk)
      results.extend(self._generate(list(contexts), dict(options[0])))
      bar.update(len(chunk))
    bar.close()
    return ordered.get_original(results)

  def _generate(self, contexts: list[str], options: dict) -> list[str]:
    # The end of text is a token here (decoding drops it): only the user's stops are text.
    until = [s for s in handle_stop_sequences(options.pop("until", None), eos=None) if s]
    max_new = int(options.pop("max_gen_toks", self.max_gen_toks))
    if max_new >= self.max_length:
      raise ValueError(
        f"max_gen_toks={max_new} leaves no room for a context in the "
        f"model's {self.max_length} positions."
      )
    sampling = options.pop("do_sample", False) or options.get("temperature", 0) > 0
    temperature = float(options.get("temperature", 1.0) or 1.0) if sampling else 0.0
    encoded = [
      self.tok_encode(c)[-(self.max_length - max_new) :] or [self.eot_token_id] for c in contexts
    ]
    rows = self.scorer.rows(len(encoded))
    width = bucket(max(map(len, encoded)), self.max_length - max_new)
    tokens = np.zeros((rows, width), np.int32)
    lengths = np.ones(rows, np.int32)
    for i, ids in enumerate(encoded):
      tokens[i, width - len(ids) :], lengths[i] = ids, len(ids)
    per_row = lambda v, dtype: jnp.full((rows,), v, dtype)
    sampler = (
      per_row(self.seed, jnp.uint32),
      per_row(temperature, jnp.float32),
      per_row(int(options.get("top_k", 0) or 0), jnp.int32),
      per_row(float(options.get("top_p", 1.0) or 1.0), jnp.float32),
    )
    logits, state = self.scorer.prefill(self.params, tokens, lengths)
    generated = [[] for _ in encoded]
    done = np.zeros(len(encoded), bool)
    for step in range(max_new):
      seeds, temp, top_k, top_p = sampler
      nxt = self.scorer.sample(logits, seeds, step, temp, top_k, top_p, self.tokenizer.vocab_size)
      host = np.asarray(nxt)
      for i in np.flatnonzero(~done):
        if host[i] == self.eot_token_id:
          done[i] = True
          continue
        generated[i].append(int(host[i]))
        text = self.tok_decode(generated[i])
        done[i] = any(stop in text for stop in until)
      if done.all():
        break
      logits, state = self.scorer.decode_step(self.params, state, nxt)
    return [
      postprocess_generated_text(self.tok_decode(g), stop=until, think_end_token=None)
      for g in generated
    ]
