"""A checkpoint step's content hashes: `sha256.json` in the step directory maps every file
of its items (state/, data/) to its SHA-256, so that a truncated file or a flipped byte is
found before the step is restored. The files orbax itself rewrites as it commits a step
(the step's top-level _CHECKPOINT_METADATA, commit_success.txt) are not hashed."""

import concurrent.futures
import hashlib
import json

from etils import epath

MANIFEST = "sha256.json"
_CHUNK = 16 << 20


def _sha256(path: epath.Path) -> tuple[str, int]:
  """(hex digest, length in bytes) of the file at `path`."""
  digest, length = hashlib.sha256(), 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
      length += len(chunk)
  return digest.hexdigest(), length


def _files(step_dir: epath.Path) -> list[str]:
  """Every file below the step's item directories, relative to the step directory."""
  return sorted(
    str((folder / name).relative_to(step_dir))
    for item in step_dir.iterdir()
    if item.is_dir()
    for folder, _, names in item.walk()
    for name in names
  )


def _hash_all(step_dir: epath.Path, names) -> dict:
  # hashlib releases the GIL: threads hash several files at once (and overlap gs:// reads).
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    return dict(zip(names, pool.map(lambda name: _sha256(step_dir / name), names)))


def write(step_dir) -> None:
  """Records the hashes of the files of `step_dir` (all of them written) in its manifest."""
  step_dir = epath.Path(step_dir)
  hashes = {name: digest for name, (digest, _) in _hash_all(step_dir, _files(step_dir)).items()}
  partial = step_dir / (MANIFEST + ".tmp")  # a manifest is whole or absent
  partial.write_text(json.dumps(hashes, indent=1, sort_keys=True))
  partial.replace(step_dir / MANIFEST)


def problems(step_dir) -> list[str] | None:
  """What differs between the files of `step_dir` and its manifest, one line per file ([]
  if nothing does); None for a step without a manifest (written before bigflax recorded
  hashes, or a synchronous save interrupted between its commit and its manifest)."""
  step_dir = epath.Path(step_dir)
  manifest = step_dir / MANIFEST
  if not manifest.exists():
    return None
  try:
    recorded = json.loads(manifest.read_text())
  except ValueError as e:
    return [f"{MANIFEST}: unreadable ({e})"]
  present = set(_files(step_dir))
  missing = sorted(set(recorded) - present)
  found = _hash_all(step_dir, sorted(set(recorded) & present))
  return [f"{name}: missing" for name in missing] + [
    f"{name}: its content ({length} bytes) does not match the SHA-256 recorded when it was saved"
    for name, (digest, length) in found.items()
    if digest != recorded[name]
  ]
