"""The ``[model]`` keys of every built-in model kind, beyond the common ones of :class:`~infermill.spec.ModelSpec`.

Each kind registers its dataclass (``registry`` meta ``settings``) and its adapter names the same class
(``settings_cls``); the job spec checks a kind's keys against it while it is built. This module imports
nothing heavy (no numpy, pyarrow or torch), so building a spec, ``infermill schema`` and ``infermill
status`` import no adapter. Keys that cannot change results are listed in the registry meta ``neutral``
(left out of the job's fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BatchFormat",
    "DTypeName",
    "HFSettings",
    "HFTask",
    "HttpProtocol",
    "HttpSettings",
    "LlmSettings",
    "MlflowSettings",
    "OnnxSettings",
    "ParallelName",
    "PythonSettings",
    "SentenceSettings",
    "SklearnSettings",
    "TorchSettings",
]

BatchFormat = Literal["numpy", "pandas", "arrow"]
DTypeName = Literal["float32", "bfloat16", "float16"]
ParallelName = Literal["batches", "library"]
HFTask = Literal[
    "text-classification",
    "token-classification",
    "zero-shot-classification",
    "feature-extraction",
    "fill-mask",
    "image-classification",
]
HttpProtocol = Literal["openai-chat", "openai-embeddings", "kserve-v2", "json"]


@dataclass(frozen=True)
class PythonSettings:
    """The ``[model]`` keys of ``kind = "python"``."""

    entrypoint: str | None = None
    """``pkg.module:Name`` or ``path/to/file.py:Name`` (relative to the job file)."""
    batch_format: BatchFormat = "numpy"
    """numpy (dict of arrays), pandas (DataFrame) or arrow (RecordBatch)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the model's constructor (or function)."""


@dataclass(frozen=True)
class SklearnSettings:
    """The ``[model]`` keys of ``kind = "sklearn"``."""

    method: str | None = None
    """predict_proba (positive column), predict, or decision_function. Default: predict_proba
    when the model has it, else predict."""
    positive_class: Any = None
    """With probabilities: the class whose probability is the score (default: the last)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Only ``input = "pandas"``: give the estimator a DataFrame (default "numpy": one float64 array)."""
    parallel: Literal["rows", "library"] = "rows"
    """How a worker's threads are used: "rows" scores each batch as row ranges on that many threads at
    once, each call single-threaded; "library" makes one call per batch and lets the estimator's own
    OpenMP/BLAS threads (limited to the worker's threads) do the work. Use "library" for an estimator that
    is not safe to call from two threads at once."""


@dataclass(frozen=True)
class OnnxSettings:
    """The ``[model]`` keys of ``kind = "onnx"``."""

    method: str | None = None
    """predict_proba (the probability output, which the graph must have) or predict (the first output, a
    classifier's label). Default: the probability output when the graph has one, else the first."""
    positive_class: Any = None
    """With probabilities: the class whose probability is the score (default: the last)."""


@dataclass(frozen=True)
class TorchSettings:
    """The ``[model]`` keys of ``kind = "torch"``."""

    options: dict[str, Any] = field(default_factory=dict)
    """With factory: keyword arguments passed to it."""

    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (a GPU when one is available, else the CPU)."""
    dtype: DTypeName = "float32"
    """Parameters and float inputs as float32, bfloat16 or float16 (results are written as float32)."""
    compile: bool = False
    """Wrap the model in torch.compile (faster per batch, slow first batches)."""
    format: Literal["auto", "torchscript", "export", "checkpoint"] = "auto"
    """What 'path' holds; auto tells the formats apart from the file's archive entries."""
    factory: str | None = None
    """'pkg.module:build' or 'file.py:build': returns the nn.Module (instead of 'path')."""
    weights: str | None = None
    """With factory: a state dict (.safetensors, or a torch.save'd dict read with weights_only)."""
    strict: bool = True
    """With weights: every parameter must be in the file and every entry must be a parameter."""
    inputs: Literal["tensor", "dict", "kwargs"] = "tensor"
    """tensor: one [N, F] float tensor; dict: one dict of name -> tensor; kwargs: model(**tensors)."""
    parallel: ParallelName = "library"
    """On the CPU: "library" scores one batch at a time with threads_per_worker torch threads; "batches"
    scores that many batches at once, one torch thread each (the module's forward must be thread-safe)."""


