"""What every file-backed source shares: the listing and the filesystem.

A source may be pickled to worker processes, so what is costly to learn (the dataset schema) is cached
on the instance and survives pickling, while the filesystem handle and listing are rebuilt lazily.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import abstractmethod
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pyarrow as pa
from fsspec.spec import AbstractFileSystem

from ..errors import InputError
from ..spec import JobSpec
from ..store import RetryingFile
from ._columns import ColumnSource
from ._fs import InputFile, InputListing, display_path, list_input, open_filesystem
from .base import Fragment, InputDelta, Shard

__all__ = ["FileSource"]


class FileSource(ColumnSource):
    """Base of the file formats: lists the input once and opens its files."""

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._fs: AbstractFileSystem | None = None
        self._listing: InputListing | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # The filesystem may hold sockets; the schema is kept so workers need not list the input again.
        state["_fs"] = None
        state["_listing"] = None
        return state

    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            self._fs = self._listing.fs if self._listing else open_filesystem(self.spec)[0]
        return self._fs

    def open_file(self, path: str) -> Any:
        """Open an input file for reading; a file gone since planning is an :class:`InputError`. A file of
        an object store survives dropped connections and throttling (:class:`~infermill.store.RetryingFile`)."""
        fs = self.fs
        try:
            if not _is_local(fs):
                return RetryingFile(lambda: fs.open(path, "rb"), display_path(path))
            return fs.open(path, "rb")
        except FileNotFoundError:
            raise InputError(
                f"input file not found: {display_path(path)}",
                hint="the input changed since the job was planned; restore it or start the job afresh",
            ) from None

    def open_arrow_file(self, path: str) -> Any:
        """Like :meth:`open_file`, but a local file is opened as Arrow's native file, which Arrow readers
        use without the GIL (a Python file object costs them about twice the CPU)."""
        if not _is_local(self.fs):
            return self.open_file(path)
        import pyarrow as pa

        try:
            return pa.OSFile(path, "rb")
        except FileNotFoundError:
            return self.open_file(path)  # raises the InputError

    def listing(self) -> InputListing:
        """The sorted input files (listed once per instance)."""
        if self._listing is None:
            self._listing = list_input(self.spec, self.format)
            self._fs = self._listing.fs
        return self._listing

    def _load_schema(self) -> pa.Schema:
        return self._infer_schema(self.listing().files)

    def listing_fingerprint(self) -> str | None:
        """The listed files' paths relative to the input root with their sizes and mtimes (or etags): equal
        exactly when the shards planned from this listing are the shards planning would give again."""
        digest = hashlib.sha256(self.format.encode())
        for file in self.listing().files:
            digest.update(f"\n{file.relpath}\t{file.size}\t{file.fingerprint}".encode())
        return digest.hexdigest()

    def relocate(self, shards: list[Shard]) -> list[Shard] | None:
        paths = {file.relpath: file.path for file in self.listing().files}
        # With on_deleted = "keep", a committed shard keeps the rows of files deleted since: its fragments
        # name files no listing has any more, and are never read again.
        keep_deleted = self.spec.input.on_deleted == "keep"
        moved: list[Shard] = []
        for shard in shards:
            fragments = []
            for fragment in shard.fragments:
                if fragment.relpath not in paths:
                    if keep_deleted:
                        fragments.append(fragment)
                        continue
                    return None
                fragments.append(dataclasses.replace(fragment, path=paths[fragment.relpath]))
            moved.append(Shard(ordinal=shard.ordinal, fragments=tuple(fragments)))
        return moved

    def plan_delta(
        self, previous: Sequence[Shard], next_ordinal: int, committed: Collection[str] = ()
    ) -> InputDelta:
        """Compare the listing with the files of ``previous`` by relative path and fingerprint (size, mtime
        or etag). A shard holding a changed file is planned again as a whole, with its other files; a shard
        holding a deleted file is dropped, or kept when ``on_deleted = "keep"`` and it is ``committed``;
        every other shard is kept as it is, ordinal and part name included. Only the files no kept shard
        covers are planned, so a small new file merges with other new files, never into a kept shard."""
        listed = {file.relpath: file for file in self.listing().files}
        before: dict[str, str] = {}
        for shard in previous:
            for fragment in shard.fragments:
                before[fragment.relpath] = fragment.file_fingerprint
        added = sorted(set(listed) - set(before))
        deleted = sorted(set(before) - set(listed))
        changed = sorted(r for r, fp in before.items() if r in listed and listed[r].fingerprint != fp)
        keep_deleted = self.spec.input.on_deleted == "keep"
        gone, edited = set(deleted), set(changed)
        keep: list[Shard] = []
        drop: list[str] = []
        for shard in previous:
            names = {fragment.relpath for fragment in shard.fragments}
            if names & gone and names & edited and keep_deleted and shard.shard_id in committed:
                raise InputError(
                    f"files {sorted(names & gone)[0]} (deleted) and {sorted(names & edited)[0]} (changed) share "
                    "a shard: the changed file's rows must be recomputed, but the deleted file's rows, "
                    'kept by on_deleted = "keep", cannot be recomputed without it',
                    hint="restore the deleted file and rerun, or run with --full (or on_deleted = \"delete\") to "
                    "recompute everything over the input as it is now",
                )
            recompute = bool(names & edited) or (
                bool(names & gone) and not (keep_deleted and shard.shard_id in committed)
            )
            if recompute:
                drop.append(shard.shard_id)
            else:
                keep.append(shard)
        covered = {fragment.relpath for shard in keep for fragment in shard.fragments}
        new = self._plan_only([file for file in self.listing().files if file.relpath not in covered])
        add = tuple(Shard(ordinal=next_ordinal + i, fragments=shard.fragments) for i, shard in enumerate(new))
        located = self.relocate_kept(keep, listed)
        return InputDelta(
            keep=tuple(located), drop=tuple(drop), add=add, added=tuple(added), changed=tuple(changed),
            deleted=tuple(deleted), deleted_kept=keep_deleted,
        )

    def relocate_kept(self, shards: list[Shard], listed: dict[str, InputFile]) -> list[Shard]:
        """Kept shards with their files located where the listing found them (deleted files as they were)."""
        return [
            Shard(
                ordinal=shard.ordinal,
                fragments=tuple(
                    dataclasses.replace(f, path=listed[f.relpath].path) if f.relpath in listed else f
                    for f in shard.fragments
                ),
            )
            for shard in shards
        ]

    def _plan_only(self, files: Sequence[InputFile]) -> list[Shard]:
        """The shards :meth:`plan` makes of ``files`` alone (a part of the listing)."""
        if not files:
            return []
        listing = self.listing()
        self._listing = dataclasses.replace(listing, files=tuple(files))
        try:
            return self.plan()
        finally:
            self._listing = listing

    def schema_origin(self) -> str:
        return display_path(self.listing().files[0].path)

    @abstractmethod
    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        """The dataset schema, from the first file's metadata or first rows."""


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def plan_units(files: Iterable[tuple[InputFile, Iterable[int]]], limit: int) -> list[Shard]:
    """Shards of about ``limit`` rows from files cut in units read whole (Parquet row groups, Arrow record
    batches): ``files`` gives each file with its units' row counts, in order. Consecutive units of one
    file stay one fragment; small files share a shard; empty units are skipped."""
    shards: list[Shard] = []
    pending: list[Fragment] = []
    rows = 0

    def flush() -> None:
        nonlocal pending, rows
        if pending:
            shards.append(Shard(ordinal=len(shards), fragments=tuple(pending)))
        pending, rows = [], 0

    for file, counts in files:
        offset = 0
        for index, count in enumerate(counts):
            if count == 0:
                continue  # nothing to read; empty files write one such unit
            if rows and rows + count > limit:
                flush()
            last = pending[-1] if pending else None
            if last is not None and last.path == file.path and last.stop == index:
                pending[-1] = dataclasses.replace(last, stop=index + 1, rows=(last.rows or 0) + count)
            else:
                pending.append(Fragment(
                    path=file.path, relpath=file.relpath, start=index, stop=index + 1, row_offset=offset,
                    rows=count, file_fingerprint=file.fingerprint,
                ))
            rows += count
            offset += count
            if rows >= limit:
                flush()
    flush()
    return shards
