"""The source contract: plan deterministic shards, then stream one shard's rows as Arrow batches.

A :class:`Source` turns an :class:`~infermill.spec.InputSpec` into an ordered list of :class:`Shard`
objects *before* reading any rows (only file listings and metadata), and later streams a shard as
``pyarrow.RecordBatch`` objects of at most ``batch_size`` rows. The same input always gives the same
shards with the same ids; each shard records the fingerprint (size, mtime or etag) of the files it covers.
A shard id depends on where the files are only through their paths relative to the input root, so a job
folder that is moved or copied (``mv``, ``cp -a``), or data mounted elsewhere, keeps its shard ids.

Every batch a source yields carries the row id column: the configured ``id_column``, or the synthetic
``_row_id`` string column (``SYNTHETIC_ID``) whose values are stable for the same input and settings.

A row the source could not read (bad JSON, invalid bytes, a value that does not fit its column, a line
over ``max_row_bytes``) keeps its place in the stream, so row indexes stay exact: its columns are null
and the ``_input_error`` struct column (``INPUT_ERROR``: ``message``, ``item``) says why and where. Only
batches that hold such a row have that column; :func:`concat_batches` joins batches with and without it,
and the scorer dead-letters those rows (class ``input``) instead of scoring them.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa

from ..spec import JobSpec

__all__ = [
    "INPUT_ERROR",
    "INPUT_ERROR_TYPE",
    "SYNTHETIC_ID",
    "Fragment",
    "InputDelta",
    "Shard",
    "Source",
    "concat_batches",
    "readable_rows",
    "rebatch",
]

SYNTHETIC_ID = "_row_id"
INPUT_ERROR = "_input_error"
INPUT_ERROR_TYPE = pa.struct([pa.field("message", pa.string()), pa.field("item", pa.string())])
"""``message``: what is wrong and where (file and byte offset); ``item``: a stable id for the row made of
the file and offset, for when its id column cannot be read."""


@dataclass(frozen=True)
class Fragment:
    """A contiguous piece of one input file.

    For Parquet, ``start``/``stop`` are row-group indexes (stop exclusive) and ``row_offset`` is the index
    of the piece's first row in the file. For CSV/JSONL they are byte offsets; a line belongs to the
    fragment in which its first byte lies.
    """

    path: str
    """Full path or URL of the file: how to open it here, and not part of the shard id."""
    relpath: str
    """Path relative to the input root: used in shard ids, synthetic ids and messages."""
    start: int
    stop: int
    row_offset: int = 0
    rows: int | None = None
    """Rows in this piece when known from metadata (Parquet), else None."""
    file_fingerprint: str = ""
    """Size and mtime (or etag) of the file when planned."""


@dataclass(frozen=True)
class Shard:
    """A deterministic unit of work and of commit: one output file per shard."""

    ordinal: int
    fragments: tuple[Fragment, ...]
    shard_id: str = field(init=False, repr=False, compare=False)
    """Stable id derived from the shard's content description (see :func:`_shard_id`); computed once, when
    the shard is made, since workers and the coordinator read it for every batch and event."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shard_id", _shard_id(self.ordinal, self.fragments))

    @property
    def rows(self) -> int | None:
        """Total rows when every fragment knows its count."""
        counts = [f.rows for f in self.fragments]
        if any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    def to_json(self) -> str:
        # The id is written for people reading a ledger (and to tell this version's descriptors from older
        # ones); from_json computes it again rather than trust it.
        return json.dumps(
            {"ordinal": self.ordinal, "shard_id": self.shard_id, "fragments": [_fields(f) for f in self.fragments]}
        )

    @classmethod
    def from_json(cls, text: str) -> Shard:
        data = json.loads(text)
        return cls(ordinal=data["ordinal"], fragments=tuple(Fragment(**f) for f in data["fragments"]))


def _shard_id(ordinal: int, fragments: Sequence[Fragment]) -> str:
    """``"{ordinal:05d}-{12 hex digits}"``: a hash of each fragment but its ``path``.

    The full path says where the input is now, not what it is: the relpath, offsets and the file's
    fingerprint (size and mtime or etag) identify the content, so moving the input keeps the id.
    """
    described = [_fields(f, _ID_FIELDS) for f in fragments]
    blob = json.dumps(described, sort_keys=True).encode()
    return f"{ordinal:05d}-{hashlib.sha256(blob).hexdigest()[:12]}"


_ALL_FIELDS = tuple(f.name for f in fields(Fragment))
_ID_FIELDS = tuple(name for name in _ALL_FIELDS if name != "path")


def _fields(fragment: Fragment, names: tuple[str, ...] = _ALL_FIELDS) -> dict[str, Any]:
    """The fragment as a dict, like ``dataclasses.asdict`` (its fields are plain values), at a tenth of the
    cost: a shard of 20,000 small files describes 20,000 fragments, for its id and for the ledger."""
    return {name: getattr(fragment, name) for name in names}


