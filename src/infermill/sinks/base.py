"""The sink contract: where a job's results go, and how a shard's result becomes part of them.

A sink receives one result per shard (and one dead-letter result per shard with failures). Its life in
a job, each step called by the coordinator unless said otherwise::

    claim(owner)            the output belongs to this job (refuses another job's output)
    probe()                 (validate) could it be written? leaves nothing behind
    prepare()               create what writing needs; fail early when it cannot be written
    recover(keep)           clean what dead attempts left (staged results, results the ledger does not name)
    open_writer(shard)      (worker) a writer for one shard's result ... writer.close() -> StagedFile
    commit(staged, attempt) place a staged result under its attempt's final name: atomic, idempotent
    abort(staged)           drop a staged result (work abandoned); leaves nothing
    finalize(manifest)      the job is complete: write the manifest (the list of committed results)
    unfinalize()            the job's output is about to change (retry, a damaged part redone)
    tidy()                  end of any run: remove what it left empty (never a result)

A staged result is a *location* (a local path or a URL), so a worker on another machine can stage to
object storage and the coordinator commits without seeing the worker's disk. Committing never replaces
another attempt's result: names carry the attempt (the run's lease epoch), the ledger records which
attempt is a shard's result, and ``recover``/``finalize`` remove the results of other attempts. Reading
back (``stat``, ``checksum``, ``read_part``, ``read_manifest``, ``list_parts``, ``members``) serves
``verify``, ``status`` and ``retry``.

A shard's result may be a *set* of files (``[output] target_file_mb``, ``partition_by``): the staged
result then carries its files in ``StagedFile.members`` and is itself their index, which is what is
committed last and recorded in the ledger; ``members(name)`` lists a committed set's files. See
:mod:`infermill.sinks.layout`.

:class:`~infermill.sinks.files.FileSink` implements it for a folder of files (local or any fsspec
store); ``infermill.testing.SinkConformance`` is the suite every sink passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OutputError
from ..spec import JobSpec

if TYPE_CHECKING:
    import pyarrow as pa  # annotations only: `infermill status` opens a sink and must not import pyarrow

__all__ = [
    "ERRORS_DIR",
    "MANIFEST_NAME",
    "OWNER_NAME",
    "SETS_DIR",
    "STAGING_DIR",
    "CommittedFile",
    "OwnerRecord",
    "ShardWriter",
    "Sink",
    "StagedFile",
    "attempt_name",
    "file_sha256",
    "fsync_dir",
    "open_sink",
]

MANIFEST_NAME = "_manifest.json"
OWNER_NAME = "_infermill.json"
STAGING_DIR = "_staging"
ERRORS_DIR = "_errors"
SETS_DIR = "_sets"
PART_RE = re.compile(r"^part-\d{5,}(?:-\d{4,})?(?:-a\d+)?\.[A-Za-z0-9]+$")
"""Any result-like file name: infermill's own, an older release's (no attempt), or another tool's. The
optional ``-0001`` numbers one file of a shard whose result is a set of files (``target_file_mb``)."""
OWN_PART_RE = re.compile(r"^part-\d{5,}(?:-\d{4,})?-a\d+\.[A-Za-z0-9]+$")
"""The names infermill gives committed attempts: in a folder this job owns, these are this job's."""
STAGED_RE = re.compile(
    r"^(?:_errors-|_sets-)?part-\d{5,}(?:-\d{4,})?\.[A-Za-z0-9]+\.[0-9a-f]{8}\.tmp$"
    r"|^_(?:manifest|infermill)\.json\.[0-9a-f]{8}\.tmp$|^\.probe-[0-9a-f]{32}$"
)
"""Files infermill itself puts under ``_staging/``; nothing else there is touched."""
_CHUNK = 1 << 20


