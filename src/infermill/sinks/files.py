"""A folder of result files, on local disk or any fsspec store: the sink behind parquet, jsonl, csv and
openai-batch output. See :mod:`infermill.sinks.base` for the contract and
docs/reliability.md for the commit protocol it implements.

Every output folder belongs to one job: ``_infermill.json`` (created exclusively, before anything else is
written) names the job, its ledger and the ledger's ``job_uid``. A second job pointed at the same folder
is refused. Only files this job wrote (its attempt-named parts, its staged files) are ever deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import OutputConflictError, OutputError
from ..spec import JobSpec, is_url
from ..store import RetryingFile, retrying
from . import layout
from .base import (
    _CHUNK,
    ERRORS_DIR,
    MANIFEST_NAME,
    OWNER_NAME,
    PART_RE,
    SETS_DIR,
    STAGED_RE,
    STAGING_DIR,
    CommittedFile,
    OwnerRecord,
    ShardWriter,
    Sink,
    StagedFile,
    attempt_name,
    file_sha256,
    fsync_dir,
)

if TYPE_CHECKING:
    import pyarrow as pa  # annotations only; read_part imports it (`infermill status` must not)

__all__ = ["FileSink"]

T = TypeVar("T")


class FileSink(Sink):
    """A folder (local, or any fsspec store) that receives one file per shard and attempt.

    Local: files are written in ``<output>/_staging/`` and committed by ``os.replace`` (same filesystem,
    atomic). Object stores have no rename: a worker writes in a local scratch folder and uploads the finished
    file straight to its final key, the shard's and attempt's own (``part-00003-a7.parquet``: the attempt is
    :attr:`~infermill.sinks.base.Sink.attempt`, the run's lease epoch), and the commit only checks that the
    key holds the staged size: the ledger is the commit point, and the manifest lists what it committed.
    A key of an attempt the ledger never committed (its run died) is removed by :meth:`recover` when the
    job resumes and before the manifest is written. A writer that does not know its attempt uploads to
    ``<output>/_staging/`` and the commit copies the object to its final key. The coordinator never needs
    the worker's disk. Every call to the store is retried with backoff (:mod:`infermill.store`).
    """

    extension: str = ""
    writer_cls: type[ShardWriter]

    def __init__(self, spec: JobSpec, *, scratch_root: str | None = None) -> None:
        self.spec = spec
        self.root = spec.resolve(spec.output.path).rstrip("/")
        self.remote = is_url(self.root) and not self.root.startswith("file://")
        if self.root.startswith("file://"):
            self.root = self.root[len("file://") :]
        if self.remote:
            import fsspec

            self.fs: Any = fsspec.core.url_to_fs(self.root, **spec.output.storage_options)[0]
            # Where a worker writes before uploading: local, private to the job.
            self.scratch = scratch_root or os.path.join(os.path.dirname(spec.ledger_path()), f"{spec.name}-staging")
        else:
            self.fs = None
            self.scratch = os.path.join(self.root, STAGING_DIR)
        self.staging = self.display(STAGING_DIR)
        """Where staged results wait for their commit (in the output itself, so any machine reaches it)."""

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
                if not self._exists(target):
                    # Sent again after a lost answer, the same bytes land on the same key.
                    self._retry(f"write {target}", lambda: self.fs.pipe_file(target, data))
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
            fsync_dir(self.root)
            return True
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    def _write_owner(self, owner: OwnerRecord) -> None:
        data = self._owner_bytes(owner)
        try:
            if self.remote:
                target = self.display(OWNER_NAME)
                self._retry(f"write {target}", lambda: self.fs.pipe_file(target, data))
                return
            tmp = os.path.join(self.root, f"{OWNER_NAME}.{uuid.uuid4().hex[:8]}.tmp")
            _write_synced(tmp, data)
            os.replace(tmp, self.display(OWNER_NAME))
            fsync_dir(self.root)
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    # -- lifecycle ---------------------------------------------------------------------------------
    def _makedirs(self, path: str) -> None:
        try:
            if self.remote:
                self._retry(f"create {path}", lambda: self.fs.makedirs(path, exist_ok=True))
            else:
                os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    def prepare(self) -> None:
        """Create the output and staging folders; fail early when they are not writable."""
        self._makedirs(self.root)
        try:
            os.makedirs(self.scratch, exist_ok=True)
            probe = os.path.join(self.scratch, f".probe-{uuid.uuid4().hex}")
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as exc:
            raise _not_writable(self.display(), exc) from exc

    def open_writer(self, ordinal: int, *, errors: bool = False) -> ShardWriter:
        final = self.part_name(ordinal, errors=errors)
        settings = self.spec.output_settings()
        if not errors and getattr(settings, "layout", False):
            final = f"{SETS_DIR}/part-{ordinal:05d}.json"  # a set of files (sinks/layout.py)
        os.makedirs(self.scratch, exist_ok=True)
        path = os.path.join(self.scratch, f"{final.replace('/', '-')}.{uuid.uuid4().hex[:8]}.tmp")
        if final.startswith(SETS_DIR):
            writer: ShardWriter = layout.SetWriter(
                path, final, ordinal=ordinal, extension=self.extension, scratch=self.scratch,
                make=lambda member_path, name: self._make_writer(member_path, name, False), discard=self.abort,
                partition_by=list(settings.partition_by),
                target_bytes=None if settings.target_file_mb is None else int(settings.target_file_mb * 2**20),
            )
        else:
            writer = self._make_writer(path, final, errors)
        if self.remote:
            attempt = self.attempt
            writer.publish = lambda local, name: self._publish(local, name, attempt)
        return writer

    def _make_writer(self, path: str, final_name: str, errors: bool) -> ShardWriter:
        return self.writer_cls(path, final_name)

    def _publish(self, path: str, final_name: str, attempt: int | None = None) -> str:
        """Upload a worker's finished file to its attempt's final key (to the output's staging area when
        the attempt is not known); return its URL.

        The key is the shard's and attempt's own, so an upload sent again (its answer was lost, the
        connection dropped) writes the same bytes to the same key: nothing else can be there.
        """
        if attempt is not None:
            location = self.display(attempt_name(final_name, attempt))
        else:
            location = self.display(f"{STAGING_DIR}/{os.path.basename(path)}")
        try:
            self._retry(f"upload {location}", lambda: self.fs.put_file(path, location))
        except OSError as exc:
            raise OutputError(
                f"cannot stage {final_name} in {self.display()}: {exc}",
                hint="check the store's permissions and reachability; committed shards are kept and a rerun resumes",
            ) from exc
        _remove(path)
        return location

    def commit(self, staged: StagedFile, attempt: int) -> CommittedFile | None:
        """Move a staged file to its attempt's final name atomically (None: no rows, nothing committed).

        The name is ``attempt_name(staged.final_name, attempt)``: a rename never replaces another
        attempt's file, so a run that lost its lease cannot overwrite a newer run's committed part.
        """
        if staged.rows == 0:
            self.abort(staged)
            return None
        if staged.members:
            return layout.commit_set(self, staged, attempt)
        name = attempt_name(staged.final_name, attempt)
        if self.remote and staged.location == self.display(name):
            # Uploaded straight to its final key: nothing moves; the ledger transaction that follows is the
            # commit. The key must hold the whole staged file (a size check: one HEAD, no download).
            found = self.stat(name)
            if found is None or found[0] != staged.bytes:
                raise OutputError(
                    f"the result of {staged.final_name} is missing or incomplete at {staged.location} "
                    f"({'missing' if found is None else f'{found[0]} bytes'}, {staged.bytes} were written)",
                    hint="another run may have cleaned it up; rerun the job: committed shards are kept",
                )
            return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, None)
        if not self._exists(staged.location):
            # Committed before (a retried commit): one copy, the same record. Anything else is lost work.
            found = self.stat(name)
            if found is not None and found[0] == staged.bytes:
                return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, found[1])
            raise OutputError(
                f"the staged result of {staged.final_name} is gone ({staged.location})",
                hint="another run may have cleaned it up; rerun the job: committed shards are kept",
            )
        mtime_ns: int | None = None
        try:
            if self.remote:
                # No rename on object stores: a copy (sent again after a lost answer, the same object),
                # then the staged key is deleted (a delete of a key already gone is no error).
                target = self.display(name)
                self._retry(f"copy {staged.location} to {target}", lambda: self.fs.copy(staged.location, target))
                if staged.location.startswith(self.staging + "/"):  # never another attempt's key
                    self._rm(staged.location)
            else:
                target = os.path.join(self.root, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(staged.location, target)
                fsync_dir(os.path.dirname(target))
                mtime_ns = os.stat(target).st_mtime_ns
        except OSError as exc:
            raise OutputError(
                f"cannot commit {name} to {self.display()}: {exc}",
                hint="check free space and permissions; committed shards are kept and a rerun resumes",
            ) from exc
        return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, mtime_ns)

    def _exists(self, location: str) -> bool:
        if not self.remote:
            return os.path.exists(location)
        self._fresh(location)

        def look() -> bool:
            # Not fs.exists: fsspec's default answers False for any error, a throttled store included.
            try:
                self.fs.info(location)
            except FileNotFoundError:
                return False
            return True

        return self._retry(f"look up {location}", look)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """A call to the output's store, retried when the store fails in a way that passes."""
        return retrying(what, call) if self.remote else call()

    def _fresh(self, path: str) -> None:
        """Forget what the filesystem cached of ``path`` and its folders: workers in other processes write
        here, and s3fs answers ``info`` of a key missing from a cached listing with "a folder"."""
        with contextlib.suppress(Exception):  # a cache that cannot be emptied was not there
            self.fs.invalidate_cache(path)

    def _rm(self, location: str) -> None:
        self._fresh(location)
        with contextlib.suppress(FileNotFoundError):
            self._retry(f"delete {location}", lambda: self.fs.rm_file(location))

    def abort(self, staged: StagedFile) -> None:
        for member in staged.members:
            self.abort(member)
        if self.remote and is_url(staged.location):
            self._rm(staged.location)
        else:
            _remove(staged.location)

    def recover(self, keep: set[str]) -> list[str]:
        """Remove staged files left by dead attempts (never committed; anything else in the staging area is
        left alone) and this job's attempt files that the ledger does not name."""
        for name in self._names(self.scratch, local=True):
            if STAGED_RE.match(name):
                _remove(os.path.join(self.scratch, name))
        if self.remote:
            for name in self._names(self.staging):
                if STAGED_RE.match(name):
                    self._rm(self.display(f"{STAGING_DIR}/{name}"))
        self._remove_staging()
        return self.sweep(keep)

    def probe(self) -> None:
        """Probe as a run does first (:meth:`prepare`), then remove the folders the probe made."""
        made: list[str] = []
        for path in (self.scratch,) if self.remote else (self.scratch, self.root):
            path = os.path.abspath(path)
            while path and not os.path.exists(path) and path not in made:
                made.append(path)
                parent = os.path.dirname(path)
                path = "" if parent == path else parent
        try:
            self.prepare()
        finally:
            for path in sorted(made, key=len, reverse=True):  # deepest first
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    def tidy(self) -> None:
        self._remove_staging()

    def _remove_staging(self) -> None:
        """Remove the local staging folder once it is empty (a finished job leaves none behind); writers
        make it again when they need it."""
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)

    def _names(self, folder: str, *, local: bool = False) -> list[str]:
        """File names in a folder of the output (``local``: of this machine)."""
        try:
            if self.remote and not local:
                self._fresh(folder)
                found = self._retry(f"list {folder}", lambda: self.fs.ls(folder, detail=False))
                return [p.rstrip("/").rsplit("/", 1)[-1] for p in found]
            return os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_parts(self) -> list[str]:
        """Result-like files present in the output directory: committed, debris of a crash, or foreign."""
        parts = [n for n in self._names(self.root) if PART_RE.match(n)]
        parts += [f"{ERRORS_DIR}/{n}" for n in self._names(f"{self.root}/{ERRORS_DIR}") if PART_RE.match(n)]
        return layout.list_results(self, parts)

    def sweep(self, keep: set[str]) -> list[str]:
        """Delete this job's attempt files that the ledger does not name (debris); return their names."""
        debris = [n for n in self.list_parts() if self.is_own_part(n) and n not in keep]
        self.remove(debris)
        return debris

    def remove(self, names: list[str]) -> None:
        names = layout.remove_results(self, names)
        for name in names:
            if self.remote:
                self._rm(self.display(name))
            else:
                _remove(os.path.join(self.root, name))
        layout.prune_folders(self, names)

    def stat(self, name: str) -> tuple[int, int | None] | None:
        """``(size, mtime_ns)`` of a file in the output (mtime None on object stores); None when missing."""
        try:
            if self.remote:
                path = self.display(name)
                self._fresh(path)
                info = self._retry(f"look up {path}", lambda: self.fs.info(path))
                if info.get("type") == "directory":
                    return None
                return int(info["size"]), None
            st = os.stat(os.path.join(self.root, name))
            return st.st_size, st.st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return None

    def checksum(self, name: str) -> str | None:
        """SHA-256 of a file in the output; None when it is missing."""
        try:
            if self.remote:
                digest = hashlib.sha256()
                with self._open_remote(name) as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                return digest.hexdigest()
            return file_sha256(os.path.join(self.root, name))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _read_bytes(self, name: str) -> bytes:
        if self.remote:
            path = self.display(name)
            self._fresh(path)
            data: bytes = self._retry(f"read {path}", lambda: self.fs.cat_file(path))
            return data
        with open(os.path.join(self.root, name), "rb") as fh:
            return fh.read()

    def read_part(self, name: str) -> pa.Table | None:
        """Read back a committed result (for ``infermill retry``); None when it does not exist."""
        if layout.is_set(name):
            return layout.read_set(self, name)
        path = self.display(name)
        try:
            if self.remote:
                import pyarrow as pa

                with self._open_remote(name) as fh:
                    return self._read(pa.BufferReader(fh.read()))
            if not os.path.exists(path):
                return None
            return self._read(path)
        except FileNotFoundError:
            return None

    def _open_remote(self, name: str) -> RetryingFile:
        path = self.display(name)
        self._fresh(path)
        return RetryingFile(lambda: self.fs.open(path, "rb"), path)

    def _read(self, source: Any) -> pa.Table:
        raise NotImplementedError

    def finalize(self, manifest: dict[str, Any]) -> None:
        """Write ``_manifest.json`` atomically, readable as the parts are (the umask decides, not 0600), and
        remove the emptied staging folder."""
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if self.remote:
            # One PUT: the manifest appears whole or not at all; sent again, the same bytes.
            target = self.manifest_path()
            self._retry(f"write {target}", lambda: self.fs.pipe_file(target, data))
        else:
            os.makedirs(self.scratch, exist_ok=True)
            tmp = os.path.join(self.scratch, f"{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}.tmp")
            _write_synced(tmp, data)
            os.replace(tmp, self.manifest_path())
            fsync_dir(self.root)
        self._remove_staging()

    def members(self, name: str) -> list[CommittedFile]:
        return layout.read_members(self, name) if layout.is_set(name) else []

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._read_bytes(MANIFEST_NAME))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def unfinalize(self) -> None:
        if self.remote:
            self._rm(self.manifest_path())
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

