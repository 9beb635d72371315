"""Task "classify" served: POST /v1/classify, texts, feature vectors or images in, labels
and class probabilities out."""

import secrets
from typing import Any

import fastapi
import numpy as np
import pydantic

from bigflax.infer import bundle as bundle_lib
from bigflax.infer.serve import api


class ClassifyRequest(pydantic.BaseModel):
  """Texts, feature vectors or images (pixel rows, 0-255), as the classifier takes."""

  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  input: api.Texts | api.Inputs[list[Any]]


def check_inputs(meta: dict, inputs: list):
  """RequestError naming "input" unless `inputs` are what the classifier takes."""
  if meta["input"] == "text":
    if not all(isinstance(x, str) for x in inputs):
      raise api.RequestError("input", "this classifier takes text: a string or a list of strings")
    return
  shape = meta["input_shape"]
  # A grayscale image may come without its channel axis.
  shapes = [shape, shape[:-1]] if meta["input"] == "image" and shape[-1] == 1 else [shape]
  what = (
    "feature vectors: a list of lists of {} numbers"
    if meta["input"] == "features"
    else "images: a list of {} arrays of pixel values 0-255"
  )
  try:
    array = np.asarray(inputs, np.float64)
  except (ValueError, TypeError):
    array = None
  if (
    array is None
    or list(array.shape[1:]) not in shapes
    or (meta["input"] == "image" and ((array < 0) | (array > 255)).any())
  ):
    raise api.RequestError(
      "input", "this classifier takes " + what.format("x".join(map(str, shape)))
    )


def probabilities(model, inputs: list, rows: int):
  """Class probabilities of each input, the batch padded to `rows`."""
  return bundle_lib.probabilities(model.logits(inputs, rows=rows))


def example(model):
  return "" if model.meta["input"] == "text" else np.zeros(model.meta["input_shape"])


async def classify(request: fastapi.Request, server):
  body = await api.parse(request, ClassifyRequest)
  model = server.batcher.model
  inputs = [body.input] if isinstance(body.input, str) else body.input
  check_inputs(model.meta, inputs)
  event = await server.batcher.run_rows(request, inputs)
  if event is None:
    return api.error_response(499, "client closed the request")
  if "error" in event:
    return api.internal_error(request)
  labels = model.meta["labels"]
  data = [
    {
      "index": i,
      "label": labels[int(np.argmax(p))],
      "probabilities": dict(zip(labels, map(float, p))),
    }
    for i, p in enumerate(event["done"])
  ]
  response_id = f"clf-{secrets.token_hex(12)}"
  if server.log:
    server.log.write(
      [
        {
          "id": response_id,
          "index": d["index"],
          "kind": "classification",
          "input": x,
          "label": d["label"],
          "source": server.source,
        }
        for x, d in zip(inputs, data)
      ]
    )
  return {"id": response_id, "object": "list", "data": data}
