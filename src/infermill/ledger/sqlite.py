"""The SQLite ledger (the default): one file, by default one per job beside the job file.

WAL mode, so ``infermill status`` can read while a run writes; every write is an IMMEDIATE transaction,
one writer at a time. Lease times come from ``clock`` (default ``time.time``), which tests replace to
age a lease without sleeping.

Schema versions: 1 (one job per file, no part checks), 2 (part checks: size, SHA-256, mtime), 3 (a ``jobs``
table and a ``job_id`` in every other table: many jobs per file), 4 (the frozen run plan), 5 (a
``triggers`` table: the scheduled runs of ``infermill serve``). A ledger of an earlier version is
migrated in place, in one transaction, the first time this release opens it (tables added since are
created empty).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import LedgerError
from ._sql import Cursor, SQLLedger, iter_statements

# Re-exported where earlier releases defined them, so their importers keep working.
from ._sql import lease_is_live as lease_is_live
from .base import CommittedPart as CommittedPart
from .base import Lease as Lease
from .base import PartCheck as PartCheck
from .base import ShardRow as ShardRow

__all__ = ["SCHEMA_VERSION", "SQLiteLedger", "move_aside"]

SCHEMA_VERSION = 5
OPEN_TIMEOUT_S = 30.0
"""How long opening the ledger waits for another process that holds it (or is creating it)."""

_ADDED_COLUMNS = {
    # version 2: each committed file's size, checksum and mtime, to notice a part that went missing or changed
    "shards": (
        ("output_bytes", "INTEGER"), ("output_sha256", "TEXT"), ("output_mtime_ns", "INTEGER"),
        ("errors_bytes", "INTEGER"), ("errors_sha256", "TEXT"), ("errors_mtime_ns", "INTEGER"),
    ),
    # version 4: the frozen run plan (listing fingerprint, columns), so a resume needs no re-planning
    "jobs": (("plan_json", "TEXT"),),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    job_uid TEXT NOT NULL,
    spec_fingerprint TEXT,
    model_fingerprint TEXT,
    input_fingerprint TEXT,
    output_path TEXT,
    spec_json TEXT,
    plan_json TEXT,
    created_at REAL,
    completed_at REAL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (job_id),
    token INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    state TEXT NOT NULL,
    rows_done INTEGER NOT NULL DEFAULT 0,
    message TEXT
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job_id, run_id);
CREATE TABLE IF NOT EXISTS shards (
    job_id INTEGER NOT NULL REFERENCES jobs (job_id),
    shard_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    descriptor TEXT NOT NULL,
    rows_planned INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    rows_out INTEGER,
    rows_failed INTEGER NOT NULL DEFAULT 0,
    output_file TEXT,
    errors_file TEXT,
    output_bytes INTEGER,
    output_sha256 TEXT,
    output_mtime_ns INTEGER,
    errors_bytes INTEGER,
    errors_sha256 TEXT,
    errors_mtime_ns INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER,
    started_at REAL,
    committed_at REAL,
    seconds REAL,
    stats TEXT,
    error TEXT,
    PRIMARY KEY (job_id, shard_id),
    UNIQUE (job_id, ordinal)
);
CREATE TABLE IF NOT EXISTS items (
    job_id INTEGER NOT NULL REFERENCES jobs (job_id),
    shard_id TEXT NOT NULL,
    row_index INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'dead',
    attempts INTEGER NOT NULL,
    error_class TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT,
    run_id INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, shard_id, row_index)
);
CREATE INDEX IF NOT EXISTS items_state ON items (job_id, state, error_class);
CREATE TABLE IF NOT EXISTS autosize (
    job_id INTEGER NOT NULL REFERENCES jobs (job_id),
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    probes TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS triggers (
    job_id INTEGER NOT NULL REFERENCES jobs (job_id),
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    logical_date TEXT,
    due_at REAL,
    detail TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    message TEXT,
    summary TEXT,
    run_ids TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS lease (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (job_id),
    token INTEGER NOT NULL,
    run_id INTEGER,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    released INTEGER NOT NULL DEFAULT 0
)
"""

_JOB_TABLES = ("runs", "shards", "items", "autosize")
"""Tables of a version 1 or 2 ledger copied, with the job's id added, into version 3's."""


