"""Writing results: stage a shard's file, then commit it under its attempt's name in one atomic step.

Local outputs are staged in ``<output>/_staging/`` (same filesystem, so ``os.replace`` is atomic) and
fsynced before the move. Object-store outputs (fsspec URLs) are staged in a local temporary folder and
uploaded with a single PUT, which object stores make visible atomically.

Final names carry the attempt (the run's lease epoch): ``part-00003-a7.parquet`` is shard ordinal 3 as
committed by the run holding lease 7. The ledger records which attempt's file is the shard's part, and
the manifest lists exactly those files. A run whose lease was taken over can still finish a rename it had
started, but only under its own attempt's name: it can never replace a part that a newer run committed,
and the ledger refuses its commit. Files of attempts the ledger does not name are debris of a crashed or
fenced run, swept when a run starts and before the manifest is written.

Every output directory belongs to one job: ``_infermill.json`` (created exclusively, before anything
else is written) names the job, its ledger and the ledger's ``job_uid``. A second job pointed at the same
directory is refused. Only files this job wrote (its attempt-named parts, its staged files) are ever
deleted; any other result-like file makes the run stop and say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import OutputConflictError, OutputError
from ..spec import JobSpec, is_url

__all__ = [
    "ERRORS_DIR",
    "MANIFEST_NAME",
    "OWNER_NAME",
    "STAGING_DIR",
    "CommittedFile",
    "OwnerRecord",
    "ShardWriter",
    "Sink",
    "StagedFile",
    "attempt_name",
    "file_sha256",
    "open_sink",
]

MANIFEST_NAME = "_manifest.json"
OWNER_NAME = "_infermill.json"
STAGING_DIR = "_staging"
ERRORS_DIR = "_errors"
PART_RE = re.compile(r"^part-\d{5,}(?:-a\d+)?\.(parquet|jsonl|csv)$")
"""Any result-like file name: infermill's own, an older release's (no attempt), or another tool's."""
OWN_PART_RE = re.compile(r"^part-\d{5,}-a\d+\.(parquet|jsonl|csv)$")
"""The names infermill gives committed attempts: in a directory this job owns, these are this job's."""
STAGED_RE = re.compile(
    r"^(?:_errors-)?part-\d{5,}\.(?:parquet|jsonl|csv)\.[0-9a-f]{8}\.tmp$"
    r"|^_(?:manifest|infermill)\.json\.[0-9a-f]{8}\.tmp$|^\.probe-[0-9a-f]{32}$"
)
"""Files infermill itself puts under ``_staging/``; nothing else there is touched."""
_CHUNK = 1 << 20


def attempt_name(name: str, attempt: int) -> str:
    """``part-00003.parquet`` committed by attempt 7 -> ``part-00003-a7.parquet`` (same folder)."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-a{attempt}{dot}{ext}"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CommittedFile:
    """A shard's file under its final name, as the ledger and the manifest record it."""

    name: str
    """Path relative to the output directory (``part-00003-a7.parquet``, ``_errors/...``)."""
    rows: int
    bytes: int
    sha256: str
    mtime_ns: int | None
    """Modification time after the commit (local outputs): an unchanged size and mtime skip the checksum."""


@dataclass(frozen=True)
class OwnerRecord:
    """What ``_infermill.json`` says: the job that owns an output directory."""

    job: str
    job_uid: str
    """The ledger's id for the job: survives moving the job folder, changes when the ledger is replaced."""
    ledger: str


@dataclass(frozen=True)
class StagedFile:
    """A shard's finished file waiting to be committed."""

    path: str
    """Local path of the staged file."""
    final_name: str
    """Name it gets in the output directory."""
    rows: int
    bytes: int
    sha256: str = ""


class ShardWriter(ABC):
    """Appends result tables to one staged file."""

    def __init__(self, path: str, final_name: str) -> None:
        self.path = path
        self.final_name = final_name
        self.rows = 0

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
        """Finish the file and flush it to disk."""
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
        return StagedFile(self.path, self.final_name, self.rows, os.path.getsize(self.path), file_sha256(self.path))

    def abort(self) -> None:
        """Drop the staged file (work abandoned)."""
        with contextlib.suppress(Exception):  # closing a file being abandoned: nothing to report
            self._close()
        _remove(self.path)


