"""The ``kind = "hf"`` tasks: how each one encodes a micro batch (on the reader thread), runs the model
and turns the result into typed Arrow columns. Used by :mod:`infermill.models.hf` only.

Each task turns a micro batch into ``Encoded`` (tensors for the model plus what the task needs to
finish), ``forward`` runs the model and returns CPU numpy arrays, and ``finish`` builds one Arrow array
per output for the micro batch's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import ItemError, ModelLoadError
from ._torch_runtime import to_numpy

if TYPE_CHECKING:
    from .hf import HFSettings

__all__ = ["TASKS", "Encoded", "Task", "make_task"]

LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])
ENTITY = pa.struct(
    [
        ("entity", pa.string()),
        ("score", pa.float32()),
        ("word", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
    ]
)
TOKEN_SCORE = pa.struct([("token", pa.string()), ("score", pa.float32()), ("token_id", pa.int64())])


@dataclass
class Encoded:
    """One micro batch, ready for the model."""

    tensors: dict[str, Any]
    """Keyword arguments of the model's forward (CPU tensors, pinned when bound for a GPU)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What ``finish`` needs besides the model's output (texts, offsets, mask positions)."""


class Task:
    """Base of the tasks. ``model_class`` is the transformers Auto class the task loads."""

    name: str
    model_class = "AutoModel"
    finish_uses_tokenizer = False
    """``finish`` decodes with the tokenizer: the adapter holds its tokenizer lock around it."""
    reads = "text"
    base_outputs: tuple[str, ...] = ()
    """Default output names (the adapter renames them positionally when 'model.outputs' is set)."""
    has_scores = False
    """Whether ``all_scores`` adds a ``scores`` list column."""

    def __init__(self, settings: HFSettings, model: Any, tokenizer: Any, max_length: int) -> None:
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.check()

    @classmethod
    def output_names(cls, settings: HFSettings) -> list[str]:
        extra = ["scores"] if cls.has_scores and settings.all_scores else []
        return [*cls.base_outputs, *extra]

    def check(self) -> None:
        """Setup-time checks of the settings against the loaded model."""

    def types(self) -> list[pa.DataType]:
        """The Arrow type of each output (also what an empty batch gives)."""
        raise NotImplementedError

    def rows_per_chunk(self) -> int:
        return max(1, self.settings.micro_batch)

    def encode(self, values: list[Any]) -> Encoded:
        raise NotImplementedError

    def forward(self, tensors: dict[str, Any]) -> Any:
        return to_numpy(self.traced(tensors))

    def traced(self, tensors: dict[str, Any]) -> Any:
        """The model's part of ``forward``, tensors in and one tensor out (what ``[model] accelerate =
        "onnx"`` exports, for the tasks it converts)."""
        return self.model(**tensors).logits

    def finish(self, raw: Any, encoded: Encoded) -> list[pa.Array]:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def tokenize(self, first: list[str], second: list[str] | None = None, **extra: Any) -> Any:
        """Tokenize with padding; over-long texts are truncated, or an ItemError with truncation = false."""
        truncate = self.settings.truncation
        strategy: Any = ("only_first" if second is not None else True) if truncate else False
        encoded = self.tokenizer(
            first,
            second,
            padding=True,
            truncation=strategy,
            max_length=self.max_length if truncate else None,
            return_tensors="pt",
            **extra,
        )
        if not truncate and len(first):
            lengths = encoded["attention_mask"].sum(dim=1)
            longest = int(lengths.max())
            if longest > self.max_length:
                row = int(lengths.argmax())
                raise ItemError(
                    f"a text is {longest} tokens long, more than the model's limit of {self.max_length} "
                    f"(batch row {row} of this micro batch)",
                    hint="set [model] truncation = true to cut long texts, or split them before scoring",
                )
        return encoded

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax, sigmoid or nothing, chosen as the transformers pipelines choose it."""
        how = self.settings.function_to_apply
        config = self.model.config
        if how == "auto":
            problem = getattr(config, "problem_type", None)
            if problem == "regression":
                how = "none"
            elif problem == "multi_label_classification" or config.num_labels == 1:
                how = "sigmoid"
            else:
                how = "softmax"
        logits = logits.astype(np.float32, copy=False)
        if how == "sigmoid":
            return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)
        if how == "softmax":
            return softmax(logits)
        return logits

    def labelled(self, scores: np.ndarray, labels: list[str]) -> list[pa.Array]:
        """Top label and score, plus every label's score when all_scores is set."""
        top = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
        names = np.asarray(labels, dtype=object)
        columns = [
            pa.array(names[top].tolist() if len(top) else [], type=pa.string()),
            pa.array(scores[np.arange(len(top)), top], type=pa.float32()),
        ]
        if self.settings.all_scores:
            columns.append(_label_scores(scores, labels))
        return columns

    def label_names(self) -> list[str]:
        id2label = getattr(self.model.config, "id2label", None) or {}
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(self.model.config.num_labels)]


