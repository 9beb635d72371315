"""Training speed of bigflax's own train step against the same GPT in plain PyTorch and in
nanodo (Google DeepMind's minimal Flax decoder).

  python scripts/bench_train.py [--steps 10] [--dtype bfloat16] [--no-torch]
      [--nanodo PATH] [--out PATH]

The bigflax side is exactly what `bigflax train` runs: configs.base(), models.build,
run.step_layout (the trainer's step over lm's loss), jitted with the loop's shardings and
donation. The PyTorch side is a nanoGPT-style model with the same parameter count,
AdamW and clipping. The nanodo side is nanodo's own TransformerDo, imported from a nanodo
checkout (`--nanodo`, e.g. `git clone https://github.com/google-deepmind/nanodo`), under
a jitted optax AdamW + clipping step; it has no biases, so it holds 25,728 parameters
fewer at the reference shape (both counts are printed). All see the same random tokens;
MFU is against this machine's
measured f32 matmul rate with the trainer's FLOPs formula (so bfloat16 on a CPU with
native bf16 dots can exceed 100%). Run it on an otherwise idle machine: a background job
on a 2-core box easily moves the numbers by 50%. On Linux,
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 backs the step's large buffers with transparent huge
pages (see docs/reproduction.md).
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time

import flax
from flax.linen import logical_axis_rules
import jax
import jax.numpy as jnp
import numpy as np

from bigflax import configs, models, run, tasks
from bigflax.models import gpt
from bigflax.train import loop, partitioning
from bigflax.train import state as state_lib


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--embed_dim", type=int, default=384)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument(
    "--warmup", type=int, default=2, help="untimed steps (torch.compile compiles in the first)"
  )
  p.add_argument(
    "--dtype",
    choices=("float32", "bfloat16"),
    default="float32",
    help="compute dtype (parameters and optimizer stay float32)",
  )
  p.add_argument(
    "--torch",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also time the PyTorch peer",
  )
  p.add_argument("--torch_compile", action="store_true", help="torch.compile the peer")
  p.add_argument(
    "--nanodo",
    default="",
    metavar="PATH",
    help="a nanodo checkout (the folder holding nanodo/model.py): also time nanodo's decoder",
  )
  p.add_argument("--out", default="bench_train.json")
  return p.parse_args()


def matmul_peak(n=2048, repeats=20) -> float:
  """Best-of f32 GFLOP/s of a jitted n x n matmul: the roofline MFU is measured against."""
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  times = []
  for _ in range(repeats + 1):  # the first call compiles
    start = time.perf_counter()
    jax.block_until_ready(mm(x, x))
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times[1:]) / 1e9


def cpu_busy(seconds=1.0) -> float:
  """Fraction of the machine's CPU time others used over `seconds` (0 off Linux)."""

  def read():  # (idle + iowait, total) jiffies since boot
    with open("/proc/stat") as f:
      values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)

  if not os.path.exists("/proc/stat"):
    return 0.0
  (idle0, total0), _, (idle1, total1) = read(), time.sleep(seconds), read()
  return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def cpu_model() -> str:
  try:
    return next(
      line.split(":", 1)[1].strip()
      for line in open("/proc/cpuinfo")
      if line.startswith("model name")
    )
  except (OSError, StopIteration):
    return platform.processor()


def bench_bigflax(args, tokens):
  config = configs.base()
  config.model = dict(
    name="gpt",
    vocab_size=args.vocab,
    num_layers=args.layers,
    num_heads=args.heads,
    embed_dim=args.embed_dim,
    mlp_dim=4 * args.embed_dim,
    max_len=args.seq_len,
    position="learned",
    tie_embeddings=True,
    dtype=args.dtype,
  )
  config.data.seq_len, config.data.global_batch_size = args.seq_len, args.batch
  config.train.num_steps = args.warmup + args.steps + 1
  config.optim.update(warmup_steps=0, decay="constant")  # constant lr 1e-3, as torch's side
  model = models.build(config.model)
  mesh = partitioning.make_mesh(config.mesh.shape)
  rules = partitioning.rules_tuple(config.mesh.rules)
  layout = run.step_layout(config, tasks.get(config.task.name), model, mesh)
  state = state_lib.create(
    layout.init, layout.optimizer, jax.random.key(config.seed), layout.shardings
  )
  batch = partitioning.global_batch(
    {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, layout.batch_sharding
  )
  train_step = loop.jit_train_step(layout.train_step, layout.shardings, layout.batch_sharding)
  with jax.set_mesh(mesh), logical_axis_rules(rules):  # as loop.train
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, None).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.warmup + args.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batch, None)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
  num_params = state_lib.num_params(state.params)
  flops = gpt.flops_per_token(config.model, num_params, args.seq_len)
  return dict(
    times=times[args.warmup :],
    compile_s=compile_s,
    params=num_params,
    loss=float(metrics["loss"]),
    flops_per_token=flops,
  )