@dataclass(frozen=True)
class HFSettings:
    """The ``[model]`` keys of ``kind = "hf"``."""

    task: HFTask | None = None
    """Required: text-classification, token-classification, zero-shot-classification, feature-extraction,
    fill-mask or image-classification."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (a GPU when one is available, else the CPU)."""
    dtype: DTypeName = "float32"
    """Weights as float32, bfloat16 or float16 (scores are written as float32)."""
    text_column: str | None = None
    """The text feature (default: the only feature)."""
    image_column: str | None = None
    """image-classification: the image feature, bytes or paths (default: the only feature)."""
    truncation: bool = True
    """Cut texts longer than max_length; false: such a row is an item error."""
    max_length: int | None = None
    """Tokens per text (default: the tokenizer's model_max_length, else the model's positions)."""
    micro_batch: int = 32
    """Rows per forward pass (zero-shot: text-label pairs); a batch is split into these."""
    all_scores: bool = False
    """Classification and fill-mask: add a 'scores' list column with every label's score."""
    function_to_apply: Literal["auto", "softmax", "sigmoid", "none"] = "auto"
    """Classification scores: auto picks like the pipeline (sigmoid for multi-label models)."""
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "none"
    """token-classification: how tokens are grouped into entities (the pipeline's strategies)."""
    ignore_labels: list[str] | None = None
    """token-classification: entity labels left out (default ["O"])."""
    candidate_labels: list[str] | None = None
    """zero-shot-classification: the labels to choose from (required)."""
    hypothesis_template: str = "This example is {}."
    """zero-shot-classification: the hypothesis each label is put into."""
    multi_label: bool = False
    """zero-shot-classification: score each label independently (they need not sum to 1)."""
    pooling: Literal["mean", "cls"] = "mean"
    """feature-extraction: mean of the token vectors (attention-masked) or the first token's vector."""
    normalize: bool = False
    """feature-extraction: L2-normalise the embedding."""
    top_k: int = 5
    """fill-mask: how many tokens the 'scores' list holds (with all_scores)."""
    trust_remote_code: bool = False
    """Run model code shipped in the folder; needs trusted = true."""
    parallel: ParallelName = "batches"
    """On the CPU: "batches" scores threads_per_worker batches at once, one torch thread each; "library"
    scores one batch at a time with that many torch threads."""


