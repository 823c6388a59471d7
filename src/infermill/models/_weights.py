"""Pickled weights in a Hugging Face model folder, and the trust check the folder kinds share (llm, hf,
sentence-transformers).

``pytorch_model.bin`` and its kin are pickles: loading one may run code. Recent torch refuses most of that
by default (``weights_only``), but that is torch's choice, not ours, and its refusal is a raw
``UnpicklingError``. So a folder whose weights are pickled is refused up front, by name, unless the
model is ``trusted``. A loader prefers ``*.safetensors`` when a folder has them, so pickled files next
to safetensors (``training_args.bin``) are never read and do not count.
"""

from __future__ import annotations

import json
import os

from ..errors import ModelLoadError

__all__ = [
    "PICKLED_SUFFIXES",
    "module_folders",
    "pickled_weights",
    "refuse_pickled_weights",
    "unpickling_refused",
]

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Names of files torch.load reads with pickle (``.bin`` as transformers saves it without safetensors)."""


def pickled_weights(folder: str, subfolders: list[str] | tuple[str, ...] = ("",)) -> list[str]:
    """The pickled weight files a loader would read from ``folder`` (relative names, sorted): those in
    each of ``subfolders`` that holds no ``*.safetensors``."""
    found: list[str] = []
    for sub in subfolders:
        where = os.path.join(folder, sub) if sub else folder
        try:
            names = os.listdir(where)
        except (FileNotFoundError, NotADirectoryError):
            continue  # the loader reports a missing module folder in its own words
        if any(n.endswith(".safetensors") for n in names):
            continue
        found += [os.path.join(sub, n) if sub else n for n in names if n.endswith(PICKLED_SUFFIXES)]
    return sorted(found)


def module_folders(folder: str) -> list[str]:
    """The folders of a sentence-transformers model that hold weights: those its ``modules.json``
    names (e.g. ``""`` and ``"2_Dense"``), or just the folder itself. Other subfolders (``onnx/``,
    ``openvino/``) are never loaded, so their ``.bin`` files (not pickles) do not count."""
    try:
        with open(os.path.join(folder, "modules.json"), encoding="utf-8") as fh:
            modules = json.load(fh)
        paths = [str(m.get("path") or "") for m in modules if isinstance(m, dict)]
    except (OSError, ValueError, AttributeError, TypeError):
        return [""]
    return sorted(set(paths) | {""})


def refuse_pickled_weights(folder: str, *, trusted: bool, subfolders: list[str] | tuple[str, ...] = ("",)) -> None:
    """Raise :class:`ModelLoadError` when the weights in ``folder`` are pickled and the model is not
    ``trusted``."""
    if trusted:
        return
    pickled = pickled_weights(folder, subfolders)
    if pickled:
        raise ModelLoadError(
            f"refusing to load {folder}: its weights ({pickled[0]}) are pickled, which can run code when loaded",
            hint="convert them to safetensors (model.save_pretrained(folder, safe_serialization=True)), "
            "or set trusted = true in [model] only for files you trust",
        )


def unpickling_refused(folder: str, exc: BaseException) -> ModelLoadError:
    """The error for pickled weights torch would not read even for a trusted model: ``weights_only``
    found objects other than tensors in them (torch 2.6 and later read every pickle that way)."""
    # torch's text is a page of advice; the one line that says what it found is kept.
    found = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
    detail = f" ({found[0].removeprefix('WeightsUnpickler error:').split('. Please')[0].strip()})" if found else ""
    return ModelLoadError(
        f"cannot load {folder}: its pickled weights hold objects other than tensors, which torch refuses to "
        f"unpickle{detail}",
        hint="save the weights as safetensors (model.save_pretrained(folder, safe_serialization=True)) from a "
        "copy of the model you trust",
    )
