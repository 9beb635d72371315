"""Loads and runs an exported bigflax bundle with jax, numpy and the tokenizer library alone.

`bigflax export` copies this file into every bundle as `load_bundle.py`, so a bundle
runs where bigflax is not installed:

  import sys; sys.path.insert(0, "BUNDLE")
  import load_bundle
  model = load_bundle.load("BUNDLE")
  model.complete(["def parse("], max_new_tokens=50)       # task "lm": texts
  model.classify(["a gorgeous film"])                      # task "classify": probabilities
  model.translate(["Ein Mann fährt Fahrrad."])             # task "seq2seq": texts

It must import nothing from bigflax. The bigflax server runs workdirs through the same
`Bundle` class, with the framework's functions jitted in place of the deserialised ones.
A bundle directory holds:
  functions/<name>.jax   jax.export StableHLO, batch dimension symbolic; called fn(params, *args)
  params.safetensors     the parameters, keys are '/'-joined paths
  bundle.json            task, function names and what calling them needs (ids, labels, ...)
  tokenizer/             the run's tokenizer files; config.json, model_card.json, README.md
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

# How a bundle of each kind is called, for its README.
USAGE = {
  "lm": 'model.complete(["def parse("], max_new_tokens=50, temperature=0.8)',
  "classify": "model.classify([an_input])",
  "seq2seq": 'model.translate(["a sentence"])',
}

_SAFETENSORS_DTYPES = {
  "F32": np.float32,
  "F16": np.float16,
  "BF16": jnp.bfloat16,
  "I32": np.int32,
  "I64": np.int64,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


def read_safetensors(path) -> dict:
  """{name: array} of a safetensors file. The format is a JSON header and raw bytes; reading
  it with numpy keeps the bundle's dependencies to jax and numpy."""
  with open(path, "rb") as f:
    data = f.read()
  header_size = int(np.frombuffer(data[:8], np.uint64)[0])
  header = json.loads(data[8 : 8 + header_size])
  header.pop("__metadata__", None)
  arrays = {}
  for name, entry in header.items():
    begin, end = (8 + header_size + offset for offset in entry["data_offsets"])
    arrays[name] = np.frombuffer(data[begin:end], _SAFETENSORS_DTYPES[entry["dtype"]]).reshape(
      entry["shape"]
    )
  return arrays


def unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


class Tokenizer:
  """The three kinds bigflax writes into tokenizer/ (bigflax.data.tokenizers), for text in
  and out: UTF-8 bytes shifted by 3, a SentencePiece model, or an HF tokenizer.json."""

  def __init__(self, directory):
    with open(os.path.join(directory, "tokenizer.json")) as f:
      config = json.load(f)
    self.kind = config["kind"]
    if self.kind == "byte":
      self.pad_id, self.bos_id, self.eos_id, self.vocab_size = 0, 1, 2, 259
    elif self.kind == "sentencepiece":
      import sentencepiece

      self._sp = sentencepiece.SentencePieceProcessor(
        model_file=os.path.join(directory, config["model_file"])
      )
      self.pad_id, self.bos_id, self.eos_id = (
        self._sp.pad_id(),
        self._sp.bos_id(),
        self._sp.eos_id(),
      )
      self.vocab_size = self._sp.get_piece_size()
    elif self.kind == "hf":
      import tokenizers

      self._hf = tokenizers.Tokenizer.from_file(os.path.join(directory, config["tokenizer_file"]))
      self._hf.no_padding()
      self._hf.no_truncation()
      self.pad_id, self.bos_id, self.eos_id = (
        self._hf.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")
      )
      self.vocab_size = self._hf.get_vocab_size()
    else:
      raise ValueError(f"{directory}: unknown tokenizer kind {self.kind!r}")

  def encode(self, text: str) -> list[int]:
    if self.kind == "byte":
      return [b + 3 for b in text.encode("utf-8")]
    if self.kind == "sentencepiece":
      return self._sp.encode(text)
    return self._hf.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    if self.kind == "byte":
      return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")
    special = {self.pad_id, self.bos_id, self.eos_id}
    ids = [int(i) for i in ids if i not in special]
    if self.kind == "sentencepiece":
      return self._sp.decode(ids)
    return self._hf.decode(ids, skip_special_tokens=False)


