"""``kind = "llm"``: text generation with a causal language model from a local Hugging Face folder.

``path`` is a model folder (``config.json``, ``*.safetensors``, tokenizer files). Per row, a prompt is
built from the row's columns, tokenized on the reader thread, and completed by the model:

* **Prompt**: ``prompt_column`` (one text column), ``prompt_template`` (``"Classify: {title}\\n{body}"``,
  Python ``str.format`` over the row's columns; a null value renders as an empty string) or
  ``messages_column`` (a JSON list of chat messages ``[{"role": ..., "content": ...}]``, e.g. the
  ``messages`` column of an ``openai-batch`` input). Without any of them: the only feature column when
  ``features`` names exactly one, else the column ``prompt``. A column the prompt needs that is not a
  feature column is a spec error before anything is generated.
* **Chat template**: with ``use_chat_template`` (default: when the tokenizer has one) the prompt becomes
  a user message, after ``system_prompt`` as the system message, rendered with
  ``add_generation_prompt``. Without a template, ``system_prompt`` is put before the prompt, and
  messages are rendered as ``role: content`` lines ending in ``assistant:``.
* **Length**: a prompt longer than ``max_prompt_tokens`` (default: the model's maximum length minus
  ``max_new_tokens``) raises :class:`PromptTooLongError` for that row only; the engine bisects the
  batch and dead-letters the row. An empty or null prompt is an item error too.
* **Generation**: batches are left-padded (pad token: the tokenizer's, else its end-of-sequence
  token). ``temperature = 0`` is greedy decoding; otherwise each row samples from its own random
  stream seeded from ``seed`` and the rendered prompt, so a row's text does not depend on the batch it
  is in, and a rerun gives the same text. Identical prompts get identical text.
* **Engine**: ``auto`` uses vLLM when it is installed and a CUDA GPU is present (and ``device`` is not
  ``cpu``), else transformers.

Outputs (``[model] outputs``, default ``["text"]``): ``text`` (string), ``prompt_tokens`` and
``completion_tokens`` (int64; the completion counts the end-of-sequence token when there is one) and
``finish_reason`` (``"stop"`` or ``"length"``).

Trust: weights load only from safetensors and tokenizers only from data files, unless ``trusted =
true``: pickled weights (``pytorch_model.bin``) and custom code (``auto_map``, ``trust_remote_code``)
run code when loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import string
import threading
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from ..errors import ItemError, ModelLoadError, SpecError
from ..spec import JobSpec
from . import missing_extra
from ._llm_engines import Generation, choose_engine, gpu_available, vllm_installed
from ._weights import PICKLED_SUFFIXES, refuse_pickled_weights
from .base import ModelAdapter
from .settings import LlmSettings

__all__ = ["OUTPUTS", "LlmModel", "LlmSettings", "PromptTooLongError"]

OUTPUTS: dict[str, pa.DataType] = {
    "text": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "finish_reason": pa.string(),
}
"""The outputs the kind can give, with their Arrow types."""

_SMALL_FILE = 32 << 20
_SAMPLE = 1 << 20
_NO_LIMIT = 10_000_000  # a tokenizer's model_max_length this large means "unknown"


class PromptTooLongError(ItemError):
    """A prompt has more tokens than ``max_prompt_tokens`` (the item is dead-lettered, the job goes on)."""


@dataclass(frozen=True)
class _Prompts:
    """A tokenized batch: what ``preprocess`` hands to ``predict``."""

    token_ids: list[list[int]]
    seeds: list[int]


class LlmModel(ModelAdapter):
    """A causal LM from a local folder; see the module docstring for prompts, lengths and outputs."""

    kind = "llm"
    uses_gpu = True
    default_outputs = ["text"]
    settings_cls = LlmSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        self.settings: LlmSettings
        ms = self.model_spec
        unknown = [n for n in self.outputs if n not in OUTPUTS]
        if unknown:
            raise ModelLoadError(
                f"kind 'llm' has no output {unknown[0]!r} (from 'model.outputs')",
                hint=f"choose from: {', '.join(OUTPUTS)}",
            )
        self._check_settings()
        self.mode, self.columns = self._prompt_source()
        if ms.features is not None:
            self._check_columns(list(ms.features), "'model.features'")
        self.path = self.model_file()
        self._check_folder()
        self.tokenizer: Any = None
        self.engine: Any = None
        self.engine_name: str | None = None
        """transformers or vllm, after setup()."""
        self.chat = False
        self.prompt_limit: int | None = None
        """The longest prompt in tokens, after setup()."""
        self._checked: list[str] | None = None
        self._tokenizer_max: int | None = None
        self._tokenizer_lock = threading.Lock()

    # -- spec checks (cheap, no heavy imports) ------------------------------------------------------
    def _check_settings(self) -> None:
        s = self.settings
        if s.max_new_tokens < 1:
            raise ModelLoadError(f"'model.max_new_tokens' must be at least 1, not {s.max_new_tokens}")
        if s.max_prompt_tokens is not None and s.max_prompt_tokens < 1:
            raise ModelLoadError(f"'model.max_prompt_tokens' must be at least 1, not {s.max_prompt_tokens}")
        if s.temperature < 0:
            raise ModelLoadError(f"'model.temperature' must not be negative, not {s.temperature}")
        if not 0 < s.top_p <= 1:
            raise ModelLoadError(f"'model.top_p' must be in (0, 1], not {s.top_p}")
        given = [k for k in ("prompt_column", "prompt_template", "messages_column") if getattr(s, k) is not None]
        if len(given) > 1:
            raise ModelLoadError(
                f"kind 'llm' takes one of prompt_column, prompt_template and messages_column, not {given}",
                hint="keep the one that builds the prompt",
            )

    def _prompt_source(self) -> tuple[Literal["column", "template", "messages"], list[str]]:
        s, features = self.settings, self.model_spec.features
        if s.prompt_template is not None:
            return "template", _template_fields(s.prompt_template)
        if s.messages_column is not None:
            return "messages", [s.messages_column]
        if s.prompt_column is not None:
            return "column", [s.prompt_column]
        return "column", [features[0] if features and len(features) == 1 else "prompt"]

    def _check_columns(self, available: list[str], source: str) -> None:
        missing = [c for c in self.columns if c not in available]
        if missing:
            key = {"template": "prompt_template", "messages": "messages_column"}.get(self.mode, "prompt_column")
            raise SpecError(
                f"the prompt needs column {missing[0]!r} (from 'model.{key}'), which is not in {source} "
                f"{available}",
                hint=f"add {missing[0]!r} to [model] features, or set [model] {key} to use the columns there",
            )

    def _check_folder(self) -> None:
        trusted = self.model_spec.trusted
        if not os.path.isdir(self.path):
            raise ModelLoadError(
                f"kind 'llm' takes a model folder, but {self.path} is a file (from 'model.path')",
                hint="point 'model.path' at the folder holding config.json and the weights",
            )
        config = _read_json(os.path.join(self.path, "config.json"))
        if config is None:
            raise ModelLoadError(
                f"{self.path} has no config.json: not a Hugging Face model folder",
                hint="save the model with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)",
            )
        for name in ("config.json", "tokenizer_config.json"):
            data = _read_json(os.path.join(self.path, name))
            if data and data.get("auto_map") and not trusted:
                raise ModelLoadError(
                    f"refusing to load {self.path}: its {name} names custom code (auto_map) that transformers "
                    "would import and run",
                    hint="set trusted = true in [model] only for a model whose code you trust",
                )
        names = os.listdir(self.path)
        if not any(n.endswith((".safetensors", *PICKLED_SUFFIXES)) for n in names):
            raise ModelLoadError(
                f"{self.path} holds no weights (*.safetensors)", hint="save the model with save_pretrained"
            )
        refuse_pickled_weights(self.path, trusted=trusted)

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        try:
            import torch
            import transformers  # noqa: F401 - checked here so a missing extra fails with the hint
        except ImportError as exc:
            raise missing_extra("llm", exc.name or "transformers") from exc
        s = self.settings
        self.engine_name = choose_engine(
            s.engine, device=s.device, vllm_ok=vllm_installed(), gpu_ok=gpu_available()
        )
        self.tokenizer = self._load_tokenizer()
        template = getattr(self.tokenizer, "chat_template", None)
        if s.use_chat_template and not template:
            raise ModelLoadError(
                f"use_chat_template = true, but the tokenizer in {self.path} has no chat template",
                hint="remove use_chat_template, or use a tokenizer with a chat_template",
            )
        self.chat = bool(template) if s.use_chat_template is None else s.use_chat_template
        if self.engine_name == "vllm":
            from ._llm_engines import VllmEngine

            dtype = "auto" if s.dtype == "auto" else s.dtype
            self.engine = VllmEngine(
                self.path, trusted=self.model_spec.trusted, seed=s.seed, dtype=dtype, options=s.vllm_options
            )
            config: Any = importlib.import_module("transformers").AutoConfig.from_pretrained(
                self.path, local_files_only=True, trust_remote_code=self.model_spec.trusted
            )
        else:
            device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            if device == "cpu":
                torch.set_num_threads(self.threads)
            model = self._load_model(device)
            config = model.config
            self.engine = self._transformers_engine(model, device)
        self.prompt_limit = self._prompt_limit(config)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                self.path, local_files_only=True, trust_remote_code=self.model_spec.trusted
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load the tokenizer in {self.path}: {exc}",
                hint="save it with tokenizer.save_pretrained(folder) into the model folder",
            ) from exc
        tokenizer.padding_side = "left"
        # Prompt lengths are checked against max_prompt_tokens (an item error); the tokenizer's own
        # "longer than the maximum" log line would only repeat it.
        self._tokenizer_max = getattr(tokenizer, "model_max_length", None)
        tokenizer.model_max_length = _NO_LIMIT
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _load_model(self, device: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        hf_logging: Any = importlib.import_module("transformers.utils.logging")
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        dtype: Any = dtypes.get(self.settings.dtype, torch.float32 if device == "cpu" else "auto")
        progress = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one bar per worker per load is noise in a batch job's log
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                self.path,
                local_files_only=True,
                trust_remote_code=self.model_spec.trusted,
                use_safetensors=None if self.model_spec.trusted else True,
                dtype=dtype,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(
                f"cannot load a causal language model from {self.path}: {type(exc).__name__}: {exc}",
                hint="the folder must hold a model transformers' AutoModelForCausalLM can load",
            ) from exc
        finally:
            if progress:
                hf_logging.enable_progress_bar()
        return model.to(device).eval()

    def _transformers_engine(self, model: Any, device: str) -> Any:
        from ._llm_engines import TransformersEngine

        generation_config: Any = importlib.import_module("transformers").GenerationConfig

        found = model.generation_config.eos_token_id
        eos = set(found if isinstance(found, list) else [] if found is None else [found])
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        pad = self.tokenizer.pad_token_id
        pad_id = int(pad) if pad is not None else 0
        # Our own generation config, so a checkpoint's sampling defaults (do_sample, temperature) never
        # mix with the job's keys.
        model.generation_config = generation_config(
            bos_token_id=model.generation_config.bos_token_id,
            eos_token_id=sorted(eos) or None,
            pad_token_id=pad_id,
        )
        return TransformersEngine(model, pad_id=pad_id, eos_ids=eos, device=device)

    def _prompt_limit(self, config: Any) -> int | None:
        s = self.settings
        if s.max_prompt_tokens is not None:
            return s.max_prompt_tokens
        lengths = [int(getattr(config, k)) for k in ("max_position_embeddings", "n_positions", "seq_length")
                   if isinstance(getattr(config, k, None), int)]
        engine_max = getattr(self.engine, "max_model_len", lambda: None)()
        if isinstance(engine_max, int):
            lengths.append(engine_max)
        tokenizer_max = self._tokenizer_max
        if isinstance(tokenizer_max, int) and tokenizer_max < _NO_LIMIT:
            lengths.append(tokenizer_max)
        if not lengths:
            return None
        limit = min(lengths) - s.max_new_tokens
        if limit < 1:
            raise ModelLoadError(
                f"max_new_tokens = {s.max_new_tokens} leaves no room for a prompt: the model's maximum length is "
                f"{min(lengths)} tokens",
                hint="lower 'model.max_new_tokens'",
            )
        return limit

    # -- scoring ----------------------------------------------------------------------------------
    def preprocess(self, batch: pa.RecordBatch) -> _Prompts:
        if self.tokenizer is None:
            raise ModelLoadError("LlmModel.preprocess() called before setup()")
        names = batch.schema.names
        if names != self._checked:
            self._check_columns(names, "the feature columns")
            self._checked = names
        prompts = self._prompts(batch)
        if not prompts:
            return _Prompts([], [])
        # The reader thread encodes while the model thread decodes: a Rust tokenizer refuses to be used
        # from two threads when one call changes its settings ("Already borrowed").
        with self._tokenizer_lock:
            texts = [self._render(p) for p in prompts]
            encoded = self.tokenizer(texts, add_special_tokens=not self.chat, padding=False, truncation=False)
        token_ids = [list(ids) for ids in encoded["input_ids"]]
        limit = self.prompt_limit
        for row, ids in enumerate(token_ids):
            if not ids:
                raise ItemError(f"row {row} of the batch has an empty prompt", hint="give every row some text")
            if limit is not None and len(ids) > limit:
                raise PromptTooLongError(
                    f"the prompt has {len(ids)} tokens, more than max_prompt_tokens = {limit}",
                    hint="shorten the prompt, or raise [model] max_prompt_tokens (the model's length limit "
                    "minus max_new_tokens is the most that fits)",
                )
        seed = self.settings.seed
        return _Prompts(token_ids, [_row_seed(seed, text) for text in texts])

    def _prompts(self, batch: pa.RecordBatch) -> list[Any]:
        """Per row: the prompt text, or for messages the list of chat messages."""
        if self.mode == "template":
            template = self.settings.prompt_template
            assert template is not None
            rows = batch.select(self.columns).to_pylist() if self.columns else [{}] * batch.num_rows
            try:
                return [template.format_map({k: "" if v is None else v for k, v in row.items()}) for row in rows]
            except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
                raise ItemError(f"prompt_template cannot be formatted with this row: {exc}") from exc
        values = batch.column(self.columns[0]).to_pylist()
        if any(v is None for v in values):
            raise ItemError(f"the prompt column {self.columns[0]!r} is null", hint="give every row a prompt")
        if self.mode == "messages":
            return [_messages(v) for v in values]
        return [str(v) for v in values]

    def _render(self, prompt: Any) -> str:
        system = self.settings.system_prompt
        if isinstance(prompt, list):
            messages = prompt
            if system is not None and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": system}, *messages]
            if not self.chat:
                return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        elif self.chat:
            messages = ([{"role": "system", "content": system}] if system is not None else []) + [
                {"role": "user", "content": prompt}
            ]
        else:
            return prompt if system is None else f"{system}\n\n{prompt}"
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template can raise anything (jinja errors, raise_exception)
            raise ItemError(f"the chat template rejected the messages: {type(exc).__name__}: {exc}") from exc
        return str(text)

    def predict(self, inputs: _Prompts) -> dict[str, list[Any]]:
        if self.engine is None:
            raise ModelLoadError("LlmModel.predict() called before setup()")
        if not inputs.token_ids:
            return {name: [] for name in OUTPUTS}
        s = self.settings
        result: Generation = self.engine.generate(
            inputs.token_ids,
            inputs.seeds,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            decode=self._decode,
        )
        return {
            "text": result.texts,
            "prompt_tokens": [len(ids) for ids in inputs.token_ids],
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reasons,
        }

    def _decode(self, tokens: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def postprocess(self, result: dict[str, list[Any]], num_rows: int) -> dict[str, pa.Array]:
        columns = {name: pa.array(result[name], type=OUTPUTS[name]) for name in self.outputs}
        for name, column in columns.items():
            if len(column) != num_rows:
                raise ItemError(f"output {name!r} has {len(column)} values for {num_rows} rows")
        return columns

    def fingerprint(self) -> str:
        return _folder_digest(self.path)

    def close(self) -> None:
        self.engine = None


def _template_fields(template: str) -> list[str]:
    """The column names a ``str.format`` template refers to (``{a.b}`` and ``{a[0]}`` count as ``a``)."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ModelLoadError(
            f"'model.prompt_template' is not a valid format string: {exc}",
            hint="write columns as {name}; a literal brace is {{ or }}",
        ) from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root = name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ModelLoadError(
                f"'model.prompt_template' has a positional field {{{name}}}",
                hint="name the column: {title}",
            )
        if root not in fields:
            fields.append(root)
    return fields


def _messages(value: Any) -> list[dict[str, str]]:
    """Chat messages from a JSON string (or a list): content parts are joined into one text."""
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except ValueError as exc:
        raise ItemError(f"the messages column is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise ItemError("the messages column must hold a non-empty JSON list of {role, content} objects")
    messages = []
    for message in data:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ItemError("each message must be an object with a 'role' and a 'content'")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
            )
        messages.append({"role": message["role"], "content": "" if content is None else str(content)})
    return messages


def _row_seed(seed: int, text: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _folder_digest(folder: str) -> str:
    """A digest of every file in the model folder: whole files up to 32 MiB, and for larger ones (weight
    shards) the size plus sampled blocks, so it stays cheap for multi-gigabyte checkpoints."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            digest.update(f"{os.path.relpath(path, folder)}\0{size}\0".encode())
            with open(path, "rb") as fh:
                if size <= _SMALL_FILE:
                    while block := fh.read(1 << 20):
                        digest.update(block)
                    continue
                for i in range(9):
                    fh.seek((size - _SAMPLE) * i // 8)
                    digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()[:16]
