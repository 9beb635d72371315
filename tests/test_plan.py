"""`bigflax plan`: the trainer's own step compiled for a TPU slice this machine does not
have; memory per device checked against arithmetic done here from the sharding rules."""

import importlib.util
import math
import re
import subprocess
import sys

import flax.linen as nn
import jax
from jax.experimental.compilation_cache import compilation_cache
import pytest

from bigflax import configs, run
from bigflax.plan import hlo
from bigflax.plan import planner as plan
from bigflax.plan import report as plan_report
from bigflax.train import chips, loop, optim
from conftest import REPO
from experiments import gpt2_medium, gpt2_small, gpt_tiny, llama2_7b
from helpers import env

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu not installed (pip install bigflax[tpu])",
)


@pytest.fixture(autouse=True, scope="module")
def no_persistent_compilation_cache():
  """A step compiled for a TPU slice without a TPU is written to JAX's persistent cache but
  cannot be read back ("PjRtCompiler must be constructed with a Client"): every later run
  would warn and compile again. The cache (tests/conftest.py) is off for this file."""
  compilation_cache.reset_cache()
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", True)
  compilation_cache.reset_cache()


def tiny_config():
  config = gpt_tiny.get_config()
  config.model.update(
    vocab_size=384, num_layers=2, embed_dim=128, num_heads=4, mlp_dim=256, max_len=64
  )
  config.data.update(seq_len=64, global_batch_size=8)
  config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  return config


def expected_bytes_per_device(config, mesh_sizes):
  """Parameter bytes one device holds, from the logical axis names and the rules table:
  a dimension whose logical name maps to mesh axes is divided by their sizes."""
  model = run.plan_model(config, "cpu")
  boxed = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 64), jax.numpy.int32))
  )
  rules = dict(configs.DEFAULT_RULES)
  total = 0
  for leaf in jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    used, shape = set(), list(leaf.value.shape)
    for i, name in enumerate(leaf.names):
      axes = rules.get(name)
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      if axes and not used & set(axes):
        shape[i] //= math.prod(mesh_sizes[a] for a in axes)
        used |= set(axes)
    total += math.prod(shape) * leaf.value.dtype.itemsize
  return total


@needs_libtpu
def test_tiny_gpt_memory_per_device_matches_the_sharding_rules():
  config = tiny_config()
  devices, chip, chips = plan.slice_devices("v5e:2x2")
  report = plan.measure(config, devices, chip, chips)
  memory = report["memory_per_device"]

  params = expected_bytes_per_device(config, {"data": 1, "fsdp": 4, "tensor": 1})
  assert memory["parameters"] == params
  # AdamW keeps two float32 moments per parameter, laid out like it, plus int32 counters.
  optimizer, _ = optim.make(config.optim, config.train.num_steps)
  counters = [
    x
    for x in jax.tree.leaves(
      jax.eval_shape(
        optimizer.init,
        jax.eval_shape(
          lambda: nn.unbox(
            run.plan_model(config, "cpu").init(
              jax.random.key(0), jax.numpy.zeros((1, 64), jax.numpy.int32)
            )
          )["params"]
        ),
      )
    )
    if x.ndim == 0
  ]
  assert memory["optimizer_state"] == 2 * params + 4 * len(counters)
  # The compiler's own count of argument bytes holds them (plus batch, step, rng and
  # TPU tile padding); the donated state comes back in place.
  assert memory["arguments"] >= memory["parameters"] + memory["optimizer_state"]
  assert memory["aliased"] >= memory["parameters"] + memory["optimizer_state"]
  assert report["fits"] and memory["capacity"] == 16 * 2**30
  total = report["parameters"]["total"]
  assert total == sum(v for k, v in report["parameters"].items() if k != "total")
  assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  # FSDP gathers the weights: the compiled step holds all-gathers.
  assert report["collectives"]["all-gather"]["count"] > 0
  assert report["roofline"]["step_time"] > 0 and 0 < report["roofline"]["mfu_bound"] <= 1


