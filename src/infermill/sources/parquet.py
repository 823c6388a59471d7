"""Parquet input: shards are runs of row groups, planned from the file footers alone.

Pages that carry a CRC (infermill's own output does; ``write_page_checksum`` in pyarrow) are verified
as they are read: a page that fails the check, or cannot be decoded, fails its shard with an
:class:`InputError` naming the file, rather than handing the model garbage.

Row groups are the unit Parquet can read independently, so a shard is a run of whole row groups of
about ``shard_rows`` rows: small files merge into one shard, a shard may span files, and a row group
larger than ``shard_rows`` is a shard of its own. Synthetic ids are ``"{relpath}#{row index in file}"``,
which do not depend on the shard size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ._files import FileSource, _is_local, plan_units
from ._fs import InputFile, display_path
from .base import Fragment, Shard, rebatch

__all__ = ["ParquetSource"]

_FOOTER_THREADS = 16


class ParquetSource(FileSource):
    """Reads ``.parquet`` files (one, a folder, a glob or a URL) by row groups."""

    format = "parquet"

    def plan(self) -> list[Shard]:
        self.check_columns()
        counts = (
            (file, [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)])
            for file, metadata in zip(self.listing().files, self._footers(), strict=True)
        )
        return plan_units(counts, self.spec.input.shard_rows)

    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        names = self.projection(columns)
        target = self.target_schema(names)
        # Batches straddle files, so a shard of many small files (100 rows each, as Spark and streaming jobs
        # write them) reaches the model in full batches, not one short batch per file; rebatch copies at
        # most one batch per file boundary.
        pieces = (
            batch for fragment in shard.fragments for batch in self._read_fragment(fragment, names, target, batch_size)
        )
        yield from rebatch(pieces, batch_size)

    def _read_fragment(
        self, fragment: Fragment, names: list[str], target: pa.Schema, batch_size: int
    ) -> Iterator[pa.RecordBatch]:
        where = display_path(fragment.path)
        with self.open_arrow_file(fragment.path) as handle:
            # A fragment of a batch or less (a small file) is read without pre-buffering: that hands every
            # column chunk to Arrow's I/O threads and waits for it, which costs more than reading 100 rows.
            small = fragment.rows is not None and fragment.rows <= batch_size
            reader = self._open(handle, where, pre_buffer=not small)
            stored = reader.schema_arrow.names
            for name in names:
                if name not in stored:
                    raise InputError(
                        f"column {name!r} not found in {where}; available columns: {', '.join(stored)}",
                        hint="every input file must have the columns of the first file",
                    )
            row = fragment.row_offset
            batches = reader.iter_batches(
                batch_size=batch_size, row_groups=range(fragment.start, fragment.stop), columns=names, use_threads=False
            )
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    raise _damaged(where, fragment, exc) from None
                except OSError as exc:
                    if type(exc) is not OSError:
                        raise  # a subclass (lost connection, file removed) is the storage failing, not the bytes
                    raise _damaged(where, fragment, exc) from None
                yield self.finish(batch, target, where, f"{fragment.relpath}#", row)
                row += batch.num_rows

    def _footers(self) -> Iterator[pq.FileMetaData]:
        """Every listed file's footer, in listing order. On an object store each is a round trip or two
        (about 20 ms against a server on loopback, more across a network), so up to ``_FOOTER_THREADS``
        are read at once; local footers are read in turn (a page-cache read costs less than a thread hand-off)."""
        files = self.listing().files
        if _is_local(self.fs) or len(files) < 2:
            return (self._metadata(file) for file in files)
        pool = ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, len(files)), thread_name_prefix="footers")

        def ordered() -> Iterator[pq.FileMetaData]:
            try:
                yield from pool.map(self._metadata, files)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

        return ordered()

    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        with self.open_file(files[0].path) as handle:
            return self._open(handle, display_path(files[0].path)).schema_arrow

    def _metadata(self, file: InputFile) -> pq.FileMetaData:
        with self.open_arrow_file(file.path) as handle:
            return self._open(handle, display_path(file.path)).metadata

    @staticmethod
    def _open(handle: object, where: str, *, pre_buffer: bool = True) -> pq.ParquetFile:
        try:
            # Pages written with a CRC are checked as they are read; pages without one cannot be.
            return pq.ParquetFile(handle, page_checksum_verification=True, pre_buffer=pre_buffer)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{where} is not a readable Parquet file: {exc}",
                hint="check [input] path and format; remove files that are not Parquet from the input",
            ) from None


def _damaged(where: str, fragment: Fragment, exc: BaseException) -> InputError:
    """A data page that fails its checksum or cannot be decoded: the rows of this shard in that file
    cannot be read, and are never scored as whatever the bytes happen to say."""
    groups = f"row group {fragment.start}" if fragment.stop == fragment.start + 1 else (
        f"row groups {fragment.start}-{fragment.stop - 1}"
    )
    return InputError(
        f"{where} is damaged: {groups} cannot be read ({exc})",
        hint="restore the file from a good copy and rerun `infermill run JOB` (add --restart if it then says "
        "the input changed)",
    )
