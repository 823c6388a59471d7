"""``kind = "sentence-transformers"``: text embeddings from a local sentence-transformers model folder.

The output (default name ``embedding``) is a fixed-size float32 list per row, e.g. ``list<float32>[384]``
for all-MiniLM-L6-v2, ready for a vector store. The vectors are the ones
``SentenceTransformer.encode(texts, normalize_embeddings=normalize)`` gives (same tokenizer, modules,
pooling, prompt and ``truncate_dim``), up to float rounding from different padding.

Overlap: the texts are tokenized in ``preprocess`` (``SentenceTransformer.preprocess``, or ``tokenize``
on older versions), on the engine's reader thread, while the model runs the previous batch; ``predict``
only runs the modules. As in ``encode``, a batch is cut into ``micro_batch`` texts per forward pass,
longest first, and the vectors are put back in input order. On the CPU, ``parallel = "batches"`` (the
default) scores ``threads_per_worker`` batches at once, one torch thread each (see ``TorchAdapter``).

Text comes from ``text_column`` (or the only feature); a null, or bytes that are not UTF-8, make that
row an item error. Texts longer than the model's ``max_seq_length`` are truncated, as ``encode`` does.
``trust_remote_code`` and pickled weights (``pytorch_model.bin``, in the folder or a module's folder)
need ``trusted = true``. Nothing is downloaded (``local_files_only``); the
fingerprint covers every file in the folder.

``[model] accelerate = "onnx"`` (or ``"onnx-int8"``, or ``"auto"``) runs the transformer through ONNX Runtime
(``infermill.accelerate.onnx_encoder``), verified against this adapter's own vectors on the first batch.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError
from ..spec import JobSpec
from . import missing_extra
from ._text import RowPicker, chunks, folder_digest, pick_column, take_rows, text_values
from ._torch_runtime import (
    TorchAdapter,
    check_device,
    classify_torch_error,
    import_torch,
    no_progress_bars,
    pin,
    release_cached_memory,
    select_device,
    to_device,
    to_numpy,
    torch_dtype,
)
from ._weights import module_folders, refuse_pickled_weights, unpickling_refused
from .settings import SentenceSettings

if TYPE_CHECKING:
    import torch

    from ..accelerate.base import Accelerator

__all__ = ["SentenceModel", "SentenceSettings"]


@dataclass
class _Prepared:
    """A tokenized batch: ``parts`` (the micro batches' features) hold the rows in ``order``."""

    rows: int
    order: np.ndarray
    parts: list[dict[str, Any]]
    sizes: list[int] = field(default_factory=list)
    """Rows of each part."""

    def __len__(self) -> int:
        return self.rows

    def take_rows(self, index: Sequence[int] | np.ndarray) -> _Prepared:
        """The rows at ``index`` (positions in the parts' order: longest text first), still tokenized and cut
        into the same micro batches (see ``_text.take_rows``)."""
        parts, sizes = take_rows(self.parts, self.sizes, index)
        return _Prepared(sum(sizes), np.arange(sum(sizes)), parts, sizes)

    @property
    def iloc(self) -> RowPicker[_Prepared]:
        """``iloc[index]`` is ``take_rows(index)`` (how ``accelerate.verify`` samples a batch)."""
        return RowPicker(self.take_rows)


class SentenceModel(TorchAdapter):
    """A sentence-transformers embedding model; see the module docstring."""

    kind = "sentence-transformers"
    uses_gpu = True
    default_outputs = ["embedding"]
    settings_cls = SentenceSettings
    settings: SentenceSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        s, ms = self.settings, self.model_spec
        check_device(s.device, self.kind)
        if s.trust_remote_code and not ms.trusted:
            raise ModelLoadError(
                "trust_remote_code = true runs Python code shipped in the model folder",
                hint="set trusted = true in [model] as well, only for a model folder you trust",
            )
        if s.micro_batch < 1:
            raise ModelLoadError(f"'model.micro_batch' must be at least 1, not {s.micro_batch}")
        if ms.outputs is not None and len(ms.outputs) != 1:
            raise ModelLoadError(
                f"kind '{self.kind}' gives one output (the embedding), but 'model.outputs' has {len(ms.outputs)} names",
                hint='give one name, e.g. outputs = ["embedding"]',
            )
        self.path = self.model_file()
        if not os.path.isdir(self.path):
            raise ModelLoadError(
                f"{self.path} is not a folder; kind '{self.kind}' loads a model folder",
                hint="save the model with SentenceTransformer.save(folder), and point 'model.path' at the folder",
            )
        refuse_pickled_weights(self.path, trusted=ms.trusted, subfolders=module_folders(self.path))
        self.model: Any = None
        """The SentenceTransformer, after setup()."""
        self.device: torch.device | None = None
        self.dimension: int | None = None
        """Length of each embedding, after setup()."""
        self._prompt: str | None = None
        self._lock = threading.Lock()  # a fast tokenizer must not be used by two threads at once

    def setup(self) -> None:
        torch = import_torch(self.kind)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise missing_extra(self.kind, "sentence-transformers") from exc
        torch.set_num_threads(self.threads)
        s = self.settings
        device = select_device(s.device, torch)
        try:
            with no_progress_bars():
                model = SentenceTransformer(
                    self.path,
                    device=str(device),
                    local_files_only=True,
                    trust_remote_code=s.trust_remote_code,
                    truncate_dim=s.truncate_dim,
                )
        except pickle.UnpicklingError as exc:
            raise unpickling_refused(self.path, exc) from exc
        except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
            hint = "check that the folder holds a sentence-transformers model (modules.json, weights, tokenizer)"
            if "trust_remote_code" in str(exc):
                hint = "the model needs its own code: set trust_remote_code = true and trusted = true, if you trust it"
            raise ModelLoadError(f"cannot load {self.path}: {type(exc).__name__}: {exc}", hint=hint) from exc
        model.eval()
        if s.dtype != "float32":
            model.to(dtype=torch_dtype(s.dtype, torch))
        if s.max_seq_length is not None:
            model.max_seq_length = s.max_seq_length
        self._prompt = self._resolve_prompt(model)
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.model, self.device, self.dimension = model, device, dimension()
        if self.model_spec.features is not None:
            pick_column(self.model_spec.features, s.text_column, self.kind)

    def _resolve_prompt(self, model: Any) -> str | None:
        s = self.settings
        if s.prompt is not None:
            return s.prompt
        prompts: dict[str, str] = getattr(model, "prompts", None) or {}
        name = s.prompt_name or getattr(model, "default_prompt_name", None)
        if s.prompt_name is not None and s.prompt_name not in prompts:
            raise ModelLoadError(
                f"prompt_name {s.prompt_name!r} is not one of the model's prompts {sorted(prompts)}",
                hint="use one of them, give the text itself as 'model.prompt', or leave both out",
            )
        return prompts.get(name) if name else None

    def preprocess(self, batch: pa.RecordBatch) -> _Prepared:
        if self.model is None or self.device is None:
            raise ModelLoadError("SentenceModel.preprocess() called before setup()")
        name = pick_column(batch.schema.names, self.settings.text_column, self.kind)
        texts = text_values(batch.column(name), name, self.kind)
        order, groups = chunks([len(t) for t in texts], self.settings.micro_batch)
        parts = []
        with self._lock:
            for group in groups:
                parts.append(pin(self._tokenize([texts[i] for i in group]), self.device))
        return _Prepared(len(texts), order, parts, [len(group) for group in groups])

    def token_counts(self, features: pa.RecordBatch) -> np.ndarray | None:
        """Tokens of each row's text as the model sees it (prompt and special tokens included, truncated to
        ``max_seq_length``), for ``[batch] max_tokens``."""
        if self.model is None:
            return None
        name = pick_column(features.schema.names, self.settings.text_column, self.kind)
        texts = text_values(features.column(name), name, self.kind)
        with self._lock:
            mask = self._tokenize(texts).get("attention_mask")
        return None if mask is None else np.asarray(mask.sum(dim=1).numpy(), dtype=np.int64)

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        model, prompt = self.model, self._prompt
        if hasattr(model, "preprocess"):  # sentence-transformers 6+
            features: dict[str, Any] = model.preprocess(texts, prompt=prompt)
            return features
        if prompt:
            texts = [prompt + t for t in texts]
        features = model.tokenize(texts)
        return features

    def predict(self, inputs: _Prepared) -> tuple[_Prepared, list[np.ndarray]]:
        if self.model is None or self.device is None:
            raise ModelLoadError("SentenceModel.predict() called before setup()")
        torch = import_torch(self.kind)
        embeddings = []
        try:
            with torch.inference_mode():
                for part in inputs.parts:
                    embeddings.append(self.finish(self.model(to_device(part, self.device))))
                # Copied back once every forward pass is queued: on a GPU the passes run back to back.
                vectors = [to_numpy(e).astype(np.float32, copy=False) for e in embeddings]
        except Exception as exc:
            if classify_torch_error(exc) == "oom":
                release_cached_memory(self.device)
            raise
        return inputs, vectors

    def finish(self, features: dict[str, Any]) -> torch.Tensor:
        """The job's embedding from the model modules' output: ``truncate_dim``, then ``normalize``. Shared by
        ``predict`` and the ONNX Runtime encoder (``infermill.accelerate.onnx_encoder``)."""
        embedding: torch.Tensor = features["sentence_embedding"]
        truncate = self.settings.truncate_dim
        if truncate is not None:
            embedding = embedding[:, :truncate]
        if self.settings.normalize:
            functional = import_torch(self.kind).nn.functional
            normalized: torch.Tensor = functional.normalize(embedding.float(), p=2, dim=1)
            return normalized
        return embedding

    def accelerators(self) -> list[Accelerator]:
        from ..accelerate.autocast import Bf16Autocast
        from ..accelerate.onnx_encoder import OnnxEncoder, OnnxInt8Encoder

        return [OnnxEncoder(), OnnxInt8Encoder(), Bf16Autocast()]

    def postprocess(self, result: tuple[_Prepared, list[np.ndarray]], num_rows: int) -> dict[str, pa.Array]:
        prepared, vectors = result
        width = int(vectors[0].shape[1]) if vectors else int(self.dimension or 0)
        matrix = np.empty((num_rows, width), dtype=np.float32)
        if vectors:
            matrix[prepared.order] = np.concatenate(vectors)
        flat = pa.array(matrix.reshape(-1), type=pa.float32())
        return {self.outputs[0]: pa.FixedSizeListArray.from_arrays(flat, width)}

    def classify_error(self, exc: BaseException) -> Literal["oom", "fatal"] | None:
        return classify_torch_error(exc)

    def fingerprint(self) -> str:
        return folder_digest(self.path)
