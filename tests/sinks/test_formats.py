"""Parquet output: every part carries page checksums, so a damaged part is caught when it is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infermill.errors import OutputError
from infermill.sinks import open_sink
from infermill.spec import InputSpec, JobSpec, ModelSpec, OutputSpec
from tests.sources.helpers import damage_page


def test_parquet_parts_carry_page_checksums(tmp_path: Path) -> None:
    spec = JobSpec(
        input=InputSpec(path="x.parquet"),
        model=ModelSpec(kind="python", entrypoint="m.py:M"),
        output=OutputSpec(path="out"),
        base_dir=str(tmp_path),
    )
    sink = open_sink(spec)
    sink.prepare()
    writer = sink.open_writer(0)
    rng = np.random.default_rng(0)
    table = pa.table({"_row_id": [f"r{i}" for i in range(5000)], "score": rng.normal(size=5000)})
    writer.write(table)
    committed = sink.commit(writer.close(), attempt=1)
    assert committed is not None
    name = committed.name
    part = tmp_path / "out" / name
    read_back = sink.read_part(name)
    assert read_back is not None and read_back.column("score").equals(table.column("score"))

    damage_page(part, "score")
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.read_table(part, page_checksum_verification=True)
    with pytest.raises(OutputError, match=r"part-00000-a1\.parquet is damaged and cannot be read back: .*CRC"):
        sink.read_part(name)  # what `infermill retry` merges into: never damaged rows
