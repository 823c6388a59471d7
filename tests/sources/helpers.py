"""Writers for the source tests: the same rows as Parquet, CSV, TSV or JSONL files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq


def write_rows(
    directory: Path,
    rows: list[dict[str, Any]],
    fmt: str,
    *,
    files: int = 3,
    row_group_size: int = 4,
    ext: str | None = None,
) -> Path:
    """Write ``rows`` over ``files`` files ``part-000.<ext>`` ... in ``directory``, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // files)
    for i in range(files):
        chunk = rows[i * per : (i + 1) * per]
        path = directory / f"part-{i:03d}.{ext or fmt}"
        write_file(path, chunk, fmt, row_group_size=row_group_size)
    return directory


def write_file(path: Path, rows: list[dict[str, Any]], fmt: str, *, row_group_size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    elif fmt in ("csv", "tsv"):
        options = pa_csv.WriteOptions(delimiter="\t" if fmt == "tsv" else ",")
        pa_csv.write_csv(pa.Table.from_pylist(rows), path, write_options=options)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(fmt)
    return path


def damage_page(path: Path, column: str, row_group: int = 0) -> None:
    """Overwrite 16 bytes in the middle of ``column``'s data in ``row_group``, leaving the footer (and so
    the schema, row counts and statistics) intact: what a bad disk sector or a torn copy does."""
    metadata = pq.ParquetFile(path).metadata
    group = metadata.row_group(row_group)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == column)
    first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    start = first + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    assert start + 16 < len(data) - metadata.serialized_size, "the damage must stay out of the footer"
    data[start : start + 16] = bytes(b ^ 0x5A for b in data[start : start + 16])
    path.write_bytes(bytes(data))
