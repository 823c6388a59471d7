"""``infermill retry``: score only the dead-lettered items again and merge them into the output.

For each shard with dead letters: read the shard, pick the dead rows, score them (same error policy),
then write the shard's result file again as old rows + newly scored rows in input order, and its errors
file as the rows that still fail. Both are committed under this retry's attempt names (the commit sequence
of ``run``), one ledger transaction records them with the new counts, marks the scored items resolved and
keeps the rest dead, and only then are the shard's previous files deleted. The manifest is removed while
a retry works and written again at its end.

A retry may use a changed model (that is usually the point: the model was fixed); the spec and the input
must be unchanged. If a retry is killed after a file was replaced but before the ledger update, the next
retry drops the retried ids from the file before merging, so no id is ever duplicated; files of a killed
retry that the ledger does not name are swept as debris.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InfermillError, JobChangedError, OutputError, SpecError
from ..ledger import DeadItemRecord, Lease, Ledger, ShardRow
from ..models import load_adapter
from ..sinks import Sink, open_sink
from ..sources import open_source
from ..sources.base import Shard, concat_batches
from ..spec import JobSpec, default_batch_rows
from .autosize import cache_key
from .columns import Columns, resolve_columns
from .executor import threads_per_worker
from .lease import as_spec, has_ledger, holding
from .outputs import damaged_parts
from .plan import stored_shards
from .runner import (
    RunResult,
    commit_shard,
    finish_job,
    input_fingerprint,
    job_result,
    nothing_scored,
)
from .scoring import BatchScorer, DeadItem, ScoreStats
from .worker import dead_letter_table

__all__ = ["retry"]


def retry(job: JobSpec | str | os.PathLike[str], *, wait: bool = False) -> RunResult:
    """Reprocess the job's dead-lettered items; returns the job's counts afterwards."""
    spec = as_spec(job)
    started = time.monotonic()
    if not has_ledger(spec):
        raise SpecError(f"job '{spec.name}' has not run yet: nothing to retry", hint="run it first: infermill run JOB")
    with holding(spec, wait=wait) as held:
        return _retry(spec, held.ledger, held.lease, started)


def _retry(spec: JobSpec, ledger: Ledger, lease: Lease, started: float) -> RunResult:
    record = ledger.job()
    if record is None:
        raise SpecError(f"job '{spec.name}' has not run yet: nothing to retry", hint="run it first: infermill run JOB")
    source = open_source(spec)
    columns = resolve_columns(spec, source.schema())
    # The stored plan when the listing is unchanged: after an incremental run the ledger's shards are numbered
    # as the rounds made them, which planning afresh would not repeat (and a SQL table planned again would
    # cut other key ranges once rows were added).
    planned = stored_shards(record, ledger, source)
    shards = {s.shard_id: s for s in (planned if planned is not None else source.plan())}
    if record.spec_fingerprint != spec.fingerprint() or record.input_fingerprint != input_fingerprint(
        list(shards.values())
    ):
        raise JobChangedError(
            f"the job spec or its input changed since job '{spec.name}' ran; retry only reprocesses failed items "
            "of the same input",
            hint="undo the change, or rerun with `infermill run JOB` (a changed input is an incremental run; "
            "a changed spec needs --restart)",
            job=spec.name,
        )
    dead = ledger.dead_items()
    sink = open_sink(spec)
    sink.attempt = lease.token
    damaged = damaged_parts(ledger, sink)
    if damaged:
        # Retry merges into the committed files: with one missing or changed it would lose rows.
        raise OutputError(
            f"job '{spec.name}': {damaged[0].describe()}"
            + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""),
            hint=f"`infermill run {spec.source_file or spec.name}` recomputes the damaged shards; retry after it",
            job=spec.name,
        )
    if not dead:
        return job_result(spec, ledger, sink, "complete", "nothing to retry: no dead-lettered items", started, 0)
    adapter = load_adapter(spec, threads=threads_per_worker(spec))
    model_fp = adapter.fingerprint()
    default = default_batch_rows(spec.model.kind, len(columns.features))
    if spec.batch.size is None:
        spec = replace(spec, batch=replace(spec.batch, size=default))
    elif spec.batch.size == "auto":
        # A few dead items do not need a probe: the size the run chose, else the default.
        cached = ledger.cached_batch_size(cache_key(spec, model_fp, source.schema()))
        spec = replace(spec, batch=replace(spec.batch, size=cached or default))
    adapter.setup()
    run_id = ledger.start_run(lease)
    if model_fp != record.model_fingerprint:
        ledger.set_model_fingerprint(model_fp)
    sink.prepare()
    # The job's output is about to change: it is not complete again until the new manifest is written.
    sink.unfinalize()
    ledger.mark_incomplete()
    scorer = BatchScorer(
        adapter, columns, spec.retry, spec.batch.rows(),
        max_bytes=spec.batch.max_bytes, max_tokens=spec.batch.max_tokens,
    )
    by_shard: dict[str, list[DeadItemRecord]] = defaultdict(list)
    for item in dead:
        by_shard[item.shard_id].append(item)
    rows_fixed = 0
    try:
        for shard_id, items in sorted(by_shard.items()):
            rows_fixed += _retry_shard(
                spec, ledger, lease, sink, source, scorer, columns, shards[shard_id], items, run_id
            )
    except InfermillError as exc:
        ledger.end_run(run_id, "failed", str(exc))
        raise
    finally:
        adapter.close()
    summary = ledger.summary()
    if summary.shards_committed == summary.shards_total:
        failed = nothing_scored(spec, ledger)
        if failed is not None:
            ledger.end_run(run_id, "failed", str(failed))
            raise failed
        finish_job(spec, ledger, sink)
    still = len(dead) - rows_fixed
    message = f"retry: {rows_fixed:,} of {len(dead):,} dead-lettered items scored; {still:,} still fail"
    ledger.end_run(run_id, "complete", message)
    return job_result(spec, ledger, sink, "complete", message, started, rows_fixed)


def _retry_shard(
    spec: JobSpec,
    ledger: Ledger,
    lease: Lease,
    sink: Sink,
    source: Any,
    scorer: BatchScorer,
    columns: Columns,
    shard: Shard,
    items: list[DeadItemRecord],
    run_id: int,
) -> int:
    rows_by_index = {i.row_index: i for i in items}
    wanted = np.array(sorted(rows_by_index), dtype=np.int64)
    # Gather the dead rows from the shard's input, in order.
    pieces: list[pa.RecordBatch] = []
    offset = 0
    for batch in source.read(shard, spec.batch.rows(), columns.read):
        lo, hi = np.searchsorted(wanted, [offset, offset + batch.num_rows])
        if hi > lo:
            pieces.append(batch.take(pa.array(wanted[lo:hi] - offset)))
        offset += batch.num_rows
    retry_rows = concat_batches(pieces).combine_chunks() if pieces else None
    if retry_rows is None or retry_rows.num_rows != len(wanted):
        raise InfermillError(
            f"shard {shard.shard_id}: could not find all dead-lettered rows in the input",
            hint="the input may have changed; rerun with --restart",
        )
    # Rows are found by their place in the shard: a shard whose rows moved (a row inserted into a SQL key
    # range before them) would put other rows there. Their ids say so.
    found = retry_rows.column(columns.id).to_pylist()
    if any(v is not None and str(v) != rows_by_index[int(i)].item_id for v, i in zip(found, wanted, strict=True)):
        raise JobChangedError(
            f"shard {shard.shard_id}: the input rows at the places of its dead-lettered items are other rows now "
            "(the input changed since the shard ran); retry would score the wrong rows",
            hint="rerun everything with `infermill run JOB --restart`",
        )
    scored: list[pa.Table] = []
    still_dead: list[DeadItem] = []
    stats = ScoreStats()
    for start in range(0, retry_rows.num_rows, spec.batch.rows()):
        batch = retry_rows.slice(start, spec.batch.rows()).to_batches()[0]
        tables, dead = scorer.score(batch, None, stats)
        scored.extend(tables)
        still_dead.extend(replace(d, row=d.row + start, attempts=d.attempts + 1) for d in dead)
    dead_rows = {d.row for d in still_dead}
    fixed_idx = np.array([i for n, i in enumerate(wanted) if n not in dead_rows], dtype=np.int64)

    # Old results, minus any retried ids a killed earlier retry may already have merged.
    row = _committed_row(ledger, shard.shard_id)
    rows_total = int(row.rows_out or 0) + int(row.rows_failed or 0)
    old_rows = sink.read_part(row.output_file) if row.output_file and rows_total > len(wanted) else None
    retried_ids = pa.array([str(i.item_id) for i in items], pa.string())
    if old_rows is not None:
        keep = pc.invert(pc.is_in(pc.cast(old_rows.column(columns.id), pa.string()), value_set=retried_ids))
        old_rows = old_rows.filter(keep)
    old_idx = np.setdiff1d(np.arange(rows_total, dtype=np.int64), wanted, assume_unique=True)
    if old_rows is not None and old_rows.num_rows != len(old_idx):
        raise InfermillError(
            f"shard {shard.shard_id}: its result file {row.output_file} has {old_rows.num_rows} rows, "
            f"the ledger expects {len(old_idx)}",
            hint="the output was modified outside infermill; rerun with --restart",
        )
    merged = _merge(old_rows, old_idx, scored, fixed_idx)

    writer = sink.open_writer(shard.ordinal)
    if merged is not None:
        writer.write(merged)
    staged = writer.close()
    staged_errors = None
    records: list[tuple[Any, ...]] = []
    if still_dead:
        positions = [int(wanted[d.row]) for d in still_dead]
        table, records = dead_letter_table(spec, columns, retry_rows.to_batches()[0], still_dead, positions)
        error_writer = sink.open_writer(shard.ordinal, errors=True)
        error_writer.write(table)
        staged_errors = error_writer.close()
    output, errors = commit_shard(
        ledger, lease, sink, shard.shard_id, staged, staged_errors, dead_items=records, run_id=run_id, retry=True,
        resolved_rows=[int(i) for i in fixed_idx],
    )
    new_names = {f.name for f in (output, errors) if f is not None}
    sink.remove([name for name in (row.output_file, row.errors_file) if name and name not in new_names])
    return len(fixed_idx)


def _committed_row(ledger: Ledger, shard_id: str) -> ShardRow:
    for row in ledger.shards("committed"):
        if row.shard_id == shard_id:
            return row
    raise InfermillError(f"shard {shard_id} is not committed; run the job to finish it before retrying")


def _merge(old: pa.Table | None, old_idx: np.ndarray, scored: list[pa.Table], new_idx: np.ndarray) -> pa.Table | None:
    """Old and new result rows interleaved back into input order."""
    tables = ([old] if old is not None and old.num_rows else []) + [t for t in scored if t.num_rows]
    if not tables:
        return None
    schema = tables[0].schema
    tables = [t if t.schema == schema else t.cast(schema) for t in tables]
    combined = pa.concat_tables(tables)
    keys = np.concatenate([old_idx if old is not None and old.num_rows else old_idx[:0], new_idx])
    return combined.take(pa.array(np.argsort(keys, kind="stable")))
