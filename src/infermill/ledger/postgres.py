"""The PostgreSQL ledger: ``[runtime] ledger = "postgresql://user:password@host/db"`` (psycopg 3).

Many jobs share one database; the ledger's tables live in the schema ``infermill``. Every write takes the
job's lease row with ``SELECT ... FOR UPDATE`` first, so the writes of one job are serialised, and a lease
takeover (which increments the fencing epoch) cannot interleave with a commit that checks it. Every time
the ledger records (acquired, heartbeat, started, committed) is the database server's clock
(``clock_timestamp()``), and a lease's age is judged by it too: workers' clocks never matter.

The schema is versioned in ``infermill.meta``; creating or migrating it happens under an advisory lock,
so runs starting together on a new database do not race.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import LedgerError
from ..redact import mask_url, scrub, without_password
from ._sql import Cursor, SQLLedger, iter_statements

__all__ = ["SCHEMA_VERSION", "PostgresLedger"]

SCHEMA_VERSION = 5
_SCHEMA_LOCK = 0x1E_D6E2  # advisory lock id held while the schema is created or migrated

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS infermill;
CREATE TABLE IF NOT EXISTS infermill.meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS infermill.jobs (
    job_id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    job_uid TEXT NOT NULL,
    spec_fingerprint TEXT,
    model_fingerprint TEXT,
    input_fingerprint TEXT,
    output_path TEXT,
    spec_json TEXT,
    plan_json TEXT,
    created_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS infermill.runs (
    run_id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES infermill.jobs (job_id),
    token BIGINT NOT NULL,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    state TEXT NOT NULL,
    rows_done BIGINT NOT NULL DEFAULT 0,
    message TEXT
);
CREATE INDEX IF NOT EXISTS runs_job ON infermill.runs (job_id, run_id);
CREATE TABLE IF NOT EXISTS infermill.shards (
    job_id BIGINT NOT NULL REFERENCES infermill.jobs (job_id),
    shard_id TEXT NOT NULL,
    ordinal BIGINT NOT NULL,
    descriptor TEXT NOT NULL,
    rows_planned BIGINT,
    state TEXT NOT NULL DEFAULT 'pending',
    rows_out BIGINT,
    rows_failed BIGINT NOT NULL DEFAULT 0,
    output_file TEXT,
    errors_file TEXT,
    output_bytes BIGINT,
    output_sha256 TEXT,
    output_mtime_ns BIGINT,
    errors_bytes BIGINT,
    errors_sha256 TEXT,
    errors_mtime_ns BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    run_id BIGINT,
    started_at DOUBLE PRECISION,
    committed_at DOUBLE PRECISION,
    seconds DOUBLE PRECISION,
    stats TEXT,
    error TEXT,
    PRIMARY KEY (job_id, shard_id),
    UNIQUE (job_id, ordinal)
);
CREATE TABLE IF NOT EXISTS infermill.items (
    job_id BIGINT NOT NULL REFERENCES infermill.jobs (job_id),
    shard_id TEXT NOT NULL,
    row_index BIGINT NOT NULL,
    item_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'dead',
    attempts BIGINT NOT NULL,
    error_class TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT,
    run_id BIGINT,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, shard_id, row_index)
);
CREATE INDEX IF NOT EXISTS items_state ON infermill.items (job_id, state, error_class);
CREATE TABLE IF NOT EXISTS infermill.autosize (
    job_id BIGINT NOT NULL REFERENCES infermill.jobs (job_id),
    key TEXT NOT NULL,
    size BIGINT NOT NULL,
    probes TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS infermill.triggers (
    job_id BIGINT NOT NULL REFERENCES infermill.jobs (job_id),
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    logical_date TEXT,
    due_at DOUBLE PRECISION,
    detail TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    exit_code BIGINT,
    message TEXT,
    summary TEXT,
    run_ids TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS infermill.lease (
    job_id BIGINT PRIMARY KEY REFERENCES infermill.jobs (job_id),
    token BIGINT NOT NULL,
    run_id BIGINT,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    released INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE infermill.jobs ADD COLUMN IF NOT EXISTS plan_json TEXT
"""

_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"



def _dialect(sql: str) -> str:
    return sql.replace("now_s()", _NOW).replace("?", "%s")


