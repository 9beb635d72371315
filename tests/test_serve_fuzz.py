"""schemathesis (PyPI) fuzzes the server from its own OpenAPI schema (/openapi.json, every
endpoint and its request body): a bounded number of examples per endpoint, each answered
within the request timeout, none with a 5xx."""

import os
import re
import subprocess
import sys

import pytest

from bigflax.infer.serve import app as app_lib
import serve_utils
from serve_utils import serving

pytestmark = pytest.mark.slow
ADMIN = "admin-key"


def fuzz(url, tmp_path, examples: int):
  """schemathesis's own command line against `url`: its exit status and its report."""
  # The admin key: admin endpoints are reachable too (inference needs no key here).
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "schemathesis.cli",
      "run",
      f"{url}/openapi.json",
      "--checks",
      "not_a_server_error",
      "--max-examples",
      str(examples),
      "--phases",
      "examples,coverage,fuzzing",
      "--request-timeout",
      "30",
      "--header",
      f"Authorization: Bearer {ADMIN}",
      "--seed",
      "0",
      "--workers",
      "1",
      "--suppress-health-check",
      "all",
      "--generation-database",
      "none",
      "--report-dir",
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=tmp_path,
    env={**os.environ, "NO_COLOR": "1"},
  )
  return result.returncode, result.stdout[-6000:] + result.stderr[-3000:]


def test_no_5xx_and_no_hang_under_schemathesis(tmp_path):
  bundle, *_ = serve_utils.tiny_lm()
  app = app_lib.make_app(
    lambda source, step: bundle,
    str(tmp_path / "tiny"),
    admin_key=ADMIN,
    max_batch=4,
    feedback_dir=str(tmp_path / "fb"),
  )
  with serving(app) as url:
    code, report = fuzz(url, tmp_path, examples=20)
  assert code == 0, report
  generated = re.search(r"(\d+) generated", report)
  assert generated and int(generated.group(1)) >= 200, report  # it did try things
