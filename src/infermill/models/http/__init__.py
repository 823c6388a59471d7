"""``kind = "http"``: score through a running model server, in bulk.

Protocols (``protocol = ...``):

* ``openai-chat``: ``POST /v1/chat/completions`` per row; outputs text, prompt_tokens,
  completion_tokens, finish_reason (and response_body with keep_response).
* ``openai-embeddings``: ``POST /v1/embeddings`` with ``batch_size`` texts; output embedding
  (fixed-size float32 list).
* ``kserve-v2``: ``POST /v2/models/{model}/infer`` with ``batch_size`` rows as a tensor; outputs by
  tensor name.
* ``json``: ``POST url`` with a templated body per row; outputs picked by ``response_path``.

Requests of one batch are sent concurrently (``concurrency``), as coroutines on one aiohttp event loop
per worker (``loop.LoopThread``: no thread per request, so the cost per request does not grow with
``concurrency``), under client-side ``requests_per_minute`` and ``tokens_per_minute`` limits. Each
request is retried (``max_retries``, exponential backoff with jitter, honouring Retry-After) after
408/425/429, 5xx, timeouts and connection errors; still failing, its rows get a TransientError and the
engine's [retry] takes over for them. Other 4xx answers are ItemErrors for the rows of that request;
401/403/404/405 stop the job (the key, URL or model is wrong). When some rows of a batch fail,
``predict`` raises PartialBatchError with the answers of the others and each failed row's own error: the
engine writes the answers and retries, bisects or dead-letters only the failed rows. Item errors of
one-row requests are kept, so bisection does not send them again.

The API key is read from the environment variable named by ``api_key_env`` at setup (surrounding
whitespace dropped) and never appears in messages, dead letters or reports, not even echoed back by a
server escaped or encoded (see ``client.Redactor``). The fingerprint covers the protocol, endpoint, model and
``revision``: the server's weights are invisible, so change ``revision`` when the served model changes.
"""

from __future__ import annotations

from .adapter import HttpModel
from .settings import HttpSettings

__all__ = ["HttpModel", "HttpSettings"]
