"""What a server answered and what users said about it, as JSON lines in a directory.

`bigflax serve --feedback_dir DIR` appends one record per answer ({"id", "index", "kind":
"completion" | "classification" | "translation", ...}) and one per rating sent to
POST /v1/feedback ({"id", "index", "kind": "feedback", "rating", "correction"}).
`bigflax.data.feedback` reads the directory back as a dataset. Each server process writes
a file of its own, so that two servers sharing a directory never interleave lines.
"""

import json
import os
import socket
import threading
import time


class FeedbackLog:
  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(
      directory, f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{os.getpid()}.jsonl"
    )
    self._lock = threading.Lock()
    # id -> how many answers (rows) it has; (id, index) of the rows rated already
    self.answers, self.rated = self._logged(directory)

  @staticmethod
  def _logged(directory) -> tuple[dict[str, int], set]:
    """Ids answered and rows rated before this server started: feedback may come after a
    restart. A line cut short by a crash is skipped, not fatal."""
    answers, rated = {}, set()
    for name in sorted(os.listdir(directory)):
      if name.endswith(".jsonl"):
        with open(os.path.join(directory, name)) as f:
          for line in f:
            try:
              record = json.loads(line)
            except json.JSONDecodeError:
              continue
            if record.get("kind") == "feedback":
              rated.add((record.get("id"), record.get("index", 0)))
            elif "id" in record:
              answers[record["id"]] = max(answers.get(record["id"], 0), record.get("index", 0) + 1)
    return answers, rated

  def write(self, records: list[dict]):
    """Appends `records` as whole lines in one write: a reader never sees half a record."""
    stamp = time.time()
    text = "".join(json.dumps({**r, "time": stamp}) + "\n" for r in records)
    with self._lock, open(self.path, "a") as f:
      f.write(text)
    for r in records:
      if r["kind"] == "feedback":
        self.rated.add((r["id"], r["index"]))
      else:
        self.answers[r["id"]] = max(self.answers.get(r["id"], 0), r["index"] + 1)

  def answered(self, id_: str, index: int) -> str | None:
    """None if (id, index) names a logged answer not rated yet, else what is wrong: "id",
    "index" or "rated"."""
    if id_ not in self.answers:
      return "id"
    if not 0 <= index < self.answers[id_]:
      return "index"
    if (id_, index) in self.rated:
      return "rated"
    return None
