"""lm-evaluation-harness for bigflax models: `lm.py` (a bigflax model as an lm-eval
model), `tasks.py` (tasks run on parameters in hand: the harness evaluator's), `registered.py`
(the lm-eval model "bigflax" on a run or HF directory),
`__main__.py` (lm-eval's command line with it registered). Needs the harness extra:
pip install -e ".[harness]"."""
