"""The data sources, by `data.name`: how each is built, what kind of examples it holds,
its class names and its split rule. Tasks ask `kind(name)`, never the name itself.

Kinds, and the fields of their examples:
  text            documents (path, text), in path order
  labelled_text   sentences (sentence, label, index)
  prompt_answer   fine-tuning pairs (id, prompt, answer)
  translation     sentence pairs, one field per language, and index
  image           labelled images (image, label, index)
  features        synthetic feature vectors made in memory (data/synthetic.py)
"""

from collections.abc import Callable
import dataclasses
import os

from bigflax.data import (
  fashion_mnist,
  feedback,
  multi30k,
  sst2,
  stdlib_corpus,
  stdlib_qa,
  synthetic,
  tiny_shakespeare,
)

# The field that sorts each kind's examples into the source's order (TFDS writes them in
# key-hash order).
ORDER_KEY = {
  "text": "path",
  "labelled_text": "index",
  "prompt_answer": "id",
  "translation": "index",
  "image": "index",
}


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str
  # (data_dir, source_dir) -> a TFDS builder; None for data made in memory, or declared
  # for planning only.
  builder: Callable | None = None
  class_names: tuple[str, ...] | None = None
  # bigflax split -> (TFDS split, first row, last row + 1); None: the TFDS splits as they are.
  splits: dict | None = None
  # Examples are consecutive chunks of one text: an eos between chunks would teach the
  # model document ends that aren't there.
  one_text: bool = False


def _feedback(data_dir, source_dir):
  # Feedback keeps arriving: each state of the directory is its own prepared dataset.
  snapshot = feedback.snapshot_name(source_dir)
  return feedback.Feedback(
    source_dir=source_dir,
    data_dir=os.path.join(data_dir or os.path.join(source_dir, ".tfds"), snapshot),
  )


def _local(builder_class):
  return lambda data_dir, source_dir: builder_class(data_dir=data_dir, source_dir=source_dir)


SOURCES = {
  "stdlib_corpus": Source("text", _local(stdlib_corpus.StdlibCorpus)),
  "tiny_shakespeare": Source("text", _local(tiny_shakespeare.TinyShakespeare), one_text=True),
  "sst2": Source("labelled_text", _local(sst2.Sst2), class_names=sst2.LABELS),
  "stdlib_qa": Source("prompt_answer", _local(stdlib_qa.StdlibQa)),
  "feedback": Source("prompt_answer", _feedback),
  "multi30k": Source("translation", _local(multi30k.Multi30k)),
  "fashion_mnist": Source(
    "image",
    _local(fashion_mnist.FashionMnist),
    class_names=fashion_mnist.LABELS,
    splits=fashion_mnist.SPLITS,
  ),
  # ViT-B/16's paper data (experiments/vit_b16.py): no loader ships, but a run on it
  # plans and its inputs are images.
  "imagenet2012": Source("image"),
  **{name: Source("features") for name in synthetic.NAMES},
}


def get(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f"data.name={name!r} is not one of {sorted(SOURCES)}.")
  return SOURCES[name]


def kind(name: str) -> str:
  """What the examples of data source `name` are: 'text', 'image', ... (see above)."""
  return get(name).kind


def class_names(name: str) -> tuple[str, ...] | None:
  """The labels of a classification source, in label order; None: classes by index."""
  return get(name).class_names


def check_kind(name: str, *kinds: str) -> Source:
  """The source, after checking that its kind is one of `kinds`."""
  source = get(name)
  if source.kind not in kinds:
    raise ValueError(
      f"data.name={name!r} holds {source.kind} examples, not "
      f"{' or '.join(kinds)}: choose one of "
      f"{sorted(n for n, s in SOURCES.items() if s.kind in kinds)}."
    )
  return source


def load_examples(name: str, split: str, data_dir=None, source_dir=None) -> list[dict]:
  """Every example of one split in the source's order; prepares the dataset if needed.

  `data_dir` None means TFDS's default; `source_dir` is where the source files are
  (None: download them, where the source can).
  """
  source = get(name)
  if source.builder is None:
    raise ValueError(
      f"data.name={name!r} has no loader here: it is declared so that a "
      f"run on it plans; point data.name at a dataset in {sorted(SOURCES)}."
    )
  start, stop = 0, None
  if source.splits is not None:
    if split not in source.splits:
      raise ValueError(f"{name} has no split {split!r}; choose one of {sorted(source.splits)}.")
    split, start, stop = source.splits[split]
  builder = source.builder(data_dir, source_dir)
  try:
    builder.download_and_prepare(file_format="array_record")
  except FileExistsError:
    # Another process sharing data_dir finished first (TFDS renames a temporary
    # directory into place); the builders are deterministic, so use its copy.
    builder = source.builder(data_dir, source_dir)
  data = builder.as_data_source(split=split)
  examples = data.__getitems__(range(len(data)))
  examples.sort(key=lambda example: example[ORDER_KEY[source.kind]])
  return examples[start:stop]