class Bundle:
  """A model ready for inference: `params`, the task's `functions` (name -> fn(params,
  *args)), what calling them needs (`meta`) and the `tokenizer`."""

  def __init__(self, task: str, meta: dict, params, functions: dict, tokenizer, info=None):
    self.task, self.meta, self.params, self.tokenizer = task, meta, params, tokenizer
    self.functions = functions
    self.info = info or {}  # the model card, for /health and logs

  def call(self, name, *args):
    return self.functions[name](self.params, *args)

  # ------------------------------------------------------------ task "lm"

  def prompt_ids(self, text: str) -> list[int]:
    return list(self.meta["prompt_prefix"]) + self.tokenizer.encode(text)

  def prefill(self, prompts: list[list[int]], length: int | None = None, rows: int | None = None):
    """Left-pads `prompts` (token ids) to `length` and the batch to `rows` (so that a
    server sees a few shapes only): (logits after each prompt (rows, V), decoding state)."""
    length = length or max(map(len, prompts))
    tokens = np.full((rows or len(prompts), length), self.meta["pad_id"], np.int32)
    lengths = np.ones(len(tokens), np.int32)  # padding rows: one pad token
    for i, ids in enumerate(prompts):
      tokens[i, length - len(ids) :] = ids
      lengths[i] = len(ids)
    return self.call("prefill", tokens, lengths)

  def decode_step(self, state, tokens):
    return self.call("decode_step", state, tokens)

  def sample(self, logits, seeds, step, temperature, top_k, top_p):
    """Next tokens (B,), each row with its own seed and sampling parameters."""
    as_array = lambda x, dtype: np.broadcast_to(np.asarray(x, dtype), (len(logits),))
    return self.functions["sample"](
      logits,
      as_array(seeds, np.int32),
      np.int32(step),
      as_array(temperature, np.float32),
      as_array(top_k, np.int32),
      as_array(top_p, np.float32),
    )

  def generate(
    self, prompts: list[list[int]], max_new_tokens: int, temperature=0.0, top_k=0, top_p=1.0, seed=0
  ) -> np.ndarray:
    """Token ids (B, max_new_tokens) continuing each prompt (token ids)."""
    if max(map(len, prompts)) + max_new_tokens > self.meta["max_len"]:
      raise ValueError(
        f"prompt plus max_new_tokens={max_new_tokens} exceeds the context "
        f"of {self.meta['max_len']} tokens"
      )
    seeds = seed + np.arange(len(prompts))
    logits, state = self.prefill(prompts)
    tokens = []
    for step in range(max_new_tokens):
      tokens.append(self.sample(logits, seeds, step, temperature, top_k, top_p))
      if step + 1 < max_new_tokens:
        logits, state = self.decode_step(state, tokens[-1])
    return np.stack([np.asarray(t) for t in tokens], axis=1)

  def complete(self, texts: list[str], max_new_tokens: int, **sampling) -> list[str]:
    tokens = self.generate([self.prompt_ids(t) for t in texts], max_new_tokens, **sampling)
    return [self.tokenizer.decode(row.tolist()) for row in tokens]

  # ------------------------------------------------------------ task "classify"

  def frame(self, texts: list[str], rows: int | None = None) -> tuple:
    """Texts as bigflax frames sentences: [bos] ids [eos] + padding to meta's seq_len,
    (tokens, mask), the batch padded to `rows`."""
    seq_len = self.meta["seq_len"]
    tokens = np.full((rows or len(texts), seq_len), self.meta["pad_id"], np.int32)
    mask = np.zeros(tokens.shape, np.int32)
    for i, text in enumerate(texts):
      ids = (
        [self.meta["bos_id"]] + self.tokenizer.encode(text)[: seq_len - 2] + [self.meta["eos_id"]]
      )
      tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1
    return tokens, mask

  def classify_inputs(self, inputs, rows: int | None = None) -> tuple:
    """The forward pass's arrays for texts, feature vectors or images (uint8 pixels,
    (H, W) or (H, W, C)), the batch padded to `rows`."""
    rows = rows or len(inputs)
    if self.meta["input"] in ("features", "image"):
      shape = self.meta["input_shape"]
      dtype = np.float32 if self.meta["input"] == "features" else np.uint8
      arrays = np.zeros((rows, *shape), dtype)
      arrays[: len(inputs)] = np.asarray(inputs).reshape(len(inputs), *shape)
      return (arrays,)
    tokens, mask = self.frame(inputs, rows)
    return tokens, np.zeros_like(tokens), mask

  def logits(self, inputs, rows: int | None = None) -> np.ndarray:
    return np.asarray(self.call("forward", *self.classify_inputs(inputs, rows)))[: len(inputs)]

  def classify(self, inputs) -> np.ndarray:
    """Class probabilities (N, len(meta['labels'])) for texts or feature vectors."""
    return probabilities(self.logits(inputs))

  # ------------------------------------------------------------ task "seq2seq"

  def translate_ids(self, texts: list[str], rows: int | None = None) -> np.ndarray:
    """Target ids (rows, max_decode_len) of each text, by the run's beam search."""
    return np.asarray(self.call("translate", *self.frame(texts, rows)))[: len(texts)]

  def translate(self, texts: list[str]) -> list[str]:
    return [self.detokenize(row) for row in self.translate_ids(texts)]

  def detokenize(self, ids) -> str:
    """Text of the ids up to the first eos."""
    ids = list(ids)
    if self.meta["eos_id"] in ids:
      ids = ids[: ids.index(self.meta["eos_id"])]
    return self.tokenizer.decode(ids)


def probabilities(logits: np.ndarray) -> np.ndarray:
  """Softmax over classes; a single output is a sigmoid's logit of class 1."""
  logits = np.asarray(logits, np.float64)
  if logits.shape[-1] == 1:
    p = 1 / (1 + np.exp(-logits))
    return np.concatenate([1 - p, p], axis=-1)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def load(directory) -> Bundle:
  """The bundle in `directory`, its functions deserialised and jitted (one compile per
  batch shape)."""
  with open(os.path.join(directory, "bundle.json")) as f:
    spec = json.load(f)
  functions = {}
  for name in spec["functions"]:
    with open(os.path.join(directory, "functions", f"{name}.jax"), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    functions[name] = jax.jit(exported.call)
  params = jax.tree.map(
    jnp.asarray, unflatten(read_safetensors(os.path.join(directory, "params.safetensors")))
  )
  with open(os.path.join(directory, "model_card.json")) as f:
    card = json.load(f)
  tokenizer_dir = os.path.join(directory, "tokenizer")  # none for models of numbers
  tokenizer = Tokenizer(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
  return Bundle(spec["task"], spec["meta"], params, functions, tokenizer, info=card)
