"""The composition root: a run assembled from its config (tokenizer, data, model, task,
teacher, init_from) and handed to the trainer, which knows none of them; and a trained
run's parameters restored alone for sample, eval, export, serve and promote.

The command line (`cli.py`) calls these; so can a test, a script or a notebook.
"""

import dataclasses
import functools
import types

from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils

from bigflax import configs, evals, interop, models, run_info, tasks
from bigflax import workdir as workdir_lib
from bigflax.configs import UsageError
from bigflax.data import pipeline, tokenizers
from bigflax.tasks import distill
from bigflax.train import checkpoint, lock, loop, optim, partitioning
from bigflax.train import state as state_lib
from bigflax.train import step as step_lib


@dataclasses.dataclass
class Training:
  """A run ready to train: the trainer's `job` and what it was built from."""

  job: loop.Run
  model: nn.Module
  tokenizer: object  # None for tasks on numbers
  task: tasks.Task


@dataclasses.dataclass
class StepLayout:
  """The train step and its state laid out on a mesh, nothing allocated."""

  abstract_state: object  # ShapeDtypeStructs carrying shardings
  shardings: object
  batch_sharding: jax.sharding.NamedSharding
  train_step: object
  init: object  # rng -> boxed parameters
  optimizer: object


@dataclasses.dataclass
class Teacher:
  model: nn.Module
  params: object
  shardings: object


def build_tokenizer(config, workdir):
  """The run's tokenizer, trained or loaded in `workdir` (None for `tokenizer.kind='none'`)."""
  if config.tokenizer.kind == "none":
    return None
  texts = lambda: pipeline.load_text_split(
    config.data.name, "train", config.data.data_dir, config.data.source_dir
  )
  return tokenizers.build(config.tokenizer, texts, workdir_lib.tokenizer(workdir))


def load_tokenizer(config, workdir):
  """A trained run's tokenizer (None for tasks on numbers)."""
  if config.tokenizer.kind == "none":
    return None
  return tokenizers.load(workdir_lib.tokenizer(workdir))


