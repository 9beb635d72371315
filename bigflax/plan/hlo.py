"""What a compiled step's HLO text says that the compiler's analyses do not: the
collectives it runs, per device and per step (read by `bigflax plan`)."""

import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    bits = 1 if dtype == "pred" else int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)
    total += math.prod(int(d) for d in dims.split(",") if d) * max(bits // 8, 1)
  return total


def _trip_count(line: str, computations: dict) -> int:
  """Iterations of the while loop on `line`: the compiler's known_trip_count when it
  records one, else read from the loop's condition `counter < N` (JAX's scans and
  fori_loops count up from 0); 1 if neither says."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
  if known:
    return int(known.group(1))
  condition = re.search(r"condition=%?([\w.\-]+)", line)
  limit = computations.get(condition.group(1), {}).get("limit") if condition else None
  return limit or 1


def collectives(hlo: str) -> dict:
  """{op: {'count', 'bytes'}} of the compiled module's collectives, per device and per
  step: ops inside a loop body (scanned layers) count once per iteration. 'bytes' is the
  size of each op's result (for a reduce-scatter, of its operand)."""
  computations, current, loops = {}, None, []
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      current = computations.setdefault(header.group(1), {"ops": [], "calls": [], "constants": {}})
      if line.startswith("ENTRY"):
        computations["__entry__"] = current
      continue
    if current is None or "=" not in line:
      continue
    constant = re.match(r"\s*%?([\w.\-]+) = s32\[\]\S* constant\((\d+)\)", line)
    if constant:
      current["constants"][constant.group(1)] = int(constant.group(2))
    bound = re.search(r"ROOT .*compare\([^,]+, %?([\w.\-]+)\), direction=LT", line)
    if bound and bound.group(1) in current["constants"]:
      current["limit"] = current["constants"][bound.group(1)]
    for callee in re.findall(r"(?:body|calls|to_apply|branch_computations=\{)=?%?([\w.\-]+)", line):
      current["calls"].append([callee, 1])
      if " while(" in line:  # the condition may come later in the text: resolve after
        loops.append((current["calls"][-1], line))
    match = re.search(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if match:
      result = match.group(1)
      if match.group(3):  # async start: (operand, result) tuple, count the result
        shapes = _SHAPE.findall(result)
        result = "{}[{}]".format(*shapes[-1]) if shapes else result
      size = _shape_bytes(result)
      if match.group(2) == "reduce-scatter":
        groups = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
        size *= int(groups.group(2)) if groups else 1
      current["ops"].append((match.group(2), size))
  for call, line in loops:
    call[1] = _trip_count(line, computations)

  totals = {}

  def visit(name, times, depth=0):
    if name not in computations or depth > 20:
      return
    for op, size in computations[name]["ops"]:
      entry = totals.setdefault(op, {"count": 0, "bytes": 0})
      entry["count"] += times
      entry["bytes"] += times * size
    for callee, trips in computations[name]["calls"]:
      visit(callee, times * trips, depth + 1)

  visit("__entry__", 1)
  return totals
