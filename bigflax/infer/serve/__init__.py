"""HTTP serving of a `bundle.Bundle` (an exported bundle or a run's latest checkpoint).

FastAPI + uvicorn. Endpoints: POST /v1/completions (task "lm", OpenAI-style, streaming as
server-sent events), POST /v1/classify (task "classify"), POST /v1/translate (task
"seq2seq"), GET /health, GET /metrics (Prometheus), POST /admin/reload (swap in a new model
between batches). With a feedback directory, every answer is logged and POST /v1/feedback
records a user's rating or correction of one (`feedback_log`); with a registry, the server
follows its served.json (`bigflax promote`) and swaps in each newly promoted run.

The rooms: `guard` (the door: keys, JSON-only POSTs, body size, request ids, generic
500s), `app` (the app: metrics, health, reload, feedback), `batcher` (the bounded queue,
deadlines, and the worker thread that runs bucketed batches), `slots` (continuous
batching of a language model's decode steps), and one module per served kind (`lm`,
`classify`, `translate`: request schema, checks, response), listed in `kinds`.
"""

from bigflax.infer.serve.app import make_app, run  # noqa: F401  (the package's API)
