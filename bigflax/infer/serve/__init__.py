"""HTTP serving of a `bundle.Bundle` (an exported bundle or a run's latest checkpoint).

FastAPI + uvicorn. Endpoints: POST /v1/completions (task "lm", OpenAI-style, streaming as
server-sent events), POST /v1/classify (task "classify"), POST /v1/translate (task
"seq2seq"), GET /health, GET /metrics (Prometheus), POST /admin/reload (swap in a new model
between batches). With a feedback directory, every answer is logged and POST /v1/feedback
records a user's rating or correction of one (`feedback_log`); with a registry, the server
follows its served.json (`bigflax promote`) and swaps in each newly promoted run.

Three rooms: `app` (the app: key, metrics, health, reload, feedback), `batcher` (the queue
and the worker thread that batches rows and runs them), and one module per served kind
(`lm`, `classify`, `translate`: request, checks, response), listed in `kinds`.
"""

from bigflax.infer.serve.app import make_app, run  # pylint: disable=unused-import
