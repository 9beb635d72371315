"""`bigflax plan`: will a config fit a TPU slice, and how fast and costly will it be?

The trainer's own train step (same function, state shardings, mesh rules and jit) is
compiled ahead of time for the slice's devices: libtpu compiles for a named topology with
no TPU present. Memory, FLOPs and collectives are read off that compile; nothing is
allocated. When the config does not fit, the knobs that exist (FSDP over more devices,
remat, microbatches, a smaller batch) are tried and layouts that fit are listed.
"""

import copy
import importlib.util
import math
import os
import re

import flax.linen as nn
import jax

from bigflax import models, run, tasks
from bigflax.plan import hlo
from bigflax.train import chips, loop, partitioning

NO_TPU = (
  "libtpu is not installed, so TPU slices cannot be planned here: "
  'pip install "bigflax[tpu]" (or plan for the devices present: --topology local).'
)


class PlanError(Exception):
  """Reported in one line: a topology or config the planner cannot use."""


def slice_devices(topology: str):
  """(devices, chip, number of chips) of a TPU slice such as 'v5e:4x4', compile-only."""
  if importlib.util.find_spec("libtpu") is None:
    raise PlanError(NO_TPU)
  name, _, shape = topology.partition(":")
  if name not in chips.CHIPS or not re.fullmatch(r"\d+(x\d+)*", shape):
    raise PlanError(
      f"--topology={topology!r}: give CHIP:SHAPE with CHIP one of "
      f"{sorted(chips.CHIPS)} (e.g. v5e:4x4, v5p:2x2x2), or 'local'."
    )
  # libtpu reads these when it starts: skip the GCE metadata lookups (and their warnings)
  # of a machine that is not a TPU VM, and do not insist on owning the TPU lockfile,
  # which any other JAX process on the machine may hold.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{name}-{math.prod(map(int, shape.split('x')))}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies

  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  except Exception as e:  # libtpu reports a bad shape as a runtime error
    raise PlanError(f"--topology={topology!r}: {str(e).splitlines()[0]}") from None
  return devices, chips.CHIPS[name], math.prod(int(s) for s in shape.split("x"))


