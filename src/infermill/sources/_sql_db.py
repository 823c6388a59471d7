"""The database side of the SQL source: connecting, streaming a SELECT, and column types as Arrow types,
for PostgreSQL (psycopg 3) and SQLite (the standard library). Nothing here knows about shards."""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from ..errors import InputError, SpecError
from ..sql._url import SqlUrl

__all__ = ["PARAM", "Database", "open_database"]

PARAM = "\x00param\x00"
"""Where a parameter goes in SQL text given to :class:`Database` (no SQL text holds a NUL): each dialect
writes its own placeholder there, and PostgreSQL's driver needs every other ``%`` doubled."""

# PostgreSQL type OIDs (pg_type.oid; stable across versions) -> Arrow types. Anything else reads as text.
_PG_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.int64(),
    700: pa.float32(), 701: pa.float64(), 1700: pa.float64(),
    25: pa.string(), 1043: pa.string(), 1042: pa.string(), 19: pa.string(), 114: pa.string(), 3802: pa.string(),
    2950: pa.string(),
    17: pa.binary(), 1082: pa.date32(), 1114: pa.timestamp("us"), 1184: pa.timestamp("us", tz="UTC"),
    1000: pa.list_(pa.bool_()), 1005: pa.list_(pa.int16()), 1007: pa.list_(pa.int32()),
    1016: pa.list_(pa.int64()), 1021: pa.list_(pa.float32()), 1022: pa.list_(pa.float64()),
    1231: pa.list_(pa.float64()), 1009: pa.list_(pa.string()), 1015: pa.list_(pa.string()),
}


_CSV_TYPES = frozenset({16, 20, 21, 23, 26, 700, 701, 25, 1043, 1042, 19, 114, 3802, 2950})
"""Types whose COPY CSV text Arrow's CSV reader turns into the same values as psycopg's loaders: bool
(``t``/``f``), integers, floats (shortest exact text since PostgreSQL 12, ``NaN``/``Infinity``), text-like
types (a NULL is an unquoted empty field, an empty string a quoted one)."""


_BINARY_READ: dict[int, str] = {16: "bool", 20: ">i8", 21: ">i2", 23: ">i4", 700: ">f4", 701: ">f8", 25: "text",
                                1043: "text", 1042: "text", 19: "text", 114: "text"}
"""Types read from binary COPY (their fields as PostgreSQL sends them: big-endian integers and IEEE floats,
one byte for a boolean, the text's bytes in the client encoding for text-like types), each as its
:data:`_PG_TYPES` Arrow type: the same values as the CSV and row paths give, with no text conversion on
either side (the server's float output and Arrow's float parsing cost most of a CSV read)."""
_TRAILER = b"\xff\xff"


