"""Config helpers: the defaults every experiment starts from, validation, saving.

An experiment is a file `experiments/<name>.py` with `get_config(arg=None)` returning an
`ml_collections.ConfigDict`; it starts from `base()` and changes what it needs.
"""

import difflib
import importlib.util
import json

from etils import epath
import ml_collections
from ml_collections.config_dict import placeholder

from bigflax import workdir as workdir_lib

# Logical axis -> mesh axis. Data-parallel, FSDP and tensor parallelism are all this table
# plus `mesh.shape`: batch over data x fsdp, weights' embed dim over fsdp, heads/mlp/vocab
# over tensor. An axis already used in an array falls back to replication.
DEFAULT_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("kv", None),
  ("length", None),
  ("layers", None),
)


class UsageError(ValueError):
  """A mistake in the command line, config or workdir: reported without a traceback."""


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.task = ml_collections.ConfigDict(dict(name="lm"))
  # Start a new run from another's parameters: a bigflax workdir (its latest checkpoint)
  # or a Hugging Face checkpoint directory. Parameters matching the regex `init_new` keep
  # their fresh initialisation (e.g. a new classifier head); any other the source lacks is
  # an error.
  c.init_from = ""
  c.init_new = ""
  # With init_from a bigflax workdir: also take its optimizer state (Adam moments and
  # count) rather than starting fresh; it needs the same model and optim sections.
  c.init_keep_optimizer = False
  c.model = ml_collections.ConfigDict()  # fields of the model class `name`

  c.tokenizer = ml_collections.ConfigDict(dict(kind="byte", vocab_size=0))

  c.data = ml_collections.ConfigDict(
    dict(
      name="stdlib_corpus",
      data_dir=placeholder(str),  # TFDS data dir; None = TFDS's default
      source_dir=placeholder(str),  # local files for builders that read them
      seq_len=256,
      global_batch_size=16,
      seed=0,
      # LM windows: attention within each document (segment ids, positions restarting
      # at each eos), not GPT-2's across the window; skip_document_start also leaves
      # each document's first target out of the loss. SFT rows are always packed so.
      document_mask=False,
      skip_document_start=False,
    )
  )

  c.mesh = ml_collections.ConfigDict(
    dict(
      shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
      rules=DEFAULT_RULES,
    )
  )

  c.optim = ml_collections.ConfigDict(
    dict(
      lr=1e-3,
      warmup_steps=100,
      decay="cosine",
      final_lr_fraction=0.1,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,
      clip_norm=1.0,
      no_decay=r"(bias|scale|position_embed/embedding)$",  # regex on parameter paths
      freeze="",  # regex on parameter paths: these get no updates (e.g. "^layer_[0-3]/")
    )
  )

  c.train = ml_collections.ConfigDict(
    dict(
      num_steps=1000,
      allow_config_change=False,  # resume under another task, data, ... (check_resumable)
      microbatches=1,  # gradient accumulation: the batch is split in this many
      log_every=10,
      eval_every=200,
      eval_steps=20,  # validation batches per evaluation; 0 = the whole split
      checkpoint_every=200,
      keep_checkpoints=3,  # the newest N; 0 = keep all
      # A step with a non-finite loss or gradient is skipped (state unchanged); after this
      # many in a row the run stops with an error. 0 = never stop.
      max_skipped_steps=20,
      async_checkpoints=True,
      peak_flops_per_device=0.0,  # for MFU; 0 = look up by device kind
    )
  )

  # Knowledge distillation from a frozen teacher (a bigflax workdir; "" = off), see
  # tasks/distill.py. hidden_weight > 0 adds hidden-state matching at `hidden_module`.
  c.distill = ml_collections.ConfigDict(
    dict(
      teacher="",
      alpha=0.5,
      temperature=2.0,
      hidden_weight=0.0,
      hidden_module="final_norm",
    )
  )

  c.sample = ml_collections.ConfigDict(
    dict(
      prompts=("",),
      max_new_tokens=200,
      temperature=0.8,
      top_k=0,
      top_p=0.95,
      seed=0,
    )
  )

  # lm-evaluation-harness tasks on the live parameters every `every` steps and at the end
  # (0 = never; needs the harness extra), and for `bigflax eval --harness`. `limit` caps
  # each task's documents (0 = all); num_fewshot -1 = each task's own default.
  c.harness = ml_collections.ConfigDict(
    dict(
      tasks=(),
      every=0,
      limit=0,
      num_fewshot=-1,
      include_path="experiments/harness",
      batch_size=8,
      max_gen_toks=64,
    )
  )

  # The run's evaluators, a list of dicts such as dict(kind="predictions", every=500)
  # (bigflax/evals); None = the task's own: its sums and predictions every
  # train.eval_every steps, its report in `bigflax eval`, lm-eval every harness.every.
  c.evals = None
  return c


