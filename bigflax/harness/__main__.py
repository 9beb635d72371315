"""lm-eval's own command line with the bigflax model registered:

  python -m bigflax.harness --model bigflax --model_args workdir=RUN --batch_size 8 \\
      --tasks stdlib_qa_choice --include_path experiments/harness
"""

from lm_eval.__main__ import cli_evaluate

from bigflax.harness import registered  # noqa: F401  (registers "bigflax" with lm-eval)

if __name__ == "__main__":
  cli_evaluate()
