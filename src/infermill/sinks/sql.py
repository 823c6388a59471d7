"""``[output] format = "sql"``: results go into a PostgreSQL or SQLite table (see docs/sinks.md).

How the file-sink contract (:mod:`infermill.sinks.base`) maps onto a table:

- a worker stages a shard's result as a local Arrow IPC file (``StagedFile.location``) and, for
  PostgreSQL, the same rows as the ``COPY`` stream that loads them (binary COPY format where the columns
  allow, see :func:`infermill.sinks._sqldb.binary_types`, else CSV), beside it;
- ``commit`` loads it into a temporary staging table (``COPY FROM STDIN`` on PostgreSQL) and merges it into
  the target in ONE transaction, which also writes the shard's *marker* row in ``_infermill_commits``: its
  name ``part-00003-a7.sql`` (shard, attempt), rows, the size and SHA-256 of the staged file, and the keys
  it wrote. The marker is what ``list_parts``/``stat``/``checksum`` read, so ``status`` and ``verify`` see
  exactly the merges that happened (insert and replace mode on PostgreSQL skip the staging table when
  the key's text is the same in Arrow and PostgreSQL: the COPY goes straight into the target, still in
  that one transaction with the marker, see :meth:`SqlSink._keys_as_text`);
- before merging, the rows of every earlier marker of the same shard are deleted (by their keys), so a
  shard redone after a crash at any step (after the COPY, inside the merge, after the merge but before the
  ledger recorded it) leaves each row once, in ``insert`` mode too;
- ``recover(keep)`` removes the markers the ledger does not name (a merge whose ledger commit never
  happened): their rows too, unless a named attempt of the same shard holds them;
- ``mode = "replace"`` merges into a build table and ``finalize`` swaps it in, with the manifest, in one
  transaction: all or nothing. After the swap, ``retry`` and redone shards change the live table in place,
  one shard per transaction;
- ownership (``claim``) and the manifest live in ``_infermill_outputs``, one row per target table.

Both meta tables live in the target's schema. Nothing here holds a password: messages show
``SqlUrl.display``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc

from ..engine.faults import fault_point
from ..errors import InfermillError, OutputConflictError, OutputError
from ..spec import JobSpec
from ..sql._ident import quote_name, quote_qualified, split_qualified
from ..sql._url import parse_url
from ._sqldb import (
    PGCOPY_HEADER,
    PGCOPY_TRAILER,
    Database,
    binary_types,
    column_problems,
    encode_binary,
    for_csv,
    from_sql,
    text_scalar,
)
from .base import ERRORS_DIR, CommittedFile, OwnerRecord, ShardWriter, Sink, StagedFile, attempt_name
from .sql_settings import SqlSinkSettings

__all__ = ["COMMITS_TABLE", "FAULT_POINTS", "OUTPUTS_TABLE", "SqlSink"]

COMMITS_TABLE = "_infermill_commits"
OUTPUTS_TABLE = "_infermill_outputs"
FAULT_POINTS = ("sql_after_copy", "sql_in_merge")
"""``INFERMILL_FAULT`` points inside a commit's transaction (see ``engine/faults.py``); ``after_rename`` is
the point after the merge committed and before the ledger records it."""
_STAGED = re.compile(r"^(?:_errors-)?part-\d{5,}\.sql\.[0-9a-f]{8}(?:\.csv|\.pgcopy)?\.tmp$")
_PART = re.compile(r"part-(\d+)-a(\d+)\.sql$")
_PG_TYPE = re.compile(r"^[a-z ]+(?:\(\d+(?:,\d+)?\))?$")


def csv_path(location: str) -> str:
    """Where the worker puts a staged result's COPY-ready CSV beside it (PostgreSQL)."""
    return location[: -len(".tmp")] + ".csv.tmp" if location.endswith(".tmp") else location + ".csv"


def binary_path(location: str) -> str:
    """Where the worker puts a staged result's rows in binary COPY format beside it (PostgreSQL)."""
    return location[: -len(".tmp")] + ".pgcopy.tmp" if location.endswith(".tmp") else location + ".pgcopy"


