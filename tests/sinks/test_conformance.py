"""Every sink runs the shipped conformance suite: local folders in each format, and an fsspec store
(memory://) where staged results are URLs and the commit is a move on the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from infermill.spec import JobSpec
from infermill.testing.sinks import SinkConformance, sink_spec


class TestParquetSink(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "out", format="parquet")


class TestJsonlSink(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "out", format="jsonl")


class TestCsvSink(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "out", format="csv")


class TestOpenAIBatchSink(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "out", format="openai-batch")

    def rows(self, start: int = 0, count: int = 10) -> pa.Table:
        return pa.table({"_row_id": [f"r{i}" for i in range(start, start + count)],
                         "text": [f"answer {i}" for i in range(start, start + count)]})


class TestParquetSinkOnAnObjectStore(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        # One bucket per test (the memory filesystem is shared by the whole process), the same on each call.
        bucket = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
        return sink_spec(tmp_path, f"memory://bucket-{bucket}/out", format="parquet")
