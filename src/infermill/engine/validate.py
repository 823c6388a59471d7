"""``infermill validate``: check a job end to end without running it."""

from __future__ import annotations

import os

from ..errors import InputError, ModelLoadError
from ..ledger import display_location
from ..models import load_adapter
from ..observe.progress import plural
from ..sinks import open_sink
from ..sources import open_source
from ..spec import JobSpec, RetrySpec, load_spec
from .columns import resolve_columns
from .executor import threads_per_worker
from .outputs import check_output_location
from .scoring import BatchScorer

__all__ = ["no_rows_error", "validate"]

SAMPLE_ROWS = 16


def validate(job: JobSpec | str | os.PathLike[str]) -> list[str]:
    """Check the spec, the input and the model; return a report (raises an InfermillError on a problem)."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    lines = [f"job:      {spec.name} ({spec.source_file or 'python spec'})"]
    check_output_location(spec)
    source = open_source(spec)
    shards = source.plan()
    if not shards:
        raise no_rows_error(spec)
    rows = sum(s.rows or 0 for s in shards) if all(s.rows is not None for s in shards) else None
    files = len({f.path for s in shards for f in s.fragments})
    lines.append(
        f"input:    {source.format}, {plural(files, 'file') + ', ' if spec.input.path else ''}"
        f"{plural(len(shards), 'shard')}"
        + (f", {plural(rows, 'row')}" if rows is not None else "")
    )
    columns = resolve_columns(spec, source.schema())
    lines.append(f"columns:  id {columns.id}; features {', '.join(columns.features)}")
    if columns.keep:
        lines.append(f"          keep {', '.join(columns.keep)}")
    adapter = load_adapter(spec, threads=threads_per_worker(spec))
    adapter.setup()
    if spec.model.accelerate != "off":
        from ..accelerate.verify import candidates

        tried, why_not = candidates(adapter, spec)  # a named method that cannot apply fails here
        lines.append(
            f"accel:    {spec.model.accelerate}: "
            + (f"will try {', '.join(a.method for a in tried)} on the first batch" if tried else f"none ({why_not})")
        )
    sample = None
    for shard in shards:
        for batch in source.read(shard, SAMPLE_ROWS, columns.read):
            sample = batch
            break
        if sample is not None:
            break
    if sample is None:
        raise no_rows_error(spec)
    scorer = BatchScorer(adapter, columns, RetrySpec(max_attempts=1), SAMPLE_ROWS)
    try:
        tables, dead = scorer.score(sample)
    except Exception as exc:
        raise ModelLoadError(
            f"the model failed on the first {sample.num_rows} input rows: {type(exc).__name__}: {exc}",
            hint="run with --debug for the traceback",
        ) from exc
    adapter.close()
    if not tables:
        first = dead[0]
        raise ModelLoadError(
            f"the model failed on every one of the first {sample.num_rows} input rows: "
            f"{first.error_class}: {first.message}",
            hint="run with --debug for the traceback; a model that fails on every row would dead-letter the job",
        )
    outputs = [f for f in tables[0].schema if f.name not in (columns.id, *columns.keep)]
    described = ", ".join(f"{f.name} ({f.type})" for f in outputs)
    scored = sum(t.num_rows for t in tables)
    lines.append(f"model:    {spec.model.kind}; scored {scored} sample rows -> {described}")
    if dead:
        lines.append(
            f"warning:  {len(dead)} of {sample.num_rows} sample rows failed and would be dead-lettered, "
            f"e.g. {dead[0].error_class}: {dead[0].message.splitlines()[0] if dead[0].message else ''}"
        )
    sink = open_sink(spec)
    sink.probe()
    sink.check_schema(tables[0].schema)
    lines.append(f"output:   {spec.output.format} in {sink.display()}")
    lines.append(f"ledger:   {display_location(spec.ledger_path())}")
    lines.append("ok: the job is valid")
    return lines


def no_rows_error(spec: JobSpec) -> InputError:
    """What ``validate`` and ``run`` both say about an input without a single row."""
    return InputError(
        f"the input ({spec.input.path}) has no rows",
        hint="point [input] path at files that hold data rows, then check with `infermill validate JOB`",
    )