def test_collectives_count_loop_bodies_once_per_iteration():
  text = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[64,128]{1,0} all-gather(f32[16,128]{1,0} %x), dimensions={0}
  %rs = f32[4,128]{1,0} reduce-scatter(f32[16,128]{1,0} %y), replica_groups=[1,4]<=[4], dimensions={0}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"24"}}
  %ar = bf16[1024]{0} all-reduce(bf16[1024]{0} %z), to_apply=%add
}
"""
  found = hlo.collectives(text)
  assert found["all-gather"] == {"count": 24, "bytes": 24 * 64 * 128 * 4}
  assert found["reduce-scatter"] == {"count": 24, "bytes": 24 * 16 * 128 * 4}
  assert found["all-reduce"] == {"count": 1, "bytes": 2048}


def test_a_loop_without_known_trip_count_counts_its_condition_bound():
  """This libtpu's compiled HLO has no known_trip_count: the loop's condition says."""
  text = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[64,128]{1,0} all-gather(f32[16,128]{1,0} %x), dimensions={0}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond.3_spmd, body=%body
}

%cond.3_spmd (p: (s32[], f32[8])) -> pred[] {
  %constant.5 = s32[]{:T(128)} constant(32)
  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%gte, %constant.5), direction=LT, metadata={}
}
"""
  assert hlo.collectives(text)["all-gather"] == {"count": 32, "bytes": 32 * 64 * 128 * 4}


@needs_libtpu
@pytest.mark.slow
def test_scanned_layers_collectives_grow_with_depth_in_a_real_compile():
  """On a real TPU compile, each layer of a scanned stack gathers its weights (FSDP) at
  least once per step: 4 more layers, at least 4 more layers' weights gathered."""
  devices, chip, chips = plan.slice_devices("v5e:2x2")
  gathered = {}
  for layers in (2, 6):
    config = tiny_config()
    config.model.update(num_layers=layers, scan_layers=True)
    gathered[layers] = plan.measure(config, devices, chip, chips)["collectives"]["all-gather"]
  m = tiny_config().model
  layer_params = 4 * m.embed_dim**2 + 2 * m.embed_dim * m.mlp_dim
  assert gathered[6]["count"] > gathered[2]["count"]
  assert gathered[6]["bytes"] - gathered[2]["bytes"] >= 4 * layer_params * 2  # >= bf16


def test_step_flops_state_the_conventions_and_count_remat():
  config = tiny_config()
  m, tokens = config.model, 1000
  attention = 12 * m.num_layers * m.embed_dim * config.data.seq_len  # heads x head_dim = d
  flops = plan.step_flops(config, 10**6, tokens)
  assert flops["model"] - flops["model_causal"] == attention / 2 * tokens
  assert flops["executed"] == flops["model"]  # nothing recomputed without remat
  config.model.remat = "full"  # the forward again: 8N instead of 6N
  assert plan.step_flops(config, 10**6, tokens)["executed"] == 4 / 3 * flops["model"]
  config.model.remat = "dots_no_batch"  # projections saved, attention's forward redone
  assert plan.step_flops(config, 10**6, tokens)["executed"] == (
    flops["model"] + attention / 3 * tokens
  )


def fake_suggest(monkeypatch, fits, state_bytes=0, limit=3):
  """suggest() from remat=dots_no_batch, with compiles replaced by `fits(config)`:
  (suggestions, layouts compiled)."""
  compiled = []

  def measure(config, *_):
    compiled.append((config.model.remat, config.train.microbatches, config.data.global_batch_size))
    return {
      "fits": fits(config),
      "roofline": {"step_time": 1.0},
      "memory_per_device": {"total": 1, "temporaries": None},
    }

  monkeypatch.setattr(plan, "measure", measure)
  monkeypatch.setattr(plan, "state_per_device", lambda *_: state_bytes)
  config = tiny_config()
  config.data.global_batch_size = 64
  config.model.remat = "dots_no_batch"
  found = plan.suggest(config, [None] * 4, chips.CHIPS["v5e"], 4, limit=limit)
  return [" ".join(s["overrides"]) for s in found], compiled