class Sink:
    """An output directory that receives one committed file per shard."""

    extension: str = ""
    writer_cls: type[ShardWriter]

    def __init__(self, spec: JobSpec, *, staging_root: str | None = None) -> None:
        self.spec = spec
        self.root = spec.resolve(spec.output.path).rstrip("/")
        self.remote = is_url(self.root) and not self.root.startswith("file://")
        if self.root.startswith("file://"):
            self.root = self.root[len("file://") :]
        if self.remote:
            import fsspec

            self.fs: Any = fsspec.core.url_to_fs(self.root, **spec.output.storage_options)[0]
            self.staging = staging_root or os.path.join(
                os.path.dirname(spec.ledger_path()), f"{spec.name}-staging"
            )
        else:
            self.fs = None
            self.staging = os.path.join(self.root, STAGING_DIR)

    # -- names -------------------------------------------------------------------------------------
    def part_name(self, ordinal: int, *, errors: bool = False) -> str:
        """``part-00003.parquet``, or ``_errors/part-00003.parquet`` for the shard's dead letters: the name
        a staged file is known by; it is committed as :func:`attempt_name` of this."""
        name = f"part-{ordinal:05d}{self.extension}"
        return f"{ERRORS_DIR}/{name}" if errors else name

    def display(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    # -- ownership ---------------------------------------------------------------------------------
    def read_owner(self) -> OwnerRecord | None:
        """The job that owns this directory, or None when no job has claimed it."""
        try:
            data = json.loads(self._read_bytes(OWNER_NAME))
            return OwnerRecord(job=str(data["job"]), job_uid=str(data["job_uid"]), ledger=str(data["ledger"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(
                f"{self.display(OWNER_NAME)} is not a valid ownership record: {exc}",
                hint=f"delete {self.display(OWNER_NAME)} if the folder belongs to this job, or choose another "
                "'[output] path'",
            ) from None

    def claim(self, owner: OwnerRecord, *, takeover: bool = False) -> bool:
        """Make this directory ``owner``'s before anything is written to it; True when it was unclaimed.

        The record is created exclusively (a hard link of a complete file: two jobs racing for the same
        folder cannot both win). Another job's folder is refused. The same job whose ledger was replaced
        (a new ``job_uid`` under the same job name and ledger path) takes it over only with ``takeover``
        (``--restart``).
        """
        self._makedirs(self.root)
        existing = self.read_owner()
        created = False
        if existing is None:
            created = self._create_owner(owner)
            existing = self.read_owner()
            if existing is None:
                raise OutputError(f"cannot record the ownership of {self.display()}", hint="check permissions")
        if existing.job_uid == owner.job_uid:
            return created
        job_file = self.spec.source_file or "JOB"
        if existing.job == owner.job and existing.ledger == owner.ledger:
            if takeover:
                self._write_owner(owner)
                return False
            raise OutputConflictError(
                f"the output directory {self.display()} holds results of job '{owner.job}' that its ledger "
                f"{owner.ledger} does not know (the ledger was deleted, emptied or replaced)",
                hint=f"`infermill run {job_file} --restart` starts the job over there, replacing its old results",
                job=owner.job,
            )
        raise OutputConflictError(
            f"the output directory {self.display()} belongs to job '{existing.job}' (ledger {existing.ledger}); "
            f"job '{owner.job}' cannot write there: two jobs sharing an output would overwrite each other",
            hint=f"set another '[output] path' in {job_file}, or delete {self.display()} if job "
            f"'{existing.job}' and its results are no longer needed",
            job=owner.job,
        )

    def _owner_bytes(self, owner: OwnerRecord) -> bytes:
        record = {**owner.__dict__, "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return json.dumps(record, indent=2, sort_keys=True).encode()

    def _create_owner(self, owner: OwnerRecord) -> bool:
        target = self.display(OWNER_NAME)
        data = self._owner_bytes(owner)
        try:
            if self.remote:
                # Object stores have no exclusive create in fsspec's API: write, then read back who won.
                if not self.fs.exists(target):
                    self.fs.pipe_file(target, data)
                    return True
                return False
            tmp = os.path.join(self.root, f"{OWNER_NAME}.{uuid.uuid4().hex[:8]}.tmp")
            _write_synced(tmp, data)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                _remove(tmp)
            _fsync_dir(self.root)
            return True
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    def _write_owner(self, owner: OwnerRecord) -> None:
        data = self._owner_bytes(owner)
        try:
            if self.remote:
                self.fs.pipe_file(self.display(OWNER_NAME), data)
                return
            tmp = os.path.join(self.root, f"{OWNER_NAME}.{uuid.uuid4().hex[:8]}.tmp")
            _write_synced(tmp, data)
            os.replace(tmp, self.display(OWNER_NAME))
            _fsync_dir(self.root)
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    # -- lifecycle ---------------------------------------------------------------------------------
    def _makedirs(self, path: str) -> None:
        try:
            if self.remote:
                self.fs.makedirs(path, exist_ok=True)
            else:
                os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    def prepare(self) -> None:
        """Create the output and staging folders; fail early when they are not writable."""
        self._makedirs(self.root)
        try:
            os.makedirs(self.staging, exist_ok=True)
            if not self.remote:
                probe = os.path.join(self.staging, f".probe-{uuid.uuid4().hex}")
                with open(probe, "wb"):
                    pass
                os.remove(probe)
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    def open_writer(self, ordinal: int, *, errors: bool = False) -> ShardWriter:
        final = self.part_name(ordinal, errors=errors)
        staged = os.path.join(self.staging, f"{final.replace('/', '-')}.{uuid.uuid4().hex[:8]}.tmp")
        return self.writer_cls(staged, final)

    def commit(self, staged: StagedFile, attempt: int) -> CommittedFile | None:
        """Move a staged file to its attempt's final name atomically (None: no rows, nothing committed).

        The name is ``attempt_name(staged.final_name, attempt)``: a rename never replaces another
        attempt's file, so a run that lost its lease cannot overwrite a newer run's committed part.
        """
        if staged.rows == 0:
            _remove(staged.path)
            return None
        name = attempt_name(staged.final_name, attempt)
        mtime_ns: int | None = None
        try:
            if self.remote:
                self.fs.put_file(staged.path, self.display(name))
                _remove(staged.path)
            else:
                target = os.path.join(self.root, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(staged.path, target)
                _fsync_dir(os.path.dirname(target))
                mtime_ns = os.stat(target).st_mtime_ns
        except OSError as exc:
            raise OutputError(
                f"cannot commit {name} to {self.display()}: {exc}",
                hint="check free space and permissions; committed shards are kept and a rerun resumes",
            ) from exc
        return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, mtime_ns)

    def clean_staging(self) -> None:
        """Remove staged files left by a crashed run (never committed); anything else there is left alone."""
        for name in self._names(self.staging, local=True):
            if STAGED_RE.match(name):
                _remove(os.path.join(self.staging, name))

    def remove_staging(self) -> None:
        """Remove the staging folder once it is empty (a finished job leaves none behind)."""
        with contextlib.suppress(OSError):
            os.rmdir(self.staging)

    def _names(self, folder: str, *, local: bool = False) -> list[str]:
        try:
            if self.remote and not local:
                return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
            return os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_parts(self) -> list[str]:
        """Result-like files present in the output directory: committed, debris of a crash, or foreign."""
        parts = [n for n in self._names(self.root) if PART_RE.match(n)]
        parts += [f"{ERRORS_DIR}/{n}" for n in self._names(f"{self.root}/{ERRORS_DIR}") if PART_RE.match(n)]
        return sorted(parts)

    @staticmethod
    def is_own_part(name: str) -> bool:
        """Whether ``name`` is a name infermill gives a committed attempt (``part-00003-a7.parquet``)."""
        return OWN_PART_RE.match(name.rsplit("/", 1)[-1]) is not None

    def sweep(self, keep: set[str]) -> list[str]:
        """Delete this job's attempt files that the ledger does not name (debris); return their names."""
        debris = [n for n in self.list_parts() if self.is_own_part(n) and n not in keep]
        self.remove(debris)
        return debris

    def remove(self, names: list[str]) -> None:
        for name in names:
            if self.remote:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(f"{self.root}/{name}")
            else:
                _remove(os.path.join(self.root, name))

    def stat(self, name: str) -> tuple[int, int | None] | None:
        """``(size, mtime_ns)`` of a file in the output (mtime None on object stores); None when missing."""
        try:
            if self.remote:
                return int(self.fs.info(self.display(name))["size"]), None
            st = os.stat(os.path.join(self.root, name))
            return st.st_size, st.st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return None

    def checksum(self, name: str) -> str | None:
        """SHA-256 of a file in the output; None when it is missing."""
        try:
            if self.remote:
                digest = hashlib.sha256()
                with self.fs.open(self.display(name), "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                return digest.hexdigest()
            return file_sha256(os.path.join(self.root, name))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _read_bytes(self, name: str) -> bytes:
        if self.remote:
            with self.fs.open(self.display(name), "rb") as fh:
                data: bytes = fh.read()
                return data
        with open(os.path.join(self.root, name), "rb") as fh:
            return fh.read()

    def read_part(self, name: str) -> pa.Table | None:
        """Read back a committed file (for ``infermill retry``); None when it does not exist."""
        path = self.display(name)
        try:
            if self.remote:
                with self.fs.open(path, "rb") as fh:
                    return self._read(pa.BufferReader(fh.read()))
            if not os.path.exists(path):
                return None
            return self._read(path)
        except FileNotFoundError:
            return None

    def _read(self, source: Any) -> pa.Table:
        raise NotImplementedError

    def manifest_path(self) -> str:
        return self.display(MANIFEST_NAME)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``_manifest.json`` atomically, readable as the parts are (the umask decides, not 0600)."""
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if self.remote:
            with self.fs.open(self.manifest_path(), "wb") as fh:
                fh.write(data)
            return
        os.makedirs(self.staging, exist_ok=True)
        tmp = os.path.join(self.staging, f"{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}.tmp")
        _write_synced(tmp, data)
        os.replace(tmp, self.manifest_path())
        _fsync_dir(self.root)

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._read_bytes(MANIFEST_NAME))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove_manifest(self) -> None:
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.manifest_path())
        else:
            _remove(self.manifest_path())


def _not_writable(where: str, exc: OSError) -> OutputError:
    return OutputError(
        f"output directory is not writable: {where} ({exc.strerror or exc})",
        hint="check '[output] path' and its permissions",
    )


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fsync_dir(path: str) -> None:
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


def open_sink(spec: JobSpec) -> Sink:
    """The sink for ``spec.output.format``."""
    from .formats import SINK_FORMATS

    return SINK_FORMATS[spec.output.format](spec)