def lora(
  rank: int = 0,
  alpha: float = 16.0,
  dropout: float = 0.0,
  targets: str = r"attention/(query|value)/kernel",
) -> ml_collections.ConfigDict:
  """`config.model.lora`: low-rank adapters (bigflax.models.layers.LoRA) on the projection
  kernels whose parameter path matches the regex `targets`. rank 0 = off, so
  `--config.model.lora.rank=8` turns them on; then only the adapters (and what `init_new`
  names) train."""
  return ml_collections.ConfigDict(dict(rank=rank, alpha=alpha, dropout=dropout, targets=targets))


def validate(config: ml_collections.ConfigDict):
  """Checks that catch a bad config before any compile, naming the field and the fix."""
  positive = [
    "data.seq_len",
    "data.global_batch_size",
    "train.num_steps",
    "train.microbatches",
    "train.log_every",
    "train.checkpoint_every",
  ]
  for field in positive:
    section, key = field.split(".")
    value = config[section][key]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{field}={value!r} must be a positive integer.")
  for field in ("train.keep_checkpoints", "train.max_skipped_steps"):
    section, key = field.split(".")
    value = config[section].get(key, 0)
    if not isinstance(value, int) or value < 0:
      raise ValueError(
        f"{field}={value!r} must be a non-negative integer (0 = "
        f"{'keep all' if key == 'keep_checkpoints' else 'never stop'})."
      )
  if config.data.global_batch_size % config.train.microbatches:
    raise ValueError(
      f"data.global_batch_size={config.data.global_batch_size} must be "
      f"divisible by train.microbatches={config.train.microbatches}."
    )
  if config.data.seq_len > config.model.get("max_len", config.data.seq_len):
    raise ValueError(
      f"data.seq_len={config.data.seq_len} exceeds model.max_len="
      f"{config.model.max_len}; lower one or raise the other."
    )
  if not 0.0 <= config.distill.alpha <= 1.0 or config.distill.temperature <= 0:
    raise ValueError(
      f"distill.alpha={config.distill.alpha} must lie in [0, 1] and "
      f"distill.temperature={config.distill.temperature} be positive."
    )
  if config.init_keep_optimizer and not config.init_from:
    raise ValueError("init_keep_optimizer=True needs init_from (the run to continue).")
  if config.tokenizer.kind not in ("byte", "sentencepiece", "hf", "hf_lm", "gpt2", "none"):
    raise ValueError(
      f"tokenizer.kind={config.tokenizer.kind!r}; choose 'byte', "
      f"'sentencepiece', 'hf', 'hf_lm', 'gpt2' or 'none'."
    )


