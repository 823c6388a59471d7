"""The job spec: the TOML job file and its Python twin, :class:`JobSpec`.

A job file has the sections ``[input]``, ``[model]``, ``[batch]``, ``[output]`` and ``[runtime]`` (and
``[retry]``, ``[errors]``, ``[schedule]``).
:func:`load_spec` parses and validates one; ``JobSpec.from_dict`` does the same for a mapping, and
``JobSpec(...)`` builds one directly in Python. Relative paths are resolved against ``base_dir`` (the
job file's folder, or the current directory for a spec built in Python).

Example::

    spec = JobSpec(
        input=InputSpec(path="data/*.parquet", id_column="customer_id"),
        model=ModelSpec(kind="python", entrypoint="scorer.py:ChurnModel", outputs=["score"]),
        output=OutputSpec(path="out/"),
    )
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import SpecError
from .redact import mask_url

__all__ = [
    "BatchSpec",
    "ErrorsSpec",
    "InputSpec",
    "JobSpec",
    "ModelSpec",
    "OutputSpec",
    "RetrySpec",
    "RuntimeSpec",
    "ScheduleSpec",
    "compression_of",
    "is_url",
    "load_spec",
    "mask_url",
    "parse_section_settings",
    "parse_settings",
    "strip_compression",
]

def input_extensions() -> dict[str, str]:
    """File extension -> input format, from the registered input formats (``.parquet`` -> ``parquet``)."""
    from . import registry

    found: dict[str, str] = {}
    for name in registry.names("sources"):
        plugin = registry.find("sources", name)
        for ext in (plugin.meta.get("extensions", ()) if plugin else ()):
            found.setdefault(ext, name)
    return found

COMPRESSION_EXTENSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
"""CSV and JSONL files with one of these endings are decompressed as they are read (``data.csv.gz``)."""

def compressible_formats() -> frozenset[str]:
    """Input formats whose files may be compressed (``data.csv.gz``): registered with ``compressed=True``."""
    from . import registry

    found = (registry.find("sources", name) for name in registry.names("sources"))
    return frozenset(p.name for p in found if p is not None and p.meta.get("compressed"))


def compression_of(path: str) -> str | None:
    """The compression a file name says (``"gzip"`` for ``x.csv.gz``), or None."""
    lowered = path.lower()
    for ext, name in COMPRESSION_EXTENSIONS.items():
        if lowered.endswith(ext):
            return name
    return None


def strip_compression(path: str) -> str:
    """``path`` without its compression ending (``x.csv.gz`` -> ``x.csv``)."""
    return path[: path.rfind(".")] if compression_of(path) else path


def is_url(path: str) -> bool:
    """True for an fsspec URL such as ``s3://bucket/key`` (but not a Windows drive path)."""
    head, sep, _ = path.partition("://")
    return bool(sep) and len(head) > 1


def _open_keys(cls: type) -> type:
    """Let a section dataclass take its plugin's own keys as keyword arguments too: in Python, as in a job
    file, ``InputSpec(path="x.csv", csv_delimiter=";")`` puts ``csv_delimiter`` into ``settings``."""
    init = cls.__dict__["__init__"]
    known = {f.name for f in dataclasses.fields(cls)}

    def __init__(self: Any, *args: Any, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in known}
        init(self, *args, settings={**(settings or {}), **extra}, **kwargs)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__  # type: ignore[misc]
    return cls


@_open_keys
@dataclass(frozen=True)
class InputSpec:
    """Where the rows come from. Besides these keys, ``[input]`` takes the keys of its format (csv:
    ``csv_delimiter``, ``encoding``, ``shard_bytes``, ...; see docs/sources.md), held in ``settings``."""

    path: str = ""
    """A file, a directory, a glob, or an fsspec URL (``s3://...``, ``memory://...``). Required by the file
    formats."""
    format: str | None = None
    """parquet, arrow, csv, jsonl, openai-batch, files (a folder of documents and images, one row per file),
    sql or a plugin's format; inferred from the file extension when omitted (never files: name it; ``sql``
    from an ``url`` such as ``postgresql://...`` or ``sqlite:///...``)."""
    id_column: str | None = None
    """Column holding each row's unique id; without it each row gets a stable synthetic ``_row_id``."""
    columns: list[str] | None = None
    """Read only these columns (a projection)."""
    shard_rows: int = 500_000
    """Target rows per shard (Parquet: runs of row groups; small files are merged into one shard)."""
    on_deleted: Literal["delete", "keep"] = "delete"
    """When a rerun finds an input file deleted since the last run (an incremental run): ``"delete"``
    removes its rows from the output (the output stays what a run over the input as it is now would write);
    ``"keep"`` keeps them (an output that accumulates, e.g. over daily partitions). Not part of the
    fingerprint: it applies from the next run on."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """Options passed to fsspec for URLs (e.g. ``endpoint_url``); never logged."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The format's own keys (written directly under [input] in a job file); each format declares and
    checks its own (registry meta ``settings``): read them parsed with ``JobSpec.input_settings()``."""


@_open_keys
@dataclass(frozen=True)
class ModelSpec:
    """Which model to run. Besides these keys, ``[model]`` takes the keys of its kind (python:
    ``entrypoint``, ``options``; sklearn: ``method``; torch: ``device``; ...; see docs/models.md), held in
    ``settings``."""

    kind: str
    """python, sklearn, onnx, torch, hf, sentence-transformers, llm, mlflow, http or a plugin's kind
    (docs/models.md)."""
    path: str | None = None
    """File-based kinds (sklearn, onnx, torch, ...): the model file or folder, relative to the job file."""
    features: list[str] | None = None
    """Columns given to the model; default: every input column but the id."""
    outputs: list[str] | None = None
    """Names of the prediction columns (default depends on the kind, usually ``["prediction"]``)."""
    trusted: bool = False
    """Allow formats that run code on load (pickle, joblib). Only for files you trust."""
    accelerate: str = "off"
    """Run a converted, faster copy of the model (docs/accelerate.md): "off" (default), "compile" (tree
    ensembles of scikit-learn, LightGBM and XGBoost compiled to native code with treelite), "onnx" and
    "onnx-int8" (transformer encoders through ONNX Runtime), "bf16" (sentence-transformers' forward passes in
    bfloat16 on a CPU with bf16 units), or "auto" (each method the kind offers but int8, kept only where it
    agrees with the model and is faster). The copy is verified on a sample of the
    job's own rows before use; when it does not agree within the tolerance, a warning says so and the
    original model runs. Not "off": part of the job's fingerprint."""
    accelerate_tolerance: float | None = None
    """The bound the accelerated copy must meet on the sample, overriding the method's default (compile:
    max absolute difference 1e-6; onnx and bf16: min cosine similarity 0.999)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The kind's own keys (written directly under [model] in a job file); each kind declares and checks
    its own (registry meta ``settings``, or the adapter's ``settings_cls``): read them parsed with
    ``JobSpec.model_settings()``."""

    def __post_init__(self) -> None:
        # Keys that were ModelSpec's own before kinds had settings, passed at the value they had when
        # unset (``ModelSpec(kind="hf", options={})``, generic code): as before, they mean nothing, so a
        # kind that does not take them does not refuse them.
        kept = {k: v for k, v in self.settings.items() if not _legacy_default(k, v)}
        if len(kept) != len(self.settings):
            object.__setattr__(self, "settings", kept)


