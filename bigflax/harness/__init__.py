"""lm-evaluation-harness's own command line on bigflax directories: `registered.py` (the
lm-eval model "bigflax" on a run or HF directory), `__main__.py` (lm-eval's command line
with it registered). The model adapter and the tasks run on parameters in hand live below,
in evals/ (lm_eval_model.py, lm_eval_tasks.py), where the harness evaluator uses them. Needs
the harness extra: pip install -e ".[harness]"."""