def test_suggest_compiles_the_strongest_layout_first_and_lists_least_change_first(monkeypatch):
  full_2_or_more = lambda c: c.model.remat == "full" and c.train.microbatches >= 2
  found, compiled = fake_suggest(monkeypatch, full_2_or_more, limit=1)
  assert compiled == [("full", 16, 64)]
  assert found == ["--config.model.remat=full --config.train.microbatches=16"]
  found, compiled = fake_suggest(monkeypatch, full_2_or_more)
  assert compiled == (
    [("full", 16, 64)]
    + [("dots_no_batch", n, 64) for n in (2, 4, 8, 16)]
    + [("full", n, 64) for n in (1, 2, 4)]
  )
  assert found == [f"--config.model.remat=full --config.train.microbatches={n}" for n in (2, 4, 16)]


def test_suggest_skips_microbatches_when_the_strongest_does_not_fit(monkeypatch):
  found, compiled = fake_suggest(monkeypatch, lambda c: c.data.global_batch_size <= 16)
  assert compiled == [("full", 16, 64), ("full", 1, 32), ("full", 1, 16), ("full", 1, 8)]
  assert found == [
    "--config.model.remat=full --config.data.global_batch_size=16",
    "--config.model.remat=full --config.data.global_batch_size=8",
  ]
  # Parameters and optimizer state alone overflowing HBM: nothing is compiled.
  found, compiled = fake_suggest(monkeypatch, lambda c: True, state_bytes=17 * 2**30)
  assert found == [] and compiled == []


def test_candidates_never_weaken_remat():
  config = tiny_config()
  config.data.global_batch_size = 64
  config.model.remat = "full"
  layouts = plan.candidates(config, 4)
  assert {layout["model.remat"] for layout in layouts} == {"full"}


@pytest.mark.slow
@needs_libtpu
def test_gpt2_medium_fits_a_v5e_4x4_slice():
  # The experiment as a user launches it: the paper's batch (512 x 1024 tokens) in its
  # default 4 microbatches (one pass needs 20 GiB of temporaries per device).
  config = gpt2_medium.get_config()
  report = plan.plan(config, "v5e:4x4")
  assert report["parameters"]["total"] == 354_823_168  # GPT-2 medium as published
  assert report["devices"] == 16 and report["fits"], report["memory_per_device"]
  # FSDP over 16 devices: a sixteenth of the float32 parameters each.
  assert report["memory_per_device"]["parameters"] == pytest.approx(354_823_168 * 4 / 16, rel=0.01)


@pytest.mark.slow
@needs_libtpu
def test_a_multi_billion_parameter_model_does_not_fit_a_2x2_slice_and_gets_layouts():
  config = gpt2_small.get_config("xl")  # GPT-2 xl (1.6 B) widened to 2.1 B parameters
  config.model.update(embed_dim=2048, num_heads=16, mlp_dim=4 * 2048, num_layers=40)
  config.data.global_batch_size = 64
  report = plan.plan(config, "v5e:2x2", suggestions=1)
  assert report["parameters"]["total"] > 2e9
  assert not report["fits"]
  assert report["suggestions"], "no layout that fits was found"
  for suggestion in report["suggestions"]:
    assert suggestion["memory_per_device"] <= 16 * 2**30
  assert "layouts that fit" in plan_report.format_report(report)


