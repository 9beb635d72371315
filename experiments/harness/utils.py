"""Loads the local tasks' data (written by make_data.py) from the files beside this one, as
the `custom_dataset` of each task YAML: no dataset is downloaded."""

import json
import pathlib

import datasets

HERE = pathlib.Path(__file__).parent


def _load(name: str, **kwargs) -> datasets.DatasetDict:
  del kwargs  # lm-eval passes the task's metadata
  rows = [json.loads(line) for line in (HERE / name).read_text().splitlines()]
  return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def choice(**kwargs):
  return _load("stdlib_qa_choice.jsonl", **kwargs)


def answer(**kwargs):
  return _load("stdlib_qa_answer.jsonl", **kwargs)


def text(**kwargs):
  return _load("stdlib_text.jsonl", **kwargs)
