"""Input pipeline speed (prepared shards -> step-indexed batches) against what training
consumes: gpt_tiny's train step on this CPU, and GPT-2 medium on a v5e 4x4 slice (16
chips, 4 hosts) as `bigflax plan` estimates it, per host.

  python scripts/bench_data.py [--config experiments/gpt_site_packages.py:slice]
      [--work /tmp/bench_data] [--steps 200] [--plan] [--out bench_data.json]

Prepares the config's corpora twice (windows of 257 and 1025 tokens; a rerun skips what is
done), then times `iterate()` (background threads, as training reads it) of host 0's rows.
Without --plan the v5e figure is the planner's from docs/planning.md (a libtpu compile of
GPT-2 medium takes ~100 s on 2 busy cores); with --plan it is computed here.
"""

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import time

import numpy as np

# The checkout (for experiments/ and its bigflax) and this folder (bench_train).
sys.path[:0] = [
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  os.path.dirname(os.path.abspath(__file__)),
]
# pylint: disable=wrong-import-position
import bench_train  # noqa: E402

from bigflax.data import prepare, tokenizers  # noqa: E402
from bigflax.plan import planner as plan  # noqa: E402
from bigflax.tasks import lm  # noqa: E402

# docs/planning.md's plan of gpt2_medium.py on v5e:4x4: 512 x 1024 tokens a step, roofline
# step 403 ms.
README_V5E_TOKENS_PER_SECOND = 512 * 1024 / 0.403
V5E_HOSTS = 4


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="experiments/gpt_site_packages.py:slice")
  p.add_argument("--work", default="/tmp/bench_data", help="where the shards are prepared")
  p.add_argument("--steps", type=int, default=200, help="timed steps of the pipeline")
  p.add_argument("--plan", action="store_true", help="run the v5e planner here (libtpu)")
  p.add_argument("--out", default="bench_data.json")
  return p.parse_args()


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(arg or None)


def prepared(spec, work, seq_len):
  """The config's corpora prepared with windows of seq_len + 1 tokens."""
  config = load_config(spec)
  config.data.seq_len = seq_len
  config.data.prepared_dir = os.path.join(work, f"seq{seq_len}")
  with contextlib.redirect_stdout(io.StringIO()):
    prepare.prepare(config)
  return config


def pipeline_tokens_per_second(config, global_batch, hosts, steps) -> float:
  """Tokens/s host 0 of `hosts` gets from iterate(): its rows of each global batch."""
  config.data.global_batch_size = global_batch
  batches = lm.make_lm_batches(
    config.data, tokenizers.ByteTokenizer(), "train", process_index=0, process_count=hosts
  )
  iterator = batches.iterate(start_step=1000)
  next(iterator)  # threads started, files opened
  start = time.perf_counter()
  tokens = sum(next(iterator)["inputs"].size for _ in range(steps))
  return tokens / (time.perf_counter() - start)


def gpt_tiny_tokens_per_second() -> float:
  """gpt_tiny's train step on this CPU (bench_train's timing of the trainer's own step)."""
  config = load_config("experiments/gpt_tiny.py")
  m = config.model
  args = argparse.Namespace(
    layers=m.num_layers,
    embed_dim=m.embed_dim,
    heads=m.num_heads,
    seq_len=config.data.seq_len,
    batch=config.data.global_batch_size,
    vocab=384,
    dtype="float32",
    warmup=2,
    steps=5,
  )  # 259 bytes -> 384
  tokens = np.random.default_rng(0).integers(
    0, args.vocab, (args.batch, args.seq_len + 1), dtype=np.int32
  )
  result = bench_train.bench_bigflax(args, tokens)
  return args.batch * args.seq_len / min(result["times"])


def v5e_tokens_per_second(run_plan: bool) -> tuple[float, str]:
  if not run_plan:
    return README_V5E_TOKENS_PER_SECOND, "README's plan table"
  config = load_config("experiments/gpt2_medium.py")
  report = plan.plan(config, "v5e:4x4")
  return report["roofline"]["tokens_per_second"], "bigflax plan, computed here"


def main():
  args = parse_args()
  tiny = prepared(args.config, args.work, 256)
  medium = prepared(args.config, args.work, 1024)
  rows = []
  train_tiny = gpt_tiny_tokens_per_second()
  pipe_tiny = pipeline_tokens_per_second(tiny, 16, 1, args.steps)
  rows.append(
    ("gpt_tiny, this CPU, 1 host, batch 16 x 256", pipe_tiny, train_tiny, "measured train step")
  )
  v5e, source = v5e_tokens_per_second(args.plan)
  pipe_medium = pipeline_tokens_per_second(medium, 512, V5E_HOSTS, max(args.steps // 4, 20))
  rows.append(
    ("gpt2_medium, v5e 4x4, host 0 of 4, 128 of 512 x 1024", pipe_medium, v5e / V5E_HOSTS, source)
  )
  print(
    "| case | pipeline tokens/s per host | training tokens/s per host | ratio | "
    "training figure |\n|---|---|---|---|---|"
  )
  for name, pipe, train, where in rows:
    print(f"| {name} | {pipe:,.0f} | {train:,.0f} | {pipe / train:.1f}x | {where} |")
  with open(args.out, "w") as f:
    json.dump(
      [
        {
          "case": name,
          "pipeline_tokens_per_second": pipe,
          "training_tokens_per_second": train,
          "ratio": pipe / train,
          "source": where,
        }
        for name, pipe, train, where in rows
      ],
      f,
      indent=1,
    )
  failing = [name for name, pipe, train, _ in rows if pipe < 10 * train]
  if failing:
    sys.exit(f"the pipeline is less than 10x the training rate for {failing}")


if __name__ == "__main__":
  main()
