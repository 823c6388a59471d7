"""Output layout: a shard's result as a *set* of files (``[output] target_file_mb``, ``partition_by``).

A shard then writes several files, ``part-00003-0001.parquet``, ``country=DE/part-00003-0002.parquet``,
..., and one index, ``_sets/part-00003.json``, that lists them with their rows, sizes and SHA-256. The
set keeps every guarantee a one-file result has, because the index is the one thing the rest of the
protocol sees:

- commit: each file is renamed to its attempt's name (``...-0002-a7.parquet``), then the index (``_sets/
  part-00003-a7.json``), then the ledger records the index, with its size and checksum, in the same
  transaction as always. Until that transaction the files are debris of an attempt the ledger does not
  name, and ``recover`` removes them; after it, the index names exactly the shard's files. So all of a
  shard's files become part of the output together, or none do.
- the index is written by the worker before the commit and holds only attempt-free names, so it is
  committed as it was staged (its checksum does not change) and a retried commit is idempotent.
- listing: the files an index present in the output lists belong to that index; ``list_parts`` shows the
  index (one result per shard, as for one-file results) and any file no index claims (a crash's debris,
  or another tool's). Removing an index removes its files first.
- checks: the ledger's checksum covers the index, and the index covers each file's checksum, so ``verify``
  and a run's quick check see a damaged or missing file in any partition folder.

``_sets`` and ``_errors`` start with ``_``, which readers of Hive-style datasets (Arrow, Spark, DuckDB)
skip. Dead letters are always one file per shard.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import OutputError
from .base import SETS_DIR, CommittedFile, ShardWriter, StagedFile, attempt_name, file_sha256, fsync_dir

if TYPE_CHECKING:
    import pyarrow as pa

    from .files import FileSink

__all__ = ["SetWriter", "commit_set", "is_set", "list_results", "read_members", "read_set", "remove_results"]

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
"""The folder value of a null partition key, as Hive, Spark and Arrow name it."""
_ATTEMPT = re.compile(r"-a(\d+)\.json$")


def is_set(name: str) -> bool:
    """Whether a committed result name is a set's index (``_sets/part-00003-a7.json``)."""
    return name.startswith(f"{SETS_DIR}/")


def partition_folder(keys: list[str], values: tuple[Any, ...]) -> str:
    """``country=DE/year=2026``: Hive-style folder names, values escaped so that any value is one folder."""
    return "/".join(f"{key}={_folder_value(value)}" for key, value in zip(keys, values, strict=True))


def _folder_value(value: Any) -> str:
    if value is None:
        return NULL_PARTITION
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime.datetime | datetime.date):
        text = value.isoformat()
    else:
        text = str(value)
    return quote(text, safe=" -_.,:@+") or "%00"  # an empty string must still name a folder


