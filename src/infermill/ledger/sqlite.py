"""The SQLite ledger: durable job, run, shard and lease state.

One ledger file per job (WAL mode, so ``infermill status`` can read while a run writes). A shard is
recorded ``committed`` in the same transaction that checks the run's lease token (fencing): a run whose
lease was taken over can never commit again.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import JobLockedError, LeaseLostError, LedgerError
from .states import check_shard_transition

__all__ = ["CommittedPart", "Ledger", "Lease", "PartCheck", "ShardRow", "lease_is_live", "move_aside"]

SCHEMA_VERSION = 2
_ADDED_COLUMNS = {
    # version 2: each committed file's size, checksum and mtime, to notice a part that went missing or changed
    "shards": (
        ("output_bytes", "INTEGER"), ("output_sha256", "TEXT"), ("output_mtime_ns", "INTEGER"),
        ("errors_bytes", "INTEGER"), ("errors_sha256", "TEXT"), ("errors_mtime_ns", "INTEGER"),
    ),
}
OPEN_TIMEOUT_S = 30.0
"""How long opening the ledger waits for another process that holds it (or is creating it)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    spec_fingerprint TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    input_fingerprint TEXT NOT NULL,
    output_path TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    completed_at REAL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    token INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    state TEXT NOT NULL,
    rows_done INTEGER NOT NULL DEFAULT 0,
    message TEXT
);
CREATE TABLE IF NOT EXISTS shards (
    shard_id TEXT PRIMARY KEY,
    ordinal INTEGER NOT NULL UNIQUE,
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
    error TEXT
);
CREATE TABLE IF NOT EXISTS items (
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
    PRIMARY KEY (shard_id, row_index)
);
CREATE INDEX IF NOT EXISTS items_state ON items (state, error_class);
CREATE TABLE IF NOT EXISTS autosize (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    probes TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token INTEGER NOT NULL,
    run_id INTEGER,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    released INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Lease:
    """This run's hold on the job; ``token`` fences its writes."""

    token: int
    host: str
    pid: int


@dataclass(frozen=True)
class ShardRow:
    shard_id: str
    ordinal: int
    descriptor: str
    state: str
    rows_planned: int | None
    rows_out: int | None
    rows_failed: int
    output_file: str | None
    error: str | None
    errors_file: str | None = None


@dataclass(frozen=True)
class PartCheck:
    """What the ledger keeps of a committed file to tell later whether it is still intact."""

    bytes: int
    sha256: str
    mtime_ns: int | None


@dataclass(frozen=True)
class CommittedPart:
    """One committed file of a shard: its result part or its dead-letter part."""

    shard_id: str
    ordinal: int
    errors: bool
    """True for the shard's ``_errors/`` file."""
    name: str
    rows: int
    check: PartCheck | None
    """None for files committed by a release that did not record checks."""


class Ledger:
    """Job state in one SQLite file. Safe to share between threads of one process."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                os.makedirs(directory, exist_ok=True)
                self._conn = self._open(path)
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

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            _migrate(conn)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('job_uid', ?)", (uuid.uuid4().hex,)
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _cannot_open(self, exc: Exception) -> LedgerError:
        return LedgerError(
            f"cannot open the ledger {self.path}: {exc}",
            hint="check '[runtime] ledger' and its permissions; if the file is damaged, `infermill run JOB "
            "--restart` moves it aside (kept with a timestamp) and starts the job over",
        )

    def job_uid(self) -> str:
        """This ledger's id for its job, made when the ledger was created (kept by reset())."""
        return str(self._query("SELECT value FROM meta WHERE key = 'job_uid'")[0][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: one writer at a time across processes."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    # -- job ---------------------------------------------------------------------------------------
    def job(self) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM job WHERE id = 1")
        return dict(rows[0]) if rows else None

    def create_job(
        self,
        *,
        name: str,
        spec_fingerprint: str,
        model_fingerprint: str,
        input_fingerprint: str,
        output_path: str,
        spec_json: str,
        shards: Sequence[tuple[str, int, str, int | None]],
    ) -> None:
        """Record the job and its planned shards (all pending)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO job (id, name, spec_fingerprint, model_fingerprint, input_fingerprint, output_path,"
                " spec_json, created_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (name, spec_fingerprint, model_fingerprint, input_fingerprint, output_path, spec_json, time.time()),
            )
            conn.executemany(
                "INSERT INTO shards (shard_id, ordinal, descriptor, rows_planned) VALUES (?, ?, ?, ?)", shards
            )

    def reset(self) -> None:
        """Forget the job's results (for --restart); its ``job_uid`` stays, so its output stays its own."""
        with self._tx() as conn:
            conn.execute("DELETE FROM shards")
            conn.execute("DELETE FROM items")
            conn.execute("DELETE FROM job")

    def mark_complete(self) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE job SET completed_at = ? WHERE id = 1", (time.time(),))

    def mark_incomplete(self) -> None:
        """The job's output is being changed (retry, a damaged part redone): it is not complete until a new
        manifest is written."""
        with self._tx() as conn:
            conn.execute("UPDATE job SET completed_at = NULL WHERE id = 1")

    # -- lease -------------------------------------------------------------------------------------
    def lease_holder(self) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM lease WHERE id = 1")
        return dict(rows[0]) if rows else None

    def acquire_lease(self, *, lease_seconds: float, job: str) -> Lease:
        """Take the job's lease, or raise JobLockedError naming the live holder.

        A lease whose heartbeat is older than ``lease_seconds`` belonged to a run that died: it is taken
        over, and its run is recorded as interrupted.
        """
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM lease WHERE id = 1").fetchone()
            if row is not None and lease_is_live(dict(row), lease_seconds):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["acquired_at"]))
                raise JobLockedError(
                    f"another run of job '{job}' is active: host {row['host']}, pid {row['pid']}, since {since}",
                    hint="wait for it to finish (or use --wait); a run that died frees the job after "
                    f"{lease_seconds:g}s without a heartbeat",
                    job=job,
                )
            token = (row["token"] if row is not None else 0) + 1
            if row is not None and row["run_id"] is not None:
                conn.execute(
                    "UPDATE runs SET state = 'interrupted', ended_at = COALESCE(ended_at, ?),"
                    " message = COALESCE(message, 'the run stopped without finishing (crash or kill)')"
                    " WHERE run_id = ? AND state = 'running'",
                    (now, row["run_id"]),
                )
            conn.execute(
                "INSERT OR REPLACE INTO lease (id, token, run_id, host, pid, acquired_at, heartbeat_at, released)"
                " VALUES (1, ?, NULL, ?, ?, ?, ?, 0)",
                (token, host, pid, now, now),
            )
        return Lease(token=token, host=host, pid=pid)

    def heartbeat(self, lease: Lease) -> bool:
        """Refresh the lease; False when it was taken over."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE lease SET heartbeat_at = ? WHERE id = 1 AND token = ? AND released = 0",
                (time.time(), lease.token),
            )
            return cur.rowcount == 1

    def release_lease(self, lease: Lease) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE lease SET released = 1 WHERE id = 1 AND token = ?", (lease.token,))

    def _fence(self, conn: sqlite3.Connection, lease: Lease) -> None:
        row = conn.execute("SELECT token, released FROM lease WHERE id = 1").fetchone()
        if row is None or row["token"] != lease.token or row["released"]:
            raise LeaseLostError(
                "this run's lease was taken over by another run; it stops without committing more",
                hint="check `infermill status`; only one run of a job may write at a time",
            )

    def check_fence(self, lease: Lease) -> None:
        with self._lock:
            self._fence(self._conn, lease)

    # -- runs --------------------------------------------------------------------------------------
    def start_run(self, lease: Lease) -> int:
        with self._tx() as conn:
            self._fence(conn, lease)
            cur = conn.execute(
                "INSERT INTO runs (token, host, pid, started_at, state) VALUES (?, ?, ?, ?, 'running')",
                (lease.token, lease.host, lease.pid, time.time()),
            )
            run_id = int(cur.lastrowid or 0)
            conn.execute("UPDATE lease SET run_id = ? WHERE id = 1", (run_id,))
            # Shards left running by a crashed run were never committed: do them again.
            conn.execute("UPDATE shards SET state = 'pending' WHERE state = 'running'")
            return run_id

    def end_run(self, run_id: int, state: str, message: str | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET state = ?, ended_at = ?, message = ?,"
                " rows_done = (SELECT COALESCE(SUM(rows_out), 0) FROM shards WHERE run_id = ? AND state = 'committed')"
                " WHERE run_id = ?",
                (state, time.time(), message, run_id, run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM runs ORDER BY run_id")]

    # -- shards ------------------------------------------------------------------------------------
    def shards(self, state: str | None = None) -> list[ShardRow]:
        sql = (
            "SELECT shard_id, ordinal, descriptor, state, rows_planned, rows_out, rows_failed, output_file, error,"
            " errors_file FROM shards"
        )
        params: tuple[Any, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            params = (state,)
        return [ShardRow(**dict(r)) for r in self._query(sql + " ORDER BY ordinal", params)]

    def _transition(self, conn: sqlite3.Connection, shard_id: str, new: str) -> None:
        row = conn.execute("SELECT state FROM shards WHERE shard_id = ?", (shard_id,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown shard {shard_id}")
        check_shard_transition(row["state"], new, shard_id)

    def mark_running(self, shard_id: str, lease: Lease, run_id: int) -> None:
        with self._tx() as conn:
            self._fence(conn, lease)
            self._transition(conn, shard_id, "running")
            conn.execute(
                "UPDATE shards SET state = 'running', attempts = attempts + 1, run_id = ?, started_at = ?,"
                " error = NULL WHERE shard_id = ?",
                (run_id, time.time(), shard_id),
            )

    def commit_shard(
        self,
        shard_id: str,
        lease: Lease,
        *,
        output_file: str | None,
        rows_out: int,
        errors_file: str | None = None,
        dead_items: Sequence[tuple[Any, ...]] = (),
        run_id: int | None = None,
        stats: dict[str, Any] | None = None,
        retry: bool = False,
        resolved_rows: Sequence[int] = (),
        output_check: PartCheck | None = None,
        errors_check: PartCheck | None = None,
    ) -> None:
        """Record a shard's files as committed, only if this run still holds the lease.

        ``dead_items`` are ``(item_id, row_index, attempts, error_class, error_kind, message, traceback)``
        for the shard's dead-lettered rows; they replace the shard's earlier dead letters. With
        ``retry`` the shard was already committed and its files were rewritten by ``infermill retry``.
        """
        now = time.time()
        with self._tx() as conn:
            self._fence(conn, lease)
            if not retry:
                self._transition(conn, shard_id, "committed")
            conn.executemany(
                "UPDATE items SET state = 'resolved', updated_at = ?, run_id = ? WHERE shard_id = ? AND row_index = ?",
                [(now, run_id, shard_id, i) for i in resolved_rows],
            )
            conn.execute("DELETE FROM items WHERE shard_id = ? AND state = 'dead'", (shard_id,))
            conn.executemany(
                "INSERT OR REPLACE INTO items (shard_id, item_id, row_index, attempts, error_class, error_kind,"
                " message, traceback, run_id, updated_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'dead')",
                [(shard_id, *item, run_id, now) for item in dead_items],
            )
            checks = (*_check_values(output_check), *_check_values(errors_check))
            conn.execute(
                "UPDATE shards SET output_bytes = ?, output_sha256 = ?, output_mtime_ns = ?, errors_bytes = ?,"
                " errors_sha256 = ?, errors_mtime_ns = ? WHERE shard_id = ?",
                (*checks, shard_id),
            )
            if retry:
                conn.execute(
                    "UPDATE shards SET output_file = ?, errors_file = ?, rows_out = ?, rows_failed = ?"
                    " WHERE shard_id = ?",
                    (output_file, errors_file, rows_out, len(dead_items), shard_id),
                )
                return
            conn.execute(
                "UPDATE shards SET state = 'committed', output_file = ?, errors_file = ?, rows_out = ?,"
                " rows_failed = ?, committed_at = ?, seconds = ? - COALESCE(started_at, ?), stats = ?"
                " WHERE shard_id = ?",
                (output_file, errors_file, rows_out, len(dead_items), now, now, now, json.dumps(stats or {}),
                 shard_id),
            )

    def set_model_fingerprint(self, fingerprint: str) -> None:
        """A retry with a fixed model: later results come from this model."""
        with self._tx() as conn:
            conn.execute("UPDATE job SET model_fingerprint = ? WHERE id = 1", (fingerprint,))

    def dead_items(self, shard_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM items WHERE state = 'dead'"
        params: tuple[Any, ...] = ()
        if shard_id is not None:
            sql += " AND shard_id = ?"
            params = (shard_id,)
        return [dict(r) for r in self._query(sql + " ORDER BY shard_id, row_index", params)]

    def failure_groups(self) -> list[dict[str, Any]]:
        """Dead letters grouped by error class: count and one example message."""
        rows = self._query(
            "SELECT error_class, error_kind, COUNT(*) AS count, MIN(message) AS example, MIN(item_id) AS first_item"
            " FROM items WHERE state = 'dead' GROUP BY error_class, error_kind ORDER BY count DESC, error_class"
        )
        return [dict(r) for r in rows]

    def fail_shard(self, shard_id: str, lease: Lease, error: str) -> None:
        with self._tx() as conn:
            self._fence(conn, lease)
            self._transition(conn, shard_id, "failed")
            conn.execute("UPDATE shards SET state = 'failed', error = ? WHERE shard_id = ?", (error, shard_id))

    def requeue_shard(self, shard_id: str, lease: Lease) -> None:
        """A running shard whose work was abandoned (interrupt) goes back to pending."""
        with self._tx() as conn:
            self._fence(conn, lease)
            conn.execute("UPDATE shards SET state = 'pending' WHERE shard_id = ? AND state = 'running'", (shard_id,))

    def reopen_shards(self, shard_ids: Sequence[str], lease: Lease, reason: str) -> None:
        """Committed shards whose files are missing or changed go back to pending, with their dead letters
        forgotten (they are redone with the shard); the job is no longer complete."""
        with self._tx() as conn:
            self._fence(conn, lease)
            for shard_id in shard_ids:
                self._transition(conn, shard_id, "pending")
                conn.execute(
                    "UPDATE shards SET state = 'pending', output_file = NULL, errors_file = NULL, rows_out = NULL,"
                    " rows_failed = 0, error = ?, output_bytes = NULL, output_sha256 = NULL,"
                    " output_mtime_ns = NULL, errors_bytes = NULL, errors_sha256 = NULL, errors_mtime_ns = NULL"
                    " WHERE shard_id = ?",
                    (reason, shard_id),
                )
                conn.execute("DELETE FROM items WHERE shard_id = ?", (shard_id,))
            conn.execute("UPDATE job SET completed_at = NULL WHERE id = 1")

    def requeue_failed(self, lease: Lease) -> int:
        """Failed shards get another chance in a new run."""
        with self._tx() as conn:
            self._fence(conn, lease)
            return conn.execute("UPDATE shards SET state = 'pending' WHERE state = 'failed'").rowcount

    def summary(self) -> dict[str, Any]:
        row = self._query(
            "SELECT COUNT(*) AS shards_total,"
            " COALESCE(SUM(state = 'committed'), 0) AS shards_committed,"
            " COALESCE(SUM(state = 'failed'), 0) AS shards_failed,"
            " COALESCE(SUM(state = 'pending'), 0) AS shards_pending,"
            " COALESCE(SUM(state = 'running'), 0) AS shards_running,"
            " COALESCE(SUM(CASE WHEN state = 'committed' THEN rows_out ELSE 0 END), 0) AS rows_succeeded,"
            " COALESCE(SUM(CASE WHEN state = 'committed' THEN rows_failed ELSE 0 END), 0) AS rows_failed,"
            " SUM(rows_planned) AS rows_planned,"
            " COUNT(rows_planned) AS shards_with_rows_planned"
            " FROM shards"
        )[0]
        return dict(row)

    def cached_batch_size(self, key: str) -> int | None:
        """A batch size chosen by ``size = "auto"`` earlier for the same model, hardware and features."""
        rows = self._query("SELECT size FROM autosize WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else None

    def cache_batch_size(self, key: str, size: int, probes: list[dict[str, Any]]) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO autosize (key, size, probes, created_at) VALUES (?, ?, ?, ?)",
                (key, size, json.dumps(probes), time.time()),
            )

    def shard_stats(self) -> list[str]:
        """The per-shard stage timings (JSON) of committed shards."""
        return [r[0] for r in self._query("SELECT stats FROM shards WHERE state = 'committed' ORDER BY ordinal")]

    def committed_parts(self) -> list[CommittedPart]:
        """Every committed file (results, then dead letters, of each shard in order) with its check."""
        rows = self._query("SELECT * FROM shards WHERE state = 'committed' ORDER BY ordinal")
        parts: list[CommittedPart] = []
        for r in rows:
            for prefix, errors, rows_key in (("output", False, "rows_out"), ("errors", True, "rows_failed")):
                name = r[f"{prefix}_file"]
                if name is None:
                    continue
                size = r[f"{prefix}_bytes"]
                check = None if size is None else PartCheck(size, r[f"{prefix}_sha256"], r[f"{prefix}_mtime_ns"])
                parts.append(CommittedPart(r["shard_id"], r["ordinal"], errors, name, int(r[rows_key] or 0), check))
        return parts


def _check_values(check: PartCheck | None) -> tuple[Any, Any, Any]:
    return (None, None, None) if check is None else (check.bytes, check.sha256, check.mtime_ns)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a ledger written by an earlier release up to this schema, in place."""
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, sql_type in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or row[0] != str(SCHEMA_VERSION):
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def move_aside(path: str) -> str:
    """Rename a damaged ledger (and its WAL files) to ``<path>.damaged-<UTC time>``; return the new path."""
    target = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target


def lease_is_live(holder: dict[str, Any] | None, lease_seconds: float) -> bool:
    """Whether a lease row belongs to a run that is still alive."""
    return (
        holder is not None
        and not holder["released"]
        and time.time() - holder["heartbeat_at"] < lease_seconds
        and not _holder_is_dead(holder["host"], holder["pid"])
    )


def _holder_is_dead(host: str, pid: int) -> bool:
    """True when the lease holder ran on this host and its process is gone (killed, crashed)."""
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