@dataclass(frozen=True)
class SentenceSettings:
    """The ``[model]`` keys of ``kind = "sentence-transformers"``."""

    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (a GPU when one is available, else the CPU)."""
    dtype: DTypeName = "float32"
    """Weights as float32, bfloat16 or float16 (embeddings are written as float32)."""
    normalize: bool = False
    """L2-normalise each embedding (unit length: cosine similarity becomes a dot product)."""
    text_column: str | None = None
    """The text feature (default: the only feature)."""
    max_seq_length: int | None = None
    """Tokens per text; longer texts are truncated (default: the model's own max_seq_length)."""
    micro_batch: int = 32
    """Texts per forward pass (encode's batch_size); a batch is split into these, longest first."""
    prompt: str | None = None
    """Text put before every input (e.g. "query: "), as encode(prompt=...)."""
    prompt_name: str | None = None
    """A prompt from the model's configured prompts, as encode(prompt_name=...)."""
    truncate_dim: int | None = None
    """Keep only the first N dimensions (Matryoshka models)."""
    trust_remote_code: bool = False
    """Run model code shipped in the folder; needs trusted = true."""
    parallel: ParallelName = "batches"
    """On the CPU: "batches" scores threads_per_worker batches at once, one torch thread each; "library"
    scores one batch at a time with that many torch threads."""


@dataclass(frozen=True)
class LlmSettings:
    """The ``[model]`` keys of ``kind = "llm"``."""

    prompt_column: str | None = None
    """The column holding each row's prompt text."""
    prompt_template: str | None = None
    """A ``str.format`` template over the row's columns, e.g. ``"Classify: {title}\\n{body}"``."""
    messages_column: str | None = None
    """A column holding a JSON list of chat messages (``{"role", "content"}``), rendered as a chat."""
    system_prompt: str | None = None
    """A system message put before every prompt."""
    use_chat_template: bool | None = None
    """Render prompts with the tokenizer's chat template; default: when the tokenizer has one."""
    max_new_tokens: int = 128
    """Most tokens generated per row."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens; a longer one is dead-lettered. Default: model max length - max_new_tokens."""
    temperature: float = 0.0
    """0 is greedy decoding; above 0, sampling with this temperature."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    seed: int = 0
    """Seed of the per-row sampling streams: the same seed and prompt give the same text."""
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    """auto: vLLM when installed and a GPU is present, else transformers."""
    device: str = "auto"
    """transformers: ``cpu``, ``cuda``, ``cuda:1``...; auto: cuda when available, else cpu."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights' type; auto: float32 on the CPU, the checkpoint's type on a GPU."""
    vllm_options: dict[str, Any] = field(default_factory=dict)
    """engine vllm: extra keyword arguments of ``vllm.LLM`` (e.g. ``gpu_memory_utilization``)."""


@dataclass(frozen=True)
class MlflowSettings:
    """The ``[model]`` keys of ``kind = "mlflow"``."""

    uri: str | None = None
    """Instead of path: file:///..., models:/name/version, models:/name@alias or runs:/run_id/path (the
    last three need a local tracking store)."""
    tracking_uri: str | None = None
    """For models:/ and runs:/ URIs: the local tracking store (a folder, file:///... or sqlite:///...).
    Default: the MLFLOW_TRACKING_URI environment variable."""
    input_format: Literal["pandas", "numpy"] = "pandas"
    """What predict gets: a DataFrame (default) or one 2-D array (also chosen by a tensor signature)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Inference parameters, passed as predict(data, params=...) (the model's signature must declare them)."""


@dataclass(frozen=True)
class HttpSettings:
    """The ``[model]`` keys of ``kind = "http"``: how to reach the model server and shape its requests."""

    protocol: HttpProtocol
    """openai-chat, openai-embeddings, kserve-v2 or json."""
    url: str
    """Base URL of the server (http or https). openai protocols append /v1/chat/completions or
    /v1/embeddings when the URL has no path (only /chat/completions or /embeddings when the path ends in
    /v1); kserve-v2 appends /v2/models/{model}/infer when the URL has no path; json uses the URL as is."""
    model: str | None = None
    """Model name: sent as "model" by the openai protocols; the {model} of kserve-v2's path."""
    revision: str | None = None
    """A label you change when the server's model changes (the server's weights are not visible to
    infermill); part of the model fingerprint, so a new revision is never mixed with old results."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key, sent as Authorization: Bearer <key>. The
    value never appears in messages, dead letters or reports."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra request headers; a value may reference environment variables as "${NAME}" (redacted like the
    key)."""
    concurrency: int = 8
    """Most requests in flight at once, for the whole job (split between runtime.workers)."""
    requests_per_minute: float | None = None
    """Client-side request rate limit for the whole job (split between workers); retries count."""
    tokens_per_minute: float | None = None
    """Client-side token rate limit for the whole job (split between workers). A request is estimated at
    one token per 4 characters sent (plus max_tokens for chat) and corrected by the usage the server
    reports."""
    timeout_seconds: float = 60.0
    """Per request: longest wait to connect, and between bytes of the response."""
    max_retries: int = 4
    """Retries per request after a 408/425/429, a 5xx, a timeout or a connection error, before the batch
    fails as transient (and the engine's [retry] takes over)."""
    backoff_seconds: float = 0.5
    """First retry wait (doubled per retry, full jitter), unless the server sends Retry-After."""
    max_backoff_seconds: float = 30.0
    """Longest wait between retries, including a server's Retry-After."""
    health_path: str | None = None
    """Path fetched once at setup (e.g. "/health"); it must answer 2xx. Without it, setup only checks
    that the server accepts a connection (kserve-v2 reads the model's metadata instead)."""
    prompt_column: str | None = None
    """openai protocols: the column holding the prompt (chat) or the text to embed (embeddings)."""
    prompt_template: str | None = None
    """openai protocols: the text built from columns, e.g. "Summarise: {title}\\n{body}" ({{ and }} for
    literal braces). Default: the prompt_column, or the one feature column."""
    system_prompt: str | None = None
    """openai-chat: a system message sent before the prompt."""
    body_column: str | None = None
    """openai-chat: a column holding the whole request body (a JSON string or a struct), sent as is.
    Default: the feature column named "body" when neither prompt key is set."""
    max_tokens: int | None = None
    """openai-chat: "max_tokens" of each request (omitted when unset)."""
    temperature: float | None = 0.0
    """openai-chat: "temperature" of each request (0.0, for repeatable answers)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """openai protocols and kserve-v2: more top-level request fields, e.g. {seed = 1, top_p = 0.9}."""
    keep_response: bool = False
    """openai-chat: add a response_body column with the server's JSON response, verbatim."""
    batch_size: int = 64
    """openai-embeddings and kserve-v2: rows per request (chat and json send one request per row)."""
    embedding_size: int | None = None
    """openai-embeddings: the expected vector length (checked); needed only to type an empty batch before
    the first response."""
    input_name: str | None = None
    """kserve-v2, input_layout = "matrix": the input tensor's name. Default: the model's single input
    from its metadata, else "input-0"."""
    datatype: str | None = None
    """kserve-v2, input_layout = "matrix": the input tensor's datatype (FP32, FP64, INT64, ...). Default:
    from the model's metadata, else FP32."""
    input_layout: Literal["matrix", "columns"] = "matrix"
    """kserve-v2: "matrix" sends one [rows, features] tensor; "columns" sends one [rows] tensor per
    feature, named after it, typed from the column."""
    request_template: Any = None
    """json: the request body, a table (or array) whose strings may be "{column}" (the column's value,
    keeping its JSON type), text with {column} placeholders (a string), or "$row" (an object of every
    feature). Default: "$row"."""
    response_path: str | dict[str, str] | None = None
    """json: a dotted path into the response (e.g. "predictions.0.score"; numbers index arrays), or a table
    of output name to path. Default: the whole response."""
    output_types: dict[str, str] = field(default_factory=dict)
    """kserve-v2 and json: Arrow type per output ("float64", "int64", "string", "bool", "json",
    "list<float32>", ...); values are cast to it. Default: from the response (json numbers are float64)."""
