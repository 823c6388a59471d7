"""Writing results: stage a shard's file, then commit it under its final name in one atomic step.

Local outputs are staged in ``<output>/_staging/`` (same filesystem, so ``os.replace`` is atomic) and
fsynced before the move. Object-store outputs (fsspec URLs) are staged in a local temporary folder and
uploaded with a single PUT, which object stores make visible atomically. Final names are deterministic
(``part-00003.parquet`` for shard ordinal 3), so a shard that is redone after a crash replaces its own
earlier file and can never add a second copy of its rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import OutputError
from ..spec import JobSpec, is_url

__all__ = ["ERRORS_DIR", "MANIFEST_NAME", "STAGING_DIR", "ShardWriter", "Sink", "StagedFile", "open_sink"]

MANIFEST_NAME = "_manifest.json"
STAGING_DIR = "_staging"
ERRORS_DIR = "_errors"
PART_RE = re.compile(r"^part-\d{5,}\.(parquet|jsonl|csv)$")


@dataclass(frozen=True)
class StagedFile:
    """A shard's finished file waiting to be committed."""

    path: str
    """Local path of the staged file."""
    final_name: str
    """Name it gets in the output directory."""
    rows: int
    bytes: int


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
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        return StagedFile(self.path, self.final_name, self.rows, size)

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
        """``part-00003.parquet``, or ``_errors/part-00003.parquet`` for the shard's dead letters."""
        name = f"part-{ordinal:05d}{self.extension}"
        return f"{ERRORS_DIR}/{name}" if errors else name

    def display(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    # -- lifecycle ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the output and staging folders; fail early when they are not writable."""
        try:
            os.makedirs(self.staging, exist_ok=True)
            if self.remote:
                self.fs.makedirs(self.root, exist_ok=True)
            else:
                os.makedirs(self.root, exist_ok=True)
                probe = os.path.join(self.staging, f".probe-{uuid.uuid4().hex}")
                with open(probe, "wb"):
                    pass
                os.remove(probe)
        except OSError as exc:
            raise OutputError(
                f"output directory is not writable: {self.display()} ({exc.strerror or exc})",
                hint="check '[output] path' and its permissions",
            ) from exc

    def open_writer(self, ordinal: int, *, errors: bool = False) -> ShardWriter:
        final = self.part_name(ordinal, errors=errors)
        staged = os.path.join(self.staging, f"{final.replace('/', '-')}.{uuid.uuid4().hex[:8]}.tmp")
        return self.writer_cls(staged, final)

    def commit(self, staged: StagedFile) -> str | None:
        """Move a staged file to its final name atomically. Returns the final name (None: no rows)."""
        if staged.rows == 0:
            _remove(staged.path)
            return None
        try:
            if self.remote:
                self.fs.put_file(staged.path, f"{self.root}/{staged.final_name}")
                _remove(staged.path)
            else:
                target = os.path.join(self.root, staged.final_name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(staged.path, target)
                _fsync_dir(os.path.dirname(target))
        except OSError as exc:
            raise OutputError(
                f"cannot commit {staged.final_name} to {self.display()}: {exc}",
                hint="check free space and permissions; committed shards are kept and a rerun resumes",
            ) from exc
        return staged.final_name

    def clean_staging(self) -> None:
        """Remove staged files left by a crashed run: they were never committed."""
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(self.staging, exist_ok=True)

    def _names(self, folder: str) -> list[str]:
        try:
            if self.remote:
                return [p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
            return os.listdir(folder)
        except FileNotFoundError:
            return []

    def list_parts(self) -> list[str]:
        """Result and dead-letter files present in the output directory (committed or left by a crash)."""
        parts = [n for n in self._names(self.root) if PART_RE.match(n)]
        parts += [f"{ERRORS_DIR}/{n}" for n in self._names(f"{self.root}/{ERRORS_DIR}") if PART_RE.match(n)]
        return sorted(parts)

    def remove(self, names: list[str]) -> None:
        for name in names:
            if self.remote:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(f"{self.root}/{name}")
            else:
                _remove(os.path.join(self.root, name))

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
        """Write ``_manifest.json`` atomically."""
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if self.remote:
            with self.fs.open(self.manifest_path(), "wb") as fh:
                fh.write(data)
            return
        fd, tmp = tempfile.mkstemp(dir=self.staging, suffix=".json")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.manifest_path())
        _fsync_dir(self.root)

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            if self.remote:
                with self.fs.open(self.manifest_path(), "rb") as fh:
                    data: dict[str, Any] = json.load(fh)
                    return data
            with open(self.manifest_path(), "rb") as fh:
                data = json.load(fh)
                return data
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def remove_manifest(self) -> None:
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.manifest_path())
        else:
            _remove(self.manifest_path())


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
