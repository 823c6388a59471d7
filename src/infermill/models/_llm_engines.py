"""The generation engines behind ``kind = "llm"``: Hugging Face ``transformers`` and vLLM.

Both take prompts that are already tokenized (the adapter tokenizes on the reader thread) and return,
per prompt, the generated text, the number of generated tokens and why generation stopped.

Sampling is seeded per prompt, not per batch: each row draws from its own random stream, seeded from
``seed`` and the prompt, so a row gets the same text whatever batch it lands in (bisection after an
error, a different ``batch.size``, a resumed run). With transformers this is done by
:class:`RowSampler`, a logits processor that samples each row itself and leaves only the chosen token,
which generation's greedy step then picks; vLLM takes a seed per request.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ModelLoadError

__all__ = [
    "Generation",
    "RowSampler",
    "TransformersEngine",
    "VllmEngine",
    "choose_engine",
    "gpu_available",
    "vllm_installed",
]

EngineName = Literal["transformers", "vllm"]


@dataclass(frozen=True)
class Generation:
    """What an engine returns for a batch of prompts, one entry per prompt, in order."""

    texts: list[str]
    completion_tokens: list[int]
    finish_reasons: list[str]
    """``stop`` (an end-of-sequence token) or ``length`` (``max_new_tokens`` reached)."""


def vllm_installed() -> bool:
    """True when the ``vllm`` package can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def gpu_available() -> bool:
    """True when torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def choose_engine(requested: str, *, device: str, vllm_ok: bool, gpu_ok: bool) -> EngineName:
    """The engine for ``[model] engine``: ``auto`` takes vLLM when it is installed, a GPU is present and
    ``device`` is not ``cpu``; otherwise transformers. ``vllm`` asked for explicitly must be usable."""
    if requested == "transformers":
        return "transformers"
    if requested == "vllm":
        if not vllm_ok:
            raise ModelLoadError(
                "model kind 'llm' with engine = \"vllm\" needs the 'vllm' package, which is not installed",
                hint="pip install vllm (on a machine with a CUDA GPU), or set engine = \"transformers\"",
            )
        if not gpu_ok or device == "cpu":
            why = ", but device = \"cpu\"" if gpu_ok else ", and none is visible"
            raise ModelLoadError(
                "engine = \"vllm\" needs a CUDA GPU" + why,
                hint="set engine = \"transformers\" (or \"auto\") to generate on the CPU",
            )
        return "vllm"
    if requested != "auto":
        raise ModelLoadError(f"unknown engine {requested!r}", hint='use "auto", "transformers" or "vllm"')
    return "vllm" if vllm_ok and gpu_ok and device != "cpu" else "transformers"


def _finish(tokens: Sequence[int], eos: set[int], limit: int) -> tuple[int, str]:
    """Generated tokens to keep (through the first end-of-sequence token) and the finish reason."""
    for i, token in enumerate(tokens):
        if token in eos:
            return i + 1, "stop"
    return min(len(tokens), limit), "length"


class RowSampler:
    """A ``transformers`` logits processor that samples every row from its own seeded stream.

    Each step it applies ``temperature`` and ``top_p`` to a row's logits, draws one uniform number from
    the row's generator, picks the token by inverse CDF, and returns logits that are ``-inf``
    everywhere but there, so the greedy step takes exactly that token.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)  # keeps at least the top one
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        draws = torch.tensor([torch.rand(1, generator=g).item() for g in self.generators], dtype=probs.dtype)
        cdf = torch.cumsum(probs, dim=-1)
        targets = (draws.to(probs.device) * cdf[:, -1]).unsqueeze(-1)
        # right=True: the first token whose CDF exceeds the target, so a zero-probability token (a flat
        # step of the CDF) is never chosen.
        chosen = torch.searchsorted(cdf, targets, right=True).clamp_(max=probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen, 0.0)


class TransformersEngine:
    """Generation with ``model.generate`` on left-padded batches."""

    def __init__(self, model: Any, *, pad_id: int, eos_ids: set[int], device: str) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.device = device

    def generate(
        self, token_ids: Sequence[Sequence[int]], seeds: Sequence[int], *, max_new_tokens: int, temperature: float,
        top_p: float, decode: Any,
    ) -> Generation:
        import torch
        from transformers import LogitsProcessorList

        width = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[row, width - len(ids) :] = 1
        processors = LogitsProcessorList([RowSampler(seeds, temperature, top_p)] if temperature > 0 else [])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                logits_processor=processors,
            )
        new = out[:, width:].tolist()
        texts, counts, reasons = [], [], []
        for tokens in new:
            keep, reason = _finish(tokens, self.eos_ids, max_new_tokens)
            # The end-of-sequence token counts as generated but is not part of the text (as in vLLM).
            texts.append(decode(tokens[: keep - 1 if reason == "stop" else keep]))
            counts.append(keep)
            reasons.append(reason)
        return Generation(texts, counts, reasons)


class VllmEngine:
    """Generation with vLLM's offline ``LLM`` on token-id prompts, one seeded request per row.

    Not exercised by the test suite (it needs a CUDA GPU); the selection logic is.
    """

    def __init__(self, path: str, *, trusted: bool, seed: int, dtype: str, options: dict[str, Any]) -> None:
        try:
            from vllm import LLM  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ModelLoadError(
                "engine \"vllm\" failed to import vllm: " + str(exc), hint="check the vllm installation"
            ) from exc
        kwargs: dict[str, Any] = {"dtype": dtype, "seed": seed, "trust_remote_code": trusted, **options}
        self.llm = LLM(model=path, tokenizer=path, **kwargs)

    def max_model_len(self) -> int | None:
        """The context length vLLM runs the model with (``max_model_len`` may shorten the model's own)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return None

    def generate(
        self, token_ids: Sequence[Sequence[int]], seeds: Sequence[int], *, max_new_tokens: int, temperature: float,
        top_p: float, decode: Any,
    ) -> Generation:
        from vllm import SamplingParams  # type: ignore[import-not-found,unused-ignore]

        params = [
            SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
            for seed in seeds
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        texts, counts, reasons = [], [], []
        for output in outputs:
            best = output.outputs[0]
            texts.append(best.text)
            counts.append(len(best.token_ids))
            reasons.append("length" if best.finish_reason == "length" else "stop")
        return Generation(texts, counts, reasons)
