"""The lm-eval model named "bigflax", on a directory: a bigflax run (its newest intact
checkpoint) or a Hugging Face directory that bigflax imports (`bigflax eval --harness`
runs lm-eval tasks on one through the harness evaluator, evals/harness.py).

  python -m bigflax.harness --model bigflax --model_args workdir=RUN,batch_size=8 ...
"""

from lm_eval.api.registry import register_model

from bigflax import trained as trained_lib
from bigflax.evals import lm_eval_model as lm_lib
from bigflax.train import partitioning


@register_model("bigflax")
class DirectoryLM(lm_lib.BigflaxLM):
  """`--model_args workdir=DIR[,max_gen_toks=N,seed=N] --batch_size N`. lm-eval's
  `--device` is ignored: the run's mesh places the model."""

  def __init__(
    self,
    workdir=None,
    batch_size=8,
    max_gen_toks=256,
    seed=0,
    trained: trained_lib.Trained | None = None,
    device=None,
    max_batch_size=None,
  ):
    del device, max_batch_size
    if not str(batch_size).isdigit():
      raise ValueError(
        f"--batch_size {batch_size}: bigflax needs a number of rows "
        f"(a multiple of the mesh's batch axes is used as is)."
      )
    if trained is None:
      if workdir is None:
        raise ValueError(
          "--model_args needs workdir=DIR (a bigflax run or a Hugging Face directory)."
        )
      trained = trained_lib.restore_language_model(workdir)
    self.step = trained.step
    super().__init__(
      trained.model,
      trained.params,
      trained.tokenizer,
      trained.mesh,
      partitioning.rules_tuple(trained.config.mesh.rules),
      batch_size,
      max_gen_toks,
      seed,
    )