def build_model(config, tokenizer, platform=None, **overrides):
  if tokenizer is None or "vocab_size" not in models.fields(config.model.name):
    return models.build(config.model, platform, **overrides)
  # 0 = the tokenizer's size plus one spare row (MLM's [MASK] where the tokenizer has
  # none), rounded up to a multiple of 128 so the vocab dimension shards evenly.
  vocab_size = config.model.get("vocab_size") or -(-(tokenizer.vocab_size + 1) // 128) * 128
  if vocab_size < tokenizer.vocab_size:
    raise UsageError(
      f"model.vocab_size={vocab_size} is smaller than the tokenizer's "
      f"{tokenizer.vocab_size}; set it to 0 to use the tokenizer's size."
    )
  return models.build(config.model, platform, vocab_size=vocab_size, **overrides)


def plan_model(config, platform):
  """The model `train` would build on `platform`, without its data: a vocabulary size the
  tokenizer would give comes from the tokenizer config."""
  if "vocab_size" not in models.fields(config.model.name) or config.model.get("vocab_size"):
    return models.build(config.model, platform)
  if config.tokenizer.kind == "byte":
    size = tokenizers.ByteTokenizer.vocab_size
  elif config.tokenizer.kind == "sentencepiece" and config.tokenizer.get("vocab_size"):
    size = config.tokenizer.vocab_size
  else:
    raise UsageError(
      f"plan cannot tell the vocabulary size of tokenizer.kind="
      f"{config.tokenizer.kind!r} without its files; set "
      f"--config.model.vocab_size."
    )
  return build_model(config, types.SimpleNamespace(vocab_size=size), platform)


def model_init(config, task, model):
  """`init(rng) -> params` of the model alone (boxed with logical axis names)."""
  inputs = task.init_inputs(config)
  return lambda rng: model.init(rng, *inputs)["params"]


def param_init(config, task, model):
  """`init(rng) -> params` of what trains: the model's, and a distillation's projection."""
  init_model = model_init(config, task, model)

  def init(rng):
    params = init_model(rng)
    if config.distill.teacher and config.distill.hidden_weight:
      teacher_dim = configs.load(config.distill.teacher).model.embed_dim
      params[distill.PROJECTION] = distill.init_projection(
        jax.random.fold_in(rng, 1), config.model.embed_dim, teacher_dim
      )
    return params

  return init


def trainable(config, model) -> str:
  """With LoRA only the adapters train, plus what `init_new` keeps fresh (a new head);
  "" (no LoRA) trains everything optim.freeze does not freeze."""
  if models.lora_config(model) is None:
    return ""
  return "|".join(p for p in (models.lora.ADAPTERS, config.init_new) if p)


def build_train_step(config, task, model, optimizer, schedule, loss_fn=None):
  """The trainer's step over the task's loss, or over `loss_fn` (a distillation's)."""
  if loss_fn is None:
    loss_fn = tasks.trainer_loss(task, model, **task.loss_options(config))
  return step_lib.make_train_step(
    loss_fn,
    optimizer,
    schedule,
    config.train.microbatches,
    trained=functools.partial(
      optim.trained_mask, config.optim, train_only=trainable(config, model)
    ),
  )


def step_layout(config, task, model, mesh) -> StepLayout:
  """The trainer's train step and its state on `mesh`, nothing allocated. `bigflax plan`
  compiles exactly this, through `loop.jit_train_step`, for a TPU slice it does not have."""
  optimizer, schedule = optim.make(
    config.optim, config.train.num_steps, train_only=trainable(config, model)
  )
  init = param_init(config, task, model)
  abstract_state, shardings = state_lib.layout(
    init, optimizer, jax.random.key(config.seed), mesh, config.mesh.rules
  )
  batch_sharding = partitioning.batch_sharding(mesh, partitioning.rules_tuple(config.mesh.rules))
  return StepLayout(
    abstract_state,
    shardings,
    batch_sharding,
    build_train_step(config, task, model, optimizer, schedule),
    init,
    optimizer,
  )


def plan_step_layout(config, task, mesh) -> StepLayout:
  return step_layout(config, task, plan_model(config, mesh.devices.flat[0].platform), mesh)


def build_teacher(config, task, tokenizer, mesh) -> Teacher:
  """A distillation's frozen teacher: the model from the teacher run's config.json, its
  latest parameters laid out by this run's rules."""
  teacher_dir = config.distill.teacher
  teacher_config = configs.load(teacher_dir)
  if teacher_config.task.name != config.task.name:
    raise UsageError(
      f"distill.teacher={teacher_dir} was trained on task "
      f"{teacher_config.task.name!r}, this run on {config.task.name!r}."
    )
  teacher_tokenizer = None
  if tokenizer is not None:
    teacher_tokenizer = load_tokenizer(teacher_config, teacher_dir)
    probe = "def distill(teacher):\n  return 'student' # 42"
    if teacher_tokenizer.vocab_size != tokenizer.vocab_size or teacher_tokenizer.encode(
      probe
    ) != tokenizer.encode(probe):
      raise UsageError(
        f"distill.teacher={teacher_dir} uses another tokenizer than this "
        f"run; set tokenizer.* as in {teacher_dir}/config.json."
      )
  teacher = build_model(teacher_config, teacher_tokenizer)
  target, shardings = state_lib.param_layout(
    model_init(teacher_config, task, teacher), mesh, partitioning.rules_tuple(config.mesh.rules)
  )
  params = checkpoint.restore_params(workdir_lib.checkpoints(teacher_dir), target)
  return Teacher(teacher, params, shardings)


def initialize_from(config, state, abstract_state):
  """`state` started from `config.init_from`: its parameters, and with
  `init_keep_optimizer` its optimizer state too."""
  if not config.init_keep_optimizer:
    return state.replace(params=init_params(config, state.params))
  source = checkpoint.manager(workdir_lib.checkpoints(config.init_from), keep=None)
  restored = checkpoint.restore(source, abstract_state)
  if restored is None:
    raise UsageError(
      f"init_keep_optimizer needs init_from={config.init_from!r} to be a "
      f"bigflax workdir with checkpoints."
    )
  print(
    f"bigflax: init_from {config.init_from}: parameters and optimizer state of its "
    f"step {int(restored[0].step)}",
    flush=True,
  )
  return state.replace(params=restored[0].params, opt_state=restored[0].opt_state)


def init_params(config, params):
  """`params` with every parameter found in `config.init_from` (a bigflax workdir's latest
  checkpoint or a Hugging Face checkpoint directory) taken from there; prints a report."""
  source_dir = config.init_from
  if interop.is_checkpoint(source_dir):
    _, source = interop.import_checkpoint(source_dir, config.model.get("scan_layers", False))
  elif epath.Path(workdir_lib.checkpoints(source_dir)).is_dir():
    source = checkpoint.restore_params(workdir_lib.checkpoints(source_dir))
  else:
    raise UsageError(
      f"init_from={source_dir!r} is neither a bigflax workdir with "
      f"checkpoints nor a HF checkpoint directory (model.safetensors or "
      f"its shards)."
    )
  source = models.adapt_checkpoint(config.model, source, params)  # e.g. a ViT's grid
  # LoRA adapters the source lacks start fresh (B = 0: the source model's outputs).
  params, report = state_lib.merge_params(
    params, source, config.init_new, optional=models.lora.ADAPTERS
  )
  print(
    f"bigflax: init_from {source_dir}: restored {len(report['restored'])} parameters, "
    f"{len(report['new'])} new {report['new']}, {len(report['unused'])} unused "
    f"{report['unused']}",
    flush=True,
  )
  return params


def evaluators(
  config,
  task,
  model,
  tokenizer,
  mesh,
  params_shardings,
  split,
  make_data,
  workdir,
  entries=None,
  offline=False,
) -> list:
  """The evaluators of `entries` (default: config.evals, or the task's defaults) on the
  batches of `split` (`make_data()`), for parameters laid out by `params_shardings`."""
  rules = partitioning.rules_tuple(config.mesh.rules)
  context = evals.Context(
    config,
    task,
    model,
    tokenizer,
    mesh,
    rules,
    params_shardings,
    partitioning.batch_sharding(mesh, rules),
    split,
    make_data,
    workdir,
    offline,
  )
  return evals.build(evals.specs(config, task) if entries is None else entries, context)


def make_data(config, task, tokenizer, split):
  """This process's share of the batches of `split`."""
  return task.make_data(
    config, tokenizer, split, process_index=jax.process_index(), process_count=jax.process_count()
  )


def build_training(config, workdir, mesh=None, eval_split="validation") -> Training:
  """Everything a training run needs, from the config; resumes the latest checkpoint in
  `workdir` if there is one (restored onto abstract targets: nothing initialised first).
  It takes no lock: `train` holds one (a caller with its own loop takes `lock.held`)."""
  configs.validate(config)
  config_changes = {}
  if epath.Path(workdir_lib.checkpoints(workdir)).exists():
    config_changes = configs.check_resumable(configs.load(workdir), config, workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  tokenizer = build_tokenizer(config, workdir)
  model = build_model(config, tokenizer)
  mesh = mesh or partitioning.make_mesh(config.mesh.shape)
  rules = partitioning.rules_tuple(config.mesh.rules)
  task = tasks.get(config.task.name)
  train_data = make_data(config, task, tokenizer, "train")
  eval_data = make_data(config, task, tokenizer, eval_split)

  optimizer, schedule = optim.make(
    config.optim, config.train.num_steps, train_only=trainable(config, model)
  )
  init, rng = param_init(config, task, model), jax.random.key(config.seed)
  abstract_state, shardings = state_lib.layout(init, optimizer, rng, mesh, config.mesh.rules)
  if models.lora_config(model) and not models.lora.adapters(abstract_state.params):
    raise UsageError(
      f"model.lora.targets={model.lora.targets!r} matches no projection "
      f"kernel (paths look like 'layer_0/attention/query/kernel')."
    )
  checkpoints = checkpoint.manager(
    workdir_lib.checkpoints(workdir), config.train.keep_checkpoints, config.train.async_checkpoints
  )
  restored = checkpoint.resume(checkpoints, abstract_state)
  data_position = {}
  if restored is not None:
    state, data_position = restored
    print(
      f"bigflax: restored the checkpoint of step {int(state.step)} (data position {data_position})."
    )
    if "train.num_steps" in config_changes:  # see configs.check_resumable
      (old, new), step = config_changes["train.num_steps"], int(state.step)
      print(
        f"bigflax: train.num_steps {old} -> {new}: the learning rate follows the "
        f"{new}-step schedule, at step {step} "
        f"{float(optim.schedule(config.optim, old)(step)):.3g} -> "
        f"{float(schedule(step)):.3g}."
      )
  else:
    state = state_lib.create(init, optimizer, rng, shardings)
    if config.init_from:
      state = initialize_from(config, state, abstract_state)
  if jax.process_index() == 0:
    configs.save(config, workdir)
    run_info.record(workdir, mesh, int(state.step), config_changes)

  num_params = state_lib.num_params(state.params)
  tokens_per_step = config.data.global_batch_size * task.tokens_per_example(config)
  flops_per_token = models.flops_per_token(config.model, num_params, config.data.seq_len)
  print(
    f"bigflax: {num_params:,} parameters on a {dict(mesh.shape)} mesh of "
    f"{mesh.devices.size} {jax.devices()[0].platform} devices, {jax.process_count()} "
    f"process(es)",
    flush=True,
  )
  if "attention_impl" in config.model:  # what models.build made of it
    print(
      f"bigflax: attention {model.attention_impl} (model.attention_impl="
      f"{config.model.attention_impl} on {jax.default_backend()})",
      flush=True,
    )
  if task.data_summary is not None:
    print(f"bigflax: {task.data_summary(config, tokenizer, train_data)}", flush=True)
  loss_fn = None  # the task's own; a distillation's below
  teacher = Teacher(None, None, None)
  if config.distill.teacher:
    teacher = build_teacher(config, task, tokenizer, mesh)
    loss_fn = functools.partial(distill.loss_fn, task, model, teacher.model, config.distill)
    print(
      f"bigflax: distilling from {config.distill.teacher} "
      f"({state_lib.num_params(teacher.params):,} parameters)",
      flush=True,
    )

  job = loop.Run(
    config=config.train,
    workdir=workdir,
    mesh=mesh,
    rules=rules,
    state=state,
    state_shardings=shardings,
    batch_sharding=partitioning.batch_sharding(mesh, rules),
    train_step=build_train_step(config, task, model, optimizer, schedule, loss_fn),
    evaluators=evaluators(
      config, task, model, tokenizer, mesh, shardings.params, eval_split, lambda: eval_data, workdir
    ),
    train_batches=train_data.iterate,
    tokens_per_step=tokens_per_step,
    flops_per_step=flops_per_token * tokens_per_step,
    checkpoints=checkpoints,
    frozen=teacher.params,
    frozen_shardings=teacher.shardings,
    resumed_position=data_position,
  )
  return Training(job, model, tokenizer, task)


def train(config, workdir):
  """Trains (or resumes) the run in `workdir`, as its one writer (train/lock.py); returns
  the final state."""
  configs.validate(config)  # a mistake creates no workdir (the lock would)
  with lock.held(workdir):
    return _train(config, workdir)


def _train(config, workdir):
  training = build_training(config, workdir)
  state = loop.train(training.job)
  model = training.model
  if models.lora_config(model) is not None:  # the adapters alone, a few MB to ship
    adapters = multihost_utils.process_allgather(models.lora.adapters(state.params), tiled=True)
    if jax.process_index() == 0:
      models.lora.save(workdir_lib.adapters(workdir), adapters)
      print(
        f"bigflax: LoRA adapters of step {int(state.step)} in {workdir_lib.adapters(workdir)}",
        flush=True,
      )
  after = training.task.after_training
  if after is not None and int(state.step) == config.train.num_steps:
    with jax.set_mesh(training.job.mesh), nn.logical_axis_rules(training.job.rules):
      after(config, model, training.tokenizer, state.params)
  return state