def local_devices():
  """The devices present, with what is known of their memory and speed."""
  devices = jax.devices()
  kind = devices[0].device_kind
  chip = chips.chip(kind)
  if chip is None:
    stats = devices[0].memory_stats() or {}
    memory = stats.get("bytes_limit") or (
      os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / len(devices)
    )
    chip = chips.Chip(kind, memory, chips.peak_flops(kind), 0.0, 0.0)
  return devices, chip, len(devices)


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings."""
  return sum(
    math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
  )


def compile_step(config, devices):
  """Compiles the trainer's train step for `devices`: (compiled, abstract state, mesh,
  None), or (None, abstract state, mesh, the compiler's message) when the TPU compiler
  finds that the step does not fit in HBM."""
  mesh = partitioning.make_mesh(config.mesh.shape, devices=devices)
  task = tasks.get(config.task.name)
  layout = run.plan_step_layout(config, task, mesh)
  batch = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=layout.batch_sharding),
    task.batch_spec(config),
  )
  jitted = loop.jit_train_step(layout.train_step, layout.shardings, layout.batch_sharding)
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.rules_tuple(config.mesh.rules)):
    lowered = jitted.lower(layout.abstract_state, batch, None)
    try:
      return lowered.compile(), layout.abstract_state, mesh, None
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      return (None, layout.abstract_state, mesh, str(e).split("RESOURCE_EXHAUSTED:")[-1].strip())


def _gigabytes(message: str, what: str) -> float | None:
  """Bytes of '... {what} (20.15G) ...' in a TPU compiler message."""
  found = re.search(re.escape(what) + r"\s*\(([\d.]+)([KMGT])", message)
  if not found:
    return None
  return float(found.group(1)) * 2 ** (10 * "KMGT".index(found.group(2)) + 10)


def step_flops(config, num_params: int, tokens_per_step: int) -> dict:
  """FLOPs of one training step. `model`: the models' count (6N plus attention over the
  whole T x T score matrix, PaLM's appendix B convention), what MFU divides by;
  `model_causal`: attention halved for the causal mask (MaxText's convention since its
  PR #1988); `executed`: `model` plus remat's recomputation in the backward pass (full:
  the forward again, 8N in all; dots_no_batch: attention's forward), what the roofline
  times."""
  per_token = models.flops_per_token(config.model, num_params, config.data.seq_len)
  attention = per_token - models.flops_per_token(config.model, num_params, 0)
  recomputed = {"full": per_token / 3, "dots_no_batch": attention / 3}.get(
    config.model.get("remat", "none"), 0.0
  )
  return {
    "model": per_token * tokens_per_step,
    "model_causal": (per_token - attention / 2) * tokens_per_step,
    "executed": (per_token + recomputed) * tokens_per_step,
  }


def measure(config, devices, chip, num_chips) -> dict:
  """The plan of one layout: parameters, memory, FLOPs, collectives, roofline."""
  compiled, state, mesh, out_of_memory = compile_step(config, devices)
  num_devices = len(devices)
  device_hbm = chip.hbm_bytes * num_chips / num_devices  # v4: two devices (cores) a chip
  device_flops = chip.peak_flops * num_chips / num_devices
  params_bytes, opt_bytes = per_device_bytes(state.params), per_device_bytes(state.opt_state)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  per_module = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in state.params.items()}
  task = tasks.get(config.task.name)
  tokens_per_step = config.data.global_batch_size * task.tokens_per_example(config)
  flops = step_flops(config, num_params, tokens_per_step)
  report = {
    "chip": chip.name,
    "devices": num_devices,
    "chips": num_chips,
    "mesh": {k: int(v) for k, v in mesh.shape.items()},
    "remat": config.model.get("remat", "none"),
    "microbatches": config.train.microbatches,
    "global_batch_size": config.data.global_batch_size,
    "tokens_per_step": tokens_per_step,
    "parameters": {"total": int(num_params), **{k: int(v) for k, v in per_module.items()}},
  }
  if out_of_memory:  # the compiler's verdict; it stops before a full memory analysis
    temporaries = _gigabytes(out_of_memory, "temporaries")
    report.update(
      memory_per_device={
        "parameters": params_bytes,
        "optimizer_state": opt_bytes,
        "temporaries": temporaries,
        "capacity": device_hbm,
        "total": params_bytes + opt_bytes + (temporaries or 0),
      },
      fits=False,
      compiler_message=out_of_memory.splitlines()[0],
      flops_per_step=dict(flops, compiled=None),
      collectives={},
      roofline=None,
    )
    return report

  memory = compiled.memory_analysis()
  total = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
    + memory.generated_code_size_in_bytes
  )
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  compiled_flops = float(cost.get("flops", 0.0)) * num_devices
  bytes_accessed = float(cost.get("bytes accessed", 0.0))
  comms = hlo.collectives(compiled.as_text())
  # Ring algorithms: an all-reduce moves about twice its buffer over each device's links,
  # the others about once.
  ici_bytes = sum(v["bytes"] * (2 if op == "all-reduce" else 1) for op, v in comms.items())

  times = {
    "compute": max(flops["executed"], compiled_flops) / num_devices / device_flops,
    "memory": bytes_accessed / (chip.hbm_bandwidth * num_chips / num_devices)
    if chip.hbm_bandwidth
    else 0.0,
    "collectives": ici_bytes / (chip.ici_bandwidth * num_chips / num_devices)
    if chip.ici_bandwidth and num_devices > 1
    else 0.0,
  }
  step_time = max(times.values())
  report.update(
    memory_per_device={
      "parameters": params_bytes,
      "optimizer_state": opt_bytes,
      "other_arguments": memory.argument_size_in_bytes - params_bytes - opt_bytes,
      "arguments": memory.argument_size_in_bytes,
      "outputs": memory.output_size_in_bytes,
      "aliased": memory.alias_size_in_bytes,
      "temporaries": memory.temp_size_in_bytes,
      "generated_code": memory.generated_code_size_in_bytes,
      "total": total,
      "capacity": device_hbm,
    },
    fits=total <= device_hbm,
    flops_per_step=dict(flops, compiled=compiled_flops),
    collectives=comms,
    roofline={
      "seconds": times,
      "step_time": step_time,
      "tokens_per_second": tokens_per_step / step_time if step_time else None,
      "mfu_bound": flops["model"] / (step_time * device_flops * num_devices) if step_time else None,
    },
  )
  return report


FSDP = dict(data=1, fsdp=-1, tensor=1)
REMATS = ("none", "dots", "dots_no_batch", "full")  # ever less saved for the backward pass


def candidates(config, num_devices):
  """Layouts to try when `config` does not fit, least change first, as dotted config
  overrides: FSDP over every device, then microbatches, then stronger remat; a smaller
  batch last, since it changes the optimisation."""
  batch = config.data.global_batch_size
  remat = config.model.get("remat", "none")
  remats = [remat] + [r for r in ("dots_no_batch", "full") if REMATS.index(r) > REMATS.index(remat)]
  layouts = []
  for remat in remats:
    for microbatches in (1, 2, 4, 8, 16):
      if batch % microbatches == 0 and (batch // microbatches) % num_devices == 0:
        layouts.append(
          {"mesh.shape": FSDP, "model.remat": remat, "train.microbatches": microbatches}
        )
  for divisor in (2, 4, 8):
    if batch % divisor == 0 and (batch // divisor) % num_devices == 0:
      layouts.append(
        {"mesh.shape": FSDP, "model.remat": remats[-1], "data.global_batch_size": batch // divisor}
      )
  return layouts


def with_overrides(config, overrides: dict):
  config = copy.deepcopy(config)
  with config.unlocked():
    for key, value in overrides.items():
      section, field = key.split(".")
      if field == "shape":
        config[section][field] = dict(value)
      else:
        config[section][field] = value
  return config


def same_layout(config, overrides) -> bool:
  current = {
    "mesh.shape": {k: int(v) for k, v in config.mesh.shape.items()},
    "model.remat": config.model.get("remat", "none"),
    "train.microbatches": config.train.microbatches,
  }
  return all(current.get(k) == v for k, v in overrides.items())


def state_per_device(config, devices) -> int:
  """Bytes of parameters and optimizer state one device holds: from abstract shapes and
  shardings, nothing compiled."""
  mesh = partitioning.make_mesh(config.mesh.shape, devices=devices)
  state = run.plan_step_layout(config, tasks.get(config.task.name), mesh).abstract_state
  return per_device_bytes(state.params) + per_device_bytes(state.opt_state)


def suggest(config, devices, chip, num_chips, limit=3, max_compiles=8, measured=None):
  """Up to `limit` candidate layouts that fit, each compiled for real, listed least change
  first. The strongest microbatch layout (strongest remat, most microbatches) is compiled
  first, then the others in candidate order: it is the likeliest to fit, so one compile
  finds a first suggestion, and when it does not fit no other microbatch layout is tried
  (each needs at least as much memory; a full compile of a near miss takes minutes). A
  layout whose temporaries, scaled down from an out-of-memory compile with fewer
  microbatches, would clearly still not fit is skipped without compiling."""
  layouts = candidates(config, len(devices))
  capacity = chip.hbm_bytes * num_chips / len(devices)
  # Every candidate is FSDP over all devices: if its state alone overflows, none fits.
  if state_per_device(with_overrides(config, {"mesh.shape": FSDP}), devices) > capacity:
    return []
  microbatched = [layout for layout in layouts if "train.microbatches" in layout]
  strongest = microbatched[-1:]
  found, compiles, out_of_memory = [], 0, {}  # remat -> (microbatches, temporaries, free)
  if (
    measured
    and measured["memory_per_device"].get("temporaries")
    and same_layout(config, {"mesh.shape": FSDP})
  ):
    memory = measured["memory_per_device"]
    out_of_memory[measured["remat"]] = (
      measured["microbatches"],
      memory["temporaries"],
      memory["capacity"] - memory["parameters"] - memory["optimizer_state"],
    )
  strongest_fails = bool(strongest) and same_layout(config, strongest[0])
  for overrides in strongest + [layout for layout in layouts if layout not in strongest]:
    if same_layout(config, overrides) or compiles == max_compiles:
      continue
    if strongest_fails and overrides in microbatched:
      continue
    remat, microbatches = overrides["model.remat"], overrides.get("train.microbatches")
    if remat in out_of_memory and microbatches:
      seen, temporaries, free = out_of_memory[remat]
      if temporaries * seen / microbatches > 1.3 * free:
        continue
    candidate = with_overrides(config, overrides)
    compiles += 1
    try:
      result = measure(candidate, devices, chip, num_chips)
    except Exception:  # a layout the model or XLA refuses is not a suggestion
      continue
    memory = result["memory_per_device"]
    if result["fits"]:
      changed = {k: v for k, v in overrides.items() if not same_layout(config, {k: v})}
      found.append(
        (
          layouts.index(overrides),
          {
            "overrides": flags_of(changed),
            "memory_per_device": memory["total"],
            "step_time": result["roofline"]["step_time"],
          },
        )
      )
      if len(found) == limit:
        break
    else:
      strongest_fails |= overrides in strongest
      if memory.get("temporaries") and microbatches:
        free = memory["capacity"] - memory["parameters"] - memory["optimizer_state"]
        out_of_memory[remat] = (microbatches, memory["temporaries"], free)
  return [suggestion for _, suggestion in sorted(found, key=lambda x: x[0])]


def flags_of(overrides: dict) -> list[str]:
  flags = []
  for key, value in overrides.items():
    if isinstance(value, dict):
      flags += [f"--config.{key}.{k}={v}" for k, v in value.items()]
    else:
      flags.append(f"--config.{key}={value}")
  return flags


def plan(
  config,
  topology: str,
  tokens: float | None = None,
  price_per_chip_hour: float | None = None,
  suggestions: int = 3,
) -> dict:
  """The whole report for `config` on `topology` ('v5e:4x4', ... or 'local')."""
  if config.get("distill") and config.distill.get("teacher"):
    raise PlanError(
      "plan does not model a distillation teacher (distill.teacher); plan "
      "the student with --config.distill.teacher=''."
    )
  task = tasks.get(config.task.name)
  if task.batch_spec is None:
    raise PlanError(
      f"task {config.task.name!r} has no batch_spec(config); the planner "
      f"needs the shapes of a batch."
    )
  if topology == "local":
    devices, chip, num_chips = local_devices()
  else:
    devices, chip, num_chips = slice_devices(topology)
  try:
    report = measure(config, devices, chip, num_chips)
  except ValueError as e:  # a mesh the slice cannot hold, an indivisible batch
    raise PlanError(str(e).splitlines()[0]) from None
  report["topology"] = topology
  if tokens and report["roofline"]:
    step_time = report["roofline"]["step_time"]
    steps = math.ceil(tokens / report["tokens_per_step"])
    report["budget"] = {"tokens": tokens, "steps": steps, "hours": steps * step_time / 3600}
    if price_per_chip_hour:
      report["budget"]["price_per_chip_hour"] = price_per_chip_hour
      report["budget"]["cost"] = report["budget"]["hours"] * num_chips * price_per_chip_hour
  if not report["fits"]:
    report["suggestions"] = suggest(config, devices, chip, num_chips, suggestions, measured=report)
    state = (
      report["memory_per_device"]["parameters"] + report["memory_per_device"]["optimizer_state"]
    ) * len(devices)
    report["min_devices_for_state"] = math.ceil(state / report["memory_per_device"]["capacity"])
  return report
