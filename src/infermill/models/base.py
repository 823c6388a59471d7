"""The model adapter contract.

An adapter wraps one kind of model (``[model] kind``). The engine calls, per worker process::

    adapter = load_adapter(spec, threads=..., device=...)  # cheap: resolves paths, no heavy imports
    adapter.setup()                             # once per worker: load weights, start sessions
    inputs = adapter.preprocess(features)       # reader side: pyarrow.RecordBatch of feature columns
    result = adapter.predict(inputs)            # model side
    columns = adapter.postprocess(result, n)    # -> dict of output name -> pyarrow.Array, n rows each

``fingerprint()`` identifies the model's code and weights, so a changed model is never mixed with
results from the old one. Adapters import their heavy libraries inside ``setup`` (or lazily), so a
missing extra fails with the exact ``pip install`` to run.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError
from ..spec import JobSpec, parse_settings
from .outputs import to_columns

if TYPE_CHECKING:
    from ..accelerate.base import Accelerator

__all__ = ["ModelAdapter", "file_digest"]


class ModelAdapter(ABC):
    """Base class of every ``[model] kind``."""

    kind: ClassVar[str]
    default_outputs: ClassVar[list[str]] = ["prediction"]
    settings_cls: ClassVar[type | None] = None
    """A frozen dataclass of the kind's own [model] keys (one docstring each), or None for none."""
    result_neutral_settings: ClassVar[frozenset[str]] = frozenset()
    """Keys of ``settings_cls`` that cannot change results (concurrency, rate limits, timeouts): editing
    them between runs of a job does not count as a spec change."""

    uses_gpu: ClassVar[bool] = False
    """The kind runs on a GPU when one is present (and its ``device`` key is ``auto`` or ``cuda``):
    ``[runtime] devices = "auto"`` then starts one worker per GPU."""

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        self.spec = spec
        self.model_spec = spec.model
        self.threads = max(1, threads)
        self.assigned_device = device
        """The device the engine pinned this worker to (``"cuda:0"``: the one GPU its process sees, via
        ``CUDA_VISIBLE_DEVICES``), or None: the adapter chooses by its own ``device`` rule."""
        if self.settings_cls is None and spec.model.settings and getattr(self, "kind", None) == spec.model.kind:
            # A subclass of a registered kind that declares no keys of its own: the kind's registered keys.
            self.settings: Any = spec.model_settings()
        else:
            self.settings = parse_settings(
                self.settings_cls, spec.model.settings, self.kind, spec.source_file or "job spec"
            )

    @property
    def outputs(self) -> list[str]:
        """Names of the prediction columns."""
        return list(self.model_spec.outputs or self.default_outputs)

    def setup(self) -> None:  # noqa: B027 - an optional hook
        """Load the model (once per worker). Raise ModelLoadError with a hint on failure."""

    def preprocess(self, batch: pa.RecordBatch) -> Any:
        """Turn a batch of feature columns into what ``predict`` takes. Runs ahead of the model."""
        return batch

    def token_counts(self, features: pa.RecordBatch) -> np.ndarray | None:
        """Tokens per row of ``features``, for ``[batch] max_tokens``; None (the default): the engine counts
        one token per four bytes of feature values. Runs on the model's thread, before each batch's calls."""
        return None

    def slice_inputs(self, inputs: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of what ``preprocess`` returned, for a batch the engine cuts into pieces to
        keep idle lanes busy (see ``lanes``). None (the default): each piece is preprocessed again."""
        return None

    @abstractmethod
    def predict(self, inputs: Any) -> Any:
        """Score one batch; return one value per row for each output (see ``postprocess``)."""

    def lanes(self) -> int:
        """How many batches the engine may score at once with this adapter, each ``predict`` on its own
        thread (see ``enter_lane``). 1 (the default): one call at a time."""
        return 1

    def enter_lane(self) -> None:  # noqa: B027 - an optional hook
        """Called once on each lane thread before its first ``predict``: make this thread's calls
        single-threaded (the lanes are the parallelism)."""

    @contextmanager
    def lanes_running(self, lanes: int) -> Iterator[None]:
        """Held by the engine while ``lanes`` lanes may call ``predict``: set process-wide limits here."""
        yield

    def postprocess(self, result: Any, num_rows: int) -> dict[str, pa.Array]:
        """Map ``predict``'s result to output columns of ``num_rows`` values each."""
        return to_columns(result, self.outputs, num_rows)

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of the model's code or weights."""

    def accelerators(self) -> list[Accelerator]:
        """The ways ``[model] accelerate`` may speed this kind up (see ``infermill.accelerate``), in the order
        ``"auto"`` tries them; [] (the default): none. Called after ``setup``; import converters lazily."""
        return []

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release resources at the end of a worker's life."""

    def model_file(self) -> str:
        """The resolved ``[model] path``; raises ModelLoadError when missing."""
        if not self.model_spec.path:
            raise ModelLoadError(
                f"model kind '{self.kind}' needs 'model.path'",
                hint="set [model] path = \"path/to/model file\"",
            )
        path = self.spec.resolve(self.model_spec.path)
        if not os.path.exists(path):
            raise ModelLoadError(
                f"model file not found: {path} (from 'model.path')",
                hint="check the path; relative paths are resolved against the job file's folder",
            )
        return path


def file_digest(path: str) -> str:
    """sha256 of a file's content (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
