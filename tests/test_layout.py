"""The house rules of DESIGN.md, read from the source: imports go one way, only the command
line reads flags, and only tasks/ and models/ know task and model names."""

import ast
import pathlib
import re

from conftest import REPO

PACKAGE = REPO / "bigflax"


def modules() -> dict[str, pathlib.Path]:
  found = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    found[".".join(parts)] = path
  return found


def imports(path: pathlib.Path, name: str, known) -> set[str]:
  """The bigflax modules `path` imports, at any depth of its code."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(
          package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
        )
      found.add(base)
      found |= {f"{base}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
      found |= {a.value for a in node.args if isinstance(a, ast.Constant)}
  return {m for m in found if m in known and m != name}


def test_no_import_cycles():
  known = modules()
  graph = {name: imports(path, name, known) for name, path in known.items()}
  # A package's __init__ importing its own submodules is how a package is assembled.
  for name in graph:
    graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
  state = {}

  def visit(name, chain):
    if state.get(name) == "done":
      return
    assert state.get(name) != "open", "import cycle: " + " -> ".join(chain + [name])
    state[name] = "open"
    for other in sorted(graph[name]):
      visit(other, chain + [name])
    state[name] = "done"

  for name in sorted(graph):
    visit(name, [])


def test_only_the_command_line_reads_flags():
  readers = {
    str(p.relative_to(REPO))
    for p in PACKAGE.rglob("*.py")
    if re.search(r"\bFLAGS\b", p.read_text())
  }
  assert readers == {"bigflax/cli.py"}


NAMES = ("lm", "sft", "mlm", "classify", "regression", "seq2seq", "gpt", "bert", "vit", "mlp")


def test_task_and_model_names_are_compared_only_in_tasks_and_models():
  names = "|".join(NAMES)
  comparison = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
  found = []
  for path in PACKAGE.rglob("*.py"):
    relative = path.relative_to(PACKAGE).parts
    if relative[0] in ("tasks", "models"):
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if comparison.search(line.split("#")[0]):
        found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
  assert not found, "\n".join(found)