class SQLiteLedger(SQLLedger):
    """One job's state in an SQLite file. Safe to share between threads of one process.

    >>> ledger = SQLiteLedger(".infermill/scores.sqlite", job="scores")   # doctest: +SKIP
    """

    def __init__(
        self,
        path: str,
        *,
        job: str,
        clock: Callable[[], float] | None = None,
        whoami: tuple[str, int] | None = None,
    ) -> None:
        """``clock``: the lease clock, epoch seconds. ``whoami``: the (host, pid) its leases are taken under
        (default this process; tests stand in for a run on another machine)."""
        self._path = path
        self._job_name = job
        self._clock = clock or time.time
        self._whoami = whoami
        directory = os.path.dirname(os.path.abspath(path))
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                os.makedirs(directory, exist_ok=True)
                self._conn, self._job_id = self._open(path)
                break
            except sqlite3.OperationalError as exc:
                # Two runs creating the same new ledger at once: switching it to WAL can report "database is
                # locked" at once, without SQLite's busy wait. Try again until the other one is done.
                if "locked" in str(exc) and time.monotonic() < deadline:
                    time.sleep(random.uniform(0.01, 0.1))
                    continue
                raise self._cannot_open(exc) from exc
            except sqlite3.DatabaseError as exc:
                raise self._cannot_open(exc) from exc
        self._lock = threading.RLock()

    @property
    def path(self) -> str:
        return self._path

    def _open(self, path: str) -> tuple[sqlite3.Connection, int]:
        conn = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.create_function("now_s", 0, lambda: self._clock())
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                job_id = _prepare(conn, self._job_name, self._path)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn, job_id

    def _cannot_open(self, exc: Exception) -> LedgerError:
        return LedgerError(
            f"cannot open the ledger {self._path}: {exc}",
            hint="check '[runtime] ledger' and its permissions; if the file is damaged, `infermill run JOB "
            "--restart` moves it aside (kept with a timestamp) and starts the job over",
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._conn.execute(sql, params)  # type: ignore[return-value]

    def _xmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """An IMMEDIATE transaction: one writer at a time across processes."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _prepare(conn: sqlite3.Connection, job: str, path: str) -> int:
    """Create or migrate the schema and make sure ``job`` has its rows; return its id. In a transaction."""
    tables = _tables(conn)
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            # Written by a newer infermill: migrating it "back" would lose what that release added.
            raise LedgerError(
                f"the ledger {path} has schema version {row[0]}, newer than this infermill knows ({SCHEMA_VERSION})",
                hint="upgrade infermill (pip install -U infermill), or point '[runtime] ledger' elsewhere",
            )
    legacy = "job" in tables or ("shards" in tables and "jobs" not in tables)
    if legacy:
        _migrate_single_job(conn, job)
    else:
        for statement in iter_statements(_SCHEMA):
            conn.execute(statement)
    # A version 2 column dropped by hand (or a ledger written between releases): add it back, empty.
    for table, columns in _ADDED_COLUMNS.items():
        have = set(_columns(conn, table))
        for name, sql_type in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )
    return _ensure_job(conn, job, None)


def _ensure_job(conn: sqlite3.Connection, job: str, job_uid: str | None) -> int:
    conn.execute(
        "INSERT INTO jobs (name, job_uid) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (job, job_uid or uuid.uuid4().hex),
    )
    job_id = int(conn.execute("SELECT job_id FROM jobs WHERE name = ?", (job,)).fetchone()[0])
    conn.execute(
        "INSERT INTO lease (job_id, token, host, pid, acquired_at, heartbeat_at, released)"
        " VALUES (?, 0, '', 0, 0, 0, 1) ON CONFLICT (job_id) DO NOTHING",
        (job_id,),
    )
    return job_id


def _migrate_single_job(conn: sqlite3.Connection, opener: str) -> None:
    """Version 1 or 2 (one job per file, ``job`` table with ``id = 1``) to version 3, in place.

    The job keeps its name (the opener's, if it was never planned), its ``job_uid`` (so its output
    folder stays its own), run ids, shard states, part checks, dead letters and its lease's epoch."""
    tables = _tables(conn)
    conn.execute("DROP INDEX IF EXISTS items_state")
    for table in (*_JOB_TABLES, "lease", "job"):
        if table in tables:
            conn.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
    if "meta" not in tables:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for statement in iter_statements(_SCHEMA):
        conn.execute(statement)
    uid_row = conn.execute("SELECT value FROM meta WHERE key = 'job_uid'").fetchone()
    old_job = conn.execute("SELECT * FROM old_job WHERE id = 1").fetchone() if "job" in tables else None
    name = old_job["name"] if old_job is not None else opener
    job_id = _ensure_job(conn, name, uid_row[0] if uid_row else None)
    if old_job is not None:
        conn.execute(
            "UPDATE jobs SET spec_fingerprint = ?, model_fingerprint = ?, input_fingerprint = ?, output_path = ?,"
            " spec_json = ?, created_at = ?, completed_at = ? WHERE job_id = ?",
            (old_job["spec_fingerprint"], old_job["model_fingerprint"], old_job["input_fingerprint"],
             old_job["output_path"], old_job["spec_json"], old_job["created_at"], old_job["completed_at"], job_id),
        )
    for table in _JOB_TABLES:
        if table not in tables:
            continue
        # Only the columns the old table has: a column version 1 lacked keeps its default (or NULL).
        old = set(_columns(conn, f"old_{table}"))
        names = [c for c in _columns(conn, table) if c in old and c != "job_id"]
        listed = ", ".join(names)
        conn.execute(f"INSERT INTO {table} (job_id, {listed}) SELECT ?, {listed} FROM old_{table}", (job_id,))
    if "lease" in tables:
        conn.execute(
            "UPDATE lease SET (token, run_id, host, pid, acquired_at, heartbeat_at, released) = (SELECT token, run_id,"
            " host, pid, acquired_at, heartbeat_at, released FROM old_lease WHERE id = 1) WHERE job_id = ?"
            " AND EXISTS (SELECT 1 FROM old_lease WHERE id = 1)",
            (job_id,),
        )
    for table in (*_JOB_TABLES, "lease", "job"):
        if table in tables:
            conn.execute(f"DROP TABLE old_{table}")
    conn.execute("DELETE FROM meta WHERE key = 'job_uid'")  # now the job's, in ``jobs``


def move_aside(path: str) -> str:
    """Rename a damaged ledger (and its WAL files) to ``<path>.damaged-<UTC time>``; return the new path."""
    target = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target