def attempt_name(name: str, attempt: int) -> str:
    """``part-00003.parquet`` committed by attempt 7 -> ``part-00003-a7.parquet`` (same folder)."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-a{attempt}{dot}{ext}"


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename in it) to disk; a folder that cannot be opened is left as is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StagedFile:
    """A shard's finished result waiting to be committed."""

    location: str
    """Where it is staged: a local path, or a URL the coordinator can reach (object storage)."""
    final_name: str
    """The shard's name in the output (``part-00003.parquet``); committed as :func:`attempt_name` of it."""
    rows: int
    bytes: int
    sha256: str = ""
    members: tuple[StagedFile, ...] = ()
    """A result that is a set of files (``target_file_mb``, ``partition_by``): the files, each staged at its
    ``location`` under its ``final_name`` in the output (``country=DE/part-00003-0001.parquet``). The
    set itself (``location``, ``final_name``, ``sha256``) is then its index, ``_sets/part-00003.json``,
    which lists them with their rows, sizes and checksums; the index is what the ledger records."""


@dataclass(frozen=True)
class CommittedFile:
    """A shard's result under its final name, as the ledger and the manifest record it."""

    name: str
    """Path relative to the output (``part-00003-a7.parquet``, ``_errors/...``)."""
    rows: int
    bytes: int
    sha256: str
    mtime_ns: int | None
    """Modification time after the commit (local outputs): an unchanged size and mtime skip the checksum."""


@dataclass(frozen=True)
class OwnerRecord:
    """What ``_infermill.json`` says: the job that owns an output."""

    job: str
    job_uid: str
    """The ledger's id for the job: survives moving the job folder, changes when the ledger is replaced."""
    ledger: str


class ShardWriter(ABC):
    """Appends result tables to one shard's file, written locally at ``path``.

    ``publish`` (set by the sink) moves the finished local file to where it is staged and returns that
    location; without it the local file is the staged result.
    """

    def __init__(self, path: str, final_name: str) -> None:
        self.path = path
        self.final_name = final_name
        self.rows = 0
        self.publish: Callable[[str, str], str] | None = None

    @abstractmethod
    def _write(self, table: pa.Table) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        try:
            self._write(table)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}", hint="check free disk space and permissions") from exc
        self.rows += table.num_rows

    def close(self) -> StagedFile:
        """Finish the file, flush it to disk, hash it and stage it."""
        try:
            self._close()
            if os.path.exists(self.path):
                with open(self.path, "rb+") as fh:
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}", hint="check free disk space and permissions") from exc
        if not os.path.exists(self.path):
            return StagedFile(self.path, self.final_name, self.rows, 0)
        # Hashed here, in the worker, while the file is still in the page cache: the ledger and the
        # manifest keep it so a later run (or `infermill verify`) can tell an intact part from a damaged one.
        size, digest = os.path.getsize(self.path), file_sha256(self.path)
        location = self.publish(self.path, self.final_name) if self.publish is not None and self.rows else self.path
        return StagedFile(location, self.final_name, self.rows, size, digest)

    def abort(self) -> None:
        """Drop the local file (work abandoned)."""
        with contextlib.suppress(Exception):  # closing a file being abandoned: nothing to report
            self._close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


