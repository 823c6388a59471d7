"""Deciding whether the accelerated model runs: build on first use, compare on the job's own rows.

``accelerated(adapter, spec)`` is called by a worker right after ``adapter.setup()``. With ``[model]
accelerate = "off"`` it returns the adapter itself. Otherwise it checks that a named method applies (it
raises :class:`~infermill.errors.ModelLoadError` when it does not: a missing package with the ``pip`` command,
a model type the method does not take) and returns an :class:`AcceleratedModel`, which behaves as the
adapter except for ``predict``. On the first non-empty batch, ``predict``:

1. builds the accelerator (or loads its artifact from the cache, :func:`cache_dir`),
2. scores up to ``SAMPLE_ROWS`` rows of that batch with the original and the accelerated model: a warm-up
   call on a few of them, then one timed call each (repeated while the calls are very short: see
   ``_timed``); when the sample is the whole batch, the chosen model's result on it is the batch's result,
3. keeps the accelerated model when the agreement is within the bound (``accelerate_tolerance`` or the
   method's default) and, for "auto", when it is at least ``MIN_SPEEDUP`` times faster; otherwise a
   warning on stderr says why, and the original model runs.

With "auto", each method the kind offers but int8 is tried in turn. The :class:`~.report.Decision` is
added to the stats of every shard the worker stages (``shard_stats``), so the ledger keeps it and
``infermill status`` / ``infermill profile`` show it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError
from ..models.base import ModelAdapter
from ..spec import JobSpec
from .base import Accelerator, Built
from .report import STATS_KEY, Decision

__all__ = ["MIN_SPEEDUP", "SAMPLE_ROWS", "AcceleratedModel", "accelerated", "cache_dir", "candidates", "shard_facts"]

SAMPLE_ROWS = 256
"""Rows of the first batch compared (spread over the batch)."""
MIN_SPEEDUP = 1.1
"""With "auto": the accelerated model is kept only when the sample ran at least this much faster."""
WARM_ROWS = 8
"""Rows of the sample each model scores once, untimed, before its timed call (a first call allocates
buffers and picks kernels)."""
TIMING_SECONDS = 0.05
MAX_TIMED_CALLS = 20
"""Timing the sample: calls of each model until they total TIMING_SECONDS (at least 1, at most this many)."""
CACHE_ENV = "INFERMILL_CACHE_DIR"


def cache_dir(spec: JobSpec) -> Path:
    """Where artifacts are cached: ``$INFERMILL_CACHE_DIR``, else ``.infermill/accelerate`` next to the job
    file (shared by the jobs of that folder: artifacts are keyed by the model's fingerprint)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(spec.base_dir) / ".infermill" / "accelerate"


def candidates(adapter: ModelAdapter, spec: JobSpec) -> tuple[list[Accelerator], str | None]:
    """The accelerators to try, in order, and (when there are none) why. A named method that the kind does
    not offer, or that does not apply to this model, raises ModelLoadError: the job asked for it."""
    requested = spec.model.accelerate
    offered = adapter.accelerators()
    if requested == "auto":
        tried = [a for a in offered if a.method != "onnx-int8"]  # int8 changes results: only when named
        return tried, None if tried else f"model kind {spec.model.kind!r} has no accelerated form"
    chosen = [a for a in offered if a.method == requested]
    if not chosen:
        quoted = ", ".join(f'"{name}"' for name in sorted({a.method for a in offered}))
        raise ModelLoadError(
            f"[model] accelerate = {requested!r} does not apply to model kind {spec.model.kind!r}",
            hint=(f'use one of {quoted}, "auto" or "off"' if quoted
                  else 'remove the key, or set accelerate = "off"'),
        )
    reason = chosen[0].unavailable(adapter)
    if reason is not None:
        raise ModelLoadError(
            f"[model] accelerate = {requested!r} cannot be used: {reason}",
            hint='fix that, or set accelerate = "auto" (falls back to the original model) or "off"',
        )
    return chosen, None


def accelerated(adapter: ModelAdapter, spec: JobSpec, *, warn: Callable[[str], None] | None = None) -> ModelAdapter:
    """The adapter to run: ``adapter`` itself with ``accelerate = "off"``, else an :class:`AcceleratedModel`
    around it (``adapter`` is set up)."""
    if spec.model.accelerate == "off":
        return adapter
    tried, reason = candidates(adapter, spec)
    return AcceleratedModel(adapter, spec, tried, reason, warn=warn)


def shard_facts(adapter: ModelAdapter) -> dict[str, Any]:
    """What a worker adds to each shard's stats: its decision (``{}`` without acceleration, or before it)."""
    decision = adapter.decision if isinstance(adapter, AcceleratedModel) else None
    return {STATS_KEY: decision.as_dict()} if decision is not None else {}


class AcceleratedModel(ModelAdapter):
    """The job's adapter, whose ``predict`` runs the accelerated model once it is verified (see the module
    docstring). Everything else is the wrapped adapter's."""

    def __init__(
        self,
        inner: ModelAdapter,
        spec: JobSpec,
        tried: list[Accelerator],
        reason: str | None,
        *,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        # Not ModelAdapter.__init__: the wrapped adapter already parsed the kind's keys.
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]
        self.spec = spec
        self.model_spec = spec.model
        self.threads = inner.threads
        self.assigned_device = inner.assigned_device
        self.settings = inner.settings
        self._tried = tried
        self._lock = threading.Lock()
        self._warn = warn or (lambda text: print(f"[{spec.name}] {text}", file=sys.stderr, flush=True))
        self._fast: Callable[[Any], Any] | None = None
        self.built: Built | None = None
        """The accelerated model in use (None: the original runs)."""
        self.decision: Decision | None = None
        if not tried:
            self.decision = Decision(spec.model.accelerate, used=False, reason=reason)

    def __getattr__(self, name: str) -> Any:
        # Optional hooks the engine looks up by name (classify_error, ...) are the wrapped adapter's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- the decision ------------------------------------------------------------------------------------
    def predict(self, inputs: Any) -> Any:
        if self.decision is None:
            with self._lock:  # the first batches of several lanes: one decides, the others wait for it
                if self.decision is None:
                    if _rows(inputs) == 0:
                        return self.inner.predict(inputs)
                    scored = self._decide(inputs)
                    if scored is not None:  # the sample was the whole batch: its result is already there
                        return scored[0]
        fast = self._fast
        return fast(inputs) if fast is not None else self.inner.predict(inputs)

    def _decide(self, inputs: Any) -> tuple[Any] | None:
        """Decide on ``inputs``; when the sample was all of it, the result of the model that runs on it (in a
        1-tuple: a result may be anything, None included), else None."""
        requested = self.spec.model.accelerate
        sample = _sample(inputs, SAMPLE_ROWS)
        warm = _sample(sample, WARM_ROWS)
        decision: Decision | None = None
        scored: dict[str, tuple[Any, float]] = {}  # "original" once, whichever accelerators are tried
        for accelerator in self._tried:
            decision = self._try(accelerator, sample, warm, scored)
            if decision.used:
                break
        assert decision is not None
        if not decision.used:
            # A named method that did not hold is worth a warning; "auto" finding nothing faster is normal.
            disagreed = decision.metric is not None and decision.value is not None and not decision.within
            label = "warning" if requested != "auto" or disagreed else "note"
            self._warn(f"{label}: accelerate = {requested!r}: {decision.describe()}")
        else:
            self._warn(f"accelerate: {decision.describe()}")
        self.decision = decision
        chosen = scored.get("accelerated" if decision.used else "original")
        return (chosen[0],) if sample is inputs and chosen is not None else None

    def _try(self, accelerator: Accelerator, sample: Any, warm: Any, scored: dict[str, tuple[Any, float]]) -> Decision:
        requested = self.spec.model.accelerate
        method = accelerator.method
        if requested == "auto":
            reason = accelerator.unavailable(self.inner)
            if reason is not None:
                return Decision(requested, used=False, method=method, reason=reason)
        try:
            built = accelerator.build(self.inner, cache_dir(self.spec))
        except Exception as exc:  # noqa: BLE001 - any conversion failure means: run the original
            return Decision(requested, used=False, method=method,
                            reason=f"the conversion failed: {type(exc).__name__}: {exc}")
        bound = self.spec.model.accelerate_tolerance
        bound = accelerator.default_bound if bound is None else float(bound)
        rows = _rows(sample)
        scored.pop("accelerated", None)  # an earlier method's result, not this one's
        try:
            if "original" not in scored:
                scored["original"] = _timed(self.inner.predict, sample, warm)
            original, original_s = scored["original"]
            result, fast_s = scored["accelerated"] = _timed(built.predict, sample, warm)
            value = float(accelerator.agreement(original, result))
        except Exception as exc:  # noqa: BLE001 - an accelerated model that cannot score the sample is not used
            return Decision(requested, used=False, method=method, build_seconds=built.build_seconds,
                            cache_hit=built.cache_hit, artifact=built.artifact,
                            reason=f"it failed on the sample: {type(exc).__name__}: {exc}")
        speedup = round(original_s / fast_s, 3) if fast_s > 0 else None
        measured = Decision(
            requested, used=False, method=method, metric=accelerator.metric, value=value, bound=bound,
            sample_rows=rows, speedup=speedup, build_seconds=built.build_seconds, cache_hit=built.cache_hit,
            artifact=built.artifact,
        )
        if not accelerator.passes(value, bound):
            return replace(measured, reason="its results differ from the original's")
        if requested == "auto" and (speedup is None or speedup < MIN_SPEEDUP):
            return replace(measured, reason=f"not faster on the sample (needs {MIN_SPEEDUP}x)")
        self.built = built
        self._fast = built.predict
        return replace(measured, used=True)

    # -- the wrapped adapter's contract --------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        return self.inner.outputs

    def setup(self) -> None:
        self.inner.setup()

    def preprocess(self, batch: pa.RecordBatch) -> Any:
        return self.inner.preprocess(batch)

    def token_counts(self, features: pa.RecordBatch) -> np.ndarray | None:
        return self.inner.token_counts(features)

    def slice_inputs(self, inputs: Any, start: int, stop: int) -> Any:
        return self.inner.slice_inputs(inputs, start, stop)

    def lanes(self) -> int:
        return self.inner.lanes()

    def enter_lane(self) -> None:
        self.inner.enter_lane()

    @contextmanager
    def lanes_running(self, lanes: int) -> Iterator[None]:
        with self.inner.lanes_running(lanes):
            yield

    def postprocess(self, result: Any, num_rows: int) -> dict[str, pa.Array]:
        return self.inner.postprocess(result, num_rows)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def accelerators(self) -> list[Accelerator]:
        return self.inner.accelerators()

    def close(self) -> None:
        self.inner.close()


def _timed(call: Callable[[Any], Any], inputs: Any, warm: Any) -> tuple[Any, float]:
    """The result of ``call(inputs)`` and the fastest call's seconds: an untimed warm-up call on ``warm`` (a
    few rows of ``inputs``: a first call allocates and picks kernels), then one timed call, more while they
    total under ``TIMING_SECONDS``, so that a call of a millisecond is not judged by one moment the CPU was
    taken away, while a sample that takes seconds to score (a transformer on one thread) is scored once."""
    call(warm)
    best, spent, calls = float("inf"), 0.0, 0
    result: Any = None
    while calls < 1 or (spent < TIMING_SECONDS and calls < MAX_TIMED_CALLS):
        t0 = time.perf_counter()
        result = call(inputs)
        seconds = time.perf_counter() - t0
        best, spent, calls = min(best, seconds), spent + seconds, calls + 1
    return result, best


def _rows(inputs: Any) -> int:
    if isinstance(inputs, dict):
        return _rows(next(iter(inputs.values()))) if inputs else 0
    if isinstance(inputs, (pa.RecordBatch, pa.Table)):
        return int(inputs.num_rows)
    try:
        return len(inputs)
    except TypeError:
        return 1


def _sample(inputs: Any, limit: int) -> Any:
    """Up to ``limit`` rows spread over the batch, in the form ``predict`` takes (arrays, DataFrames, Arrow
    batches, lists, dicts of those); a form it cannot cut is compared whole."""
    rows = _rows(inputs)
    if rows <= limit:
        return inputs
    index = np.linspace(0, rows - 1, limit).astype(np.int64)
    return _take(inputs, index)


def _take(inputs: Any, index: np.ndarray) -> Any:
    if isinstance(inputs, np.ndarray):
        return np.ascontiguousarray(inputs[index])
    if isinstance(inputs, (pa.RecordBatch, pa.Table)):
        return inputs.take(pa.array(index))
    if hasattr(inputs, "iloc"):
        return inputs.iloc[index]
    if isinstance(inputs, list):
        return [inputs[i] for i in index]
    if isinstance(inputs, dict):
        return {k: _take(v, index) for k, v in inputs.items()}
    return inputs