def bench_torch(args, tokens, num_threads):
  import torch
  from torch import nn
  import torch.nn.functional as F

  torch.manual_seed(0)
  torch.set_num_threads(num_threads)
  d, h, t = args.embed_dim, args.heads, args.seq_len

  class Block(nn.Module):  # nanoGPT: pre-LN, fused qkv, GELU(tanh), SDPA causal attention
    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
      self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
      self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
      b = x.shape[0]
      q, k, v = (
        z.view(b, t, h, d // h).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).split(d, dim=2)
      )
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
      return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.wte, self.wpe = nn.Embedding(args.vocab, d), nn.Embedding(t, d)
      self.blocks = nn.ModuleList(Block() for _ in range(args.layers))
      self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
      x = self.wte(idx) + self.wpe(torch.arange(t))
      for block in self.blocks:
        x = block(x)
      return self.ln_f(x) @ self.wte.weight.T  # tied head

  model = GPT()
  with torch.no_grad():  # GPT-2 init, so the loss starts near log(vocab) as bigflax's does
    for name, p in model.named_parameters():
      if p.dim() == 2:
        p.normal_(0.0, 0.02)
      elif "ln" not in name:
        p.zero_()
  num_params = sum(p.numel() for p in model.parameters())
  # Same decay mask as bigflax's optim.no_decay: matrices decay, biases/norms/wpe don't.
  decay = [p for n, p in model.named_parameters() if p.dim() == 2 and n != "wpe.weight"]
  no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "wpe.weight"]
  groups = [dict(params=decay, weight_decay=0.1), dict(params=no_decay, weight_decay=0.0)]
  try:
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)
    kind = "fused"
  except (RuntimeError, ValueError):
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    kind = "foreach"
  forward = torch.compile(model) if args.torch_compile else model
  x = torch.from_numpy(tokens[:, :-1]).long()
  y = torch.from_numpy(tokens[:, 1:]).long()
  autocast = torch.autocast("cpu", torch.bfloat16, enabled=args.dtype == "bfloat16")

  def step():
    with autocast:
      loss = F.cross_entropy(forward(x).float().view(-1, args.vocab), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  times = []
  for _ in range(args.warmup + args.steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  compile_s = times[0] if args.torch_compile else 0.0  # the first warmup step compiles
  return dict(
    times=times[args.warmup :],
    compile_s=compile_s,
    params=num_params,
    loss=loss.item(),
    optimizer=f"AdamW({kind})",
    version=torch.__version__,
  )


def bench_nanodo(args, tokens):
  """nanodo's TransformerDo at the reference shape, one jitted optax AdamW step (the same
  lr, betas, eps, decay on matrices and clipping as the other two), parameters donated."""
  import sys

  import optax

  sys.path.insert(0, os.path.abspath(args.nanodo))
  from nanodo import model as nanodo_model  # pylint: disable=import-outside-toplevel

  dtype = jnp.dtype(args.dtype)
  config = nanodo_model.DoConfig(
    D=args.embed_dim,
    H=args.heads,
    L=args.seq_len,
    N=args.layers,
    V=args.vocab,
    F=4 * args.embed_dim,
    dtype=dtype,
    fsdp_enabled=False,
  )
  model = nanodo_model.TransformerDo(config)
  inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
  params = model.init(jax.random.key(0), inputs)
  optimizer = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(
      1e-3,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,
      mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
    ),
  )
  opt_state = optimizer.init(params)

  def loss_fn(params):
    logits = model.apply(params, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.warmup + args.steps):
    start = time.perf_counter()
    params, opt_state, loss = jax.block_until_ready(compiled(params, opt_state))
    times.append(time.perf_counter() - start)
  return dict(
    times=times[args.warmup :],
    compile_s=compile_s,
    params=sum(x.size for x in jax.tree.leaves(params)),
    loss=float(loss),
  )


def summarize(result, tokens_per_step, flops_per_step, peak_gflops):
  s_per_step = statistics.median(result.pop("times"))
  return dict(
    result,
    s_per_step=s_per_step,
    steps_per_s=1 / s_per_step,
    tokens_per_s=tokens_per_step / s_per_step,
    mfu=flops_per_step / s_per_step / (peak_gflops * 1e9),
  )


def main():
  args = parse_args()
  # The cores this process may run on (taskset, cgroups), not the machine's.
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  busy = cpu_busy()
  if busy > 0.1:  # every timing below assumes an otherwise idle machine
    print(
      f"warning: other processes kept {busy:.0%} of the CPU busy just now; the "
      f"timings will be slow and noisy."
    )
  if args.torch and importlib.util.find_spec("torch") is None:
    print("torch is not importable: skipping the PyTorch comparison.")
    args.torch = False
  if args.nanodo and not os.path.exists(os.path.join(args.nanodo, "nanodo", "model.py")):
    print(
      f"--nanodo {args.nanodo!r} holds no nanodo/model.py: skipping the nanodo "
      f"comparison (git clone https://github.com/google-deepmind/nanodo)."
    )
    args.nanodo = ""
  tokens = np.random.default_rng(0).integers(
    0, args.vocab, (args.batch, args.seq_len + 1), dtype=np.int32
  )
  peak = matmul_peak()

  print(f"timing bigflax: compile, {args.warmup} + {args.steps} steps", flush=True)
  results = {"bigflax": bench_bigflax(args, tokens)}
  if args.torch:
    peer = "torch.compile" if args.torch_compile else "torch eager"
    print(f"timing {peer}: {args.warmup} + {args.steps} steps", flush=True)
    results[peer] = bench_torch(args, tokens, cores)
    assert results[peer]["params"] == results["bigflax"]["params"], (
      f"parameter counts differ: torch {results[peer]['params']:,} vs bigflax "
      f"{results['bigflax']['params']:,}"
    )
  if args.nanodo:
    print(f"timing nanodo: compile, {args.warmup} + {args.steps} steps", flush=True)
    results["nanodo"] = bench_nanodo(args, tokens)
  # Best of before and after: one measurement can land on a moment of background load.
  peak = max(peak, matmul_peak())
  tokens_per_step = args.batch * args.seq_len
  flops_per_step = results["bigflax"]["flops_per_token"] * tokens_per_step
  rows = {name: summarize(r, tokens_per_step, flops_per_step, peak) for name, r in results.items()}

  print(
    f"{cores} cores ({cpu_model()}); jitted f32 matmul peak {peak:.1f} GFLOP/s\n"
    f"{args.layers} layers, d={args.embed_dim}, {args.heads} heads, seq "
    f"{args.seq_len}, batch {args.batch}, vocab {args.vocab}, {args.dtype}; median of "
    f"{args.steps} steps; {flops_per_step / 1e9:.1f} GFLOP/step\n"
  )
  # bigflax's step time over each row's: below 1 means bigflax is the faster.
  ratios = {
    f"bigflax/{name}": rows["bigflax"]["s_per_step"] / r["s_per_step"]
    for name, r in rows.items()
    if name != "bigflax"
  }
  print(
    f"{'':14}{'s/step':>9}{'steps/s':>9}{'tokens/s':>10}{'MFU':>8}{'compile s':>11}"
    f"{'params':>13}{'loss':>8}{'bigflax/this':>14}"
  )
  for name, r in rows.items():
    ratio = ratios.get(f"bigflax/{name}", 1.0)
    print(
      f"{name:14}{r['s_per_step']:9.3f}{r['steps_per_s']:9.3f}"
      f"{r['tokens_per_s']:10,.0f}{r['mfu']:8.1%}{r['compile_s']:11.1f}"
      f"{r['params']:13,}{r['loss']:8.3f}{ratio:13.2f}x"
    )
  report = dict(
    args=vars(args),
    rows=rows,
    flops_per_step=flops_per_step,
    matmul_peak_gflops=peak,
    machine=dict(
      cpus=cores,
      cpu=cpu_model(),
      busy_before_start=busy,
      device_kind=jax.devices()[0].device_kind,
      jax=jax.__version__,
      flax=flax.__version__,
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      # glibc.malloc.hugetlb=1 moves the step time by ~15% (docs/reproduction.md)
      glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
    ),
  )
  report["step_time_ratios"] = ratios
  if args.torch:
    report["machine"]["torch"] = rows[peer].pop("version")
  for name, ratio in ratios.items():
    print(f"{name} step time = {ratio:.2f}x")
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
