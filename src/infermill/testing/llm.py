"""A tiny causal language model for tests and examples: built offline, random weights, a few KiB.

:func:`make_tiny_llm` writes a Hugging Face model folder (``config.json``, ``model.safetensors``,
``tokenizer.json``, a chat template) that ``[model] kind = "llm"`` loads like any real checkpoint.
The tokenizer is character-level (one token per printable ASCII character, plus ``<s>``, ``</s>`` and
``<unk>``), so a prompt's token count is its length plus one (the ``<s>`` it starts with)::

    from infermill.testing.llm import make_tiny_llm
    make_tiny_llm("models/tiny-lm")

It needs ``transformers``, ``tokenizers`` and ``torch`` (the ``llm`` extra); nothing is downloaded.
"""

from __future__ import annotations

import importlib
import os
import string
from pathlib import Path
from typing import Any

__all__ = ["CHAT_TEMPLATE", "make_tiny_llm", "tiny_vocab"]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
"""A minimal chat template: one ``role: content`` line per message, then ``assistant: ``."""

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def tiny_vocab() -> dict[str, int]:
    """Token -> id: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then the printable ASCII characters."""
    vocab = {UNK: 0, BOS: 1, EOS: 2}
    for char in string.printable:
        vocab.setdefault(char, len(vocab))
    return vocab


def make_tiny_llm(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_positions: int = 128,
    layers: int = 2,
    width: int = 64,
    init_scale: float = 0.5,
    chat_template: str | None = CHAT_TEMPLATE,
) -> Path:
    """Write a random GPT-2 model and its character-level tokenizer to the folder ``path``.

    ``init_scale`` is the weights' standard deviation (GPT-2's ``initializer_range``): larger than
    GPT-2's 0.02, so the random model's greedy text varies with the prompt instead of repeating one
    character. The same arguments give the same
    files. Returns the folder.
    """
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers: Any = importlib.import_module("transformers")
    hf_logging: Any = importlib.import_module("transformers.utils.logging")

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, model_max_length=max_positions
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=max_positions,
        n_embd=width,
        n_layer=layers,
        n_head=2,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        initializer_range=init_scale,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        model: Any = GPT2LMHeadModel(config)
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    return folder
