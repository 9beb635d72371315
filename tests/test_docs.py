"""The documentation: the site builds in strict mode (every page in the nav, no broken link
or anchor, the layout page generated from the tree), and the README's test command is the
one CI runs."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
  """The fast tier's command in the README's "Two commands" section."""
  section = (REPO / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  commands = [line for b in blocks for line in b.splitlines() if '-m "not slow"' in line]
  assert len(commands) == 1, f"expected one fast-tier command in the README, got {commands}"
  return commands[0]


def test_readme_test_command_is_what_ci_runs():
  command = readme_test_command()
  assert command.startswith('pip install -e ".[test]"'), command
  assert command in (REPO / ".ci" / "run").read_text(), (
    f".ci/run does not run the README's test command {command!r}"
  )


@pytest.mark.skipif(
  importlib.util.find_spec("material") is None,
  reason='mkdocs-material is not installed (pip install -e ".[docs]")',
)
def test_site_builds_strict(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  layout = (tmp_path / "layout" / "index.html").read_text()
  assert "run.py" in layout and "train/" in layout  # generated from the tree