def _binary_batches(
    conn: Any, text: str, params: Sequence[Any], schema: pa.Schema, kinds: list[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    with conn.cursor().copy(f"COPY ({text}) TO STDOUT (FORMAT binary)", tuple(params)) as copy:
        rows: list[bytes] = []
        first = True
        # One CopyData message per row, as for CSV; the first also carries the stream's header, the last
        # message is the trailer alone.
        for message in copy:
            row = bytes(message)
            if first:
                first = False
                row = _after_header(row)
            if row == _TRAILER:
                continue  # the data's end; the loop then reads the COPY's end, leaving the connection idle
            rows.append(row)
            if len(rows) == batch_size:
                yield _decode(rows, schema, kinds)
                rows = []
        if rows:
            yield _decode(rows, schema, kinds)


def _after_header(row: bytes) -> bytes:
    signature = b"PGCOPY\n\xff\r\n\x00"
    if not row.startswith(signature) or len(row) < 19:
        raise InputError("the database sent a binary COPY stream without its header", hint=_REPORT)
    extension = int.from_bytes(row[15:19], "big")
    return row[19 + extension:]


_REPORT = "rerun; if it persists, report it with the PostgreSQL version (a server or proxy that changes COPY data)"


def _decode(rows: list[bytes], schema: pa.Schema, kinds: list[str]) -> pa.RecordBatch:
    """Binary COPY tuples (one per element of ``rows``) as one Arrow batch, column by column with numpy."""
    import numpy as np

    n = len(rows)
    sizes = np.fromiter(map(len, rows), np.int64, n)
    # Eight bytes of padding: where a NULL's (absent) value is "read" from, then ignored.
    joined = b"".join(rows)
    buf = np.frombuffer(joined + bytes(8), np.uint8)
    starts = np.zeros(n, np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    ends = starts + sizes
    if (_big_endian(buf, starts, ends, ">i2") != len(kinds)).any():
        raise InputError("a binary COPY row has an unexpected number of fields", hint=_REPORT)
    pos = starts + 2
    arrays = []
    for field, kind in zip(schema, kinds, strict=True):
        length = _big_endian(buf, pos, ends, ">i4").astype(np.int64)
        valid = length >= 0
        nulls = int(n - np.count_nonzero(valid))
        bitmap = None if nulls == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))
        if kind == "text":
            sized = np.where(valid, length, 0)
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(sized, out=offsets[1:])
            total = int(offsets[-1])
            if total >= 2**31 or (pos + 4 + sized > ends).any():
                raise InputError(f"column {field.name!r}: a batch of text longer than 2 GiB, or a damaged row",
                                 hint="lower [batch] size")
            at = np.repeat(pos + 4 - offsets[:-1], sized) + np.arange(total)
            array = pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets.astype(np.int32)),
                                                           pa.py_buffer(buf[at])], null_count=nulls)
            try:
                array.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise InputError(f"column {field.name!r} holds text that is not UTF-8: {exc}",
                                 hint="set the connection's client_encoding to UTF8") from None
        else:
            width = 1 if kind == "bool" else np.dtype(kind).itemsize
            if (length[valid] != width).any() or (pos + 4 + width > ends)[valid].any():
                raise InputError(f"column {field.name!r}: a binary COPY field of an unexpected size", hint=_REPORT)
            cells = buf[np.where(valid, pos + 4, len(joined))[:, None] + np.arange(width)]
            if kind == "bool":
                data = np.packbits(cells[:, 0] != 0, bitorder="little")
            else:
                data = cells.view(kind).ravel().astype(kind.replace(">", "<"))
            array = pa.Array.from_buffers(field.type, n, [bitmap, pa.py_buffer(data)], null_count=nulls)
        arrays.append(array)
        pos = pos + 4 + np.maximum(length, 0)
    if (pos != ends).any():
        raise InputError("a binary COPY row is longer or shorter than its fields", hint=_REPORT)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _big_endian(buf: Any, at: Any, ends: Any, dtype: str) -> Any:
    """The big-endian number of ``dtype`` at each offset ``at`` (each inside its row, which ends at ``ends``)."""
    import numpy as np

    width = np.dtype(dtype).itemsize
    if (at + width > ends).any():
        raise InputError("a binary COPY row ends inside a field", hint=_REPORT)
    return buf[at[:, None] + np.arange(width)].view(dtype).ravel()


_PAGE_FIXED: dict[int, tuple[str, str, str]] = {
    16: ("boolsend", "u1", "false"), 20: ("int8send", ">i8", "0::int8"), 21: ("int2send", ">i2", "0::int2"),
    23: ("int4send", ">i4", "0::int4"), 700: ("float4send", ">f4", "0::float4"),
    701: ("float8send", ">f8", "0::float8"),
}
"""Fixed-width types a page carries as one ``bytea`` per column: the binary send function of each value (what
binary COPY sends for it, without the field's length), NULL replaced by the zero given and marked in the
page's NULL masks; the big-endian numpy type they read as."""
_PAGE_TEXT = frozenset({25, 1043, 19, 114})
"""Text-like types a page carries as the column's texts joined (``string_agg``) plus each one's length in
bytes (-1 for NULL). Not ``char(n)``, whose cast to text drops the trailing blanks COPY keeps."""
_PAGE_KEYS = frozenset({20, 21, 23, 25, 1043})
"""Key types the pages walk by (``key > the page's highest``): integers and text compared by the database
itself, as the shard's bounds are."""
_MASK_BITS = 31
_PAGE_BYTES = 1 << 26
"""A page's texts, at most (:func:`_paged_batches`): 64 MiB."""


