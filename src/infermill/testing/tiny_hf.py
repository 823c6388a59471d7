"""Tiny Hugging Face models with random weights, built from configs (nothing is downloaded), for tests
and examples of ``kind = "hf"``::

    from infermill.testing.tiny_hf import save_tiny_model
    save_tiny_model("model/", "text-classification", seed=0)

Text models are 2-layer BERTs (hidden size 32) with a WordPiece tokenizer over a small English vocabulary
written to ``vocab.txt``; the image model is a 2-layer ViT over 16x16 images. The same seed gives the
same weights. Their predictions are meaningless, but real: the same code paths as a full-size model.
Needs ``torch``, ``transformers`` and ``tokenizers`` (and ``pillow`` for the image model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["LABELS", "VOCAB", "save_tiny_model", "save_tiny_tokenizer"]

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "a",
    "an",
    "this",
    "that",
    "it",
    "is",
    "was",
    "are",
    "be",
    "to",
    "of",
    "and",
    "or",
    "in",
    "on",
    "at",
    "for",
    "with",
    "by",
    "from",
    "as",
    "not",
    "no",
    "very",
    "so",
    "too",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "my",
    "your",
    "love",
    "hate",
    "like",
    "good",
    "bad",
    "great",
    "terrible",
    "fine",
    "awful",
    "movie",
    "film",
    "book",
    "food",
    "service",
    "day",
    "night",
    "cat",
    "dog",
    "sat",
    "mat",
    "paris",
    "london",
    "berlin",
    "john",
    "mary",
    "alice",
    "bob",
    "lives",
    "works",
    "visited",
    "city",
    "example",
    "politics",
    "sports",
    "music",
    "science",
    "weather",
    "today",
    "rain",
    "sun",
    "happy",
    "sad",
    "new",
    "old",
]
PIECES = ["##s", "##ed", "##ing", "##ly", "##er", "##a", "##e", "##i", "##o", "##n", "##t"]
VOCAB = SPECIAL + WORDS + PIECES + list("abcdefghijklmnopqrstuvwxyz.,!?")
"""The tokenizer's vocabulary, in id order."""

LABELS: dict[str, list[str]] = {
    "text-classification": ["NEGATIVE", "POSITIVE"],
    "zero-shot-classification": ["contradiction", "neutral", "entailment"],
    "token-classification": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "image-classification": ["cat", "dog", "bird"],
}
"""The label names each task's model is built with."""


def save_tiny_tokenizer(folder: str | os.PathLike[str], max_length: int = 32) -> Any:
    """Write ``vocab.txt`` and a fast BERT-style WordPiece tokenizer (``tokenizer.json``) to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    backend = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(str(path))
    return tokenizer


def save_tiny_model(folder: str | os.PathLike[str], task: str, seed: int = 0, max_length: int = 32) -> Path:
    """Build a tiny model for ``task`` with weights from ``seed`` and save it (and its tokenizer or image
    processor) to ``folder``, as ``save_pretrained`` does. Returns the folder."""
    import torch
    import transformers

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = LABELS.get(task)
    label_maps: dict[str, Any] = {}
    if labels:
        label_maps = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    config: Any
    if task == "image-classification":
        config = transformers.ViTConfig(
            image_size=16,
            patch_size=8,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            initializer_range=0.3,
            **label_maps,
        )
        model: Any = transformers.ViTForImageClassification(config)
        processor = transformers.ViTImageProcessor(size={"height": 16, "width": 16})
        processor.save_pretrained(str(path))
    else:
        config = transformers.BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
            initializer_range=0.3,
            **label_maps,
        )
        heads = {
            "text-classification": transformers.BertForSequenceClassification,
            "zero-shot-classification": transformers.BertForSequenceClassification,
            "token-classification": transformers.BertForTokenClassification,
            "fill-mask": transformers.BertForMaskedLM,
            "feature-extraction": transformers.BertModel,
        }
        if task not in heads:
            raise ValueError(
                f"no tiny model for task {task!r}; choose one of {sorted([*heads, 'image-classification'])}"
            )
        model = heads[task](config)
        save_tiny_tokenizer(path, max_length)
    model.eval()
    model.save_pretrained(str(path))
    return path
