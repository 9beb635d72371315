"""The documentation's layout page, generated from the tree: every package and module of
bigflax/ (and the scripts and experiments) with the first sentence of its docstring.

  python scripts/docs_layout.py    # prints the page

mkdocs.yml names this file as a hook: `mkdocs build` adds the page as `layout.md`, made
afresh from the tree at each build, so modules that move or appear are listed without a
hand-written list to keep up (nothing is committed under docs/ for it).
"""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
# (folder, whether its subfolders are listed too)
FOLDERS = [("bigflax", True), ("experiments", False), ("scripts", False)]


def summary(path: pathlib.Path) -> str:
  """The first sentence of the module's docstring, on one line ("" without one)."""
  docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
  paragraph = " ".join(docstring.split("\n\n")[0].split())
  sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", paragraph)[0]
  return sentence.rstrip(":").replace("|", "\\|")


def packages(folder: str, recursive: bool):
  """(folder, its modules) for `folder` and, if `recursive`, every package below it."""
  root = REPO / folder
  dirs = sorted([root] + [d.parent for d in root.rglob("*/__init__.py")]) if recursive else [root]
  for d in dirs:
    yield d, sorted(d.glob("*.py"))


def page() -> str:
  lines = [
    "# Layout",
    "",
    "Every package and module, with the first sentence of its docstring. This page is "
    "generated from the tree at each `mkdocs build` (`scripts/docs_layout.py`).",
    "",
  ]
  for folder, recursive in FOLDERS:
    for d, modules in packages(folder, recursive):
      name = d.relative_to(REPO).as_posix()
      lines += [f"## `{name}/`", ""]
      init = d / "__init__.py"
      if init.exists() and summary(init):
        lines += [summary(init), ""]
      lines += ["| module | what it holds |", "|---|---|"]
      lines += [f"| `{m.name}` | {summary(m)} |" for m in modules if m.name != "__init__.py"]
      lines += [""]
  return "\n".join(lines)


def on_files(files, config):
  """mkdocs hook: adds the generated page to the site's files (mkdocs >= 1.6)."""
  from mkdocs.structure.files import File  # pylint: disable=import-outside-toplevel

  files.append(File.generated(config, "layout.md", content=page()))
  return files


if __name__ == "__main__":
  print(page())
