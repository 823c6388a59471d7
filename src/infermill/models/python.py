"""``kind = "python"``: your own code as the model.

``entrypoint`` names a class or a function, as ``pkg.module:Name`` or ``path/to/file.py:Name`` (relative
to the job file)::

    class ChurnModel:
        def __init__(self, threshold: float = 0.5): ...   # [model] options are passed here
        def setup(self): ...                              # optional, once per worker (load weights)
        def predict(self, batch): ...                     # one value per row, per output

    def score(batch): ...                                 # a function works too (options = keywords)

``batch`` is, per ``batch_format``: ``numpy`` (default) a dict of column name to numpy array (read-only,
shared with Arrow where the type allows), ``pandas`` a DataFrame, or ``arrow`` the ``pyarrow.RecordBatch``.
``predict`` returns a mapping of output name to values, a DataFrame, an Arrow table/batch, or, for a
single output, one array or list. Raise :class:`~infermill.errors.ItemError` for data the model cannot
score and :class:`~infermill.errors.TransientError` for failures worth retrying.

The fingerprint covers the entrypoint's source file (not modules it imports), the entrypoint and options.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pyarrow as pa

from ..errors import InfermillError, ModelLoadError
from ..spec import JobSpec
from ._entrypoint import import_target, parse_entrypoint, source_file, temporary_path
from .base import ModelAdapter, file_digest
from .settings import PythonSettings

__all__ = ["PythonModel"]


class PythonModel(ModelAdapter):
    """Runs a user class or function; see the module docstring for the contract."""

    kind = "python"
    settings_cls = PythonSettings

    def __init__(self, spec: JobSpec, *, threads: int = 1, device: str | None = None) -> None:
        super().__init__(spec, threads=threads, device=device)
        self.settings: PythonSettings
        self.entry = parse_entrypoint(self.settings.entrypoint, spec.base_dir, spec.resolve)
        self.model: Any = None
        """The user's model object (an instance, or the function), after setup()."""
        self._predict: Callable[[Any], Any] | None = None

    def setup(self) -> None:
        entry = self.entry
        options = dict(self.settings.options)
        with temporary_path(entry.search_dir, front=entry.file is not None):
            target = import_target(entry)
            if inspect.isclass(target):
                self.model = self._instantiate(target, options)
                self._predict = self.model.predict
            elif callable(getattr(target, "predict", None)) and not inspect.isroutine(target):
                if options:
                    raise ModelLoadError(
                        f"'{entry.attr}' is an object, so 'model.options' cannot be passed to it",
                        hint="point the entrypoint at its class, or remove [model.options]",
                    )
                _run_setup(target, type(target).__name__, entry.text)
                self.model = target
                self._predict = target.predict
            elif callable(target):
                _check_keywords(target, options, entry.text)
                self.model = target
                self._predict = partial(target, **options) if options else target
            else:
                where = entry.file or entry.module
                raise ModelLoadError(
                    f"'{entry.attr}' in {where} is a {type(target).__name__}, not callable",
                    hint="point the entrypoint at a class with a predict(batch) method or a function",
                )

    def _instantiate(self, cls: type, options: dict[str, Any]) -> Any:
        text = self.entry.text
        if not callable(getattr(cls, "predict", None)):
            public = sorted(n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None)))
            raise ModelLoadError(
                f"class '{cls.__name__}' (from '{text}') has no predict method",
                hint="define `def predict(self, batch)`; its methods are: " + (", ".join(public) or "none"),
            )
        _check_keywords(cls, options, text)
        try:
            model = cls(**options)
        except InfermillError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            raise ModelLoadError(
                f"{cls.__name__}(**options) raised {type(exc).__name__}: {exc} (from '{text}')",
                hint="fix the constructor or [model.options]; rerun with --debug to see the traceback",
            ) from exc
        _run_setup(model, cls.__name__, text)
        return model

    def preprocess(self, batch: pa.RecordBatch) -> Any:
        fmt = self.settings.batch_format
        if fmt == "arrow":
            return batch
        if fmt == "pandas":
            return batch.to_pandas()
        names = batch.schema.names
        return {name: batch.column(i).to_numpy(zero_copy_only=False) for i, name in enumerate(names)}

    def predict(self, inputs: Any) -> Any:
        if self._predict is None:
            raise ModelLoadError("PythonModel.predict() called before setup()")
        return self._predict(inputs)

    def fingerprint(self) -> str:
        path = source_file(self.entry)
        source = file_digest(path) if path else "no-source-file"
        blob = json.dumps(
            {"entrypoint": self.entry.text, "options": self.settings.options, "source": source},
            sort_keys=True,
            default=repr,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _run_setup(model: Any, name: str, text: str) -> None:
    """Call the model's optional ``setup()``, turning its failure into a ModelLoadError."""
    hook = getattr(model, "setup", None)
    if not callable(hook):
        return
    try:
        hook()
    except InfermillError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise ModelLoadError(
            f"{name}.setup() raised {type(exc).__name__}: {exc} (from '{text}')",
            hint="fix the error in the model's setup(); rerun with --debug to see the traceback",
        ) from exc


def _check_keywords(target: Callable[..., Any], options: dict[str, Any], text: str) -> None:
    """Name a wrong option before the call, instead of a bare TypeError from inside it."""
    if not options:
        return
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ModelLoadError(
            f"'{text}' does not accept the option(s) {unknown} from [model.options]",
            hint=f"it accepts: {', '.join(sorted(accepted)) or 'no keyword arguments'}",
        )