class _PageColumn:
    """Where one column of a page's row is, and how it reads (see :func:`_paged_batches`)."""

    def __init__(self, field: pa.Field, oid: int, at: int) -> None:
        self.field = field
        self.text = oid in _PAGE_TEXT
        self.code = "" if self.text else _PAGE_FIXED[oid][1]
        self.at = at
        self.mask: tuple[int, int] | None = None  # (mask column, bit) of a fixed-width column's NULLs


def _paged_batches(
    conn: Any, source: str, names: Sequence[str], key: str, where: str, params: Sequence[Any], schema: pa.Schema,
    oids: list[int], batch_size: int, page_bytes: int,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``source`` (SQL text) in ``where`` (SQL text, ``%s`` parameters), in key order, as pages:
    each page is one row of one query, the next keys above the last page's highest (an index range scan,
    never OFFSET), whose values are whole columns, each one ``bytea`` numpy reads as it is (see
    :data:`_PAGE_FIXED`, :data:`_PAGE_TEXT`). A page holds at most ``batch_size`` rows, and stops at the row
    that brings its texts to ``page_bytes`` bytes (joined texts must stay under PostgreSQL's 1 GB per value
    and Arrow's 2 GB per array). A COPY sends one message per row, which costs the client about a
    microsecond a row in Python before any decoding; a page is one message. One REPEATABLE READ transaction
    holds the pages to one snapshot, as one COPY is."""
    import numpy as np

    columns: list[_PageColumn] = []
    outer = ["count(*)", "max(_infermill_k)"]
    masks: list[list[str]] = []
    inner = [f"{key} AS _infermill_k"]
    lengths = []
    for i, (name, field, oid) in enumerate(zip(names, schema, oids, strict=True)):
        c = f"_infermill_c{i}"
        column = _PageColumn(field, oid, len(outer))
        if column.text:
            inner += [f"{name}::text AS {c}", f"octet_length({name}::text) AS _infermill_l{i}"]
            lengths.append(f"coalesce(_infermill_l{i}, 0)")
            outer += [f"textsend(string_agg({c}, ''))", f"string_agg(int4send(coalesce(_infermill_l{i}, -1)), '')"]
        else:
            inner.append(f"{name} AS {c}")
            send, _code, zero = _PAGE_FIXED[oid]
            outer.append(f"string_agg({send}(coalesce({c}, {zero})), '')")
            if not masks or len(masks[-1]) == _MASK_BITS:
                masks.append([])
            column.mask = (len(masks) - 1, len(masks[-1]))
            masks[-1].append(f"(({c} IS NULL)::int4 << {len(masks[-1])})")  # | and << bind alike: parenthesized
        columns.append(column)
    first_mask = len(outer)
    outer += [f"string_agg(int4send({' | '.join(bits)}), '')" for bits in masks]
    if lengths:
        outer.append("max(_infermill_run)")
    test = f" WHERE {where}" if where else ""

    def page_sql(after: bool) -> str:
        above = ((" AND " if where else " WHERE ") + f"{key} > %s") if after else ""
        rows = f"SELECT {', '.join(inner)} FROM {source}{test}{above} ORDER BY {key} LIMIT {int(batch_size)}"
        if lengths:
            # A running total of the texts' bytes, in key order: the page ends at the row that reaches the budget.
            size = " + ".join(lengths)
            rows = (f"SELECT * FROM (SELECT *, {size} AS _infermill_size, sum({size}) OVER (ORDER BY _infermill_k ROWS "
                    f"UNBOUNDED PRECEDING) AS _infermill_run FROM ({rows}) AS _infermill_rows) AS _infermill_sized "
                    f"WHERE _infermill_run - _infermill_size < {int(page_bytes)}")
        return f"SELECT {', '.join(outer)} FROM ({rows}) AS _infermill_page"

    first, more = page_sql(False), page_sql(True)
    last: Any = None
    with conn.cursor(binary=True) as cur:
        while True:
            row = cur.execute(first if last is None else more, (*params, last) if last is not None else tuple(params))
            row = cur.fetchone()
            n = int(row[0]) if row else 0
            if n == 0:
                return
            yield _page(row, n, columns, first_mask, schema, np)
            # Fewer rows than asked for: the range ended, unless the byte budget cut the page.
            if n < batch_size and not (lengths and int(row[-1] or 0) >= page_bytes):
                return
            last = row[1]


def _page(row: Sequence[Any], n: int, columns: list[_PageColumn], first_mask: int, schema: pa.Schema,
          np: Any) -> pa.RecordBatch:
    """One page's row (:func:`_paged_batches`) as an Arrow batch of ``n`` rows."""

    def values(at: int, code: str) -> Any:
        raw = row[at] or b""
        if len(raw) != n * np.dtype(code).itemsize:
            raise InputError(f"a page of {n} rows holds {len(raw)} bytes of a {code} column", hint=_REPORT)
        return np.frombuffer(raw, code)

    arrays = []
    for column in columns:
        field = column.field
        if column.text:
            data = row[column.at] or b""
            lengths = values(column.at + 1, ">i4").astype(np.int64)
            valid = lengths >= 0
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(np.where(valid, lengths, 0), out=offsets[1:])
            if int(offsets[-1]) != len(data):
                raise InputError(f"column {field.name!r}: the page's texts do not add up to their lengths",
                                 hint="set the connection's client_encoding to the server's (UTF8)")
            if len(data) >= 2**31:
                raise InputError(f"column {field.name!r}: a batch of text longer than 2 GiB", hint="lower [batch] size")
            buffers = [pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
        else:
            assert column.mask is not None
            got = values(column.at, column.code)
            masks = values(first_mask + column.mask[0], ">i4")
            valid = (masks & (1 << column.mask[1])) == 0
            if column.code == "u1":
                buffers = [pa.py_buffer(np.packbits(got != 0, bitorder="little"))]
            else:
                buffers = [pa.py_buffer(got.astype(column.code.replace(">", "<")))]
        nulls = int(n - np.count_nonzero(valid))
        bitmap = None if nulls == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))
        array = pa.Array.from_buffers(field.type, n, [bitmap, *buffers], null_count=nulls)
        if column.text:
            try:
                array.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise InputError(f"column {field.name!r} holds text that is not UTF-8: {exc}",
                                 hint="set the connection's client_encoding to UTF8") from None
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _oids(conn: Any, text: str, params: Sequence[Any]) -> list[int]:
    described = conn.execute(f"SELECT * FROM ({text}) AS _infermill_q LIMIT 0", tuple(params)).description
    return [d.type_code for d in described or ()]


