"""metrics.jsonl stays readable: strict JSON (a diverged loss is null, read back as NaN),
and a line cut short by a crash or a full disk is dropped with a warning on resume."""

import json
import math
import os

from bigflax.train import writers


def strict(line: str) -> dict:
  def bare(constant):
    raise ValueError(f"bare {constant} is not JSON")

  return json.loads(line, parse_constant=bare)


def test_non_finite_values_are_valid_json_and_a_cut_line_is_dropped(tmp_path, capsys):
  writer = writers.MetricWriter(str(tmp_path))
  for step, loss in enumerate([2.5, math.nan, math.inf, 1.5], 1):
    writer.write(step, "train", {"loss": loss})
  writer.close()
  path = tmp_path / "metrics.jsonl"
  assert [strict(line)["loss"] for line in path.read_text().splitlines()] == [2.5, None, None, 1.5]
  read = writers.read(str(tmp_path))
  assert read[1]["loss"] == 2.5 and math.isnan(read[2]["loss"]) and math.isnan(read[3]["loss"])

  with open(path, "r+b") as f:  # the last line cut in the middle, as a full disk leaves it
    f.truncate(os.path.getsize(path) - 9)
  resumed = writers.MetricWriter(str(tmp_path))  # from a checkpoint of step 3
  resumed.truncate(3)
  assert "metrics.jsonl line 4 is not JSON" in capsys.readouterr().err
  resumed.write(4, "train", {"loss": 1.25})
  resumed.close()
  assert [strict(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
  assert writers.read(str(tmp_path))[4]["loss"] == 1.25


def test_a_file_written_with_bare_nan_still_reads(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": NaN}\n')
  assert math.isnan(writers.read(str(tmp_path))[1]["loss"])
  writer = writers.MetricWriter(str(tmp_path))
  writer.truncate(1)  # rewritten as strict JSON
  writer.close()
  assert strict((tmp_path / "metrics.jsonl").read_text())["loss"] is None
