"""lm-evaluation-harness: the bigflax model scores and generates exactly as lm-eval's own
Hugging Face model does on the same random GPT-2 checkpoint, request by request and task
metric by task metric; the training loop runs the harness on its live parameters and
`eval --harness` on the checkpoint gives the same numbers."""

import json

import numpy as np
import pytest

from helpers import TINY, run

lm_eval = pytest.importorskip("lm_eval", reason="needs the harness extra")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from bigflax import configs  # noqa: E402
from bigflax.data import tokenizers  # noqa: E402
from bigflax.evals import lm_eval_tasks as tasks  # noqa: E402
from bigflax.harness import registered  # noqa: E402
from helpers import LLAMA_SHAPE, write_llama_tokenizer  # noqa: E402

CODE = "def parse(line):\n    return line.split()  # the quick brown fox, é 😀\n" * 6


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
  """(bigflax's lm-eval model, lm-eval's HF model) of one random checkpoint directory: a
  GPT-2 with the full BPE vocabulary, or a Llama (RoPE, GQA, a tokenizer that prepends
  <s>); 128 positions, a wide initialisation (varied greedy text)."""
  torch.manual_seed(0)
  directory = str(tmp_path_factory.mktemp(request.param))
  if request.param == "gpt2":
    model = transformers.GPT2LMHeadModel(
      transformers.GPT2Config(
        vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3
      )
    )
    end = tokenizers.GPT2Tokenizer.endoftext
    tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer.from_str(tokenizers.GPT2Tokenizer()._json),
      eos_token=end,
      bos_token=end,
      unk_token=end,
    )
  else:
    write_llama_tokenizer(directory)
    vocab = Tokenizer.from_file(f"{directory}/tokenizer.json").get_vocab_size()
    model = transformers.LlamaForCausalLM(
      transformers.LlamaConfig(**dict(LLAMA_SHAPE, vocab_size=vocab, max_position_embeddings=128))
    )
    with torch.no_grad():
      for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
    tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_file=f"{directory}/tokenizer.json",
      bos_token="<s>",
      eos_token="</s>",
      unk_token="<unk>",
    )
  model.eval().save_pretrained(directory, safe_serialization=True)
  tokenizer.save_pretrained(directory)
  return (
    registered.DirectoryLM(workdir=directory, batch_size=4),
    HFLM(pretrained=directory, device="cpu", batch_size=4, dtype="float32"),
  )


def requests(kind, *arguments):
  return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def test_loglikelihoods_match_lm_eval_hf(models):
  ours, theirs = models
  pairs = requests(
    "loglikelihood",
    ("The capital of France is", " Paris"),
    ("", "an empty context"),
    ("x = 1 ", "+ 2"),  # the space moves over
    (CODE, " cut from the left"),
    ("Q: what?\nA:", " yes"),
  )
  texts = requests("loglikelihood_rolling", (CODE,), ("short",), (CODE * 3,))
  for reqs in (pairs,):
    got, want = ours.loglikelihood(reqs), theirs.loglikelihood(reqs)
    np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], rtol=0, atol=1e-4)
    assert [g for _, g in got] == [w for _, w in want]
  np.testing.assert_allclose(
    ours.loglikelihood_rolling(texts), theirs.loglikelihood_rolling(texts), rtol=1e-7, atol=1e-4
  )


def test_greedy_generations_match_lm_eval_hf(models):
  ours, theirs = models
  reqs = requests(
    "generate_until",
    ("Q: what?\nA:", {"until": ["\n"], "max_gen_toks": 16}),
    ("def f(x):", {"until": ["\n"], "max_gen_toks": 16}),
    ("The", {"until": ["Nicolas"], "max_gen_toks": 16}),
    (CODE, {"max_gen_toks": 32}),
  )
  got = ours.generate_until(reqs)
  assert got == theirs.generate_until(reqs)
  assert len(set(got)) == 4 and all(got)


def test_local_tasks_metrics_match_lm_eval_hf(models):
  ours, theirs = models
  if ours.model.position == "rope":
    pytest.skip("the Llama's 74-token vocabulary is not for English: GPT-2 runs the tasks")
  config = configs.base().harness
  config.tasks, config.limit = ("stdlib_qa_choice,stdlib_qa_answer,stdlib_perplexity",), 3
  got = tasks.scalars(tasks.run_tasks(ours, config))
  want = tasks.scalars(tasks.run_tasks(theirs, config))
  assert (
    sorted(got)
    == sorted(want)
    == sorted(
      [
        "stdlib_qa_choice/acc",
        "stdlib_qa_choice/acc_norm",
        "stdlib_qa_answer/exact_match",
        "stdlib_qa_answer/chrf",
        "stdlib_perplexity/word_perplexity",
        "stdlib_perplexity/byte_perplexity",
        "stdlib_perplexity/bits_per_byte",
      ]
    )
  )
  for name in got:
    exact = "perplexity" not in name and "bits" not in name
    np.testing.assert_allclose(got[name], want[name], rtol=0 if exact else 1e-5, err_msg=name)


def test_training_runs_the_harness_and_eval_agrees(tfds_dir, tmp_path):
  harness = [
    "--config.harness.tasks=stdlib_qa_choice,stdlib_perplexity",
    "--config.harness.limit=3",
    "--config.harness.every=4",
  ]
  workdir = tmp_path / "run"
  result = run(
    "train",
    workdir,
    *TINY,
    f"--config.data.data_dir={tfds_dir}",
    "--config.train.num_steps=6",
    *harness,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert "step 4: harness stdlib_qa_choice/acc=" in result.stdout
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  scored = {r["step"]: r for r in records if r["split"] == "harness"}
  assert sorted(scored) == [4, 6]
  assert (
    scored[4]["stdlib_perplexity/bits_per_byte"] > scored[6]["stdlib_perplexity/bits_per_byte"] > 0
  )  # training helps at once on held-out code

  result = run("eval", workdir, "--harness=stdlib_qa_choice,stdlib_perplexity", "--harness_limit=3")
  assert result.returncode == 0, result.stdout + result.stderr
  report = json.loads((workdir / "eval_harness_6.json").read_text())
  for name, value in report["metrics"].items():
    np.testing.assert_allclose(value, scored[6][name], rtol=1e-5, err_msg=name)