@dataclass(frozen=True)
class InputDelta:
    """How an input changed since an earlier plan, and the plan that brings it up to date (an incremental
    run): ``keep`` + ``add`` are the new plan; the results of ``drop`` leave the output."""

    keep: tuple[Shard, ...]
    """Earlier shards whose input is unchanged (their committed parts stay), with their files located."""
    drop: tuple[str, ...]
    """Ids of earlier shards whose input changed or was deleted: their results are removed."""
    add: tuple[Shard, ...]
    """New shards, for new and changed input (and the unchanged rest of a dropped shard), numbered from
    the ``next_ordinal`` given, so that no part name of an earlier shard is reused."""
    added: tuple[str, ...] = ()
    """What is new (file paths relative to the input root; for a SQL source, a description of the range)."""
    changed: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    deleted_kept: bool = False
    """True when deleted input keeps its rows in the output (``[input] on_deleted = "keep"``)."""
    described: tuple[str, ...] = ()
    """The changes in words, for an input that is not files (a SQL table: ``"12 new rows above key 1009"``),
    reported instead of file counts; for an unchanged input, why nothing is to do (``"no new rows ..."``)."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.deleted or self.drop or self.add)


class Source(ABC):
    """Plans shards and reads them. Subclasses implement one input format."""

    format: str
    grows_in_place: bool = False
    """True when a stored plan stays valid while the input grows (a SQL table: shards are key ranges, and
    ``listing_fingerprint`` is the table's identity): every run, a resume included, then asks
    :meth:`plan_delta` for new input even though the listing is unchanged."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.id_column = spec.input.id_column or SYNTHETIC_ID

    @abstractmethod
    def plan(self) -> list[Shard]:
        """List the shards, in a deterministic order, without reading rows."""

    @abstractmethod
    def schema(self) -> pa.Schema:
        """The input's columns and types (from metadata or the first rows), before projection."""

    @abstractmethod
    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream the shard's rows in order as batches of at most ``batch_size`` rows (full batches, except
        that each fragment may end with a short one; :func:`rebatch` gives full batches across fragments).

        ``columns`` selects input columns (the id column is always included, synthetic or not).
        """

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.spec.input.path}

    def listing_fingerprint(self) -> str | None:
        """A cheap identity of the input as it is now (a listing, no file read), equal whenever a plan made
        earlier still holds; None (the default) when the source cannot tell, so every run plans again."""
        return None

    def relocate(self, shards: list[Shard]) -> list[Shard] | None:
        """Shards planned earlier (from the ledger), with what locates their files brought up to date (the
        job folder may have moved); None when that is not possible and the input must be planned again."""
        return shards

    def plan_delta(
        self, previous: Sequence[Shard], next_ordinal: int, committed: Collection[str] = ()
    ) -> InputDelta | None:
        """The plan for the input as it is now, made from ``previous`` (the shards of the last plan, in the
        ledger) by keeping the shards of unchanged input and planning only what is new or changed: an
        incremental run. None (the default): the source cannot tell what changed, and a changed input needs
        ``--restart``.

        File sources compare files (relative path, size, mtime or etag). The SQL source keeps every earlier
        shard and adds shards for the rows above the last key, and recomputes the key ranges holding a row
        whose ``cursor`` column is above the last high-water mark (``updated_at > T``), marks it keeps in
        its shard descriptors (``grows_in_place``). ``committed``: the ids of the earlier shards whose
        results are in the output (only those can keep the rows of deleted input)."""
        del previous, next_ordinal, committed
        return None

    def use_schema(self, schema: pa.Schema) -> None:
        """Take the schema :meth:`schema` gave when the job was planned, so that a worker's source need not
        learn it again (for a folder, by listing every file). Sources with nothing costly to learn ignore it."""
        del schema  # nothing to keep here; ColumnSource keeps it

    def begin_run(self, spec: JobSpec, warn: Callable[[str], None]) -> JobSpec:
        """Called by the coordinator once per run, before workers start: take what the run holds (a SQL
        source's exported snapshot) and return the spec the workers get (naming it). ``warn`` prints a
        warning of the run. Released by :meth:`end_run`. The default holds nothing."""
        del warn
        return spec

    def end_run(self) -> None:
        """Release what :meth:`begin_run` took, when the run ends however it ends."""
        return None  # the default held nothing

    def committed_drift(self, committed: Sequence[tuple[Shard, int]]) -> list[str]:
        """For ``infermill status``: each committed shard (with the rows it read) whose input has changed
        since it committed, in words. The default (files: a changed file changes the input fingerprint, which
        a run refuses) reports nothing."""
        del committed
        return []


def readable_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` without its unreadable rows and the ``_input_error`` column (for a sample of real rows)."""
    index = batch.schema.get_field_index(INPUT_ERROR)
    if index < 0:
        return batch
    keep = batch.column(index).is_null()
    return batch.filter(keep).remove_column(index)


def concat_batches(batches: Sequence[pa.RecordBatch]) -> pa.Table:
    """The batches as one table; a batch without the ``_input_error`` column gets it as nulls."""
    if len({b.schema for b in batches}) <= 1:
        return pa.Table.from_batches(list(batches))
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="default")


def rebatch(batches: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Re-chunk a stream of record batches into batches of exactly ``batch_size`` rows (the last may be
    shorter), without copying more than needed."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if not pending:
            # Fast path, the common case: whole batches pass through as zero-copy slices.
            whole = batch.num_rows - batch.num_rows % batch_size
            for start in range(0, whole, batch_size):
                yield batch.slice(start, batch_size)
            if whole == batch.num_rows:
                continue
            batch = batch.slice(whole)
        pending.append(batch)
        count += batch.num_rows
        while count >= batch_size:
            table = concat_batches(pending)
            head = table.slice(0, batch_size).combine_chunks().to_batches()
            yield head[0] if len(head) == 1 else pa.Table.from_batches(head).combine_chunks().to_batches()[0]
            rest = table.slice(batch_size)
            pending = rest.to_batches() if rest.num_rows else []
            count = rest.num_rows
    if count:
        table = concat_batches(pending).combine_chunks()
        yield table.to_batches()[0]
