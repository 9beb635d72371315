"""Task "seq2seq" served: POST /v1/translate, texts in, their translations out."""

import secrets

import fastapi
import pydantic

from bigflax.infer.serve import api


class TranslateRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  input: api.Texts


def translations(model, texts: list[str], rows: int) -> list[str]:
  """Each text's translation by the run's beam search, the batch padded to `rows`."""
  return [model.detokenize(ids) for ids in model.translate_ids(texts, rows=rows)]


def example(model):
  del model
  return ""


async def translate(request: fastapi.Request, server):
  body = await api.parse(request, TranslateRequest)
  inputs = [body.input] if isinstance(body.input, str) else body.input
  event = await server.batcher.run_rows(request, inputs)
  if event is None:
    return api.error_response(499, "client closed the request")
  if "error" in event:
    return api.internal_error(request)
  response_id = f"tr-{secrets.token_hex(12)}"
  if server.log:
    server.log.write(
      [
        {
          "id": response_id,
          "index": i,
          "kind": "translation",
          "input": x,
          "translation": t,
          "source": server.source,
        }
        for i, (x, t) in enumerate(zip(inputs, event["done"]))
      ]
    )
  return {
    "id": response_id,
    "object": "list",
    "data": [{"index": i, "translation": t} for i, t in enumerate(event["done"])],
  }