def flatten(tree: dict, prefix: str = "") -> dict:
  """{'a.b.c': leaf} of nested dicts (a config as JSON); lists stay leaves."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


# Sections that fix the shapes in a checkpoint: a resume must not change them.
STATE_DEFINING = ("model", "tokenizer", "optim")
# What a resume may change without `train.allow_config_change`: how long and how it trains,
# logs and saves, where it runs, where its data lies, how `sample` decodes. Any other change
# (task, data, seed, teacher, init_from) would leave config.json describing another run
# than its checkpoints.
RESUMABLE = ("train.", "mesh.", "sample.", "data.data_dir", "data.source_dir", "evals")


def changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict:
  """{'a.b': (saved value, new value)} of every field in which the two configs differ."""
  # Through JSON so that tuples in the config and lists in config.json compare equal.
  old, new = (flatten(json.loads(c.to_json())) for c in (saved, config))
  # A run written before model.lora existed had no LoRA: the same as rank 0 now.
  lora_added = "model.lora.rank" not in old and new.get("model.lora.rank") == 0
  return {
    k: (old.get(k), new.get(k))
    for k in sorted(set(old) | set(new))
    if old.get(k) != new.get(k) and not (lora_added and k.startswith("model.lora."))
  }


def check_resumable(
  saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str
) -> dict:
  """Refuses to resume a run whose checkpoints were written with another model, optimizer
  or tokenizer, and, unless `train.allow_config_change`, with another task, data, seed,
  distillation teacher or init_from; returns the changes it accepts (for run_info.json).

  A new `train.num_steps` extends (or shortens) the run: the learning-rate schedule is the
  new length's (optim.schedule), so after the warmup a cosine or linear decay resumes at the
  value the longer run has at this step (the learning rate jumps up) and decays to
  `final_lr_fraction` at the new end.
  """
  found = changes(saved, config)
  show = lambda keys: "".join(
    f"\n  {k}: {json.dumps(found[k][0])} -> {json.dumps(found[k][1])}" for k in keys
  )
  state = [k for k in found if k.split(".")[0] in STATE_DEFINING]
  if state:
    raise UsageError(
      f"--workdir={workdir} holds checkpoints of another model, optimizer or "
      f"tokenizer:{show(state)}\nResume with the config in "
      f"{workdir_lib.config(workdir)}, or use a new --workdir."
    )
  other = [k for k in found if not k.startswith(RESUMABLE)]
  if other and not config.train.allow_config_change:
    raise UsageError(
      f"--workdir={workdir} was started with another config than this "
      f"one:{show(other)}\nResume with the config in "
      f"{workdir_lib.config(workdir)}, use a new --workdir, or pass "
      f"--config.train.allow_config_change=True to continue it under this "
      f"config (run_info.json records the change)."
    )
  return found


# Through etils.epath: a workdir may be a gs:// path.
def save(config: ml_collections.ConfigDict, workdir: str):
  """Writes config.json whole or not at all: a temporary file renamed over it."""
  path = epath.Path(workdir_lib.config(workdir))
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(config.to_json(indent=2, sort_keys=True))
  temporary.replace(path)


def load(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir_lib.config(workdir))
  if not path.exists():
    raise FileNotFoundError(
      f"No config.json in --workdir={workdir}: is it a bigflax run "
      f"directory? (`bigflax train` writes one when it starts.)"
    )
  return ml_collections.ConfigDict(
    _with_defaults(json.loads(path.read_text()), json.loads(base().to_json()))
  )


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved` plus the fields bigflax gained after it was written, at their defaults."""
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], value)
  return merged


def unknown_override(argv) -> str | None:
  """Names the first --config.a.b override that is not a field of the experiment's config."""
  config_arg = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      config_arg = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      config_arg = argv[i + 1]
  if config_arg is None:
    return None
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for a in argv:
    if not a.startswith("--config."):
      continue
    node, name = config, "config"
    for key in a[len("--config.") :].split("=", 1)[0].split("."):
      if not hasattr(node, "keys") or key not in node:
        fields = sorted(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" Did you mean '{name}.{close[0]}'?" if close else ""
        return (
          f"{a.split('=')[0]}: '{key}' is not a field of {name}.{hint} "
          f"Fields of {name}: {', '.join(fields)}."
        )
      node, name = node[key], f"{name}.{key}"
  return None
