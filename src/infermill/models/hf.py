"""``kind = "hf"``: a Hugging Face ``transformers`` model saved in a local folder (``save_pretrained``).

``task`` chooses the model head and the outputs (defaults in brackets; ``model.outputs`` renames them
in order):

* ``text-classification`` [label, score]: the top label and its probability; ``all_scores = true``
  adds ``scores``, a list of {label, score} in the model's label order. Softmax, or sigmoid for
  multi-label and single-logit models, as the transformers pipeline chooses (``function_to_apply``).
* ``token-classification`` [entities]: a list of {entity, score, word, start, end} per text, grouped
  by ``aggregation_strategy`` with the pipeline's own logic; ``ignore_labels`` (default ``["O"]``).
* ``zero-shot-classification`` [label, score]: an NLI model scores each of ``candidate_labels`` with
  ``hypothesis_template``; ``all_scores`` adds the list of {label, score} in candidate order;
  ``multi_label`` scores each label on its own.
* ``feature-extraction`` [embedding]: the last hidden state pooled (``pooling = "mean"`` over the
  attention mask, or ``"cls"``), optionally L2-normalised, as a fixed-size float32 list.
* ``fill-mask`` [token, score]: the top token for the one mask token of each text; ``all_scores`` adds
  the ``top_k`` best as a list of {token, score, token_id}.
* ``image-classification`` [label, score]: images from a binary column (encoded bytes) or a string
  column of paths (relative paths are resolved against the job file's folder).

Text comes from ``text_column`` (or the only feature); a null, or bytes that are not UTF-8, make that
row an item error. Over-long texts are cut at the model's maximum length (``truncation = true``), or
with ``truncation = false`` the row is an item error.

Overlap: for every task, the tokenizer (or image processor) runs in ``preprocess``, on the engine's
reader thread, while the model runs the previous batch; ``predict`` only runs the model. A batch is
split into ``micro_batch`` rows per forward pass, longest texts first, so similar lengths share
padding; results are put back in input order.

``trust_remote_code`` (code shipped in the model folder) and pickled weights (``pytorch_model.bin``) are
allowed only with ``trusted = true``. Nothing
is downloaded: the folder must hold the config, weights and tokenizer (``local_files_only``). The
fingerprint covers every file in the folder.

``[model] accelerate = "onnx"`` (or ``"onnx-int8"``, or ``"auto"``) runs ``text-classification`` and
``feature-extraction`` models through ONNX Runtime (``infermill.accelerate.onnx_encoder``), verified against
this adapter's own results on the first batch.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from ..errors import ItemError, ModelLoadError
from ..spec import JobSpec
from . import missing_extra
from ._hf_tasks import TASKS, Encoded, Task, make_task
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
    torch_dtype,
)
from ._weights import refuse_pickled_weights, unpickling_refused
from .settings import HFSettings

if TYPE_CHECKING:
    import torch

    from ..accelerate.base import Accelerator

__all__ = ["HFModel", "HFSettings"]



@dataclass
class _Prepared:
    """A preprocessed batch: its micro batches and the row order they are in."""

    rows: int
    order: np.ndarray
    parts: list[Encoded]
    sizes: list[int] = field(default_factory=list)
    """Rows of each part."""

    def __len__(self) -> int:
        return self.rows

    def take_rows(self, index: Sequence[int] | np.ndarray) -> _Prepared:
        """The rows at ``index`` (positions in the parts' order), still in their micro batches (see
        ``_text.take_rows``). Only for tasks whose parts carry nothing per row besides the tensors (the ones
        ``[model] accelerate`` converts: text-classification, feature-extraction)."""
        if any(part.extra for part in self.parts):
            raise ValueError("this task's micro batches carry per-row values besides the tensors")
        tensors, sizes = take_rows([part.tensors for part in self.parts], self.sizes, index)
        return _Prepared(sum(sizes), np.arange(sum(sizes)), [Encoded(t) for t in tensors], sizes)

    @property
    def iloc(self) -> RowPicker[_Prepared]:
        """``iloc[index]`` is ``take_rows(index)`` (how ``accelerate.verify`` samples a batch)."""
        return RowPicker(self.take_rows)


class HFModel(TorchAdapter):
    """A transformers model for one task; see the module docstring."""

    kind = "hf"
    uses_gpu = True
    settings_cls = HFSettings
    settings: HFSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        s, ms = self.settings, self.model_spec
        if s.task is None:
            raise ModelLoadError("kind 'hf' needs 'model.task'", hint=f"set [model] task to one of: {', '.join(TASKS)}")
        check_device(s.device, self.kind)
        if s.trust_remote_code and not ms.trusted:
            raise ModelLoadError(
                "trust_remote_code = true runs Python code shipped in the model folder",
                hint="set trusted = true in [model] as well, only for a model folder you trust",
            )
        if s.micro_batch < 1:
            raise ModelLoadError(f"'model.micro_batch' must be at least 1, not {s.micro_batch}")
        self.path = self.model_file()
        if not os.path.isfile(os.path.join(self.path, "config.json")):
            raise ModelLoadError(
                f"{self.path} is not a Hugging Face model folder (it has no config.json)",
                hint="save the model and its tokenizer with model.save_pretrained(folder) and "
                "tokenizer.save_pretrained(folder), and point 'model.path' at the folder",
            )
        refuse_pickled_weights(self.path, trusted=ms.trusted)
        self.task_cls: type[Task] = TASKS[s.task]
        self.task: Task | None = None
        """The task, with the loaded model and tokenizer (after setup)."""
        self.device: torch.device | None = None
        self._lock = threading.Lock()  # a fast tokenizer must not be used by two threads at once
        if ms.outputs is not None and len(ms.outputs) != len(self._default_outputs()):
            raise ModelLoadError(
                f"task '{s.task}' gives {len(self._default_outputs())} output(s) {self._default_outputs()}, but "
                f"'model.outputs' has {len(ms.outputs)} names",
                hint="give one name per output (they rename the defaults, in order), or leave 'model.outputs' out",
            )

    def _default_outputs(self) -> list[str]:
        return self.task_cls.output_names(self.settings)

    @property
    def outputs(self) -> list[str]:
        return list(self.model_spec.outputs or self._default_outputs())

    @property
    def column_key(self) -> str:
        return "image_column" if self.task_cls.reads == "image" else "text_column"

    def setup(self) -> None:
        torch = import_torch(self.kind)
        try:
            import transformers
        except ImportError as exc:
            raise missing_extra(self.kind, "transformers") from exc
        torch.set_num_threads(self.threads)
        s = self.settings
        device = select_device(s.device, torch)
        with no_progress_bars():
            model, processor = self._load(transformers)
        model.eval()
        model.to(device=device, dtype=torch_dtype(s.dtype, torch))
        max_length = self._max_length(model, processor)
        assert s.task is not None
        self.task = make_task(s.task, s, model, processor, max_length)
        self.device = device
        features = self.model_spec.features
        if features is not None:
            pick_column(features, getattr(s, self.column_key), self.kind, self.column_key)

    def _load(self, transformers: Any) -> tuple[Any, Any]:
        s = self.settings
        options = {"local_files_only": True, "trust_remote_code": s.trust_remote_code}
        auto_model = getattr(transformers, self.task_cls.model_class)
        try:
            if self.task_cls.reads == "image":
                processor = transformers.AutoImageProcessor.from_pretrained(self.path, **options)
            else:
                processor = transformers.AutoTokenizer.from_pretrained(self.path, **options)
            model = auto_model.from_pretrained(self.path, **options)
        except ImportError as exc:
            raise ModelLoadError(
                f"cannot load {self.path} for task '{s.task}': {exc}", hint="install the package it names"
            ) from exc
        except pickle.UnpicklingError as exc:
            raise unpickling_refused(self.path, exc) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            hint = "check that the folder holds the model and its tokenizer (save_pretrained), for this task"
            if "trust_remote_code" in str(exc):
                hint = "the model needs its own code: set trust_remote_code = true and trusted = true, if you trust it"
            raise ModelLoadError(f"cannot load {self.path} for task '{s.task}': {exc}", hint=hint) from exc
        return model, processor

    def _max_length(self, model: Any, processor: Any) -> int:
        if self.settings.max_length is not None:
            return self.settings.max_length
        limit = getattr(processor, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
        positions = getattr(model.config, "max_position_embeddings", None)
        return int(positions) if isinstance(positions, int) and positions > 0 else 512

    # -- scoring -------------------------------------------------------------------------------
    def preprocess(self, batch: pa.RecordBatch) -> _Prepared:
        task = self.task
        if task is None or self.device is None:
            raise ModelLoadError("HFModel.preprocess() called before setup()")
        name = pick_column(batch.schema.names, getattr(self.settings, self.column_key), self.kind, self.column_key)
        column = batch.column(name)
        if task.reads == "image":
            values: list[Any] = self._images(column, name)
            order = np.arange(len(values))
            groups = [order[i : i + task.rows_per_chunk()] for i in range(0, len(order), task.rows_per_chunk())]
        else:
            values = text_values(column, name, self.kind)
            order, groups = chunks([len(v) for v in values], task.rows_per_chunk())
        parts = []
        with self._lock:
            for group in groups:
                encoded = task.encode([values[i] for i in group])
                encoded.tensors = pin(encoded.tensors, self.device)
                parts.append(encoded)
        return _Prepared(len(values), order, parts, [len(group) for group in groups])

    def token_counts(self, features: pa.RecordBatch) -> np.ndarray | None:
        """Tokens of each row's text (special tokens included, truncated as the calls are), for
        ``[batch] max_tokens``; None for image tasks. Zero-shot counts the text alone, not each label pair."""
        task = self.task
        if task is None or task.reads == "image":
            return None
        name = pick_column(features.schema.names, getattr(self.settings, self.column_key), self.kind, self.column_key)
        values = text_values(features.column(name), name, self.kind)
        truncate = bool(self.settings.truncation)
        with self._lock:
            ids = task.tokenizer(values, truncation=truncate, max_length=task.max_length if truncate else None)
        return np.array([len(row) for row in ids["input_ids"]], dtype=np.int64)

    def predict(self, inputs: _Prepared) -> tuple[_Prepared, list[Any]]:
        task = self.task
        if task is None or self.device is None:
            raise ModelLoadError("HFModel.predict() called before setup()")
        torch = import_torch(self.kind)
        results = []
        try:
            with torch.inference_mode():
                for part in inputs.parts:
                    results.append(task.forward(to_device(part.tensors, self.device)))
        except Exception as exc:
            if classify_torch_error(exc) == "oom":
                release_cached_memory(self.device)
            raise
        return inputs, results

    def postprocess(self, result: tuple[_Prepared, list[Any]], num_rows: int) -> dict[str, pa.Array]:
        task = self.task
        assert task is not None
        prepared, raws = result
        if prepared.rows != num_rows:
            raise ItemError(f"the model gave {prepared.rows} results for a batch of {num_rows} rows")
        types = task.types()
        pieces: list[list[pa.Array]] = [[] for _ in types]
        # A fast tokenizer must not decode here while the reader (or another lane) encodes with it.
        with self._lock if task.finish_uses_tokenizer else nullcontext():
            for raw, part in zip(raws, prepared.parts, strict=True):
                for i, array in enumerate(task.finish(raw, part)):
                    pieces[i].append(array)
        inverse = np.empty(num_rows, dtype=np.int64)
        inverse[prepared.order] = np.arange(num_rows)
        columns = {}
        for name, kind, parts in zip(self.outputs, types, pieces, strict=True):
            whole = pa.concat_arrays(parts) if parts else pa.array([], type=kind)
            columns[name] = whole.take(pa.array(inverse)) if num_rows else whole
        return columns

    def _images(self, column: pa.Array, name: str) -> list[Any]:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError as exc:
            raise missing_extra(self.kind, "pillow") from exc
        import io

        t = column.type
        is_path = pa.types.is_string(t) or pa.types.is_large_string(t)
        if not (is_path or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise ModelLoadError(
                f"feature '{name}' has type {t}; image-classification reads encoded image bytes (binary) or "
                "file paths (string)"
            )
        images = []
        for i, value in enumerate(column.to_pylist()):
            if value is None:
                raise ItemError(f"feature '{name}' is null in row {i} of the batch; there is no image to read")
            try:
                source = self.spec.resolve(value) if is_path else io.BytesIO(value)
                with Image.open(source) as image:
                    images.append(image.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise ItemError(f"cannot read the image in row {i} of '{name}': {exc}") from exc
        return images

    def classify_error(self, exc: BaseException) -> Literal["oom", "fatal"] | None:
        return classify_torch_error(exc)

    def fingerprint(self) -> str:
        return folder_digest(self.path)

    def accelerators(self) -> list[Accelerator]:
        from ..accelerate.onnx_encoder import OnnxClassifier, OnnxEncoder, OnnxInt8Classifier, OnnxInt8Encoder

        task = self.task
        if task is None or task.name not in ("text-classification", "feature-extraction"):
            return []
        if task.name == "feature-extraction":
            return [OnnxEncoder(), OnnxInt8Encoder()]
        return [OnnxClassifier(task.probabilities), OnnxInt8Classifier(task.probabilities)]
