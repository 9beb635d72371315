"""Writes the local lm-eval tasks' data from the running Python's standard library, from
the validation modules only (those bigflax's stdlib corpus and Q/A set hold out), so a
model trained on their train splits is scored on code and questions it never saw:

  python experiments/harness/make_data.py   # rewrites experiments/harness/*.jsonl

stdlib_qa_choice.jsonl  a question, its docstring answer and 3 others' answers (4 choices)
stdlib_qa_answer.jsonl  a question and its answer's first sentence (generation)
stdlib_text.jsonl       the first 3,000 characters of each held-out module (perplexity)
"""

import json
import pathlib
import random
import sysconfig

from bigflax.data import stdlib_corpus, stdlib_qa

HERE = pathlib.Path(__file__).parent
MAX_CHOICE_CHARS = 120  # a question plus any of its choices fits a 256-byte context
NUM_CHOICE, NUM_ANSWER, NUM_TEXT = 200, 100, 40


def held_out():
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  for path in stdlib_corpus.source_files(root):
    if stdlib_corpus.is_validation(path):
      yield path, (root / path).read_bytes().decode("utf-8", errors="replace")


def write(name: str, rows: list[dict]):
  with open(HERE / name, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  print(f"{name}: {len(rows)} rows")


def main():
  rng = random.Random(0)
  files = list(held_out())
  pairs = [
    (q, a)
    for path, source in files
    for q, a in stdlib_qa.questions(stdlib_qa.module_name(path), source)
  ]
  short = [(q, a) for q, a in pairs if len(a) <= MAX_CHOICE_CHARS]
  rng.shuffle(short)
  choice = []
  for question, answer in short[:NUM_CHOICE]:
    others = rng.sample([a for _, a in short if a != answer], 3)
    label = rng.randrange(4)
    choices = others[:label] + [answer] + others[label:]
    choice.append({"question": question, "choices": choices, "label": label})
  write("stdlib_qa_choice.jsonl", choice)

  rng.shuffle(pairs)
  answer = [
    {"question": q, "answer": a.split(". ")[0].rstrip(".") + "."} for q, a in pairs[:NUM_ANSWER]
  ]
  write("stdlib_qa_answer.jsonl", answer)

  write("stdlib_text.jsonl", [{"path": p, "text": s[:3000]} for p, s in files[:NUM_TEXT]])


if __name__ == "__main__":
  main()
