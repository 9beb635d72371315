"""Seed 004 end to end: a stdlib "customer-service" assistant through the whole loop.

  pretrain (gpt_tiny) -> fine-tune on stdlib Q/A (full and LoRA) -> evaluate -> serve with
  feedback logging -> simulated users rate and correct answers -> continue training on the
  feedback mixed with replayed Q/A -> promote behind the evaluation gate -> the running
  server reloads the promoted model.

  python scripts/feedback_loop.py --runs runs [--questions 64]

Every stage is a plain `python -m bigflax ...` command, printed before it runs, so each can
be rerun by hand. Finished runs are reused (rerunning the script resumes where it stopped).
The "users" are simulated: they ask questions from the Q/A *training* split (never the
validation split the promotion gate evaluates on), approve an answer whose words overlap
the docstring's (F1 >= 0.5) and otherwise send the docstring's first paragraph as a
correction.
"""

import argparse
import collections
from concurrent import futures
import json
import pathlib
import socket
import subprocess
import sys
import time

import httpx

from bigflax import workdir as run_dir
from bigflax.data import pipeline


def bigflax(*args, background=False):
  command = [sys.executable, "-m", "bigflax", *map(str, args)]
  print("\n$ " + " ".join(command[1:]), flush=True)
  if background:
    return subprocess.Popen(command)
  subprocess.run(command, check=True)


def trained(workdir: pathlib.Path, steps: int) -> bool:
  return (workdir / run_dir.CHECKPOINTS / str(steps)).exists()


def word_f1(answer: str, reference: str) -> float:
  a, r = collections.Counter(answer.split()), collections.Counter(reference.split())
  common = sum((a & r).values())
  return 0.0 if not common else 2 * common / (sum(a.values()) + sum(r.values()))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_healthy(client: httpx.Client, server: subprocess.Popen, want_run=None):
  for _ in range(600):
    if server.poll() is not None:
      raise SystemExit(f"the server exited with code {server.returncode}")
    try:
      health = client.get("/health").json()
      if want_run is None or health.get("source") == want_run:  # the run's name
        return health
    except httpx.TransportError:
      pass
    time.sleep(1)
  raise SystemExit("the server did not become healthy in 10 minutes")


def ask_and_rate(client: httpx.Client, prompt: str, reference: str, context: int) -> str:
  """One user: asks, reads the answer, approves it or sends the docstring instead."""
  max_tokens = min(120, context - len(prompt.encode()) - 1)  # byte tokens + the opening eos
  if max_tokens < 1:
    return "too long to ask"
  response = client.post(
    "/v1/completions",
    json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stop": ["\n"]},
  )
  response.raise_for_status()
  body = response.json()
  if word_f1(body["choices"][0]["text"], reference) >= 0.5:
    feedback, said = {"id": body["id"], "rating": 1}, "approved"
  else:
    feedback = {"id": body["id"], "rating": -1, "correction": " " + reference.strip()}
    said = "corrected"
  client.post("/v1/feedback", json=feedback).raise_for_status()
  return said


def simulate_users(
  client: httpx.Client, questions: list[tuple[str, str]], context: int, users: int
) -> dict:
  """`users` at a time: the server batches their requests."""
  with futures.ThreadPoolExecutor(users) as pool:
    said = pool.map(lambda qa: ask_and_rate(client, *qa, context), questions)
    return dict(collections.Counter(said))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default="runs", help="where the run directories go")
  parser.add_argument("--questions", type=int, default=384, help="simulated user questions")
  parser.add_argument("--users", type=int, default=8, help="simulated users at a time")
  args = parser.parse_args()
  runs = pathlib.Path(args.runs).absolute()
  pretrained, sft, sft_lora = runs / "gpt_tiny", runs / "sft_qa", runs / "sft_qa_lora"
  feedback, continued = runs / "feedback", runs / "sft_qa_feedback"

  if not trained(pretrained, 250):
    bigflax("train", "--config", "experiments/gpt_tiny.py", "--workdir", pretrained)
  for workdir, variant in ((sft, ""), (sft_lora, ":lora")):
    bigflax(
      "train",
      "--config",
      f"experiments/sft_stdlib_qa.py{variant}",
      "--workdir",
      workdir,
      f"--config.init_from={pretrained}",
    )
    bigflax("eval", "--workdir", workdir)

  port = free_port()
  server = bigflax(
    "serve",
    "--workdir",
    sft,
    "--port",
    port,
    "--feedback_dir",
    feedback,
    "--registry",
    runs,
    background=True,
  )
  try:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
      context = wait_healthy(client, server)["context"]
      asked = pipeline.load_prompt_answers("stdlib_qa", "train")
      questions = asked[:: max(len(asked) // args.questions, 1)][: args.questions]
      said = simulate_users(client, questions, context, args.users)
      print(f"\nsimulated users: {said}", flush=True)

      bigflax(
        "train",
        "--config",
        "experiments/sft_stdlib_qa.py:feedback",
        "--workdir",
        continued,
        f"--config.init_from={sft}",
        f"--config.data.source_dir={feedback}",
      )
      bigflax("promote", "--candidate", continued, "--incumbent", sft, "--registry", runs)
      decision = json.loads((runs / "promotions.jsonl").read_text().splitlines()[-1])
      print(f"\npromotion: {decision}", flush=True)
      if decision["promoted"]:
        health = wait_healthy(client, server, want_run=continued.name)
        print(f"the server swapped in the promoted run: {health}", flush=True)
      else:
        print("kept out: the server goes on serving the incumbent", flush=True)
  finally:
    server.terminate()
    server.wait()


if __name__ == "__main__":
  main()
