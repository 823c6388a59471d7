"""One registry for every plugin: model kinds, input formats, output formats, executors, ledger backends.

A plugin is a name in a group mapped to ``"module:Class"`` (imported on first use, so an unused plugin
costs no import) and the extra that installs its dependencies (named in the error when the import fails).
Three ways in, later ones winning for the same name:

1. the built-ins below;
2. installed packages, through entry points in the groups ``infermill.models``, ``infermill.sources``,
   ``infermill.sinks``, ``infermill.executors`` and ``infermill.ledgers``::

       [project.entry-points."infermill.models"]
       echo-upper = "my_plugin:UpperModel"

3. ``register(group, name, target)`` from code (a class, or ``"module:Class"``).

Example::

    from infermill import registry
    registry.register("models", "upper", "my_plugin:UpperModel")
    registry.load("models", "upper")       # -> the class, imported now

Looking names up (:func:`names`, :func:`find`) imports no plugin module, so building a job spec stays
cheap; entry points are read once, from package metadata.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from .errors import SpecError

__all__ = [
    "GROUPS", "Group", "Plugin", "builtin", "find", "import_target", "load", "names", "register", "settings_class",
    "unknown",
]

Group = Literal["models", "sources", "sinks", "executors", "ledgers"]
GROUPS: tuple[Group, ...] = ("models", "sources", "sinks", "executors", "ledgers")
_WHAT = {"models": "model kind", "sources": "input format", "sinks": "output format", "executors": "executor",
         "ledgers": "ledger backend"}
_KEY = {"models": " (from [model] kind)", "sources": " (from [input] format)", "sinks": " (from [output] format)"}


@dataclass(frozen=True)
class Plugin:
    """One registered plugin."""

    group: Group
    name: str
    target: Any
    """``"module:Class"``, or the class itself when registered from code."""
    extra: str | None = None
    """The ``pip install 'infermill[extra]'`` that provides its dependencies (None: none needed)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Facts the engine needs before importing the plugin: ``settings`` (``"module:Class"`` of the frozen
    dataclass of its own keys, in a module that imports nothing heavy), an input format's ``extensions``,
    ``compressed`` (its files may be compressed), ``pathless`` (it reads no files: no ``[input] path``),
    ``committed_drift`` (``infermill status`` asks the source what changed under committed shards),
    a model kind's ``tabular`` (large default batches), ``batch_rows`` and ``sort_window`` (its default
    ``batch.size`` and ``batch.sort_window``), ``neutral`` (its keys that cannot change results, such as
    rate limits: left out of the job's fingerprint, so editing them is no spec change) and ``accelerate``
    (the ``[model] accelerate`` methods it offers, checked when the job file is read)."""


def _s(module: str, cls: str, **meta: Any) -> dict[str, Any]:
    return {"settings": f"{module}:{cls}", **meta}


M, S, K = "infermill.models.settings", "infermill.sources.settings", "infermill.sinks.settings"
_TORCH = ("parallel",)
# Text encoders: batches of a few hundred texts keep every lane fed on small jobs; bucketing by length
# within windows keeps padding (wasted compute) low, as SentenceTransformer.encode's own sort does.
_TEXT: dict[str, Any] = {"batch_rows": 256, "sort_window": 4096}
_HTTP = ("concurrency", "requests_per_minute", "tokens_per_minute", "timeout_seconds", "max_retries",
         "backoff_seconds", "max_backoff_seconds", "health_path")


def _builtin() -> dict[Group, dict[str, Plugin]]:
    def group(g: Group, entries: dict[str, tuple[str, str | None, dict[str, Any]]]) -> dict[str, Plugin]:
        return {name: Plugin(g, name, target, extra, meta) for name, (target, extra, meta) in entries.items()}

    return {
        "models": group("models", {
            "python": ("infermill.models.python:PythonModel", None, _s(M, "PythonSettings")),
            "sklearn": (
                "infermill.models.sklearn:SklearnModel", "sklearn",
                _s(M, "SklearnSettings", tabular=True, neutral=("parallel",), accelerate=("compile",)),
            ),
            "onnx": ("infermill.models.onnx:OnnxModel", "onnx", _s(M, "OnnxSettings", tabular=True)),
            "torch": ("infermill.models.torch_model:TorchModel", "torch", _s(M, "TorchSettings", neutral=_TORCH)),
            "hf": (
                "infermill.models.hf:HFModel", "hf",
                _s(M, "HFSettings", neutral=_TORCH, accelerate=("onnx", "onnx-int8"), **_TEXT),
            ),
            "sentence-transformers": (
                "infermill.models.sentence_transformers_model:SentenceModel", "sentence-transformers",
                _s(M, "SentenceSettings", neutral=_TORCH, accelerate=("onnx", "onnx-int8", "bf16"), **_TEXT),
            ),
            "llm": ("infermill.models.llm:LlmModel", "llm", _s(M, "LlmSettings")),
            "http": ("infermill.models.http:HttpModel", "http", _s(M, "HttpSettings", neutral=_HTTP)),
            "mlflow": ("infermill.models.mlflow_model:MlflowModel", "mlflow", _s(M, "MlflowSettings")),
        }),
        "sources": group("sources", {
            "parquet": ("infermill.sources.parquet:ParquetSource", None, {"extensions": (".parquet", ".pq")}),
            "arrow": (
                "infermill.sources.arrow:ArrowSource", None, {"extensions": (".arrow", ".feather", ".ipc", ".arrows")},
            ),
            "csv": (
                "infermill.sources.text:CsvSource", None,
                _s(S, "CsvSettings", extensions=(".csv", ".tsv"), compressed=True),
            ),
            "jsonl": (
                "infermill.sources.text:JsonlSource", None,
                _s(S, "TextSettings", extensions=(".jsonl", ".ndjson", ".json"), compressed=True),
            ),
            "openai-batch": (
                "infermill.sources.openai_batch:OpenAIBatchSource", None, _s(S, "TextSettings", extensions=()),
            ),
            # Files of any type, one row per file: no extension names it, so `format = "files"` is always given.
            "files": (
                "infermill.sources.files:FilesSource", "files",
                _s("infermill.sources.files_settings", "FilesSettings", extensions=()),
            ),
            "sql": (
                "infermill.sources.sql:SqlSource", None,
                _s("infermill.sources.sql_settings", "SqlSettings", extensions=(), pathless=True,
                   committed_drift=True),
            ),
        }),
        "sinks": group("sinks", {
            "parquet": ("infermill.sinks.formats:ParquetSink", None, _s(K, "ParquetSettings")),
            "arrow": ("infermill.sinks.formats:ArrowSink", None, _s(K, "ArrowSettings")),
            "jsonl": ("infermill.sinks.formats:JsonlSink", None, _s(K, "FileSettings")),
            "csv": ("infermill.sinks.formats:CsvSink", None, _s(K, "FileSettings")),
            "openai-batch": ("infermill.sinks.openai_batch:OpenAIBatchSink", None, {}),
            # A table, not files: no [output] path. psycopg is imported (with its install hint) only for a
            # postgresql:// URL, so SQLite output needs no extra.
            "sql": ("infermill.sinks.sql:SqlSink", None, _s("infermill.sinks.sql_settings", "SqlSinkSettings",
                                                            pathless=True)),
        }),
        "executors": group("executors", {
            "inline": ("infermill.engine.executor:InlineExecutor", None, {}),
            "process": ("infermill.engine.executor:ProcessExecutor", None, {}),
        }),
        "ledgers": group("ledgers", {
            "sqlite": ("infermill.ledger.sqlite:SQLiteLedger", None, {}),
            "postgresql": ("infermill.ledger.postgres:PostgresLedger", "postgres", {}),
        }),
    }


_BUILTIN: dict[Group, dict[str, Plugin]] = _builtin()
_REGISTRY: dict[Group, dict[str, Plugin]] = {g: dict(_BUILTIN[g]) for g in GROUPS}
_FROM_CODE: dict[Group, dict[str, Plugin]] = {g: {} for g in GROUPS}
_entry_points_read = False


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    found = entry_points()  # one scan of the installed packages' metadata, not one per group (~20 ms each)
    for g in GROUPS:
        for ep in found.select(group=f"infermill.{g}"):
            _REGISTRY[g][ep.name] = Plugin(g, ep.name, ep.value, None, {"distribution": _dist(ep)})


def _dist(ep: Any) -> str | None:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None)


def register(
    group: Group, name: str, target: Any, *, extra: str | None = None, **meta: Any
) -> None:
    """Add (or replace) a plugin from code: ``target`` is a class or ``"module:Class"``."""
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; use one of {', '.join(GROUPS)}")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"plugin target {target!r} must be 'module:Class'")
    _FROM_CODE[group][name] = Plugin(group, name, target, extra, dict(meta))


def _all(group: Group) -> dict[str, Plugin]:
    _read_entry_points()
    return {**_REGISTRY[group], **_FROM_CODE[group]}


def builtin(group: Group) -> dict[str, Plugin]:
    """The plugins infermill itself ships in ``group``."""
    return dict(_BUILTIN[group])


def names(group: Group) -> list[str]:
    """Every name registered in ``group``, sorted (imports no plugin)."""
    return sorted(_all(group))


def find(group: Group, name: str) -> Plugin | None:
    """The plugin registered as ``name`` in ``group``, or None (imports no plugin)."""
    return _all(group).get(name)


def unknown(group: Group, name: str, where: str = "") -> SpecError:
    """The error for a name nothing registered, with the close match or the list."""
    import difflib

    known = names(group)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return SpecError(
        f"{where + ': ' if where else ''}unknown {_WHAT[group]} {name!r}{_KEY.get(group, '')}",
        hint=f"{hint}use one of: {', '.join(known)}; a plugin package adds more (entry points "
        f"'infermill.{group}')",
    )


def import_target(plugin: Plugin) -> Any:
    """The plugin's class, imported now; ImportError when its module (or a dependency) is missing."""
    if not isinstance(plugin.target, str):
        return plugin.target
    module_name, _, attr = plugin.target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(
            f"the {_WHAT[plugin.group]} {plugin.name!r} points at {plugin.target!r}, which {module_name} does "
            "not define",
            hint="check the plugin's entry point or register() call",
        ) from None


DEFERRED: Any = object()
""":func:`settings_class` for a plugin whose keys are known only once it is imported."""


def settings_class(group: Group, name: str) -> Any:
    """The frozen dataclass of the plugin's own keys, from its ``settings`` meta: imports only that light
    module, never the plugin. None when it takes no keys of its own. A plugin that names no ``settings``
    (an entry point, or ``register()`` without ``settings=``) declares its keys on its class
    (``settings_cls``), known only once it is imported: then this returns :data:`DEFERRED`, and the keys
    are checked when the plugin loads."""
    plugin = find(group, name)
    if plugin is None:
        return None
    target = plugin.meta.get("settings")
    if target is None:
        if not isinstance(plugin.target, str):
            return getattr(plugin.target, "settings_cls", None)  # a class from code: imported already
        return None if _BUILTIN[group].get(name) is plugin else DEFERRED
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    return target


def load(group: Group, name: str) -> Any:
    """The plugin's class, imported now. An unknown name or a missing dependency is a SpecError saying
    what to do."""
    plugin = find(group, name)
    if plugin is None:
        raise unknown(group, name)
    try:
        return import_target(plugin)
    except ImportError as exc:
        module_name = str(plugin.target).partition(":")[0]
        hint = (
            f"pip install 'infermill[{plugin.extra}]'"
            if plugin.extra
            else f"install the package that provides {module_name!r}"
        )
        raise SpecError(f"the {_WHAT[group]} {name!r} cannot be imported: {exc}", hint=hint) from exc