class TextClassification(Task):
    name = "text-classification"
    model_class = "AutoModelForSequenceClassification"

    base_outputs = ("label", "score")
    has_scores = True

    def types(self) -> list[pa.DataType]:
        return [pa.string(), pa.float32(), pa.list_(LABEL_SCORE)][: len(self.output_names(self.settings))]

    def encode(self, values: list[Any]) -> Encoded:
        return Encoded(dict(self.tokenize(values)))

    def finish(self, raw: Any, encoded: Encoded) -> list[pa.Array]:
        return self.labelled(self.probabilities(raw), self.label_names())


class ImageClassification(TextClassification):
    name = "image-classification"
    model_class = "AutoModelForImageClassification"
    reads = "image"

    def encode(self, values: list[Any]) -> Encoded:
        return Encoded(dict(self.tokenizer(images=values, return_tensors="pt")))


class ZeroShotClassification(Task):
    name = "zero-shot-classification"
    model_class = "AutoModelForSequenceClassification"

    base_outputs = ("label", "score")
    has_scores = True

    def check(self) -> None:
        labels = self.settings.candidate_labels
        if not labels:
            raise ModelLoadError(
                "task 'zero-shot-classification' needs 'model.candidate_labels'",
                hint='set [model] candidate_labels = ["sports", "politics", ...]',
            )
        if "{}" not in self.settings.hypothesis_template:
            raise ModelLoadError(
                f"'model.hypothesis_template' = {self.settings.hypothesis_template!r} has no '{{}}' for the label",
                hint='for example: hypothesis_template = "This example is {}."',
            )
        self.entailment = next(
            (int(i) for label, i in self.model.config.label2id.items() if str(label).lower().startswith("entail")), -1
        )
        if self.entailment == -1:
            raise ModelLoadError(
                "the model's label2id names no 'entailment' label, so it cannot be used for zero-shot classification",
                hint="use a model fine-tuned on NLI (its labels include 'entailment')",
            )
        self.contradiction = -1 if self.entailment == 0 else 0

    def types(self) -> list[pa.DataType]:
        return [pa.string(), pa.float32(), pa.list_(LABEL_SCORE)][: len(self.output_names(self.settings))]

    def rows_per_chunk(self) -> int:
        labels = self.settings.candidate_labels or [""]
        return max(1, self.settings.micro_batch // len(labels))

    def encode(self, values: list[Any]) -> Encoded:
        labels = self.settings.candidate_labels or []
        template = self.settings.hypothesis_template
        premises = [text for text in values for _ in labels]
        hypotheses = [template.format(label) for _ in values for label in labels]
        return Encoded(dict(self.tokenize(premises, hypotheses)), {"rows": len(values)})

    def finish(self, raw: Any, encoded: Encoded) -> list[pa.Array]:
        labels = self.settings.candidate_labels or []
        logits = raw.astype(np.float32).reshape(encoded.extra["rows"], len(labels), -1)
        if self.settings.multi_label or len(labels) == 1:
            pair = logits[..., [self.contradiction, self.entailment]]
            scores = softmax(pair)[..., 1]
        else:
            scores = softmax(logits[..., self.entailment])
        return self.labelled(scores, labels)


class FeatureExtraction(Task):
    name = "feature-extraction"
    base_outputs = ("embedding",)

    def types(self) -> list[pa.DataType]:
        return [pa.list_(pa.float32(), int(self.model.config.hidden_size))]

    def encode(self, values: list[Any]) -> Encoded:
        return Encoded(dict(self.tokenize(values)))

    def forward(self, tensors: dict[str, Any]) -> Any:
        return to_numpy(self.traced(tensors)).astype(np.float32, copy=False)

    def traced(self, tensors: dict[str, Any]) -> Any:
        import torch

        hidden = self.model(**tensors).last_hidden_state
        if self.settings.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = tensors["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.settings.normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled

    def finish(self, raw: Any, encoded: Encoded) -> list[pa.Array]:
        width = int(self.model.config.hidden_size)
        flat = pa.array(np.ascontiguousarray(raw).reshape(-1), type=pa.float32())
        return [pa.FixedSizeListArray.from_arrays(flat, width)]


class TokenClassification(Task):
    name = "token-classification"
    model_class = "AutoModelForTokenClassification"
    finish_uses_tokenizer = True
    base_outputs = ("entities",)

    def check(self) -> None:
        from transformers import TokenClassificationPipeline
        from transformers.pipelines.token_classification import AggregationStrategy

        if self.settings.aggregation_strategy != "none" and not self.tokenizer.is_fast:
            raise ModelLoadError(
                f"aggregation_strategy = {self.settings.aggregation_strategy!r} needs a fast tokenizer "
                "(tokenizer.json), which this model folder lacks",
                hint='use aggregation_strategy = "none", or save the model with a fast tokenizer',
            )
        # The pipeline's own postprocess groups tokens into entities, so results match pipeline(...).
        self.pipeline = TokenClassificationPipeline(  # type: ignore[no-untyped-call]
            model=self.model, tokenizer=self.tokenizer, device=self.model.device
        )
        self.strategy = AggregationStrategy[self.settings.aggregation_strategy.upper()]

    def types(self) -> list[pa.DataType]:
        return [pa.list_(ENTITY)]

    def encode(self, values: list[Any]) -> Encoded:
        encoded = dict(
            self.tokenize(values, return_special_tokens_mask=True, return_offsets_mapping=self.tokenizer.is_fast)
        )
        extra = {
            "texts": values,
            "special_tokens_mask": encoded.pop("special_tokens_mask"),
            "offset_mapping": encoded.pop("offset_mapping", None),
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }
        return Encoded(encoded, extra)

    def finish(self, raw: Any, encoded: Encoded) -> list[pa.Array]:
        import torch

        extra = encoded.extra
        logits = torch.from_numpy(raw)
        rows = []
        for i, text in enumerate(extra["texts"]):
            keep = extra["attention_mask"][i].bool()
            offsets = extra["offset_mapping"]
            outputs = {
                "logits": logits[i][keep].unsqueeze(0),
                "input_ids": extra["input_ids"][i][keep].unsqueeze(0),
                "special_tokens_mask": extra["special_tokens_mask"][i][keep].unsqueeze(0),
                "offset_mapping": None if offsets is None else offsets[i][keep].unsqueeze(0),
                "sentence": text,
            }
            entities = self.pipeline.postprocess(  # type: ignore[no-untyped-call]
                [outputs], aggregation_strategy=self.strategy, ignore_labels=self.settings.ignore_labels
            )
            rows.append([_entity(e) for e in entities])
        return [pa.array(rows, type=pa.list_(ENTITY))]


class FillMask(Task):
    name = "fill-mask"
    model_class = "AutoModelForMaskedLM"
    finish_uses_tokenizer = True

    base_outputs = ("token", "score")
    has_scores = True

    def check(self) -> None:
        if self.tokenizer.mask_token_id is None:
            raise ModelLoadError("task 'fill-mask' needs a tokenizer with a mask token; this one has none")
        if self.settings.top_k < 1:
            raise ModelLoadError(f"'model.top_k' must be at least 1, not {self.settings.top_k}")

    def types(self) -> list[pa.DataType]:
        return [pa.string(), pa.float32(), pa.list_(TOKEN_SCORE)][: len(self.output_names(self.settings))]

    def encode(self, values: list[Any]) -> Encoded:
        encoded = dict(self.tokenize(values))
        masked = encoded["input_ids"] == self.tokenizer.mask_token_id
        counts = masked.sum(dim=1)
        if len(values) and not bool((counts == 1).all()):
            row = int((counts != 1).nonzero()[0, 0])
            raise ItemError(
                f"a text has {int(counts[row])} mask tokens ({self.tokenizer.mask_token}); fill-mask takes exactly one",
                hint=f"put one {self.tokenizer.mask_token} in each text (it may have been cut off by truncation)",
            )
        return Encoded(encoded)

    def forward(self, tensors: dict[str, Any]) -> Any:
        import torch

        logits = self.model(**tensors).logits
        at_mask = logits[tensors["input_ids"] == self.tokenizer.mask_token_id]
        probs = torch.softmax(at_mask.float(), dim=-1)
        k = min(self.settings.top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        return to_numpy(top.values), to_numpy(top.indices)

    def finish(self, raw: Any, encoded: Encoded) -> list[pa.Array]:
        values, indices = raw
        decode = self.tokenizer.decode
        tokens = [decode([int(i)]) for i in indices[:, 0]] if len(indices) else []
        columns = [pa.array(tokens, type=pa.string()), pa.array(values[:, 0] if len(values) else [], type=pa.float32())]
        if self.settings.all_scores:
            rows = [
                [
                    {"token": decode([int(i)]), "score": float(v), "token_id": int(i)}
                    for v, i in zip(vs, ids, strict=True)
                ]
                for vs, ids in zip(values, indices, strict=True)
            ]
            columns.append(pa.array(rows, type=pa.list_(TOKEN_SCORE)))
        return columns


TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        TextClassification,
        TokenClassification,
        ZeroShotClassification,
        FeatureExtraction,
        FillMask,
        ImageClassification,
    )
}


def make_task(name: str, settings: HFSettings, model: Any, processor: Any, max_length: int) -> Task:
    return TASKS[name](settings, model, processor, max_length)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), dtype=np.float32)


def _label_scores(scores: np.ndarray, labels: list[str]) -> pa.Array:
    n, k = scores.shape if scores.ndim == 2 else (0, len(labels))
    structs = pa.StructArray.from_arrays(
        [pa.array(labels * n, type=pa.string()), pa.array(scores.reshape(-1), type=pa.float32())],
        fields=list(LABEL_SCORE),
    )
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, structs)


def _entity(entity: dict[str, Any]) -> dict[str, Any]:
    return {
        "entity": entity.get("entity", entity.get("entity_group")),
        "score": float(entity["score"]),
        "word": entity.get("word"),
        "start": None if entity.get("start") is None else int(entity["start"]),
        "end": None if entity.get("end") is None else int(entity["end"]),
    }