class SetWriter(ShardWriter):
    """Writes one shard's result as files of about ``target_bytes`` each (``None``: no size limit), one
    run of files per partition value, through ``make`` (the format's writer); ``close`` stages the index.

    File sizes are estimated from the Arrow size of the rows written, scaled by what the last finished file
    of the shard took on disk per Arrow byte (so compressed formats also come out near the target).
    """

    def __init__(
        self, path: str, final_name: str, *, ordinal: int, extension: str, scratch: str,
        make: Callable[[str, str], ShardWriter], discard: Callable[[StagedFile], None],
        partition_by: list[str], target_bytes: int | None,
    ) -> None:
        super().__init__(path, final_name)
        self._ordinal, self._extension, self._scratch = ordinal, extension, scratch
        self._make, self._discard = make, discard
        self._keys = list(partition_by)
        self._target = target_bytes
        self._open: dict[str, tuple[ShardWriter, float, int]] = {}
        """partition folder -> (its current file's writer, estimated bytes in it, Arrow bytes in it)"""
        self._done: list[StagedFile] = []
        self._seq = 0
        self._ratio = 1.0

    def _write(self, table: pa.Table) -> None:
        import pyarrow as pa  # here, not at import: `infermill status` opens the sink without pyarrow

        if not self._keys:
            self._append("", table)
            return
        missing = [k for k in self._keys if k not in table.column_names]
        if missing:
            raise OutputError(
                f"cannot partition the output by {', '.join(missing)}: no such result column "
                f"(the result has {', '.join(table.column_names)})",
                hint="set '[output] partition_by' to result columns (an input column the output keeps, or a "
                "model output)",
            )
        for key in self._keys:
            kind = table.schema.field(key).type
            if pa.types.is_nested(kind) or pa.types.is_floating(kind) or pa.types.is_binary(kind):
                raise OutputError(
                    f"cannot partition the output by {key!r}: its values ({kind}) cannot name folders",
                    hint="partition by a text, integer, boolean or date column",
                )
        rows = pa.array(range(table.num_rows), pa.int64())
        keyed = table.select(self._keys).append_column("_infermill_row", rows)
        # Without threads, groups come in the order their first row does, and rows keep their order in them.
        groups = keyed.group_by(self._keys, use_threads=False).aggregate([("_infermill_row", "list")])
        taken = groups.column("_infermill_row_list")
        for i in range(groups.num_rows):
            values = tuple(groups.column(key)[i].as_py() for key in self._keys)
            self._append(partition_folder(self._keys, values), table.take(taken[i].values))

    def _append(self, folder: str, table: pa.Table) -> None:
        while table.num_rows:
            writer, used, raw = self._open.get(folder) or (self._new(folder), 0.0, 0)
            piece = table
            if self._target is not None:
                per_row = table.nbytes * self._ratio / table.num_rows
                fit = max(1, int((self._target - used) // per_row)) if per_row > 0 else table.num_rows
                piece = table.slice(0, fit)
            writer.write(piece)
            used, raw = used + piece.nbytes * self._ratio, raw + piece.nbytes
            self._open[folder] = (writer, used, raw)
            table = table.slice(piece.num_rows)
            if self._target is not None and used >= self._target:
                self._finish(folder)

    def _new(self, folder: str) -> ShardWriter:
        self._seq += 1
        base = f"part-{self._ordinal:05d}-{self._seq:04d}{self._extension}"
        path = os.path.join(self._scratch, f"{base}.{uuid.uuid4().hex[:8]}.tmp")
        writer = self._make(path, f"{folder}/{base}" if folder else base)
        writer.publish = self.publish
        return writer

    def _finish(self, folder: str) -> None:
        writer, _used, raw = self._open.pop(folder)
        staged = writer.close()
        if staged.rows:
            self._done.append(staged)
            if raw:
                self._ratio = max(staged.bytes / raw, 0.01)

    def _close(self) -> None:
        for folder in list(self._open):
            self._finish(folder)

    def close(self) -> StagedFile:
        """Finish every file, then write, hash and stage the index that lists them."""
        try:
            self._close()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}", hint="check free disk space and permissions") from exc
        if not self._done:
            return StagedFile(self.path, self.final_name, 0, 0)
        index = {
            "infermill_set": 1,
            "files": [{"path": m.final_name, "rows": m.rows, "bytes": m.bytes, "sha256": m.sha256} for m in self._done],
        }
        try:
            with open(self.path, "wb") as fh:
                fh.write(json.dumps(index, indent=1, sort_keys=True).encode())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}", hint="check free disk space and permissions") from exc
        size, digest = os.path.getsize(self.path), file_sha256(self.path)
        location = self.publish(self.path, self.final_name) if self.publish is not None else self.path
        return StagedFile(location, self.final_name, self.rows, size, digest, tuple(self._done))

    def abort(self) -> None:
        for writer, _used, _raw in self._open.values():
            writer.abort()
        self._open.clear()
        for staged in self._done:
            with contextlib.suppress(Exception):  # abandoning work: nothing to report
                self._discard(staged)
        self._done.clear()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def commit_set(sink: FileSink, staged: StagedFile, attempt: int) -> CommittedFile:
    """Rename a staged set's files to ``attempt``'s names, then its index (see the module docstring)."""
    name = attempt_name(staged.final_name, attempt)
    if not sink._exists(staged.location):
        # Committed before (a retried commit): one copy, the same record. Anything else is lost work.
        found = sink.stat(name)
        if found is not None and found[0] == staged.bytes:
            return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, found[1])
        raise OutputError(
            f"the staged result of {staged.final_name} is gone ({staged.location})",
            hint="another run may have cleaned it up; rerun the job: committed shards are kept",
        )
    for member in staged.members:
        target = attempt_name(member.final_name, attempt)
        if sink._exists(member.location):
            _place(sink, member.location, target)
            continue
        found = sink.stat(target)
        if found is None or found[0] != member.bytes:  # not an earlier try of this commit: lost work
            raise OutputError(
                f"the staged file {member.final_name} of {staged.final_name} is gone ({member.location})",
                hint="another run may have cleaned it up; rerun the job: committed shards are kept",
            )
    mtime_ns = _place(sink, staged.location, name)
    return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, mtime_ns)


