"""The kinds a server can serve, keyed by a bundle's `task`: each kind's endpoint (its
request model, input checks and response, in the kind's module) and how the batcher runs
its rows. A new servable kind is a module like `classify.py` and a line here."""

from collections.abc import Callable
import dataclasses

from bigflax.infer.serve import batcher, classify, lm, slots, translate


@dataclasses.dataclass(frozen=True)
class Kind:
  path: str  # the endpoint's URL
  endpoint: Callable  # async (request, server) -> response
  schema: type  # the request body's pydantic model
  batching: batcher.Batching  # bucketed batches
  continuous: batcher.Batching | None = None  # rows joining and leaving at every step


KINDS = {
  "lm": Kind(
    "/v1/completions", lm.completions, lm.CompletionRequest, batcher.DECODE, slots.CONTINUOUS
  ),
  "classify": Kind(
    "/v1/classify",
    classify.classify,
    classify.ClassifyRequest,
    batcher.forward(classify.probabilities, classify.example),
  ),
  "seq2seq": Kind(
    "/v1/translate",
    translate.translate,
    translate.TranslateRequest,
    batcher.forward(translate.translations, translate.example),
  ),
}


def get(task: str) -> Kind:
  if task not in KINDS:
    raise ValueError(f"cannot serve a {task!r} model; servable kinds: {sorted(KINDS)}")
  return KINDS[task]
