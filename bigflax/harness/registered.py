"""The lm-eval model named "bigflax", on a directory: a bigflax run (its newest intact
checkpoint) or a Hugging Face directory that bigflax imports; and `bigflax eval
--harness`, which runs lm-eval tasks on one.

  python -m bigflax.harness --model bigflax --model_args workdir=RUN,batch_size=8 ...
"""

import json
import os

from etils import epath
import jax
from lm_eval.api.registry import register_model
from lm_eval.utils import make_table

from bigflax import inference
from bigflax import workdir as workdir_lib
from bigflax.harness import lm as lm_lib
from bigflax.harness import tasks as tasks_lib
from bigflax.train import partitioning


@register_model("bigflax")
class DirectoryLM(lm_lib.BigflaxLM):
  """`--model_args workdir=DIR[,max_gen_toks=N,seed=N] --batch_size N`. lm-eval's
  `--device` is ignored: the run's mesh places the model."""

  def __init__(self, workdir=None, batch_size=8, max_gen_toks=256, seed=0,
               trained: inference.Trained | None = None, device=None, max_batch_size=None):
    del device, max_batch_size
    if not str(batch_size).isdigit():
      raise ValueError(f"--batch_size {batch_size}: bigflax needs a number of rows "
                       f"(a multiple of the mesh's batch axes is used as is).")
    if trained is None:
      if workdir is None:
        raise ValueError("--model_args needs workdir=DIR (a bigflax run or a Hugging Face "
                         "directory).")
      trained = inference.restore_language_model(workdir)
    self.step = trained.step
    super().__init__(trained.model, trained.params, trained.tokenizer, trained.mesh,
                     partitioning.rules_tuple(trained.config.mesh.rules), batch_size,
                     max_gen_toks, seed)


def evaluate(workdir, tasks: str, limit: int | None) -> dict:
  """`bigflax eval --harness=TASKS`: the tasks on a directory, printed as lm-eval's table;
  a run's report is also written to eval_harness_{step}.json. Returns the scalars."""
  trained = inference.restore_language_model(workdir)
  harness_config = trained.config.harness
  harness_config.tasks = (tasks,)
  if limit is not None:
    harness_config.limit = limit
  lm = DirectoryLM(trained=trained, batch_size=harness_config.batch_size,
                   max_gen_toks=harness_config.max_gen_toks)
  results = tasks_lib.run_tasks(lm, harness_config)
  report = {"step": trained.step, "tasks": tasks.split(","), "limit": harness_config.limit,
            "metrics": tasks_lib.scalars(results)}
  if jax.process_index() == 0:
    print(f"step {trained.step}, lm-eval:\n{make_table(results)}")
    if os.path.isdir(workdir_lib.checkpoints(workdir)):  # a run, not a HF directory
      path = workdir_lib.eval_report(workdir, "harness", trained.step) + ".json"
      epath.Path(path).write_text(json.dumps(report, indent=2))
      print(f"bigflax: wrote {path}")
  return report["metrics"]