class _IpcWriter(ShardWriter):
    """A shard's result as a local Arrow IPC file (fast to write, read back zero-copy to load). For
    PostgreSQL also the stream its COPY reads: made here, in the worker, so that the coordinator, which
    commits one shard at a time, only streams bytes. In binary COPY format when every column has a binary
    encoding (:func:`binary_types`): PostgreSQL parses it at about twice the speed of CSV, and the commit's
    COPY is what the coordinator waits for; else CSV."""

    def __init__(self, path: str, final_name: str, *, copy: bool) -> None:
        super().__init__(path, final_name)
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._csv: pacsv.CSVWriter | None = None
        self._binary: Any = None
        self._want_copy = copy
        self._schema: pa.Schema | None = None

    def _write(self, table: pa.Table) -> None:
        if self._writer is None or self._schema is None:
            self._schema = table.schema
            self._writer = ipc.new_file(self.path, table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)
        if not self._want_copy:
            return
        if self._binary is None and self._csv is None and binary_types(table.schema) is not None:
            self._binary = open(binary_path(self.path), "wb")  # noqa: SIM115 (closed in _close)
            self._binary.write(PGCOPY_HEADER)
        if self._binary is not None:
            self._binary.write(encode_binary(table))
        else:
            text = for_csv(table)
            if self._csv is None:
                self._csv = pacsv.CSVWriter(csv_path(self.path), text.schema,
                                            write_options=pacsv.WriteOptions(include_header=False))
            self._csv.write_table(text)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._binary is not None:
            self._binary.write(PGCOPY_TRAILER)
            self._binary.close()
            self._binary = None

    def abort(self) -> None:
        super().abort()
        for path in (csv_path(self.path), binary_path(self.path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


class SqlSink(Sink):
    """A PostgreSQL or SQLite table (and its ``<table>_errors`` for dead letters)."""

    settings_cls = SqlSinkSettings

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        s: SqlSinkSettings = spec.output_settings()
        self.settings = s
        # The password (password_env) is read only when connecting: workers, which never connect, and
        # `status` of a job whose variable is not set here still open the sink.
        self.url = parse_url(s.url, base_dir=spec.base_dir)
        self.db = Database(
            self.url, spec.base_dir, lambda: parse_url(s.url, s.password_env, base_dir=spec.base_dir).connect_kwargs
        )
        self.schema, self.table = split_qualified(s.table, "output.table")
        self.errors_schema, self.errors_table = split_qualified(s.errors_table or f"{s.table}_errors",
                                                                "output.errors_table")
        self.target = s.table
        """The name markers and ownership are recorded under."""
        self.id_column = spec.input.id_column or "_row_id"
        self.key = s.key or self.id_column
        self.scratch = os.path.join(spec.base_dir, ".infermill", f"{spec.name}-sql-staging")
        self._checked: set[bool] = set()
        self._meta = False
        self._present_parts: dict[str, tuple[Any, ...]] | None = None
        """stat/checksum read all markers at once (``status`` and ``verify`` ask for each part); any other
        call through :meth:`_run` forgets them."""

    # -- names -------------------------------------------------------------------------------------
    def display(self, name: str = "") -> str:
        where = f"{self.url.display} table {self.target}"
        return f"{where}: {name}" if name else where

    def manifest_path(self) -> str:
        return f"{self.display()} (manifest in {OUTPUTS_TABLE})"

    def _meta_table(self, name: str) -> str:
        return quote_qualified(self.schema, name)

    def _build_name(self, name: str) -> str:
        return f"_infermill_new_{name}"[:63]

    def _live(self, errors: bool) -> tuple[str | None, str]:
        return (self.errors_schema, self.errors_table) if errors else (self.schema, self.table)

    def _physical(self, cur: Any, errors: bool) -> tuple[str | None, str]:
        """Where a part's rows go now: the live table, or (replace, before the swap) the build table."""
        schema, name = self._live(errors)
        if self.settings.mode == "replace" and not self._swapped(cur):
            return schema, self._build_name(name)
        return schema, name

    # -- meta tables ---------------------------------------------------------------------------------
    def _ensure_meta(self, cur: Any) -> None:
        if self._meta:
            return
        pg = self.db.postgres
        if pg:  # CREATE TABLE IF NOT EXISTS races with itself: two jobs claiming at once wait here
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (0x1E_D6E3,))
        keys = "TEXT[]" if pg else "TEXT"
        flag = "BOOLEAN" if pg else "INTEGER"
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._meta_table(OUTPUTS_TABLE)} (target TEXT PRIMARY KEY, job TEXT "
            f"NOT NULL, job_uid TEXT NOT NULL, ledger TEXT NOT NULL, claimed_at TEXT NOT NULL, swapped {flag} NOT "
            "NULL DEFAULT FALSE, manifest TEXT)"
        )
        new = pg and self.db.columns(cur, self.schema, COMMITS_TABLE) is None
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._meta_table(COMMITS_TABLE)} (target TEXT NOT NULL, part TEXT NOT "
            f"NULL, shard BIGINT NOT NULL, attempt BIGINT NOT NULL, errors {flag} NOT NULL, rows BIGINT NOT NULL, "
            f"bytes BIGINT NOT NULL, sha256 TEXT NOT NULL, arrow_schema TEXT NOT NULL, keys {keys} NOT NULL, "
            "committed_at TEXT NOT NULL, PRIMARY KEY (target, part))"
        )
        if new:
            # A marker's keys (250,000 of them for a 250,000-row shard) stored as they are: compressing them
            # (pglz) cost each commit about 0.15 s of the server's time, three times what storing them does;
            # they take about 12 bytes per row written. Only when the table is made: an ALTER takes a lock
            # that would wait for other jobs' commits.
            cur.execute(f"ALTER TABLE {self._meta_table(COMMITS_TABLE)} ALTER COLUMN keys SET STORAGE EXTERNAL")
        self._meta = True

    def _has_meta(self, cur: Any) -> bool:
        """Whether the meta tables exist (reading back never creates them)."""
        if not self._meta:
            self._meta = self.db.columns(cur, self.schema, COMMITS_TABLE) is not None and \
                self.db.columns(cur, self.schema, OUTPUTS_TABLE) is not None
        return self._meta

    def _swapped(self, cur: Any) -> bool:
        cur.execute(f"SELECT swapped FROM {self._meta_table(OUTPUTS_TABLE)} WHERE target = {self.db.p}",
                    (self.target,))
        row = cur.fetchone()
        return bool(row and row[0])

    def _markers(self, cur: Any, where: str = "", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """(part, shard, errors, rows, bytes, sha256, arrow_schema) of this target's markers."""
        if not self._has_meta(cur):
            return []
        cur.execute(
            f"SELECT part, shard, errors, rows, bytes, sha256, arrow_schema FROM {self._meta_table(COMMITS_TABLE)} "
            f"WHERE target = {self.db.p}{where} ORDER BY part", (self.target, *params)
        )
        return list(cur.fetchall())

    def _marker(self, cur: Any, name: str) -> tuple[Any, ...] | None:
        found = self._markers(cur, f" AND part = {self.db.p}", (name,))
        return found[0] if found else None

    def _run(self, what: str, fn: Any) -> Any:
        """``fn(cursor)`` in one transaction; a database error becomes an OutputError naming the table."""
        self._present_parts = None
        try:
            with self.db.transaction() as cur:
                return fn(cur)
        except InfermillError:
            raise
        except Exception as exc:
            raise self.db.error(f"{what} {self.target} in", exc, hint="check the database and the table; committed "
                                "shards are kept and a rerun resumes") from exc

    # -- ownership ---------------------------------------------------------------------------------
    def claim(self, owner: OwnerRecord, *, takeover: bool = False) -> bool:
        p = self.db.p
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def claim(cur: Any) -> tuple[bool, tuple[Any, ...]]:
            self._ensure_meta(cur)
            cur.execute(
                f"INSERT INTO {self._meta_table(OUTPUTS_TABLE)} (target, job, job_uid, ledger, claimed_at) "
                f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (target) DO NOTHING",
                (self.target, owner.job, owner.job_uid, owner.ledger, stamp),
            )
            created = cur.rowcount == 1
            cur.execute(f"SELECT job, job_uid, ledger FROM {self._meta_table(OUTPUTS_TABLE)} WHERE target = {p}",
                        (self.target,))
            return created, tuple(cur.fetchone())

        created, (job, job_uid, ledger) = self._run("cannot claim", claim)
        if job_uid == owner.job_uid:
            return bool(created)
        job_file = self.spec.source_file or "JOB"
        if job == owner.job and ledger == owner.ledger:
            if takeover:
                self.db.query(f"UPDATE {self._meta_table(OUTPUTS_TABLE)} SET job_uid = {p}, claimed_at = {p} "
                              f"WHERE target = {p}", (owner.job_uid, stamp, self.target))
                return False
            raise OutputConflictError(
                f"the table {self.display()} holds results of job '{owner.job}' that its ledger {owner.ledger} "
                "does not know (the ledger was deleted, emptied or replaced)",
                hint=f"`infermill run {job_file} --restart` starts the job over there, replacing its old results",
                job=owner.job,
            )
        raise OutputConflictError(
            f"the table {self.display()} belongs to job '{job}' (ledger {ledger}); job '{owner.job}' cannot "
            "write there: two jobs sharing an output would overwrite each other",
            hint=f"set another '[output] table' in {job_file}, or `DELETE FROM {OUTPUTS_TABLE} WHERE target = "
            f"'{self.target}'` if job '{job}' and its results are no longer needed",
            job=owner.job,
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        os.makedirs(self.scratch, exist_ok=True)
        self._run("cannot prepare", self._ensure_meta)

    def probe(self) -> None:
        """Connect (SQLite: only check that the database file's folder is writable, creating nothing)."""
        if not self.db.postgres and not os.path.exists(self.db.path()):
            folder = os.path.dirname(self.db.path()) or "."
            while not os.path.exists(folder):
                folder = os.path.dirname(folder)
            if not os.access(folder, os.W_OK):
                raise OutputError(f"cannot create {self.url.display}: {folder} is not writable",
                                  hint="check [output] url and the folder's permissions")
            return
        self._run("cannot reach", lambda cur: cur.execute("SELECT 1"))

    def check_schema(self, schema: pa.Schema, *, errors: bool = False) -> None:
        """Refuse an existing table whose columns cannot take ``schema``'s rows, naming them (``validate``
        and the first commit call it, before anything is written)."""
        if self.settings.mode == "replace":
            return  # the table is built anew

        def check(cur: Any) -> None:
            table_schema, name = self._live(errors)
            existing = self.db.columns(cur, table_schema, name)
            if existing is None:
                return
            problems = column_problems(schema, existing, postgres=self.db.postgres)
            if not errors and self.settings.mode == "upsert" and not self._unique(cur, table_schema, name):
                problems.append(f"{self.key} (upsert needs a primary key or unique index on it alone)")
            if problems:
                raise OutputConflictError(
                    f"the existing table {quote_qualified(table_schema, name)} in {self.url.display} cannot take "
                    f"the job's rows: incompatible columns {'; '.join(problems)}",
                    hint="alter or drop the table, choose another '[output] table', or use mode = \"replace\"",
                    job=self.spec.name,
                )

        self._run("cannot check", check)
        self._checked.add(errors)

    def _unique(self, cur: Any, schema: str | None, name: str) -> bool:
        if self.db.postgres:
            cur.execute(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = "
                "c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] WHERE "
                "i.indisunique AND i.indnatts = 1 AND c.relname = %s AND n.nspname = COALESCE(%s, current_schema())"
                " AND a.attname = %s", (name, schema, self.key)
            )
            return bool(cur.fetchone() is not None)
        prefix = f"{quote_name(schema)}." if schema else ""
        cur.execute(f"PRAGMA {prefix}table_info({quote_name(name)})")
        if [str(r[1]) for r in cur.fetchall() if r[5]] == [self.key]:
            return True  # an INTEGER PRIMARY KEY is the rowid: no index to list
        cur.execute(f"PRAGMA {prefix}index_list({quote_name(name)})")
        for index in cur.fetchall():
            if index[2]:
                cur.execute(f"PRAGMA {prefix}index_info({quote_name(str(index[1]))})")
                if [str(r[2]) for r in cur.fetchall()] == [self.key]:
                    return True
        return False

    def tidy(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)
        self.db.close()

    def open_writer(self, ordinal: int, *, errors: bool = False) -> ShardWriter:
        final = f"part-{ordinal:05d}.sql"
        final = f"{ERRORS_DIR}/{final}" if errors else final
        os.makedirs(self.scratch, exist_ok=True)
        path = os.path.join(self.scratch, f"{final.replace('/', '-')}.{uuid.uuid4().hex[:8]}.tmp")
        return _IpcWriter(path, final, copy=self.db.postgres)

    def abort(self, staged: StagedFile) -> None:
        for path in (staged.location, csv_path(staged.location), binary_path(staged.location)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    # -- commit ------------------------------------------------------------------------------------
    def commit(self, staged: StagedFile, attempt: int) -> CommittedFile | None:
        """Merge a staged result into the table with its marker, in one transaction (see the module doc)."""
        if staged.rows == 0:
            self.abort(staged)
            return None
        name = attempt_name(staged.final_name, attempt)
        errors = staged.final_name.startswith(f"{ERRORS_DIR}/")
        match = _PART.search(name)
        assert match is not None, name
        shard = int(match.group(1))
        done = self._run("cannot read the commits of", lambda cur: self._marker(cur, name))
        if done is not None:  # merged before (a retried commit): one copy, the same record
            self.abort(staged)
            return CommittedFile(name, int(done[3]), int(done[4]), str(done[5]), None)
        try:
            # Memory-mapped: on PostgreSQL only the schema and the key are read, the rows travel as the
            # worker's COPY stream.
            with pa.memory_map(staged.location) as source, ipc.open_file(source) as reader:
                table = reader.read_all()
        except FileNotFoundError:
            raise OutputError(
                f"the staged result of {staged.final_name} is gone ({staged.location})",
                hint="another run may have cleaned it up; rerun the job: committed shards are kept",
            ) from None
        if errors not in self._checked:
            self.check_schema(table.schema, errors=errors)
        self._run(f"cannot commit {name} to", lambda cur: self._merge(cur, table, name, shard, attempt, errors,
                                                                     staged))
        self.abort(staged)
        return CommittedFile(name, staged.rows, staged.bytes, staged.sha256, None)

    def _merge(self, cur: Any, table: pa.Table, name: str, shard: int, attempt: int, errors: bool,
               staged: StagedFile) -> None:
        db, p = self.db, self.db.p
        self._ensure_meta(cur)
        schema, phys = self._physical(cur, errors)
        key = self.id_column if errors else self.key
        if key not in table.column_names:
            raise OutputError(f"the key column {key!r} is not among the output columns {table.column_names}",
                              hint="set [output] key to one of them, or keep it with [output] keep")
        existing = db.columns(cur, schema, phys)
        if existing is None:
            db.create_table(cur, schema, phys, table.schema, None if errors else key)
            existing = db.columns(cur, schema, phys) or []
        types = {n: t for n, t, _ in existing}
        declared = [types.get(c, "?") for c in table.column_names]  # the staging table's are the same
        csv, binary = csv_path(staged.location), binary_path(staged.location)
        target = quote_qualified(schema, phys)
        names = ", ".join(quote_name(c) for c in table.column_names)
        qkey = quote_name(key)
        keys_text = self._keys_as_text(cur, table, schema, phys, key) if self.settings.mode != "upsert" and \
            not errors and db.postgres else None
        if keys_text is not None:
            # Insert mode on PostgreSQL: COPY straight into the target, after deleting what earlier attempts of
            # this shard wrote; the marker names the keys as PostgreSQL prints them, which for these key types
            # is Arrow's text of them. Still one transaction: the rows and their marker commit together.
            self._delete_rows(cur, target, schema, phys, key, f" AND shard = {p} AND errors = {p}",
                              (shard, errors))
            db.load(cur, target, table, csv, binary, declared)
            fault_point("sql_after_copy")
            self._record(cur, name, shard, attempt, errors, staged, table, f"{p}::text[]", (keys_text,))
            fault_point("sql_in_merge")
            return
        staging = db.staging_table(cur, target, table.column_names)
        db.load(cur, staging, table, csv, binary, declared)
        fault_point("sql_after_copy")
        self._delete_rows(cur, target, schema, phys, key, f" AND shard = {p} AND errors = {p}", (shard, errors))
        if self.settings.mode == "upsert" and not errors:
            others = [quote_name(c) for c in table.column_names if c != key]
            action = f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in others)}" if others else "DO NOTHING"
            if db.postgres:  # the last of a key repeated inside the shard wins (COPY keeps the file's order)
                pick = f"SELECT DISTINCT ON ({qkey}) {names} FROM {staging} ORDER BY {qkey}, ctid DESC"
            else:
                last = f"SELECT max(rowid) FROM {staging} GROUP BY {qkey}"
                pick = f"SELECT {names} FROM {staging} WHERE rowid IN ({last})"
            cur.execute(f"INSERT INTO {target} ({names}) {pick} ON CONFLICT ({qkey}) {action}")
        else:
            cur.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {staging}")
        keys = f"array_agg({qkey}::text)" if db.postgres else f"json_group_array({qkey})"
        self._record(cur, name, shard, attempt, errors, staged, table, f"{keys} FROM {staging}", ())
        if not db.postgres:
            cur.execute(f"DROP TABLE {staging}")
        fault_point("sql_in_merge")

    def _record(self, cur: Any, name: str, shard: int, attempt: int, errors: bool, staged: StagedFile,
                table: pa.Table, keys: str, key_params: tuple[Any, ...]) -> None:
        """Insert the part's marker; ``keys`` is the SQL (with ``key_params``) giving its keys column."""
        p = self.db.p
        cur.execute(
            f"INSERT INTO {self._meta_table(COMMITS_TABLE)} (target, part, shard, attempt, errors, rows, bytes, "
            f"sha256, arrow_schema, committed_at, keys) SELECT {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, "
            f"{keys}",
            (self.target, name, shard, attempt, errors, staged.rows, staged.bytes, staged.sha256,
             table.schema.serialize().to_pybytes().hex(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             *key_params),
        )

    def _keys_as_text(self, cur: Any, table: pa.Table, schema: str | None, phys: str, key: str) -> str | None:
        """The key column as the text PostgreSQL's ``key::text`` gives, when Arrow's text of it is the same:
        integers into an integer column, strings into ``text`` or ``varchar`` (not ``char(n)``, whose text
        drops trailing blanks), written as one PostgreSQL array literal by Arrow (a Python list of 250,000
        strings costs the coordinator about 0.3 s of CPU per shard to build and send; this, 0.015 s). None
        otherwise (the rows then go through a staging table)."""
        kind = table.schema.field(key).type
        declared = {n: t for n, t, _ in self.db.columns(cur, schema, phys) or []}.get(key, "")
        same = (pa.types.is_integer(kind) and declared in ("bigint", "integer", "smallint")) or (
            pa.types.is_string(kind) and (declared == "text" or declared.startswith("character varying")))
        if not same:
            return None
        column = table.column(key).combine_chunks()
        if column.null_count:
            return None  # NULL has no quoted form; let the staging path (and the table) deal with it
        texts = column.cast(pa.string())
        # Separators and offsets as Arrow values made from buffers: pa.array() or pa.scalar() of a Python
        # object imports pandas (pyarrow checks for pandas objects), 1-3 s of the coordinator's first commit.
        if pa.types.is_string(kind):  # quoted, with " and \ escaped: any text reads back as itself
            escaped = pc.replace_substring(pc.replace_substring(texts, "\\", "\\\\"), '"', '\\"')
            quote = text_scalar('"')
            texts = pc.binary_join_element_wise(quote, escaped, quote, text_scalar(""))
        offsets = pa.Array.from_buffers(pa.int32(), 2, [None, pa.py_buffer(struct.pack("<2i", 0, len(texts)))])
        joined = pc.binary_join(pa.ListArray.from_arrays(offsets, texts), text_scalar(","))[0].as_py()
        return "{" + str(joined or "") + "}"

    def _delete_rows(self, cur: Any, target: str, schema: str | None, phys: str, key: str, where: str,
                     params: tuple[Any, ...]) -> None:
        """Delete from ``target`` the rows whose keys the markers matching ``where`` recorded."""
        qkey, meta, p = quote_name(key), self._meta_table(COMMITS_TABLE), self.db.p
        if self.db.postgres:
            types = {n: t for n, t, _ in self.db.columns(cur, schema, phys) or []}
            keytype = types.get(key, "text")
            if not _PG_TYPE.match(keytype):
                keytype = "text"
            cur.execute(
                f"DELETE FROM {target} WHERE {qkey} IN (SELECT CAST(k AS {keytype}) FROM {meta}, unnest(keys) AS k "
                f"WHERE target = {p}{where})", (self.target, *params)
            )
        else:
            cur.execute(
                f"DELETE FROM {target} WHERE {qkey} IN (SELECT j.value FROM {meta}, json_each({meta}.keys) AS j "
                f"WHERE target = {p}{where})", (self.target, *params)
            )

    # -- cleaning ----------------------------------------------------------------------------------
    def recover(self, keep: set[str]) -> list[str]:
        """Remove staged files of dead attempts and the markers the ledger does not name (their rows too,
        unless a named attempt of the same shard holds them)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.scratch):
                if _STAGED.match(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(self.scratch, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)

        def sweep(cur: Any) -> list[str]:
            debris = [str(m[0]) for m in self._markers(cur) if m[0] not in keep]
            self._drop(cur, debris)
            return debris

        return list(self._run("cannot recover", sweep))

    def remove(self, names: list[str]) -> None:
        """Delete parts: their markers, and the rows they wrote unless another part of the same shard stays
        (``retry`` replacing a part, ``--restart`` clearing them all)."""
        if names:
            self._run("cannot remove parts of", lambda cur: self._drop(cur, names))

    def _drop(self, cur: Any, names: list[str]) -> None:
        p = self.db.p
        dropping = set(names)
        markers = self._markers(cur)
        # A shard's rows belong to whichever of its markers stays: a redo merged them again after deleting
        # the earlier attempt's. Only a shard left with no marker loses its rows.
        staying = {(int(m[1]), bool(m[2])) for m in markers if m[0] not in dropping}
        for part, shard, errors, *_ in markers:
            if part not in dropping:
                continue
            if (int(shard), bool(errors)) not in staying:
                schema, phys = self._physical(cur, bool(errors))
                if self.db.columns(cur, schema, phys) is not None:
                    key = self.id_column if errors else self.key
                    self._delete_rows(cur, quote_qualified(schema, phys), schema, phys, key, f" AND part = {p}",
                                      (part,))
            cur.execute(f"DELETE FROM {self._meta_table(COMMITS_TABLE)} WHERE target = {p} AND part = {p}",
                        (self.target, part))

    # -- the job's end -----------------------------------------------------------------------------
    def finalize(self, manifest: dict[str, Any]) -> None:
        """Record the manifest; in replace mode swap the build tables in, in the same transaction."""
        p = self.db.p

        def swap(cur: Any) -> None:
            self._ensure_meta(cur)
            if self.settings.mode == "replace" and not self._swapped(cur):
                for errors in (False, True):
                    schema, live = self._live(errors)
                    build = self._build_name(live)
                    if self.db.columns(cur, schema, build) is not None:
                        cur.execute(f"DROP TABLE IF EXISTS {quote_qualified(schema, live)}")
                        cur.execute(f"ALTER TABLE {quote_qualified(schema, build)} RENAME TO {quote_name(live)}")
                    elif errors and self.db.columns(cur, schema, live) is not None:
                        cur.execute(f"DELETE FROM {quote_qualified(schema, live)}")  # no dead letters this time
                cur.execute(f"UPDATE {self._meta_table(OUTPUTS_TABLE)} SET swapped = {p} WHERE target = {p}",
                            (True, self.target))
            cur.execute(f"UPDATE {self._meta_table(OUTPUTS_TABLE)} SET manifest = {p} WHERE target = {p}",
                        (json.dumps(manifest, sort_keys=True), self.target))

        self._run("cannot finalize", swap)
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)

    def unfinalize(self) -> None:
        p = self.db.p

        def clear(cur: Any) -> None:
            if self._has_meta(cur):
                cur.execute(f"UPDATE {self._meta_table(OUTPUTS_TABLE)} SET manifest = NULL WHERE target = {p}",
                            (self.target,))

        self._run("cannot update", clear)

    def read_manifest(self) -> dict[str, Any] | None:
        def read(cur: Any) -> Any:
            if not self._has_meta(cur):
                return None
            cur.execute(f"SELECT manifest FROM {self._meta_table(OUTPUTS_TABLE)} WHERE target = {self.db.p}",
                        (self.target,))
            row = cur.fetchone()
            return row[0] if row else None

        raw = self._run("cannot read the manifest of", read)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # -- reading back ------------------------------------------------------------------------------
    def list_parts(self) -> list[str]:
        return [str(m[0]) for m in self._run("cannot read the commits of", self._markers)]

    def _present(self, name: str) -> tuple[Any, ...] | None:
        """The part's marker when both it and the table it went to exist."""

        def look(cur: Any) -> dict[str, tuple[Any, ...]]:
            markers = self._markers(cur)
            tables = {errors: self.db.columns(cur, *self._physical(cur, errors)) is not None
                      for errors in {bool(m[2]) for m in markers}}
            return {str(m[0]): m for m in markers if tables[bool(m[2])]}

        if self._present_parts is None:
            parts: dict[str, tuple[Any, ...]] = self._run("cannot read the commits of", look)
            self._present_parts = parts
        return self._present_parts.get(name)

    def stat(self, name: str) -> tuple[int, int | None] | None:
        """The staged size its marker recorded (None: no marker, or its table is gone)."""
        marker = self._present(name)
        return None if marker is None else (int(marker[4]), None)

    def checksum(self, name: str) -> str | None:
        marker = self._present(name)
        return None if marker is None else str(marker[5])

    def read_part(self, name: str) -> pa.Table | None:
        """The rows a part wrote, as they are in the table now (by its keys), typed as they were staged."""

        def read(cur: Any) -> pa.Table | None:
            marker = self._marker(cur, name)
            if marker is None:
                return None
            errors = bool(marker[2])
            schema, phys = self._physical(cur, errors)
            if self.db.columns(cur, schema, phys) is None:
                return None
            arrow = ipc.read_schema(pa.py_buffer(bytes.fromhex(str(marker[6]))))
            key = self.id_column if errors else self.key
            meta, p, qkey = self._meta_table(COMMITS_TABLE), self.db.p, quote_name(key)
            names = ", ".join(quote_name(f.name) for f in arrow)
            if self.db.postgres:
                keys = f"SELECT unnest(keys) FROM {meta} WHERE target = {p} AND part = {p}"
                cur.execute(f"SELECT {names} FROM {quote_qualified(schema, phys)} WHERE {qkey}::text IN ({keys})",
                            (self.target, name))
            else:
                keys = f"SELECT j.value FROM {meta}, json_each({meta}.keys) AS j WHERE target = {p} AND part = {p}"
                cur.execute(f"SELECT {names} FROM {quote_qualified(schema, phys)} WHERE {qkey} IN ({keys})",
                            (self.target, name))
            rows = cur.fetchall()
            columns = [pa.array([from_sql(r[i], f.type) for r in rows], f.type) for i, f in enumerate(arrow)]
            return pa.table(columns, schema=arrow)

        table: pa.Table | None = self._run("cannot read", read)
        return table
