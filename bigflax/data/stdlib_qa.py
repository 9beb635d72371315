"""TFDS builder: questions about the CPython standard library answered by its docstrings.

"Q: What does the function json.dumps(obj, *, skipkeys=False, ...) do?\nA:" -> " " + the
first paragraph of its docstring, for every public function, class and method that has
one (`prompt` and `answer`, as every supervised fine-tuning set here). Real text every
machine with Python has: a small supervised fine-tuning (question -> answer) set. Split by
module with the same path hash as `stdlib_corpus`, so validation questions are about files
a model pretrained on that corpus's train split never saw.
"""

import ast
import pathlib
import platform
import sysconfig

import tensorflow_datasets as tfds

from bigflax.data import local_builder, stdlib_corpus

MAX_ANSWER_CHARS = 400
PROMPT = "Q: {question}\nA:"


def _signature(node) -> str:
  if isinstance(node, ast.ClassDef):
    return ""
  return f"({ast.unparse(node.args)})"


def _answer(docstring: str) -> str:
  """The docstring's first paragraph, on one line, cut at a sentence end if it is long."""
  paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
  if len(paragraph) > MAX_ANSWER_CHARS:
    end = paragraph.rfind(". ", 0, MAX_ANSWER_CHARS)
    paragraph = paragraph[: end + 1] if end > 0 else paragraph[:MAX_ANSWER_CHARS]
  return paragraph


def questions(module: str, source: str):
  """(question, answer) for the module's documented public functions, classes, methods."""
  try:
    tree = ast.parse(source)
  except SyntaxError:  # a few stdlib files are templates or other Pythons' code
    return
  documented = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

  def visit(body, prefix):
    for node in body:
      if not isinstance(node, documented) or node.name.startswith("_"):
        continue
      docstring = ast.get_docstring(node)
      name = f"{prefix}{node.name}"
      if docstring and _answer(docstring):
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        yield f"What does the {kind} {module}.{name}{_signature(node)} do?", _answer(docstring)
      if isinstance(node, ast.ClassDef):
        yield from visit(node.body, f"{name}.")

  yield from visit(tree.body, "")


def module_name(relative_path: str) -> str:
  parts = relative_path[: -len(".py")].split("/")
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class StdlibQa(local_builder.LocalBuilder):
  """Question/answer pairs from the docstrings of the running interpreter's stdlib."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Public functions, classes and methods with docstrings."}

  FEATURES = {
    "id": tfds.features.Text(),
    "module": tfds.features.Text(),
    "prompt": tfds.features.Text(),
    "answer": tfds.features.Text(),
  }
  INFO = dict(
    description=(
      "Questions 'What does the function M.f(args) do?' answered by the "
      "first paragraph of f's docstring, from the CPython standard library "
      f"(Python {platform.python_version()}), split by module."
    ),
    homepage="https://github.com/python/cpython/tree/main/Lib",
    license="PSF-2.0",
  )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is on local disk.
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = stdlib_corpus.source_files(root)
    held_out = [stdlib_corpus.is_validation(p) for p in paths]
    return {
      "train": self._generate_examples(root, [p for p, v in zip(paths, held_out) if not v]),
      "validation": self._generate_examples(root, [p for p, v in zip(paths, held_out) if v]),
    }

  def _generate_examples(self, root, paths):
    for path in paths:
      source = (root / path).read_bytes().decode("utf-8", errors="replace")
      for i, (question, answer) in enumerate(questions(module_name(path), source)):
        key = f"{path}:{i:05d}"
        yield (
          key,
          {
            "id": key,
            "module": module_name(path),
            "prompt": PROMPT.format(question=question),
            "answer": " " + answer,
          },
        )