def test_missing_libtpu_is_one_plain_line():
  hide_libtpu = (
    "import importlib.util as u; find = u.find_spec; "
    "u.find_spec = lambda name, *a: None if name == 'libtpu' else find(name, *a); "
    "import sys, runpy; sys.argv = ['bigflax', 'plan', '--config', "
    "'experiments/gpt_tiny.py', '--topology', 'v5e:2x2']; "
    "runpy.run_module('bigflax', run_name='__main__')"
  )
  result = subprocess.run(
    [sys.executable, "-c", hide_libtpu],
    cwd=REPO,
    env=env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert "libtpu is not installed" in result.stderr and "bigflax[tpu]" in result.stderr
  assert "Traceback" not in result.stderr


def test_plan_for_the_local_devices_needs_no_workdir(tmp_path):
  out = tmp_path / "plan.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "bigflax",
      "plan",
      "--config",
      "experiments/gpt_tiny.py",
      "--topology",
      "local",
      "--config.model.num_layers=1",
      "--config.model.embed_dim=64",
      "--config.model.mlp_dim=128",
      "--tokens",
      "1e6",
      "--price_per_chip_hour",
      "2",
      "--out",
      str(out),
    ],
    cwd=REPO,
    env=env(2),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  import json

  report = json.loads(out.read_text())
  assert report["devices"] == 2 and report["mesh"]["data"] == 2
  assert report["budget"]["steps"] == math.ceil(1e6 / (16 * 256))
  assert report["budget"]["cost"] == pytest.approx(report["budget"]["hours"] * 2 * 2.0)
  assert "parameters" in result.stdout and "FITS" in result.stdout
  # libtpu is installed but no TPU is present: JAX does not probe for one.
  for line in ("TPU accelerator type", "TPU_WORKER_HOSTNAMES", "libtpu"):
    assert line not in result.stdout + result.stderr


@pytest.mark.slow
@needs_libtpu
def test_splash_compiles_for_tpu_and_its_temporaries_grow_linearly_with_length():
  """libtpu compiles the step with the splash kernel (a Mosaic custom call): doubling T
  about doubles its temporaries, while the xla path's (T x T) scores grow 4-fold. (Below
  ~8k tokens this tiny model's buffers are small enough to live outside HBM.)"""
  devices, chip, chips = plan.slice_devices("v5e:2x2")
  temporaries = {}
  for impl in ("xla", "splash"):
    for seq in (8192, 16384):
      config = tiny_config()
      config.model.update(
        vocab_size=256,
        embed_dim=256,
        num_heads=2,
        mlp_dim=512,
        max_len=seq,
        scan_layers=True,
        attention_impl=impl,
      )
      config.data.update(seq_len=seq, global_batch_size=4)
      compiled, *_ = plan.compile_step(config, devices)
      assert ("tpu_custom_call" in compiled.as_text()) == (impl == "splash")
      temporaries[impl, seq] = compiled.memory_analysis().temp_size_in_bytes
  assert temporaries["splash", 16384] < 2.6 * temporaries["splash", 8192]
  assert temporaries["xla", 16384] > 3.5 * temporaries["xla", 8192]
  assert temporaries["splash", 16384] < temporaries["xla", 16384] / 5


@pytest.mark.slow
@needs_libtpu
def test_each_layer_casts_its_own_parameters_for_a_tpu_slice(monkeypatch):
  # Left to XLA's bfloat16 propagation, a scanned bfloat16 model's float32 parameter stacks
  # are cast whole before the layer loops and the copy is held through both
  # (loop.TRAIN_STEP_COMPILER_OPTIONS); the trainer's step casts each layer's slice.
  config = llama2_7b.get_config()
  config.model.update(
    num_layers=4,
    embed_dim=512,
    mlp_dim=1408,
    num_heads=4,
    num_kv_heads=4,
    max_len=256,
    remat="dots_no_batch",
    attention_impl="xla",
  )
  config.data.update(seq_len=256, global_batch_size=4)
  config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  devices, _, _ = plan.slice_devices("v5p:2x2x1")
  # A whole stack cast: bfloat16 (layers, embed / 4, mlp) MLP kernels out of a convert.
  stack_cast = re.compile(r"= bf16\[4,128,1408\]\S* convert\(")
  assert not stack_cast.search(plan.compile_step(config, devices)[0].as_text())
  monkeypatch.setattr(loop, "TRAIN_STEP_COMPILER_OPTIONS", {})
  assert stack_cast.search(plan.compile_step(config, devices)[0].as_text())
