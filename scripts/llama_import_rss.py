"""Peak memory of importing a Llama-3.2-1B-shaped HF checkpoint (random bfloat16 weights,
several safetensors shards): the import reads one tensor at a time into the float32
parameters, so the peak should be the parameters plus one tensor, not plus the checkpoint.

  python scripts/llama_import_rss.py --dir /tmp/llama1b [--shard_gb 0.5] [--keep]

Writes the checkpoint (HF tensor names, config.json of experiments/llama3_2_1b.py) shard
by shard without transformers, then imports it in a fresh process and prints that
process's peak RSS against the sizes of the checkpoint and of the float32 parameters.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_checkpoint(directory: str, shard_bytes: int) -> int:
  """A random bf16 Llama-3.2-1B in `directory`; returns the checkpoint's bytes."""
  from bigflax.interop import hf, llama  # pylint: disable=import-outside-toplevel
  from experiments import llama3_2_1b  # pylint: disable=import-outside-toplevel

  config = dict(llama3_2_1b.get_config().model)
  shapes = llama.param_shapes(config)
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  # Shard by shard, so this process holds one shard at a time.
  groups, size = [[]], 0
  for path, shape in shapes.items():
    nbytes = 2 * int(np.prod(shape))
    if groups[-1] and size + nbytes > shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append((path, shape))
    size += nbytes
  weight_map, total = {}, 0
  for i, group in enumerate(groups):
    name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    tensors = {}
    for path, shape in group:
      x = rng.standard_normal(hf.hf_shape(path, shape), np.float32) * 0.02
      tensors[hf.hf_name(path, llama.MODULES, "Llama")] = x.astype(hf.DTYPES["bfloat16"])
    hf.save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, name))
    total += sum(t.nbytes for t in tensors.values())
  with open(os.path.join(directory, hf.INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  hf_config = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "rope_parameters": {
      "rope_type": "llama3",
      "rope_theta": 500000.0,
      "factor": 32.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192,
    },
    "dtype": "bfloat16",
  }
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  return total


def import_and_report(directory: str) -> None:
  """Runs in its own process: imports, prints counts and peak RSS as JSON."""
  from bigflax import interop  # pylint: disable=import-outside-toplevel

  config, params = interop.import_checkpoint(directory)
  import jax  # pylint: disable=import-outside-toplevel

  leaves = jax.tree.leaves(params)
  print(
    json.dumps(
      {
        "parameters": sum(x.size for x in leaves),
        "params_gb": sum(x.nbytes for x in leaves) / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "num_layers": config["num_layers"],
      }
    )
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dir", default="/tmp/llama1b")
  parser.add_argument("--shard_gb", type=float, default=0.5)
  parser.add_argument("--keep", action="store_true", help="keep the checkpoint")
  parser.add_argument("--import_only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.import_only:
    import_and_report(args.dir)
    return
  checkpoint_bytes = write_checkpoint(args.dir, int(args.shard_gb * 1e9))
  shards = len([f for f in os.listdir(args.dir) if f.endswith(".safetensors")])
  out = subprocess.run(
    [sys.executable, __file__, "--dir", args.dir, "--import_only"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  report = json.loads(out.strip().splitlines()[-1])
  report.update(checkpoint_gb=checkpoint_bytes / 1e9, shards=shards)
  print(json.dumps(report, indent=2))
  print(
    f"peak RSS {report['peak_rss_gb']:.2f} GB for {report['params_gb']:.2f} GB of float32 "
    f"parameters from a {report['checkpoint_gb']:.2f} GB bf16 checkpoint in {shards} "
    f"shards (two copies would be {report['params_gb'] + report['checkpoint_gb']:.2f} GB)"
  )
  if not args.keep:
    shutil.rmtree(args.dir)


if __name__ == "__main__":
  main()