DEFAULT_BATCH_ROWS = 8192
"""``batch.size`` left out, for the kinds that name no default of their own."""
TABULAR_BATCH_ROWS = 65_536
TABULAR_BATCH_BYTES = 16 << 20
"""Tabular kinds: the default batch holds at most this many bytes of float64 features (and at least
DEFAULT_BATCH_ROWS rows). Large batches pay the per-call cost of these models less often (about 15% of a
gradient-boosting model's time at 8,192 rows, under 1% at 65,536)."""


def default_batch_rows(kind: str, features: int) -> int:
    """The batch size when ``batch.size`` is left out: see ``BatchSpec.size``."""
    from . import registry

    plugin = registry.find("models", kind)
    if plugin is None:
        return DEFAULT_BATCH_ROWS
    rows = plugin.meta.get("batch_rows")
    if isinstance(rows, int):
        return rows
    if not plugin.meta.get("tabular"):
        return DEFAULT_BATCH_ROWS
    return max(DEFAULT_BATCH_ROWS, min(TABULAR_BATCH_ROWS, TABULAR_BATCH_BYTES // (8 * max(1, features))))


def default_sort_window(kind: str) -> int | None:
    """``batch.sort_window`` when both it and ``batch.size`` are left out: the kind's (registry meta
    ``sort_window``), so the kind's small default batches hold texts of similar length; None: no bucketing."""
    from . import registry

    plugin = registry.find("models", kind)
    window = plugin.meta.get("sort_window") if plugin is not None else None
    return window if isinstance(window, int) else None


@dataclass(frozen=True)
class BatchSpec:
    """How rows are grouped for the model."""

    size: int | Literal["auto"] | None = None
    """Rows per batch, or "auto": probe sizes on real input before the run and keep the fastest that stays
    within ``memory_fraction`` of the device's memory (cached in the ledger for later runs). Default: the
    model kind's: for the tabular kinds (sklearn, onnx) 65,536 rows, fewer for tables of more than 32
    features (at most 16 MiB of float64 features a batch, at least 8,192 rows); for the text encoders
    (sentence-transformers, hf) 256 rows, length-bucketed (``sort_window`` 4,096 unless set); 8,192 for the
    others. A batch that reaches the model with no other batch queued behind it is cut into one piece per
    idle lane, so a job smaller than one batch still keeps every lane busy."""
    memory_fraction: float = 0.8
    """With ``size = "auto"``: the share of the device's memory (GPU, else RAM) a batch may use."""
    max_bytes: int | None = None
    """Cut each model call so its rows' feature values total at most this many bytes (strings: their
    length; fixed-width values: their width); a single larger row goes alone. ``size`` still caps rows.
    A batch cut into several calls is preprocessed again per call, on the model's thread."""
    max_tokens: int | None = None
    """Like ``max_bytes``, in tokens as the model's adapter counts them (``token_counts``); adapters without
    a tokenizer count one token per four bytes."""
    def rows(self) -> int:
        """The batch size in rows; ``size = "auto"`` and the default are resolved before workers start."""
        if isinstance(self.size, int):
            return self.size
        raise SpecError(
            f"batch.size = {self.size!r} must be resolved before batches are made (resolve_batch_size)"
        )

    sort_window: int | None = None
    """Length bucketing: within windows of this many rows, send rows to the model longest first, so each
    batch holds rows of similar length (little padding for text models). Results are still written in
    input order. Lengths are the bytes of the row's feature values (a text's UTF-8 length). Default: none,
    except for the text encoders when ``size`` is left out too (4,096)."""


@dataclass(frozen=True)
class RetrySpec:
    """How transient failures (timeouts, throttling, errors marked transient) are retried."""

    max_attempts: int = 3
    """Calls per batch before its items are dead-lettered with the last error."""
    backoff_seconds: float = 0.5
    """First wait between attempts; doubled each time, with full jitter."""
    max_backoff_seconds: float = 30.0
    """Longest wait between attempts."""


@dataclass(frozen=True)
class ErrorsSpec:
    """What happens to items the model cannot score, and how many failures a job tolerates."""

    max_failed_rows: int | None = None
    """Stop the job (exit 1, state failed) once more rows than this are dead-lettered."""
    max_failed_fraction: float | None = None
    """Stop the job once this fraction of the input rows is dead-lettered (0.0 to 1.0)."""
    include_input: bool = True
    """Write each dead-lettered item's input values next to its error."""
    stop_after_identical_batch_failures: int = 3
    """Stop the job as a model failure (exit 1, committed work kept) once every row of this many consecutive
    batches failed with the same error class and message: the model, not the data, is broken. 0: never
    (every such row is dead-lettered)."""


@_open_keys
@dataclass(frozen=True)
class OutputSpec:
    """Where results go. Besides these keys, ``[output]`` takes the keys of its format (parquet:
    ``compression``; every file format: ``target_file_mb``, ``partition_by``; see docs/sinks.md), held in
    ``settings``."""

    path: str = ""
    """Output directory, local or an fsspec URL. Required by the file formats."""
    format: str = "parquet"
    """parquet, arrow, jsonl, csv, openai-batch, sql (a PostgreSQL or SQLite table, see docs/sinks.md) or a
    plugin's format."""
    keep: list[str] = field(default_factory=list)
    """Input columns written next to the predictions (the id is always kept)."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """Options passed to fsspec for URLs; never logged."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The format's own keys (written directly under [output] in a job file); read them parsed with
    ``JobSpec.output_settings()``."""


@dataclass(frozen=True)
class RuntimeSpec:
    """How the run is executed. These keys do not change the results, so editing them never forces a
    restart."""

    workers: int = 1
    """Worker processes; each loads the model once."""
    threads_per_worker: int | None = None
    """Intra-op threads of the model in each worker; default: CPU cores / workers."""
    devices: str | list[int] = "auto"
    """GPUs to run on. ``"auto"``: when CUDA GPUs are present and the model kind runs on one (torch, hf,
    sentence-transformers, llm with ``device`` auto or cuda), one worker per visible GPU (times
    ``replicas_per_device``), each pinned with ``CUDA_VISIBLE_DEVICES``; otherwise ``workers`` CPU workers.
    ``"cpu"``: never pin GPUs (``workers`` workers). A list of CUDA device indexes (``[0, 2]``): one worker per
    listed GPU (times ``replicas_per_device``), for any kind; ``workers`` is then ignored."""
    replicas_per_device: int = 1
    """Workers (model copies) per GPU when GPUs are used."""
    ledger: str | None = None
    """Ledger location: an SQLite file path (relative to the job file), or a PostgreSQL URL
    ``postgresql://user:password@host:5432/db`` (needs ``pip install 'infermill[postgres]'``). Several
    jobs may share one ledger. Default ``.infermill/<name>.sqlite`` beside the job file. Credentials in
    the URL are never shown in messages, status or logs; it is not part of the fingerprint."""
    prefetch: int = 4
    """Batches read ahead of the model per worker (bounds memory)."""
    grace_seconds: float = 20.0
    """After SIGTERM/SIGINT, how long in-flight work may take to finish before it is abandoned."""
    lease_seconds: float = 30.0
    """A run whose heartbeat is older than this is presumed dead and its lease can be taken over."""
    progress_interval: float = 10.0
    """Seconds between progress log lines when stderr is not a terminal."""
    executor: str = "auto"
    """How workers run: ``"auto"`` (one worker in this process, more in worker processes), ``"inline"``,
    ``"process"``, or an executor a plugin registers (``infermill.registry``, group ``executors``)."""
    timezone: str = "UTC"
    """The job's timezone (an IANA name such as ``Europe/Paris``): ``{date}`` in ``[input] path`` defaults to
    today there."""


@dataclass(frozen=True)
class ScheduleSpec:
    """When ``infermill serve`` runs the job (docs/scheduling.md). Not part of the fingerprint: editing the
    schedule never forces a restart. ``infermill run`` ignores it."""

    cron: str | None = None
    """Five-field cron expression (minute hour day-of-month month day-of-week), e.g. ``"0 2 * * *"`` for
    02:00 every day, in ``timezone``; ``@daily``, ``@hourly``... are accepted."""
    timezone: str = "UTC"
    """IANA time zone the cron expression's wall times are in (``"Europe/Paris"``)."""
    catchup: Literal["none", "latest", "all"] = "latest"
    """Due times missed while ``serve`` was down: ``"none"`` skips them, ``"latest"`` runs the newest one
    once, ``"all"`` runs each, oldest first (each with its own logical date)."""
    on_new_files: bool = False
    """Also run when new input files arrive (and have settled): ``serve`` watches a local input folder with
    filesystem events (inotify) and lists an object store every ``poll_seconds``."""
    settle_seconds: float = 30.0
    """New files trigger a run once the input's listing (names, sizes, mtimes or etags) has not changed
    for this long, so a file still being written is not read half-way."""
    poll_seconds: float = 10.0
    """How often ``serve`` lists the input location when ``on_new_files`` is set and no file event woke it
    (object stores; local folders where inotify is not available)."""
    retry_seconds: float = 60.0
    """After a run that exited 3 (another run held the job) or 75 (interrupted, transient), how long
    ``serve`` waits before running the same trigger again (it resumes)."""

    def __post_init__(self) -> None:
        if self.cron is not None:
            from .schedule.cron import Cron

            Cron.parse(self.cron)
        from .schedule.cron import zone

        zone(self.timezone)
        for name in ("settle_seconds", "poll_seconds", "retry_seconds"):
            if getattr(self, name) < 0:
                raise SpecError(f"[schedule] {name} must be 0 or more, not {getattr(self, name)!r}",
                                hint=f"set {name} = 30 (seconds) under [schedule]")

    @property
    def active(self) -> bool:
        """Whether ``serve`` has anything to do for this job."""
        return self.cron is not None or self.on_new_files


@dataclass(frozen=True)
class JobSpec:
    """A whole job. Build it in Python or load it with :func:`load_spec`."""

    input: InputSpec
    model: ModelSpec
    output: OutputSpec
    batch: BatchSpec = field(default_factory=BatchSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    retry: RetrySpec = field(default_factory=RetrySpec)
    errors: ErrorsSpec = field(default_factory=ErrorsSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    name: str = "job"
    """The job's name; a job file's default is the file's stem."""
    base_dir: str = field(default_factory=os.getcwd)
    """Folder that relative paths are resolved against (the job file's folder)."""
    source_file: str | None = None
    """The job file this spec was loaded from, if any."""
    params: dict[str, str] = field(default_factory=dict)
    """Values for the placeholders of ``[input] path`` (``data/{date}/*.parquet``), as ``--param
    date=2026-12-01`` gives them; ``date`` defaults to today in ``[runtime] timezone``."""
    input_template: str | None = None
    """``[input] path`` as written, when it has placeholders; ``input.path`` then holds it filled in.
    Set by the spec itself."""

    def __post_init__(self) -> None:
        _render_input(self)
        _validate(self)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None, name: str | None = None,
        source_file: str | None = None, params: dict[str, str] | None = None,
    ) -> JobSpec:
        """Build a spec from a parsed job file mapping, checking keys and types."""
        where = source_file or "job spec"
        data = dict(data)
        for key in sorted(data):
            if key not in _SECTIONS and key != "name":
                _unknown(key, [*_SECTIONS, "name"], "", where)
        sections: dict[str, Any] = {}
        for key, section_cls in _SECTIONS.items():
            raw = data.pop(key, None)
            if raw is None:
                if key in ("input", "model", "output"):
                    raise SpecError(
                        f"{where}: missing section [{key}]",
                        hint=f"add a [{key}] table; see `infermill run --help` for an example job file",
                    )
                continue
            if not isinstance(raw, dict):
                raise SpecError(f"{where}: '{key}' must be a table ([{key}]), not {type(raw).__name__}")
            sections[key] = _build(section_cls, raw, key, where)
        job_name = data.pop("name", None) or name or "job"
        if not isinstance(job_name, str):
            raise SpecError(f"{where}: 'name' must be a string")
        return cls(
            name=job_name,
            base_dir=str(Path(base_dir or os.getcwd()).resolve()),
            source_file=source_file,
            params=dict(params or {}),
            **sections,
        )

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """The spec as plain data, in a job file's shape (a plugin's own keys directly in its section). With
        ``redact``, storage option values and the passwords of URLs (which may hold credentials) are
        masked, for anything written to a ledger, log or report."""
        out: dict[str, Any] = {"name": self.name}
        for key in _SECTIONS:
            section = dataclasses.asdict(getattr(self, key))
            if key in ("input", "model", "output"):
                section.update(section.pop("settings"))
            out[key] = section
        if redact:
            for key in ("input", "output"):
                options = out[key].get("storage_options") or {}
                out[key]["storage_options"] = dict.fromkeys(options, "***")
                for name, value in out[key].items():
                    if isinstance(value, str) and is_url(value):
                        out[key][name] = mask_url(value)
        return out

    def input_settings(self, fmt: str | None = None) -> Any:
        """The input format's own keys, parsed (its settings dataclass, defaults filled in), or None for a
        format with none. ``fmt``: the format when the spec cannot name it (a folder of files)."""
        return self._settings("sources", fmt or self.input_format(), self.input.settings, "input")

    def output_settings(self) -> Any:
        """The output format's own keys, parsed (see :meth:`input_settings`)."""
        return self._settings("sinks", self.output.format, self.output.settings, "output")

    def model_settings(self) -> Any:
        """The model kind's own keys, parsed (see :meth:`input_settings`); a plugin kind that declares
        them only on its class (``settings_cls``) is imported to read them."""
        return self._settings("models", self.model.kind, self.model.settings, "model")

    def _settings(self, group: Any, name: str, raw: dict[str, Any], section: str) -> Any:
        cache: dict[tuple[str, str], Any] = self.__dict__.setdefault("_parsed_settings", {})
        if (group, name) not in cache:
            from . import registry

            cls = registry.settings_class(group, name)
            if cls is registry.DEFERRED:
                cls = getattr(registry.load(group, name), "settings_cls", None)
            owner = f"model kind {name!r}" if section == "model" else f"{section} format {name!r}"
            legacy = {"input": _LEGACY_INPUT_KEYS, "output": _LEGACY_OUTPUT_KEYS}.get(section, {})
            known = cls is not None and cls is not registry.DEFERRED
            own = {f.name for f in dataclasses.fields(cls)} if known else set()
            # Keys every format took before formats had settings: a job file written then may carry one its
            # format ignores (shard_bytes in a Parquet job). It still runs, and is told the key does nothing.
            ignored = sorted(k for k in raw if k in legacy and k not in own)
            if ignored:
                raw = {k: v for k, v in raw.items() if k not in ignored}
                notes: list[str] = self.__dict__.setdefault("_ignored_keys", [])
                notes.extend(f"[{section}] {k} does not apply to the {name} format; it is ignored (remove it)"
                             for k in ignored)
            cache[(group, name)] = parse_section_settings(
                cls, raw, section, _SECTIONS[section], owner, self.source_file or "job spec"
            )
        return cache[(group, name)]

    def ignored_keys(self) -> list[str]:
        """Notes on keys of an older job file that its format ignores (see :meth:`input_settings`)."""
        return list(self.__dict__.get("_ignored_keys", []))

    def resolve(self, path: str) -> str:
        """Resolve a path from the spec against ``base_dir`` (URLs and absolute paths are kept)."""
        if is_url(path):
            return path
        expanded = os.path.expanduser(path)
        if os.path.isabs(expanded):
            return os.path.normpath(expanded)
        return os.path.normpath(os.path.join(self.base_dir, expanded))

    def fingerprint(self) -> str:
        """Hash of everything that affects results (runtime settings excluded), free of absolute paths: the
        same job file in another folder, or naming its input or model at another path, has the same one."""
        data = self.to_dict()
        # Keys that moved from [input]/[output] into their format's settings: fingerprinted as the release
        # before the move did (present, at their defaults when unset), so started jobs stay unchanged.
        data["input"] = {**_LEGACY_INPUT_KEYS, **data["input"]}
        data["output"] = {**_LEGACY_OUTPUT_KEYS, **data["output"]}
        data["model"] = _legacy_model(data["model"], _neutral_settings(self.model.kind))
        if self.model.accelerate == "off":  # as before the key: a job without acceleration keeps its fingerprint
            data["model"].pop("accelerate")
            data["model"].pop("accelerate_tolerance")
        data.pop("runtime")
        data.pop("schedule")  # when a job runs never changes its results
        for key in ("max_bytes", "max_tokens", "sort_window"):  # unset: as the fingerprint before these keys
            if data["batch"][key] is None:
                data["batch"].pop(key)
        # Keys added after jobs were already running: at their defaults they leave the fingerprint as it was,
        # so upgrading infermill does not make a started job "changed".
        for key, default in (("encoding", "utf-8"), ("max_row_bytes", 16 * 1024 * 1024),
                             ("max_decompressed_bytes", 64 * 1024**3)):
            if data["input"].get(key) == default:
                data["input"].pop(key)
        data.pop("retry")
        data["input"].pop("on_deleted")  # a policy for the next incremental run, not for results made
        # A format's keys that cannot change results (a SQL source's fetch size, the environment variable
        # holding its password) are left out, and a URL's password is masked: rotating it is no new job.
        for key in _neutral_input_keys(self):
            data["input"].pop(key, None)
        if isinstance(data["input"].get("url"), str):
            data["input"]["url"] = mask_url(data["input"]["url"])
        data["errors"].pop("max_failed_rows")
        data["errors"].pop("max_failed_fraction")
        data["errors"].pop("stop_after_identical_batch_failures")
        data["input"].pop("storage_options", None)
        data["output"].pop("storage_options", None)
        # No absolute path may enter the fingerprint, or a moved job folder (or data mounted elsewhere in a
        # container) would count as a new job. The input and the model are compared by content instead (the
        # input and model fingerprints: relative paths, sizes, mtimes or etags, digests of model files), so
        # where they are found does not matter. The output is where committed results already lie, so
        # its path is kept, as written: relative to the job file, the output moves with it.
        data["input"].pop("path")
        data["model"].pop("path")
        data["output"]["path"] = _as_written(self.output.path)
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def ledger_path(self) -> str:
        """Where this job's ledger lives: an SQLite file path, or the ``postgresql://`` URL as written
        (with any credentials: show it with ``infermill.ledger.display_location``)."""
        if self.runtime.ledger:
            return self.resolve(self.runtime.ledger)
        return os.path.join(self.base_dir, ".infermill", f"{self.name}.sqlite")

    def input_format(self) -> str:
        """The input format, given or inferred from the path's extension."""
        if self.input.format:
            return self.input.format
        url = self.input.settings.get("url")
        if not self.input.path and isinstance(url, str) and url.lower().startswith(_SQL_URL_PREFIXES):
            return "sql"
        path = self.input.path.rstrip("/")
        if compression_of(path.rstrip("*")):
            path = strip_compression(path.rstrip("*"))
        for ext, fmt in input_extensions().items():
            if path.lower().endswith(ext) or path.lower().endswith(ext + "*"):
                return fmt
        raise SpecError(
            f"cannot infer the input format from '{self.input.path}'",
            hint='set [input] format = "parquet", "arrow", "csv", "jsonl" or "openai-batch"',
        )


_SQL_URL_PREFIXES = ("postgresql://", "postgres://", "sqlite:///")
"""An ``[input] url`` that starts so, with no path or format, is read as ``format = "sql"``."""

_LEGACY_INPUT_KEYS: dict[str, Any] = {
    "shard_bytes": 128 * 1024 * 1024, "split_files": True, "csv_delimiter": None,
    "encoding": "utf-8", "max_row_bytes": 16 * 1024 * 1024, "max_decompressed_bytes": 64 * 1024**3,
}
"""[input] keys that were the spec's own before formats had settings, with the defaults they had."""
_LEGACY_OUTPUT_KEYS: dict[str, Any] = {"compression": None}
_LEGACY_MODEL_KEYS: dict[str, Any] = {
    "entrypoint": None, "batch_format": "numpy", "method": None, "positive_class": None, "options": {},
}
"""[model] keys that were the spec's own before kinds had settings, with the defaults they had."""


def _legacy_default(key: str, value: Any) -> bool:
    if key not in _LEGACY_MODEL_KEYS:
        return False
    default = _LEGACY_MODEL_KEYS[key]
    return value is None if default is None else type(value) is type(default) and bool(value == default)


def _legacy_model(model: dict[str, Any], neutral: frozenset[str]) -> dict[str, Any]:
    """The [model] section (a kind's keys flat in it, as ``to_dict`` gives it) in the shape the fingerprint
    had before kinds had settings: the keys that were the spec's own at the top (at their defaults when
    unset), the kind's other keys under ``settings`` (those that cannot change results left out)."""
    common = {f.name for f in dataclasses.fields(ModelSpec)} - {"settings"}
    own = {k: v for k, v in model.items() if k not in common}
    legacy = {k: own.pop(k, default) for k, default in _LEGACY_MODEL_KEYS.items()}
    settings = {k: v for k, v in own.items() if k not in neutral}
    return {**{k: model[k] for k in common}, **legacy, "settings": settings}



_SECTIONS: dict[str, type] = {
    "input": InputSpec,
    "model": ModelSpec,
    "batch": BatchSpec,
    "output": OutputSpec,
    "runtime": RuntimeSpec,
    "retry": RetrySpec,
    "errors": ErrorsSpec,
    "schedule": ScheduleSpec,
}


def load_spec(path: str | os.PathLike[str], params: dict[str, str] | None = None) -> JobSpec:
    """Read and validate a TOML job file; ``params`` fill the placeholders of ``[input] path``."""
    file = Path(path)
    if not file.exists():
        raise SpecError(f"job file not found: {file}", hint="check the path, or run `infermill demo`")
    if file.is_dir():
        raise SpecError(f"job file is a directory: {file}", hint="pass the .toml file itself")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{file}: invalid TOML: {exc}", hint="fix the syntax at the line shown") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{file}: not a UTF-8 text file") from exc
    return JobSpec.from_dict(
        data, base_dir=file.resolve().parent, name=file.stem, source_file=str(file), params=params
    )


def _unknown(key: str, allowed: list[str], section: str, where: str) -> None:
    dotted = f"{section}.{key}" if section else key
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
    raise SpecError(f"{where}: unknown key '{dotted}'", hint=hint)


def _build(cls: type, raw: dict[str, Any], section: str, where: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if cls in (ModelSpec, InputSpec, OutputSpec):
        # Keys the base spec does not know belong to the plugin (kind, format); checked in _validate.
        extra = {k: v for k, v in raw.items() if k not in names}
        raw = {k: v for k, v in raw.items() if k in names}
        if extra:
            raw["settings"] = {**raw.get("settings", {}), **extra}
    for key in raw:
        if key not in names:
            _unknown(key, names, section, where)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _check_type(value, hints[key], f"{section}.{key}", where)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in values:
            raise SpecError(f"{where}: missing key '{section}.{key}'", hint=f"add `{key} = ...` under [{section}]")
    return cls(**values)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (list,):
        return "a list of " + _type_name(get_args(tp)[0]) + "s"
    if origin is dict:
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _first_accepting(value: Any, options: list[Any], dotted: str, where: str) -> Any:
    """A union such as ``int | Literal["auto"]``: the value as the first option that accepts it."""
    for option in options:
        try:
            return _check_type(value, option, dotted, where)
        except SpecError:
            continue
    names = " or ".join(_type_name(a) for a in options)
    raise SpecError(f"{where}: '{dotted}' must be {names}, not {value!r}")


def _check_type(value: Any, tp: Any, dotted: str, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin is not None and type(None) in args:  # Optional[...]
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        if len(inner) > 1:
            return _first_accepting(value, inner, dotted, where)
        return _check_type(value, inner[0], dotted, where)
    if origin is not None and len(args) > 1 and origin is not Literal and origin not in (list, dict):
        return _first_accepting(value, list(args), dotted, where)
    if origin is Literal:
        if value not in args:
            raise SpecError(f"{where}: '{dotted}' must be one of {_type_name(tp)}, not {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{where}: '{dotted}' must be {_type_name(tp)}, not {type(value).__name__}")
        return [_check_type(v, args[0], f"{dotted}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: '{dotted}' must be a table, not {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise SpecError(f"{where}: '{dotted}' must be an integer, not a boolean")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SpecError(f"{where}: '{dotted}' must be {_type_name(tp)}, not {type(value).__name__} ({value!r})")
    return value


def parse_settings(cls: type | None, settings: dict[str, Any], kind: str, where: str) -> Any:
    """Check a model kind's own keys against its settings dataclass and build it."""
    if cls is None:
        if settings:
            base = [f.name for f in dataclasses.fields(ModelSpec) if f.name != "settings"]
            key = sorted(settings)[0]
            close = difflib.get_close_matches(key, base, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"model kind '{kind}' takes no key '{key}'"
            raise SpecError(f"{where}: unknown key 'model.{key}'", hint=hint)
        return None
    own = [f.name for f in dataclasses.fields(cls)]
    for key in settings:
        if key not in own:
            base = [f.name for f in dataclasses.fields(ModelSpec) if f.name != "settings"]
            _unknown(key, base + own, "model", where)
    return _build(cls, settings, "model", where)


def parse_section_settings(
    cls: type | None, settings: dict[str, Any], section: str, base: type, owner: str, where: str
) -> Any:
    """Check a plugin's own keys in ``[section]`` against its settings dataclass and build it (defaults
    filled in); an unknown key gets the "did you mean" of the section's common and the plugin's keys."""
    common = [f.name for f in dataclasses.fields(base) if f.name != "settings"]
    if cls is None:
        if settings:
            key = sorted(settings)[0]
            close = difflib.get_close_matches(key, common, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"the {owner} takes no key '{key}'"
            raise SpecError(f"{where}: unknown key '{section}.{key}'", hint=hint)
        return None
    own = [f.name for f in dataclasses.fields(cls)]
    for key in settings:
        if key not in own:
            _unknown(key, common + own, section, where)
    try:
        return _build(cls, settings, section, where)
    except SpecError as exc:
        if exc.message.startswith(where):
            raise
        raise SpecError(f"{where}: {exc.message}", hint=exc.hint) from None


def _as_written(path: str) -> str:
    """A path as the job file spells it, normalised (``./out/`` and ``out`` are one path), never resolved."""
    if is_url(path):
        return path.rstrip("/")
    return os.path.normpath(path)


def _neutral_input_keys(spec: JobSpec) -> tuple[str, ...]:
    """The input format's keys that cannot change results (its settings class's ``result_neutral``)."""
    from . import registry

    try:
        fmt = spec.input_format()
    except SpecError:
        return ()
    if registry.find("sources", fmt) is None:
        return ()
    return tuple(getattr(registry.settings_class("sources", fmt), "result_neutral", ()))


def _neutral_settings(kind: str) -> frozenset[str]:
    """A kind's [model] keys that cannot change results (rate limits, concurrency): not fingerprinted.
    Registry meta ``neutral`` says it without importing the adapter; a plugin that does not register it
    says it on its class (``result_neutral_settings``), read by importing it (as before meta existed)."""
    from . import registry

    plugin = registry.find("models", kind)
    if plugin is None:
        return frozenset()
    if "neutral" in plugin.meta:
        return frozenset(plugin.meta["neutral"])
    if registry.builtin("models").get(kind) is plugin:
        return frozenset()
    try:
        return frozenset(getattr(registry.import_target(plugin), "result_neutral_settings", ()))
    except (ImportError, SpecError):
        return frozenset()


def _validate_settings(spec: JobSpec, where: str) -> None:
    """The model kind's own keys, checked against its settings dataclass (imports no adapter). A plugin
    kind that declares its keys only on its class is checked when it loads (``ModelAdapter``)."""
    from . import registry

    if registry.find("models", spec.model.kind) is None:
        return  # reported with the list of kinds when the model is loaded
    if registry.settings_class("models", spec.model.kind) is registry.DEFERRED:
        return
    spec.model_settings()


def _validate_accelerate(model: ModelSpec, where: str) -> None:
    """``[model] accelerate``: a known method that the kind offers (registry meta ``accelerate``: the
    methods; a plugin kind that does not say is checked when its model loads)."""
    from . import registry
    from .accelerate import METHODS

    method = model.accelerate
    if method not in METHODS:
        raise SpecError(
            f"{where}: 'model.accelerate' must be one of {', '.join(repr(m) for m in METHODS)}, not {method!r}",
            hint='use accelerate = "auto" to let infermill pick, or "off"',
        )
    tolerance = model.accelerate_tolerance
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 <= tolerance < float("inf")):
        raise SpecError(
            f"{where}: 'model.accelerate_tolerance' must be a finite number >= 0, not {tolerance!r}",
            hint="e.g. accelerate_tolerance = 1e-5 (compile: max absolute difference; onnx: min cosine)",
        )
    plugin = registry.find("models", model.kind)
    if method in ("off", "auto") or plugin is None:
        return
    if "accelerate" not in plugin.meta and registry.builtin("models").get(model.kind) is not plugin:
        return
    offered = tuple(plugin.meta.get("accelerate", ()))
    if method not in offered:
        quoted = ", ".join(f'"{m}"' for m in offered)
        raise SpecError(
            f"{where}: 'model.accelerate' = {method!r} does not apply to model kind {model.kind!r}",
            hint=(f'use one of {quoted}, "auto" or "off"' if offered
                  else f'model kind {model.kind!r} has no accelerated form: remove the key, or set "off"'),
        )


def _validate_formats(spec: JobSpec, where: str) -> None:
    """The input and output formats' own keys, and the path each needs (a format that reads or writes no
    files, such as a SQL table, registers ``pathless``)."""
    from . import registry

    try:
        fmt: str | None = spec.input_format()
    except SpecError:
        fmt = None  # a folder: its files name the format, checked when the source opens
    checks: tuple[tuple[registry.Group, str | None, str], ...] = (
        ("sources", fmt, "input"), ("sinks", spec.output.format, "output")
    )
    for group, name, section in checks:
        plugin = registry.find(group, name) if name else None
        if plugin is None or name is None:
            continue
        if not plugin.meta.get("pathless") and not getattr(spec, section).path:
            raise SpecError(
                f"{where}: '{section}.path' is empty", hint=f"set [{section}] path (format {name!r} needs it)"
            )
        if registry.settings_class(group, name) is not registry.DEFERRED:
            spec.input_settings(name) if section == "input" else spec.output_settings()
    if fmt is None:
        if not spec.input.path:
            raise SpecError(f"{where}: 'input.path' is empty")
        _check_any_format_takes(spec.input.settings, where)


def _check_any_format_takes(settings: dict[str, Any], where: str) -> None:
    """A folder's format is known once its files are listed (then its keys are checked in full): until
    then, refuse a key that no input format takes, so a typo does not wait for the listing."""
    from . import registry

    known = {f.name for f in dataclasses.fields(InputSpec) if f.name != "settings"}
    for name in registry.names("sources"):
        cls = registry.settings_class("sources", name)
        if cls is registry.DEFERRED:
            return  # a plugin's keys are unknown until it loads: leave them to the source
        if cls is not None:
            known |= {f.name for f in dataclasses.fields(cls)}
    for key in sorted(settings):
        if key not in known:
            _unknown(key, sorted(known), "input", where)


def _validate_ledger(runtime: RuntimeSpec, where: str) -> None:
    from . import registry

    ledger = runtime.ledger
    if not ledger or not is_url(ledger):
        return
    scheme = ledger.split("://", 1)[0].lower()
    if registry.find("ledgers", "postgresql" if scheme == "postgres" else scheme) is None:
        raise SpecError(
            f"{where}: 'runtime.ledger' must be a file path (SQLite) or the URL of a ledger backend "
            f"(postgresql://, or a plugin's), not {mask_url(ledger)!r}",
            hint='e.g. ledger = ".infermill/jobs.sqlite" or ledger = "postgresql://user@host/db"',
        )


def _validate_devices(runtime: RuntimeSpec, where: str) -> None:
    devices = runtime.devices
    hint = 'use devices = "auto", "cpu" or a list of CUDA device indexes such as [0, 1]'
    if isinstance(devices, str):
        if devices not in ("auto", "cpu"):
            raise SpecError(
                f"{where}: 'runtime.devices' must be \"auto\", \"cpu\" or a list, not {devices!r}", hint=hint
            )
    elif not isinstance(devices, list) or not devices:
        raise SpecError(f"{where}: 'runtime.devices' must be \"auto\", \"cpu\" or a non-empty list", hint=hint)
    else:
        for index in devices:
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise SpecError(f"{where}: 'runtime.devices' has an invalid device index {index!r}", hint=hint)
        if len(set(devices)) != len(devices):
            raise SpecError(f"{where}: 'runtime.devices' lists a device twice", hint="use replicas_per_device")
    if runtime.replicas_per_device < 1:
        raise SpecError(f"{where}: 'runtime.replicas_per_device' must be at least 1, not {runtime.replicas_per_device}")


def _render_input(spec: JobSpec) -> None:
    """Fill the placeholders of ``[input] path`` from ``params`` (see ``infermill.templates``)."""
    template = spec.input_template
    if template is None and "{" in spec.input.path:
        template = spec.input.path
    if template is None and not spec.params:
        return
    from .templates import render

    where = spec.source_file or "job spec"
    if template is None:
        render("", spec.params, spec.runtime.timezone, where)  # refuses params that fill nothing
        return
    _validate_timezone(spec.runtime, where)
    path = render(template, spec.params, spec.runtime.timezone, where)
    object.__setattr__(spec, "input_template", template)
    object.__setattr__(spec, "input", dataclasses.replace(spec.input, path=path))


def _validate_timezone(runtime: RuntimeSpec, where: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(runtime.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError(
            f"{where}: unknown 'runtime.timezone' {runtime.timezone!r}",
            hint='use an IANA timezone name, e.g. "UTC" or "Europe/Paris"',
        ) from None


def _validate(spec: JobSpec) -> None:
    from . import registry

    where = spec.source_file or "job spec"
    if spec.input.format is not None and registry.find("sources", spec.input.format) is None:
        raise registry.unknown("sources", spec.input.format, where)
    if registry.find("sinks", spec.output.format) is None:
        raise registry.unknown("sinks", spec.output.format, where)
    if spec.runtime.executor != "auto" and registry.find("executors", spec.runtime.executor) is None:
        raise registry.unknown("executors", spec.runtime.executor, where)
    _validate_settings(spec, where)
    _validate_accelerate(spec.model, where)
    _validate_formats(spec, where)
    if spec.batch.size not in ("auto", None) and (not isinstance(spec.batch.size, int) or spec.batch.size < 1):
        raise SpecError(f"{where}: 'batch.size' must be at least 1 or \"auto\", not {spec.batch.size!r}")
    if not 0.0 < spec.batch.memory_fraction <= 1.0:
        raise SpecError(f"{where}: 'batch.memory_fraction' must be in (0, 1], not {spec.batch.memory_fraction}")
    for key in ("max_bytes", "max_tokens", "sort_window"):
        value = getattr(spec.batch, key)
        if value is not None and value < 1:
            raise SpecError(f"{where}: 'batch.{key}' must be at least 1, not {value}")
    if spec.input.shard_rows < 1:
        raise SpecError(f"{where}: 'input.shard_rows' must be positive")
    if spec.runtime.workers < 1:
        raise SpecError(f"{where}: 'runtime.workers' must be at least 1, not {spec.runtime.workers}")
    _validate_devices(spec.runtime, where)
    _validate_ledger(spec.runtime, where)
    _validate_timezone(spec.runtime, where)
    if spec.runtime.threads_per_worker is not None and spec.runtime.threads_per_worker < 1:
        raise SpecError(f"{where}: 'runtime.threads_per_worker' must be at least 1")
    if spec.retry.max_attempts < 1:
        raise SpecError(f"{where}: 'retry.max_attempts' must be at least 1")
    if spec.retry.backoff_seconds < 0 or spec.retry.max_backoff_seconds < 0:
        raise SpecError(f"{where}: 'retry' backoff seconds must not be negative")
    fraction = spec.errors.max_failed_fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise SpecError(f"{where}: 'errors.max_failed_fraction' must be between 0.0 and 1.0, not {fraction}")
    if spec.errors.max_failed_rows is not None and spec.errors.max_failed_rows < 0:
        raise SpecError(f"{where}: 'errors.max_failed_rows' must not be negative")
    if spec.errors.stop_after_identical_batch_failures < 0:
        raise SpecError(
            f"{where}: 'errors.stop_after_identical_batch_failures' must not be negative",
            hint="set a number of batches, or 0 to never stop for identical failures",
        )
    if spec.runtime.prefetch < 1:
        raise SpecError(f"{where}: 'runtime.prefetch' must be at least 1")
    if not spec.name or any(c in spec.name for c in "/\\\0") or spec.name in (".", ".."):
        raise SpecError(f"{where}: invalid job name {spec.name!r}", hint="use letters, digits, '-' and '_'")
    if spec.model.outputs is not None:
        if not spec.model.outputs:
            raise SpecError(f"{where}: 'model.outputs' is empty", hint="name at least one prediction column")
        if len(set(spec.model.outputs)) != len(spec.model.outputs):
            raise SpecError(f"{where}: 'model.outputs' has duplicate names")
    id_name = spec.input.id_column or "_row_id"
    clash = set(spec.model.outputs or []) & ({id_name} | set(spec.output.keep))
    if clash:
        raise SpecError(
            f"{where}: output column {sorted(clash)[0]!r} is both a prediction and an input column",
            hint="rename it in 'model.outputs'",
        )