def _place(sink: FileSink, location: str, name: str) -> int | None:
    """Move a staged file to ``name`` in the output; its mtime afterwards (local outputs)."""
    try:
        if sink.remote:
            sink.fs.mv(location, sink.display(name))
            return None
        target = os.path.join(sink.root, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(location, target)
        fsync_dir(os.path.dirname(target))
        return os.stat(target).st_mtime_ns
    except OSError as exc:
        raise OutputError(
            f"cannot commit {name} to {sink.display()}: {exc}",
            hint="check free space and permissions; committed shards are kept and a rerun resumes",
        ) from exc


def read_members(sink: FileSink, name: str) -> list[CommittedFile]:
    """The files a committed set's index lists, under their committed names; [] when it is missing.
    An index that cannot be read is an :class:`OutputError`."""
    try:
        data = json.loads(sink._read_bytes(name))
        attempt = int(_ATTEMPT.search(name).group(1))  # type: ignore[union-attr]
        return [
            CommittedFile(attempt_name(str(f["path"]), attempt), int(f["rows"]), int(f["bytes"]), str(f["sha256"]),
                          None)
            for f in data["files"]
        ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OutputError(
            f"{sink.display(name)} is damaged and cannot be read back: {exc}",
            hint="rerun the job (`infermill run JOB`): a damaged part's shard is recomputed",
        ) from None


def read_set(sink: FileSink, name: str) -> pa.Table | None:
    """A committed set's rows: its files, in the order the index lists them."""
    import pyarrow as pa

    members = read_members(sink, name)
    if not members:
        return None
    tables = []
    for member in members:
        table = sink.read_part(member.name)
        if table is None:
            raise OutputError(
                f"{sink.display(member.name)} of {name} is missing",
                hint="rerun the job (`infermill run JOB`): a damaged part's shard is recomputed",
            )
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def list_results(sink: FileSink, flat: list[str]) -> list[str]:
    """``flat`` (the result-like names at the top and in ``_errors/``) with the ``_sets/`` indexes and the
    files in partition folders, less the files that an index present lists (they belong to it)."""
    from .base import PART_RE

    names = list(flat)
    names += [f"{SETS_DIR}/{n}" for n in sink._names(sink.display(SETS_DIR)) if PART_RE.match(n)]
    names += _partitioned(sink, "")
    claimed: set[str] = set()
    for name in names:
        if is_set(name):
            with contextlib.suppress(OutputError):  # a damaged index claims nothing; the ledger check sees it
                claimed.update(m.name for m in read_members(sink, name))
    return sorted(n for n in names if n not in claimed)


def _partitioned(sink: FileSink, folder: str) -> list[str]:
    """Result-like files in the Hive-style folders (``key=value``) under ``folder``, at any depth."""
    from .base import PART_RE

    found: list[str] = []
    for name, is_dir in _entries(sink, folder):
        if "=" not in name or not is_dir:
            if folder and not is_dir and PART_RE.match(name):
                found.append(f"{folder}/{name}")
            continue
        found += _partitioned(sink, f"{folder}/{name}" if folder else name)
    return found


def _entries(sink: FileSink, folder: str) -> list[tuple[str, bool]]:
    where = sink.display(folder) if folder else sink.root
    try:
        if sink.remote:
            return [(str(e["name"]).rstrip("/").rsplit("/", 1)[-1], e.get("type") == "directory")
                    for e in sink.fs.ls(where, detail=True)]
        with os.scandir(where) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []


def remove_results(sink: FileSink, names: list[str]) -> list[str]:
    """``names`` with each set's files put before its index, so that an interrupted removal leaves an
    index (which lists what remains) or orphans (which the next sweep removes), never a dangling half."""
    expanded: list[str] = []
    for name in names:
        if is_set(name):
            with contextlib.suppress(OutputError):
                expanded += [m.name for m in read_members(sink, name)]
        expanded.append(name)
    return expanded


def prune_folders(sink: FileSink, names: list[str]) -> None:
    """Remove the partition folders (and ``_sets``) that removing ``names`` left empty (local outputs;
    object stores have no folders)."""
    if sink.remote:
        return
    folders = {n.rsplit("/", 1)[0] for n in names if "/" in n and "=" in n.rsplit("/", 1)[0]}
    for folder in sorted(folders, key=len, reverse=True):
        while folder and "=" in folder.rsplit("/", 1)[-1]:
            try:
                os.rmdir(os.path.join(sink.root, folder))
            except OSError:
                break
            folder = folder.rsplit("/", 1)[0] if "/" in folder else ""
    if any(is_set(n) for n in names):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(sink.root, SETS_DIR))