class Sink(ABC):
    """Where a job's results go. See the module docstring for the order of calls."""

    attempt: int | None = None
    """The attempt (the run's lease epoch) that writers of this sink write for, set by the engine in each
    worker before it opens one; None when not known. A sink that cannot rename (an object store) uses it to
    write a result straight to the name :meth:`commit` gives it, ``attempt_name(final_name, attempt)``."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    # -- identity ----------------------------------------------------------------------------------
    @abstractmethod
    def display(self, name: str = "") -> str:
        """The output's location (or one result's in it) fit for a message: no credentials."""

    def manifest_path(self) -> str:
        return self.display(MANIFEST_NAME)

    @staticmethod
    def is_own_part(name: str) -> bool:
        """Whether ``name`` is a name infermill gives a committed attempt (``part-00003-a7.parquet``)."""
        return OWN_PART_RE.match(name.rsplit("/", 1)[-1]) is not None

    # -- lifecycle ---------------------------------------------------------------------------------
    @abstractmethod
    def claim(self, owner: OwnerRecord, *, takeover: bool = False) -> bool:
        """Make the output ``owner``'s before anything is written to it; True when it was unclaimed.
        Refuses (OutputConflictError) an output another job owns."""

    @abstractmethod
    def prepare(self) -> None:
        """Create what writing needs; raise OutputError when the output cannot be written."""

    @abstractmethod
    def probe(self) -> None:
        """Check, as :meth:`prepare` would, that the output can be written, leaving nothing behind
        (``infermill validate``)."""

    def check_schema(self, schema: pa.Schema) -> None:
        """Refuse (OutputError) an existing output that cannot take rows of ``schema`` (the results'
        columns), before anything is written: ``infermill validate`` calls it with the sample's schema. A
        folder of files takes any schema: the default accepts it."""
        return None

    @abstractmethod
    def tidy(self) -> None:
        """End of a run, whatever its outcome: remove what the run made and left empty (a staging folder);
        never a result. Safe for a run that lost its lease."""

    @abstractmethod
    def recover(self, keep: set[str]) -> list[str]:
        """Remove what dead attempts left: staged results, and this job's results not in ``keep`` (the
        names the ledger records as committed). Return the results removed."""

    @abstractmethod
    def open_writer(self, ordinal: int, *, errors: bool = False) -> ShardWriter:
        """A writer for shard ``ordinal``'s results (``errors``: its dead letters). Called in a worker."""

    @abstractmethod
    def commit(self, staged: StagedFile, attempt: int) -> CommittedFile | None:
        """Place a staged result under ``attempt_name(staged.final_name, attempt)`` atomically; None for
        a result without rows. Idempotent: committing the same staged result again leaves one copy and
        returns the same record. Never replaces another attempt's result."""

    @abstractmethod
    def abort(self, staged: StagedFile) -> None:
        """Drop a staged result that will not be committed; leaves nothing behind."""

    @abstractmethod
    def finalize(self, manifest: dict[str, Any]) -> None:
        """The job is complete: write ``manifest`` (it lists exactly the committed results), remove the
        staging area."""

    @abstractmethod
    def unfinalize(self) -> None:
        """The job's output is about to change: remove the manifest."""

    @abstractmethod
    def remove(self, names: list[str]) -> None:
        """Delete results by name (only ever this job's own: the caller decides)."""

    # -- reading back ------------------------------------------------------------------------------
    @abstractmethod
    def list_parts(self) -> list[str]:
        """Result-like names present in the output: committed, debris of a crash, or someone else's."""

    @abstractmethod
    def stat(self, name: str) -> tuple[int, int | None] | None:
        """``(size, mtime_ns)`` of a result (mtime None where the store has none); None when missing."""

    @abstractmethod
    def checksum(self, name: str) -> str | None:
        """SHA-256 of a result; None when missing."""

    @abstractmethod
    def read_part(self, name: str) -> pa.Table | None:
        """A committed result as a table (``infermill retry`` merges into it); None when missing."""

    @abstractmethod
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the job is not complete (or it is unreadable)."""

    def members(self, name: str) -> list[CommittedFile]:
        """The files of a committed result that is a set of files (its index's list, each with the rows,
        size and checksum recorded at the commit; ``mtime_ns`` None); [] for a one-file result. A
        sink whose results are always one file keeps this default."""
        return []


def open_sink(spec: JobSpec) -> Sink:
    """The sink for ``spec.output.format`` (:mod:`infermill.registry`, group ``sinks``)."""
    from .. import registry

    cls = registry.load("sinks", spec.output.format)
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise TypeError(f"the output format {spec.output.format!r} is registered as {cls!r}, which is not a Sink")
    sink: Sink = cls(spec)
    return sink