def _csv_batches(
    conn: Any, text: str, params: Sequence[Any], schema: pa.Schema, batch_size: int
) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    options = {
        "read_options": pacsv.ReadOptions(column_names=schema.names, use_threads=False, block_size=1 << 26),
        "parse_options": pacsv.ParseOptions(newlines_in_values=True),
        "convert_options": pacsv.ConvertOptions(
            column_types=schema, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            true_values=["t"], false_values=["f"],
        ),
    }

    def parse(rows: list[bytes]) -> pa.RecordBatch:
        # Parsed here, on this thread, from bytes in memory: no Python file handed to Arrow's threads.
        table = pacsv.read_csv(pa.py_buffer(b"".join(rows)), **options)
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
            [], schema=schema)
        return batch.cast(schema) if batch.schema != schema else batch

    # The server sends one CopyData message per row (the protocol says so), so batch_size messages are
    # batch_size whole rows, whatever newlines the values hold: nothing holds more than one batch.
    with conn.cursor().copy(f"COPY ({text}) TO STDOUT (FORMAT csv)", tuple(params)) as copy:
        rows: list[bytes] = []
        for row in copy:
            rows.append(bytes(row))
            if len(rows) == batch_size:
                yield parse(rows)
                rows = []
        if rows:
            yield parse(rows)


