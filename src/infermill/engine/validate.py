"""``infermill validate``: check a job end to end without running it."""

from __future__ import annotations

import os

from ..errors import InputError, ModelLoadError
from ..models import load_adapter
from ..sinks import open_sink
from ..sources import open_source
from ..spec import JobSpec, load_spec
from .columns import resolve_columns
from .executor import threads_per_worker

__all__ = ["validate"]

SAMPLE_ROWS = 16


def validate(job: JobSpec | str | os.PathLike[str]) -> list[str]:
    """Check the spec, the input and the model; return a report (raises an InfermillError on a problem)."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    lines = [f"job:      {spec.name} ({spec.source_file or 'python spec'})"]
    source = open_source(spec)
    shards = source.plan()
    rows = sum(s.rows or 0 for s in shards) if all(s.rows is not None for s in shards) else None
    files = len({f.path for s in shards for f in s.fragments})
    lines.append(
        f"input:    {source.format}, {files} file(s), {len(shards)} shard(s)"
        + (f", {rows:,} rows" if rows is not None else "")
    )
    columns = resolve_columns(spec, source.schema())
    lines.append(f"columns:  id {columns.id}; features {', '.join(columns.features)}")
    if columns.keep:
        lines.append(f"          keep {', '.join(columns.keep)}")
    adapter = load_adapter(spec, threads=threads_per_worker(spec))
    adapter.setup()
    sample = None
    for shard in shards:
        for batch in source.read(shard, SAMPLE_ROWS, columns.read):
            sample = batch
            break
        if sample is not None:
            break
    if sample is None:
        raise InputError(f"the input ({spec.input.path}) has no rows", hint="check [input] path")
    try:
        result = adapter.predict(adapter.preprocess(sample.select(columns.features)))
        outputs = adapter.postprocess(result, sample.num_rows)
    except Exception as exc:
        raise ModelLoadError(
            f"the model failed on the first {sample.num_rows} input rows: {type(exc).__name__}: {exc}",
            hint="run with --debug for the traceback",
        ) from exc
    adapter.close()
    described = ", ".join(f"{name} ({array.type})" for name, array in outputs.items())
    lines.append(f"model:    {spec.model.kind}; scored {sample.num_rows} sample rows -> {described}")
    sink = open_sink(spec)
    lines.append(f"output:   {spec.output.format} in {sink.display()}")
    lines.append(f"ledger:   {spec.ledger_path()}")
    lines.append("ok: the job is valid")
    return lines