def _connect(url: str) -> Any:
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError as exc:
        raise LedgerError(
            "a postgresql:// ledger needs psycopg 3, which is not installed",
            hint="pip install 'infermill[postgres]'",
        ) from exc
    try:
        conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=30)
    except psycopg.Error as exc:
        raise _cannot_open(url, exc) from None
    try:
        conn.execute("SET search_path TO infermill, public")
        # A run paused inside a transaction (SIGSTOP, a frozen VM) would hold its job's lease row, and so
        # block the run that should take over: the server ends such a session, and so frees the row.
        conn.execute("SET idle_in_transaction_session_timeout = '10s'")
    except psycopg.Error as exc:
        conn.close()
        raise _cannot_open(url, exc) from None
    return conn


def _cannot_open(url: str, exc: Exception) -> LedgerError:
    return LedgerError(
        # psycopg's message may quote the connection string: mask it.
        f"cannot open the ledger {mask_url(url)}: {scrub(str(exc).strip())}",
        hint="check '[runtime] ledger' (host, port, database, user) and that the server is up, e.g. "
        f"`psql '{without_password(url)}' -c 'select 1'`",
    )


class PostgresLedger(SQLLedger):
    """One job's state in a PostgreSQL database. Safe to share between threads of one process."""

    def __init__(
        self, url: str, *, job: str, whoami: tuple[str, int] | None = None, clock: object | None = None
    ) -> None:
        """``whoami``: the (host, pid) its leases are taken under (default this process). ``clock`` is
        accepted for the common constructor and ignored: lease times are always the server's."""
        self._url = url
        self._job_name = job
        self._whoami = whoami
        self._lock = threading.RLock()
        self._conn = _connect(url)
        try:
            self._job_id = self._prepare()
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def job_exists(cls, url: str, job: str) -> bool:
        """Whether the database holds a ledger for ``job`` (without creating anything)."""
        return postgres_job_exists(url, job)

    @classmethod
    def display(cls, url: str) -> str:
        """The URL fit for messages: credentials removed."""
        return mask_url(url)

    @property
    def path(self) -> str:
        return mask_url(self._url)

    def _prepare(self) -> int:
        import psycopg

        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in iter_statements(_SCHEMA):
                    self._conn.execute(statement)
                row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and int(row["value"]) > SCHEMA_VERSION:
                    raise LedgerError(
                        f"the ledger {self.path} has schema version {row['value']}, newer than this infermill "
                        f"knows ({SCHEMA_VERSION})",
                        hint="upgrade infermill: pip install -U infermill",
                    )
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
                self._conn.execute(
                    "INSERT INTO jobs (name, job_uid) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                    (self._job_name, uuid.uuid4().hex),
                )
                job_id = int(
                    self._conn.execute("SELECT job_id FROM jobs WHERE name = %s", (self._job_name,)).fetchone()[
                        "job_id"
                    ]
                )
                self._conn.execute(
                    "INSERT INTO lease (job_id, token, host, pid, acquired_at, heartbeat_at, released)"
                    " VALUES (%s, 0, '', 0, 0, 0, 1) ON CONFLICT (job_id) DO NOTHING",
                    (job_id,),
                )
                return job_id
        except psycopg.Error as exc:
            raise LedgerError(
                f"cannot prepare the ledger {self.path}: {scrub(str(exc).strip())}",
                hint="the ledger's database user needs CREATE on the database; check '[runtime] ledger'",
            ) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        with self._errors():
            return self._conn.execute(_dialect(sql), params)  # type: ignore[no-any-return]

    def _xmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._errors(), self._conn.cursor() as cur:
                cur.executemany(_dialect(sql), rows)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A lost connection or a server error is a LedgerError (the heartbeat thread counts on it)."""
        import psycopg

        try:
            yield
        except psycopg.Error as exc:
            raise LedgerError(
                f"the ledger {self.path} failed: {scrub(str(exc).strip())}",
                hint="check that the PostgreSQL server is up; a rerun of the job resumes where it stopped",
            ) from None

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """A transaction holding the job's lease row (``FOR UPDATE``): one writer per job at a time."""
        with self._lock, self._errors(), self._conn.transaction():
            self._conn.execute("SELECT token FROM lease WHERE job_id = %s FOR UPDATE", (self._job_id,))
            yield


def postgres_job_exists(url: str, job: str) -> bool:
    """Whether the database holds a ledger for ``job`` (without creating anything)."""
    conn = _connect(url)
    try:
        row = conn.execute("SELECT to_regclass('infermill.jobs') IS NOT NULL AS present").fetchone()
        if not row["present"]:
            return False
        return conn.execute("SELECT 1 FROM infermill.jobs WHERE name = %s", (job,)).fetchone() is not None
    finally:
        conn.close()
