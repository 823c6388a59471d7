"""The ledger's protocol steps in SQL, shared by the SQLite and PostgreSQL backends.

Statements are written once, in the common dialect of both (``?`` parameters, ``ON CONFLICT`` upserts,
``RETURNING``), with ``now_s()`` for the ledger clock in epoch seconds: SQLite binds it to the ledger's
injectable clock, PostgreSQL rewrites it to the server's ``clock_timestamp()``. A backend supplies the
connection, the write transaction (one writer per job at a time) and the schema.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..errors import JobLockedError, LeaseLostError, LedgerError
from .base import (
    TRIGGER_DONE,
    CommittedPart,
    DeadItemRecord,
    FailureGroup,
    JobRecord,
    Lease,
    LeaseHolder,
    LedgerSummary,
    PartCheck,
    RunRecord,
    ShardRow,
    TriggerRecord,
)
from .states import check_shard_transition

__all__ = ["SQLLedger", "holder_is_dead", "lease_is_live"]

Row = Any
"""A result row addressable by column name (``sqlite3.Row`` or a psycopg dict row)."""


class Cursor(Protocol):
    """The little of a DB-API cursor the shared code uses."""

    rowcount: int

    def fetchone(self) -> Row:
        raise NotImplementedError

    def fetchall(self) -> list[Row]:
        raise NotImplementedError


class SQLLedger:
    """A job's ledger over a SQL connection; subclasses open it and own the dialect."""

    _job_id: int
    _job_name: str
    _whoami: tuple[str, int] | None
    _lock: threading.RLock

    # -- what a backend provides ------------------------------------------------------------------
    @property
    def path(self) -> str:
        raise NotImplementedError

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Execute one statement on the ledger's connection."""
        raise NotImplementedError

    def _xmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[None]:
        """A write transaction holding the job's write lock."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._x(sql, params).fetchall())

    def _identity(self) -> tuple[str, int]:
        return self._whoami or (socket.gethostname(), os.getpid())

    def job_uid(self) -> str:
        """This ledger's id for its job, made when the job was first seen (kept by reset())."""
        return str(self._query("SELECT job_uid FROM jobs WHERE job_id = ?", (self._job_id,))[0]["job_uid"])

    # -- job --------------------------------------------------------------------------------------
    def job(self) -> JobRecord | None:
        rows = self._query(
            "SELECT * FROM jobs WHERE job_id = ? AND spec_fingerprint IS NOT NULL", (self._job_id,)
        )
        if not rows:
            return None
        r = rows[0]
        return JobRecord(
            name=r["name"], job_uid=r["job_uid"], spec_fingerprint=r["spec_fingerprint"],
            model_fingerprint=r["model_fingerprint"], input_fingerprint=r["input_fingerprint"],
            output_path=r["output_path"], spec_json=r["spec_json"], created_at=float(r["created_at"]),
            completed_at=None if r["completed_at"] is None else float(r["completed_at"]),
            plan_json=r["plan_json"],
        )

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
        plan_json: str | None = None,
    ) -> None:
        """Record the job's plan and its shards (all pending)."""
        with self._tx():
            self._x(
                "UPDATE jobs SET spec_fingerprint = ?, model_fingerprint = ?, input_fingerprint = ?,"
                " output_path = ?, spec_json = ?, plan_json = ?, created_at = now_s(), completed_at = NULL"
                " WHERE job_id = ?",
                (spec_fingerprint, model_fingerprint, input_fingerprint, output_path, spec_json, plan_json,
                 self._job_id),
            )
            self._xmany(
                "INSERT INTO shards (job_id, shard_id, ordinal, descriptor, rows_planned) VALUES (?, ?, ?, ?, ?)",
                [(self._job_id, *s) for s in shards],
            )

    def reset(self) -> None:
        """Forget the job's results (for --restart); its ``job_uid`` stays, so its output stays its own."""
        with self._tx():
            self._x("DELETE FROM items WHERE job_id = ?", (self._job_id,))
            self._x("DELETE FROM shards WHERE job_id = ?", (self._job_id,))
            self._x(
                "UPDATE jobs SET spec_fingerprint = NULL, model_fingerprint = NULL, input_fingerprint = NULL,"
                " output_path = NULL, spec_json = NULL, plan_json = NULL, created_at = NULL, completed_at = NULL"
                " WHERE job_id = ?",
                (self._job_id,),
            )

    def replan(
        self,
        lease: Lease,
        *,
        drop: Sequence[str],
        add: Sequence[tuple[str, int, str, int | None]],
        input_fingerprint: str,
        plan_json: str | None,
    ) -> None:
        """An incremental run's new plan, in one transaction: the ``drop``ped shards (input changed or
        deleted) are forgotten with their dead letters, the ``add``ed ones are pending, the job takes the
        new input fingerprint and plan, and is no longer complete. Their committed files are then debris,
        which ``Sink.recover`` sweeps."""
        job_id = self._job_id
        with self._tx():
            self._fence(lease)
            self._xmany("DELETE FROM items WHERE job_id = ? AND shard_id = ?", [(job_id, s) for s in drop])
            self._xmany("DELETE FROM shards WHERE job_id = ? AND shard_id = ?", [(job_id, s) for s in drop])
            self._xmany(
                "INSERT INTO shards (job_id, shard_id, ordinal, descriptor, rows_planned) VALUES (?, ?, ?, ?, ?)",
                [(job_id, *s) for s in add],
            )
            self._x(
                "UPDATE jobs SET input_fingerprint = ?, plan_json = ?, completed_at = NULL WHERE job_id = ?",
                (input_fingerprint, plan_json, job_id),
            )

    def mark_complete(self) -> None:
        with self._tx():
            self._x("UPDATE jobs SET completed_at = now_s() WHERE job_id = ?", (self._job_id,))

    def mark_incomplete(self) -> None:
        """The job's output is being changed (retry, a damaged part redone): it is not complete until a new
        manifest is written."""
        with self._tx():
            self._x("UPDATE jobs SET completed_at = NULL WHERE job_id = ?", (self._job_id,))

    def set_model_fingerprint(self, fingerprint: str) -> None:
        """A retry with a fixed model: later results come from this model."""
        with self._tx():
            self._x("UPDATE jobs SET model_fingerprint = ? WHERE job_id = ?", (fingerprint, self._job_id))

    # -- lease ------------------------------------------------------------------------------------
    _LEASE = "SELECT lease.*, now_s() - heartbeat_at AS heartbeat_age FROM lease WHERE job_id = ?"

    def lease_holder(self) -> LeaseHolder | None:
        rows = self._query(self._LEASE, (self._job_id,))
        return _holder(rows[0]) if rows else None

    def acquire_lease(self, *, lease_seconds: float, job: str) -> Lease:
        """Take the job's lease, or raise JobLockedError naming the live holder.

        A lease whose heartbeat is older than ``lease_seconds`` (by the ledger's clock) belonged to a run
        that died: it is taken over, its run is recorded as interrupted, and the fencing epoch goes up.
        """
        host, pid = self._identity()
        with self._tx():
            row = self._x(self._LEASE, (self._job_id,)).fetchone()
            holder = _holder(row) if row is not None else None
            if holder is not None and lease_is_live(holder, lease_seconds):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.acquired_at))
                raise JobLockedError(
                    f"another run of job '{job}' is active: host {holder.host}, pid {holder.pid}, since {since}",
                    hint="wait for it to finish (or use --wait); a run that died frees the job after "
                    f"{lease_seconds:g}s without a heartbeat",
                    job=job,
                )
            token = (int(row["token"]) if row is not None else 0) + 1
            if row is not None and row["run_id"] is not None:
                self._x(
                    "UPDATE runs SET state = 'interrupted', ended_at = COALESCE(ended_at, now_s()),"
                    " message = COALESCE(message, 'the run stopped without finishing (crash or kill)')"
                    " WHERE job_id = ? AND run_id = ? AND state = 'running'",
                    (self._job_id, row["run_id"]),
                )
            self._x(
                "UPDATE lease SET token = ?, run_id = NULL, host = ?, pid = ?, acquired_at = now_s(),"
                " heartbeat_at = now_s(), released = 0 WHERE job_id = ?",
                (token, host, pid, self._job_id),
            )
        return Lease(token=token, host=host, pid=pid)

    def heartbeat(self, lease: Lease) -> bool:
        """Refresh the lease; False when it was taken over."""
        with self._tx():
            cur = self._x(
                "UPDATE lease SET heartbeat_at = now_s() WHERE job_id = ? AND token = ? AND released = 0",
                (self._job_id, lease.token),
            )
            return cur.rowcount == 1

    def release_lease(self, lease: Lease) -> None:
        with self._tx():
            self._x("UPDATE lease SET released = 1 WHERE job_id = ? AND token = ?", (self._job_id, lease.token))

    def _fence(self, lease: Lease) -> None:
        row = self._x("SELECT token, released FROM lease WHERE job_id = ?", (self._job_id,)).fetchone()
        if row is None or int(row["token"]) != lease.token or row["released"]:
            raise LeaseLostError(
                "this run's lease was taken over by another run; it stops without committing more",
                hint="check `infermill status`; only one run of a job may write at a time",
            )

    def check_fence(self, lease: Lease) -> None:
        with self._lock:
            self._fence(lease)

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, lease: Lease) -> int:
        with self._tx():
            self._fence(lease)
            row = self._x(
                "INSERT INTO runs (job_id, token, host, pid, started_at, state) VALUES (?, ?, ?, ?, now_s(), 'running')"
                " RETURNING run_id",
                (self._job_id, lease.token, lease.host, lease.pid),
            ).fetchall()[0]
            run_id = int(row["run_id"])
            self._x("UPDATE lease SET run_id = ? WHERE job_id = ?", (run_id, self._job_id))
            # Shards left running by a crashed run were never committed: do them again.
            self._x("UPDATE shards SET state = 'pending' WHERE job_id = ? AND state = 'running'", (self._job_id,))
            return run_id

    def end_run(self, run_id: int, state: str, message: str | None = None) -> None:
        with self._tx():
            self._x(
                "UPDATE runs SET state = ?, ended_at = now_s(), message = ?, rows_done = (SELECT"
                " COALESCE(SUM(rows_out), 0) FROM shards WHERE job_id = ? AND run_id = ? AND state = 'committed')"
                " WHERE job_id = ? AND run_id = ?",
                (state, message, self._job_id, run_id, self._job_id, run_id),
            )

    def runs(self) -> list[RunRecord]:
        rows = self._query("SELECT * FROM runs WHERE job_id = ? ORDER BY run_id", (self._job_id,))
        return [
            RunRecord(
                run_id=int(r["run_id"]), token=int(r["token"]), host=r["host"], pid=int(r["pid"]),
                started_at=float(r["started_at"]), ended_at=None if r["ended_at"] is None else float(r["ended_at"]),
                state=r["state"], rows_done=int(r["rows_done"]), message=r["message"],
            )
            for r in rows
        ]

    # -- shards -----------------------------------------------------------------------------------
    def shards(self, state: str | None = None) -> list[ShardRow]:
        sql = (
            "SELECT shard_id, ordinal, descriptor, state, rows_planned, rows_out, rows_failed, output_file, error,"
            " errors_file FROM shards WHERE job_id = ?"
        )
        params: tuple[Any, ...] = (self._job_id,)
        if state is not None:
            sql += " AND state = ?"
            params = (self._job_id, state)
        return [ShardRow(**dict(r)) for r in self._query(sql + " ORDER BY ordinal", params)]

    def _transition(self, shard_id: str, new: str) -> None:
        row = self._x("SELECT state FROM shards WHERE job_id = ? AND shard_id = ?", (self._job_id, shard_id)).fetchone()
        if row is None:
            raise LedgerError(f"unknown shard {shard_id}")
        check_shard_transition(row["state"], new, shard_id)

    def mark_running(self, shard_id: str, lease: Lease, run_id: int) -> None:
        with self._tx():
            self._fence(lease)
            self._transition(shard_id, "running")
            self._x(
                "UPDATE shards SET state = 'running', attempts = attempts + 1, run_id = ?, started_at = now_s(),"
                " error = NULL WHERE job_id = ? AND shard_id = ?",
                (run_id, self._job_id, shard_id),
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
        job_id = self._job_id
        with self._tx():
            self._fence(lease)
            if not retry:
                self._transition(shard_id, "committed")
            self._xmany(
                "UPDATE items SET state = 'resolved', updated_at = now_s(), run_id = ?"
                " WHERE job_id = ? AND shard_id = ? AND row_index = ?",
                [(run_id, job_id, shard_id, i) for i in resolved_rows],
            )
            self._x("DELETE FROM items WHERE job_id = ? AND shard_id = ? AND state = 'dead'", (job_id, shard_id))
            self._xmany(
                "INSERT INTO items (job_id, shard_id, item_id, row_index, attempts, error_class, error_kind,"
                " message, traceback, run_id, updated_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now_s(), 'dead')"
                " ON CONFLICT (job_id, shard_id, row_index) DO UPDATE SET item_id = excluded.item_id,"
                " attempts = excluded.attempts, error_class = excluded.error_class,"
                " error_kind = excluded.error_kind, message = excluded.message, traceback = excluded.traceback,"
                " run_id = excluded.run_id, updated_at = excluded.updated_at, state = 'dead'",
                [(job_id, shard_id, str(item[0]), *item[1:], run_id) for item in dead_items],
            )
            checks = (*_check_values(output_check), *_check_values(errors_check))
            self._x(
                "UPDATE shards SET output_bytes = ?, output_sha256 = ?, output_mtime_ns = ?, errors_bytes = ?,"
                " errors_sha256 = ?, errors_mtime_ns = ? WHERE job_id = ? AND shard_id = ?",
                (*checks, job_id, shard_id),
            )
            if retry:
                self._x(
                    "UPDATE shards SET output_file = ?, errors_file = ?, rows_out = ?, rows_failed = ?"
                    " WHERE job_id = ? AND shard_id = ?",
                    (output_file, errors_file, rows_out, len(dead_items), job_id, shard_id),
                )
                return
            self._x(
                "UPDATE shards SET state = 'committed', output_file = ?, errors_file = ?, rows_out = ?,"
                " rows_failed = ?, committed_at = now_s(), seconds = now_s() - COALESCE(started_at, now_s()),"
                " stats = ? WHERE job_id = ? AND shard_id = ?",
                (output_file, errors_file, rows_out, len(dead_items), json.dumps(stats or {}), job_id, shard_id),
            )

    def dead_items(self, shard_id: str | None = None) -> list[DeadItemRecord]:
        sql = "SELECT * FROM items WHERE job_id = ? AND state = 'dead'"
        params: tuple[Any, ...] = (self._job_id,)
        if shard_id is not None:
            sql += " AND shard_id = ?"
            params = (self._job_id, shard_id)
        return [
            DeadItemRecord(
                shard_id=r["shard_id"], row_index=int(r["row_index"]), item_id=r["item_id"], state=r["state"],
                attempts=int(r["attempts"]), error_class=r["error_class"], error_kind=r["error_kind"],
                message=r["message"], traceback=r["traceback"], run_id=r["run_id"], updated_at=float(r["updated_at"]),
            )
            for r in self._query(sql + " ORDER BY shard_id, row_index", params)
        ]

    def failure_groups(self) -> list[FailureGroup]:
        """Dead letters grouped by error class: count and one example message."""
        rows = self._query(
            "SELECT error_class, error_kind, COUNT(*) AS count, MIN(message) AS example, MIN(item_id) AS first_item"
            " FROM items WHERE job_id = ? AND state = 'dead' GROUP BY error_class, error_kind"
            " ORDER BY count DESC, error_class",
            (self._job_id,),
        )
        return [
            FailureGroup(r["error_class"], r["error_kind"], int(r["count"]), r["example"], r["first_item"])
            for r in rows
        ]

    def fail_shard(self, shard_id: str, lease: Lease, error: str) -> None:
        with self._tx():
            self._fence(lease)
            self._transition(shard_id, "failed")
            self._x(
                "UPDATE shards SET state = 'failed', error = ? WHERE job_id = ? AND shard_id = ?",
                (error, self._job_id, shard_id),
            )

    def requeue_shard(self, shard_id: str, lease: Lease) -> None:
        """A running shard whose work was abandoned (interrupt) goes back to pending."""
        with self._tx():
            self._fence(lease)
            self._x(
                "UPDATE shards SET state = 'pending' WHERE job_id = ? AND shard_id = ? AND state = 'running'",
                (self._job_id, shard_id),
            )

    def reopen_shards(self, shard_ids: Sequence[str], lease: Lease, reason: str) -> None:
        """Committed shards whose files are missing or changed go back to pending, with their dead letters
        forgotten (they are redone with the shard); the job is no longer complete."""
        with self._tx():
            self._fence(lease)
            for shard_id in shard_ids:
                self._transition(shard_id, "pending")
                self._x(
                    "UPDATE shards SET state = 'pending', output_file = NULL, errors_file = NULL, rows_out = NULL,"
                    " rows_failed = 0, error = ?, output_bytes = NULL, output_sha256 = NULL,"
                    " output_mtime_ns = NULL, errors_bytes = NULL, errors_sha256 = NULL, errors_mtime_ns = NULL"
                    " WHERE job_id = ? AND shard_id = ?",
                    (reason, self._job_id, shard_id),
                )
                self._x("DELETE FROM items WHERE job_id = ? AND shard_id = ?", (self._job_id, shard_id))
            self._x("UPDATE jobs SET completed_at = NULL WHERE job_id = ?", (self._job_id,))

    def requeue_failed(self, lease: Lease) -> int:
        """Failed shards get another chance in a new run."""
        with self._tx():
            self._fence(lease)
            return self._x(
                "UPDATE shards SET state = 'pending' WHERE job_id = ? AND state = 'failed'", (self._job_id,)
            ).rowcount

    def summary(self) -> LedgerSummary:
        r = self._query(
            "SELECT COUNT(*) AS shards_total,"
            " COALESCE(SUM(CASE WHEN state = 'committed' THEN 1 ELSE 0 END), 0) AS shards_committed,"
            " COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) AS shards_failed,"
            " COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS shards_pending,"
            " COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0) AS shards_running,"
            " COALESCE(SUM(CASE WHEN state = 'committed' THEN rows_out ELSE 0 END), 0) AS rows_succeeded,"
            " COALESCE(SUM(CASE WHEN state = 'committed' THEN rows_failed ELSE 0 END), 0) AS rows_failed,"
            " SUM(rows_planned) AS rows_planned,"
            " COUNT(rows_planned) AS shards_with_rows_planned"
            " FROM shards WHERE job_id = ?",
            (self._job_id,),
        )[0]
        values = {k: (None if r[k] is None else int(r[k])) for k in (
            "shards_total", "shards_committed", "shards_failed", "shards_pending", "shards_running",
            "rows_succeeded", "rows_failed", "rows_planned", "shards_with_rows_planned",
        )}
        return LedgerSummary(**values)  # type: ignore[arg-type]

    def cached_batch_size(self, key: str) -> int | None:
        """A batch size chosen by ``size = "auto"`` earlier for the same model, hardware and features."""
        rows = self._query("SELECT size FROM autosize WHERE job_id = ? AND key = ?", (self._job_id, key))
        return int(rows[0]["size"]) if rows else None

    def cache_batch_size(self, key: str, size: int, probes: list[dict[str, Any]]) -> None:
        with self._tx():
            self._x(
                "INSERT INTO autosize (job_id, key, size, probes, created_at) VALUES (?, ?, ?, ?, now_s())"
                " ON CONFLICT (job_id, key) DO UPDATE SET size = excluded.size, probes = excluded.probes,"
                " created_at = excluded.created_at",
                (self._job_id, key, size, json.dumps(probes)),
            )

    # -- triggers -------------------------------------------------------------------------------
    def claim_trigger(
        self,
        key: str,
        *,
        kind: str,
        owner: str,
        logical_date: str | None = None,
        due_at: float | None = None,
        detail: str = "{}",
        state: str = "pending",
    ) -> bool:
        """Record a trigger unless one with ``key`` exists; True when this call recorded it (the caller owns
        it and runs it), False when another ``serve`` (or this one before a restart) already had."""
        with self._tx():
            cur = self._x(
                "INSERT INTO triggers (job_id, key, kind, logical_date, due_at, detail, state, owner, attempts,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, now_s(), now_s())"
                " ON CONFLICT (job_id, key) DO NOTHING",
                (self._job_id, key, kind, logical_date, due_at, detail, state, owner),
            )
            return cur.rowcount == 1

    def take_trigger(self, key: str, *, owner: str, previous: str) -> bool:
        """Take over an unfinished trigger whose owner is gone: only if its owner is still ``previous`` (so of
        two ``serve`` processes trying at once, one wins)."""
        with self._tx():
            cur = self._x(
                "UPDATE triggers SET owner = ?, updated_at = now_s() WHERE job_id = ? AND key = ? AND owner = ?",
                (owner, self._job_id, key, previous),
            )
            return cur.rowcount == 1

    def update_trigger(
        self,
        key: str,
        *,
        state: str,
        exit_code: int | None = None,
        message: str | None = None,
        summary: str | None = None,
        run_id: int | None = None,
        attempt: bool = False,
    ) -> None:
        """Record a trigger's progress: ``attempt`` counts a run starting; ``run_id`` (the ledger run an
        attempt started) is added to the trigger's runs; the other values replace the last run's when given."""
        with self._tx():
            row = self._x(
                "SELECT run_ids FROM triggers WHERE job_id = ? AND key = ?", (self._job_id, key)
            ).fetchone()
            if row is None:
                raise LedgerError(f"unknown trigger {key}")
            run_ids = [r for r in str(row["run_ids"]).split(",") if r]
            if run_id is not None and str(run_id) not in run_ids:
                run_ids.append(str(run_id))
            self._x(
                "UPDATE triggers SET state = ?, exit_code = COALESCE(?, exit_code), message = COALESCE(?, message),"
                " summary = COALESCE(?, summary), run_ids = ?, attempts = attempts + ?,"
                " updated_at = now_s() WHERE job_id = ? AND key = ?",
                (state, exit_code, message, summary, ",".join(run_ids), 1 if attempt else 0, self._job_id, key),
            )

    def triggers(
        self, kind: str | None = None, *, unfinished: bool = False, newest: int | None = None
    ) -> list[TriggerRecord]:
        """The job's triggers, oldest first: of ``kind`` only, not yet final (``unfinished``), or only the
        ``newest`` few (serve looks at these every tick; the history grows with every run)."""
        sql = "SELECT * FROM triggers WHERE job_id = ?"
        params: list[Any] = [self._job_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if unfinished:
            sql += f" AND state NOT IN ({', '.join('?' for _ in TRIGGER_DONE)})"
            params += TRIGGER_DONE
        sql += " ORDER BY created_at, key"
        if newest is not None:
            sql = f"SELECT * FROM ({sql.replace(' ORDER BY created_at, key', '')} ORDER BY created_at DESC, key DESC"\
                  f" LIMIT {int(newest)}) AS recent ORDER BY created_at, key"
        rows = self._query(sql, params)
        return [
            TriggerRecord(
                key=r["key"], kind=r["kind"], logical_date=r["logical_date"],
                due_at=None if r["due_at"] is None else float(r["due_at"]), detail=r["detail"], state=r["state"],
                owner=r["owner"], attempts=int(r["attempts"]),
                exit_code=None if r["exit_code"] is None else int(r["exit_code"]), message=r["message"],
                summary=r["summary"], run_ids=tuple(int(i) for i in str(r["run_ids"]).split(",") if i),
                created_at=float(r["created_at"]), updated_at=float(r["updated_at"]),
            )
            for r in rows
        ]

    def last_due_at(self) -> float | None:
        """The latest cron due time serve handled for the job (run or skipped), or None."""
        rows = self._query(
            "SELECT MAX(due_at) AS due FROM triggers WHERE job_id = ? AND kind IN ('cron', 'skipped')",
            (self._job_id,),
        )
        return None if not rows or rows[0]["due"] is None else float(rows[0]["due"])

    def shard_stats(self) -> list[str]:
        """The per-shard stage timings (JSON) of committed shards."""
        return [
            r["stats"] for r in self._query(
                "SELECT stats FROM shards WHERE job_id = ? AND state = 'committed' ORDER BY ordinal", (self._job_id,)
            )
        ]

    def committed_parts(self) -> list[CommittedPart]:
        """Every committed file (results, then dead letters, of each shard in order) with its check."""
        rows = self._query(
            "SELECT * FROM shards WHERE job_id = ? AND state = 'committed' ORDER BY ordinal", (self._job_id,)
        )
        parts: list[CommittedPart] = []
        for r in rows:
            for prefix, errors, rows_key in (("output", False, "rows_out"), ("errors", True, "rows_failed")):
                name = r[f"{prefix}_file"]
                if name is None:
                    continue
                size = r[f"{prefix}_bytes"]
                check = None if size is None else PartCheck(
                    int(size), r[f"{prefix}_sha256"], None if r[f"{prefix}_mtime_ns"] is None
                    else int(r[f"{prefix}_mtime_ns"]),
                )
                rows_in = int(r[rows_key] or 0)
                parts.append(CommittedPart(r["shard_id"], int(r["ordinal"]), errors, name, rows_in, check))
        return parts


def _check_values(check: PartCheck | None) -> tuple[Any, Any, Any]:
    return (None, None, None) if check is None else (check.bytes, check.sha256, check.mtime_ns)


def _holder(row: Row) -> LeaseHolder | None:
    if int(row["token"]) == 0:  # the row a new job starts with: never acquired
        return None
    return LeaseHolder(
        token=int(row["token"]), run_id=row["run_id"], host=row["host"], pid=int(row["pid"]),
        acquired_at=float(row["acquired_at"]), heartbeat_at=float(row["heartbeat_at"]),
        released=bool(row["released"]), heartbeat_age=float(row["heartbeat_age"]),
    )


def lease_is_live(holder: LeaseHolder | None, lease_seconds: float) -> bool:
    """Whether a lease belongs to a run that is still alive: not released, a heartbeat younger than
    ``lease_seconds`` by the ledger's clock, and not a process of this host that is gone."""
    return (
        holder is not None
        and not holder.released
        and holder.heartbeat_age < lease_seconds
        and not holder_is_dead(holder.host, holder.pid)
    )


def holder_is_dead(host: str, pid: int) -> bool:
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


def iter_statements(script: str) -> Iterator[str]:
    """The statements of a schema script (no ``;`` inside a statement)."""
    for statement in script.split(";"):
        if statement.strip():
            yield statement.strip()