class Database:
    """One dialect's way of doing the few things the source needs. SQL text marks parameters with
    :data:`PARAM`."""

    def __init__(self, url: SqlUrl) -> None:
        self.url = url

    def text(self, sql: str) -> str:
        """``sql`` with this driver's placeholders."""
        return sql.replace(PARAM, "?")

    def connect(self, snapshot: str | None = None) -> Any:
        raise NotImplementedError

    def rows(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a small query (planning)."""
        cur = conn.execute(self.text(sql), tuple(params))
        return [tuple(r) for r in cur.fetchall()]

    def stream(self, conn: Any, sql: str, params: Sequence[Any], fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of ``sql`` in chunks of at most ``fetch_rows``, never all at once."""
        cur = conn.execute(self.text(sql), tuple(params))
        while chunk := cur.fetchmany(fetch_rows):
            yield chunk

    def columns(self, conn: Any, select: str) -> list[pa.Field]:
        """The columns of ``select`` (a query with no rows wanted) as Arrow fields."""
        raise NotImplementedError

    def copy_batches(
        self, conn: Any, sql: str, params: Sequence[Any], schema: pa.Schema, batch_size: int
    ) -> Iterator[pa.RecordBatch] | None:
        """The rows of ``sql`` as Arrow batches of ``schema`` (at most ``batch_size`` rows each, nothing more
        held) parsed column-wise from a bulk export, or None when this database or these columns have no
        such path (then :meth:`stream` reads them)."""
        del conn, sql, params, schema, batch_size
        return None

    def paged_batches(
        self, conn: Any, source: str, names: Sequence[str], key: str, where: str, params: Sequence[Any],
        schema: pa.Schema, batch_size: int, page_bytes: int = _PAGE_BYTES,
    ) -> Iterator[pa.RecordBatch] | None:
        """The rows of ``source`` (SQL text: a quoted table or a subquery) that ``where`` (SQL text with
        :data:`PARAM` marks, "" for all) selects, columns ``names`` (quoted) as ``schema``, in pages of at most
        ``batch_size`` rows (and about ``page_bytes`` bytes of text) walked by the single key column ``key``
        (quoted), or None when this database or these columns have no such path."""
        del conn, source, names, key, where, params, schema, batch_size, page_bytes
        return None

    def key_is_constrained(self, conn: Any, table: str, keys: Sequence[str]) -> bool:
        """True when the catalog guarantees ``keys`` unique and never NULL in ``table`` (quoted)."""
        del conn, table, keys
        return False

    def estimated_rows(self, conn: Any, table: str) -> int | None:
        """The table's row count from its statistics, None when it has none."""
        del conn, table
        return None


class _Postgres(Database):
    def text(self, sql: str) -> str:
        return sql.replace("%", "%%").replace(PARAM, "%s")

    def connect(self, snapshot: str | None = None) -> Any:
        try:
            import psycopg
            from psycopg.types.numeric import FloatLoader
            from psycopg.types.string import TextLoader
        except ImportError:
            raise SpecError(
                "reading PostgreSQL needs psycopg 3", hint="pip install 'infermill[postgres]'"
            ) from None
        kwargs = dict(self.url.connect_kwargs)
        if "connect_timeout" not in str(kwargs.get("conninfo", "")):
            kwargs["connect_timeout"] = 30  # a host that never answers fails the read (or status), not hangs it
        try:
            conn = psycopg.connect(**kwargs)
        except psycopg.Error as exc:
            raise InputError(
                f"cannot connect to {self.url.display}: {_clean(str(exc), self.url)}",
                hint="check [input] url (host, port, database, user) and password_env",
            ) from None
        # JSON as its text, numeric as float64: what the Arrow columns hold.
        for name in ("json", "jsonb"):
            conn.adapters.register_loader(name, TextLoader)
        conn.adapters.register_loader("numeric", FloatLoader)
        if snapshot is not None:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            # Not a parameter: SET TRANSACTION takes a literal; the id was checked by the source.
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        return conn

    def stream(self, conn: Any, sql: str, params: Sequence[Any], fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        # A server-side cursor: the server keeps the result, and each FETCH brings fetch_rows rows over.
        with conn.cursor(name="infermill_read") as cur:
            cur.itersize = fetch_rows
            cur.execute(self.text(sql), tuple(params))
            while chunk := cur.fetchmany(fetch_rows):
                yield chunk

    def copy_batches(
        self, conn: Any, sql: str, params: Sequence[Any], schema: pa.Schema, batch_size: int
    ) -> Iterator[pa.RecordBatch] | None:
        # COPY ... TO STDOUT, decoded column-wise: no Python object per value. In binary format (decoded by
        # numpy) when every column is of _BINARY_READ, else as CSV (parsed by Arrow's C++ CSV reader) when
        # every column's CSV text Arrow parses to exactly what the row path gives (_CSV_TYPES); each read
        # as its natural Arrow type. Anything else takes the row path.
        text = self.text(sql)
        oids = _oids(conn, text, params)
        if len(oids) != len(schema) or any(_PG_TYPES.get(oid) != field.type for oid, field in zip(oids, schema,
                                                                                                  strict=True)):
            return None
        if all(oid in _BINARY_READ for oid in oids):
            return _binary_batches(conn, text, params, schema, [_BINARY_READ[oid] for oid in oids], batch_size)
        if all(oid in _CSV_TYPES for oid in oids):
            return _csv_batches(conn, text, params, schema, batch_size)
        return None

    def paged_batches(
        self, conn: Any, source: str, names: Sequence[str], key: str, where: str, params: Sequence[Any],
        schema: pa.Schema, batch_size: int, page_bytes: int = _PAGE_BYTES,
    ) -> Iterator[pa.RecordBatch] | None:
        import psycopg

        # Only where the joined texts' lengths (the server's bytes) are the client's bytes too, and every
        # column and the key have a page encoding (_PAGE_FIXED, _PAGE_TEXT, _PAGE_KEYS); else COPY.
        info = conn.info
        if not names or info.encoding != "utf-8" or info.parameter_status("server_encoding") != "UTF8":
            return None
        if info.transaction_status == psycopg.pq.TransactionStatus.IDLE:  # else a snapshot's transaction (RR)
            # The pages see one snapshot, as one COPY does.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        source, key, names = self.text(source), self.text(key), [self.text(n) for n in names]
        described = conn.execute(f"SELECT {key}, {', '.join(names)} FROM {source} LIMIT 0").description
        oids = [d.type_code for d in described or ()]
        if len(oids) != len(names) + 1 or oids[0] not in _PAGE_KEYS:
            return None
        for oid, field in zip(oids[1:], schema, strict=True):
            if _PG_TYPES.get(oid) != field.type or not (oid in _PAGE_FIXED or oid in _PAGE_TEXT):
                return None
        return _paged_batches(conn, source, names, key, self.text(where), params, schema, oids[1:], batch_size,
                              page_bytes)

    def columns(self, conn: Any, select: str) -> list[pa.Field]:
        cur = conn.execute(self.text(select), ())
        return [pa.field(d.name, _PG_TYPES.get(d.type_code, pa.string())) for d in cur.description or ()]

    def key_is_constrained(self, conn: Any, table: str, keys: Sequence[str]) -> bool:
        # A unique index (no predicate) on a subset of the key columns, and NOT NULL on each of them.
        row = conn.execute(
            """
            WITH k AS (SELECT attnum, attnotnull FROM pg_attribute
                       WHERE attrelid = %s::regclass AND attname = ANY(%s) AND NOT attisdropped)
            SELECT (SELECT count(*) FROM k WHERE attnotnull) = %s
               AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = %s::regclass AND i.indisunique
                           AND i.indpred IS NULL AND i.indkey::int2[] <@ (SELECT array_agg(attnum) FROM k))
            """,
            (table, list(keys), len(keys), table),
        ).fetchone()
        return bool(row and row[0])

    def estimated_rows(self, conn: Any, table: str) -> int | None:
        row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()
        return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None

    def export_snapshot(self) -> tuple[Any, str]:
        """A connection holding a REPEATABLE READ transaction open, and the id of its exported snapshot."""
        import psycopg

        conn = self.connect()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        return conn, str(row[0])


class _Sqlite(Database):
    def connect(self, snapshot: str | None = None) -> Any:
        path = self.url.connect_kwargs["database"]
        try:
            # Read-only, and usable from the thread that iterates the read (prefetch may be another one).
            return sqlite3.connect(
                f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise InputError(
                f"cannot open SQLite database {self.url.display}: {exc}",
                hint="check [input] url: sqlite:///relative/to/job/file.db or sqlite:////absolute/path.db",
            ) from None

    def columns(self, conn: Any, select: str) -> list[pa.Field]:
        # SQLite columns have no fixed type: the declared type where there is one, else the first value's.
        cur = conn.execute(self.text(select).replace(" LIMIT 0", " LIMIT 1000"))
        names = [d[0] for d in cur.description or ()]
        sample = cur.fetchall()
        declared = _declared_types(conn, select, len(names))
        out = []
        for i, name in enumerate(names):
            kind = _affinity(declared[i]) if declared[i] else None
            if kind is None:
                kind = next((_value_type(r[i]) for r in sample if r[i] is not None), pa.string())
            out.append(pa.field(name, kind))
        return out


def _declared_types(conn: Any, select: str, count: int) -> list[str]:
    """The declared type of each column of ``select`` ("" for an expression), through a temporary view."""
    try:
        conn.execute("CREATE TEMP VIEW IF NOT EXISTS _infermill_columns AS " + select)
        rows = conn.execute("PRAGMA table_info(_infermill_columns)").fetchall()
        conn.execute("DROP VIEW _infermill_columns")
    except sqlite3.Error:
        return [""] * count  # a read-only database may refuse even a temporary view
    types = [str(r[2] or "") for r in rows]
    return types if len(types) == count else [""] * count


def _affinity(declared: str) -> pa.DataType | None:
    """SQLite's type affinity rules (https://sqlite.org/datatype3.html#affinity_name_examples), plus BOOL."""
    t = declared.upper()
    if "BOOL" in t:
        return pa.bool_()
    if "INT" in t:
        return pa.int64()
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in t:
        return pa.binary()
    if any(s in t for s in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return pa.float64()
    return None  # DATE, TIMESTAMP and the like: as the values are stored


def _value_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, bytes):
        return pa.binary()
    return pa.string()


def _clean(text: str, url: SqlUrl) -> str:
    """A driver's message with any password it repeats masked (psycopg quotes the connection string)."""
    conninfo = str(url.connect_kwargs.get("conninfo", ""))
    text = text.replace(conninfo, url.display)
    netloc = conninfo.partition("://")[2].partition("/")[0]
    userinfo = netloc.rpartition("@")[0]
    secrets = [url.connect_kwargs.get("password"), userinfo.partition(":")[2] if ":" in userinfo else None]
    for secret in secrets:
        if secret:
            text = text.replace(str(secret), "***")
            text = text.replace(urllib.parse.unquote(str(secret)), "***")
    return text


def open_database(url: SqlUrl) -> Database:
    return _Postgres(url) if url.dialect == "postgresql" else _Sqlite(url)
