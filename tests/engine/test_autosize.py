"""`[batch] size = "auto"`: the search on a fake device, the CUDA measurement with torch.cuda faked, and an
end-to-end run whose choice is cached in the ledger."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import infermill
from infermill.engine.autosize import Probe, choose_batch_size, measure_call, resolve_batch_size
from infermill.spec import BatchSpec, InputSpec, JobSpec, ModelSpec, OutputSpec, default_batch_rows
from tests.conftest import read_output

MB = 1 << 20


def fake_device(per_row_mb: float, saturate_at: int, fixed_cost_s: float = 0.01) -> tuple[list[int], object]:
    """Memory grows with the batch; throughput grows until ``saturate_at`` rows per call, then is flat."""
    calls: list[int] = []

    def measure(size: int) -> Probe:
        calls.append(size)
        extra = max(0, size - saturate_at) * (1e-5 + fixed_cost_s / saturate_at)
        seconds = fixed_cost_s + min(size, saturate_at) * 1e-5 + extra
        return Probe(size=size, rows_per_s=size / seconds, memory=int(size * per_row_mb * MB))

    return calls, measure


def test_search_stops_when_throughput_stops_improving() -> None:
    calls, measure = fake_device(per_row_mb=0.01, saturate_at=1024)
    size, probes = choose_batch_size(measure, memory_limit=10_000 * MB)
    assert size in (1024, 2048)
    assert calls[0] == 32 and calls == sorted(calls)
    assert calls[-1] <= 4096  # did not keep doubling once the gain fell under MIN_GAIN
    assert [p.size for p in probes] == calls


def test_search_stops_at_the_memory_budget() -> None:
    calls, measure = fake_device(per_row_mb=1.0, saturate_at=1 << 20)
    size, _ = choose_batch_size(measure, memory_limit=300 * MB)  # 256 rows fit, 512 do not
    assert size == 256
    assert calls[-1] == 512


def test_out_of_memory_during_a_probe_ends_the_search() -> None:
    def measure(size: int) -> Probe:
        if size > 128:
            raise MemoryError
        return Probe(size, size * 10.0, 0)

    assert choose_batch_size(measure, memory_limit=1 << 40)[0] == 128
    assert choose_batch_size(lambda n: (_ for _ in ()).throw(MemoryError()), memory_limit=1)[0] == 32


class FakeCuda:
    """torch.cuda's memory API, with 3 MB allocated per 1,000 rows scored."""

    def __init__(self) -> None:
        self.allocated = 100 * MB
        self.peak = self.allocated

    def synchronize(self) -> None: ...

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.allocated

    def memory_allocated(self) -> int:
        return self.allocated

    def max_memory_allocated(self) -> int:
        return self.peak


class GpuModel:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda

    def preprocess(self, batch: pa.RecordBatch) -> int:
        return batch.num_rows

    def predict(self, rows: int) -> np.ndarray:
        self.cuda.peak = max(self.cuda.peak, self.cuda.allocated + rows * 3 * MB // 1000)
        return np.zeros(rows)

    def postprocess(self, result: np.ndarray, n: int) -> dict[str, pa.Array]:
        return {"score": pa.array(result)}


def test_cuda_memory_is_measured_through_torch_cuda() -> None:
    cuda = FakeCuda()
    rows = pa.record_batch({"x": np.arange(10.0)})
    probe = measure_call(GpuModel(cuda), rows, ["x"], 2_000, cuda)
    assert probe.size == 2_000
    assert probe.memory == 6 * MB
    assert probe.rows_per_s > 0


def test_auto_size_end_to_end_is_cached(parquet_job, job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job, _ = parquet_job(rows=8_000, files=2, shard_rows=2_000)
    job.write_text(job.read_text().replace("size = 1000", 'size = "auto"'))
    result = infermill.run(job, progress="log")
    assert result.rows_succeeded == 8_000
    assert "batch size" in capsys.readouterr().err
    db = sqlite3.connect(job_dir / ".infermill" / "scores.sqlite")
    ((size, probes),) = db.execute("SELECT size, probes FROM autosize").fetchall()
    assert size >= 32 and "rows_per_s" in probes
    first = read_output(job_dir / "out").sort_by("customer_id")
    rerun = infermill.run(job, restart=True, progress="log")
    assert rerun.rows_succeeded == 8_000
    assert f"batch size {size:,} (auto, cached)" in capsys.readouterr().err
    assert read_output(job_dir / "out").sort_by("customer_id").equals(first)


@pytest.mark.parametrize(
    ("kind", "features", "rows", "window"),
    [("sklearn", 20, 65_536, None), ("onnx", 32, 65_536, None), ("sklearn", 128, 16_384, None),
     ("onnx", 5_000, 8_192, None), ("python", 20, 8_192, None), ("torch", 20, 8_192, None),
     ("hf", 1, 256, 4_096), ("sentence-transformers", 1, 256, 4_096)],
)
def test_default_batch_size_depends_on_the_kind_and_width(
    kind: str, features: int, rows: int, window: int | None
) -> None:
    assert default_batch_rows(kind, features) == rows
    spec = JobSpec(input=InputSpec(path="x.parquet"), model=ModelSpec(kind=kind), output=OutputSpec(path="out"))
    assert spec.batch.size is None
    resolved, note = resolve_batch_size(
        spec, ledger=None, sample=lambda: None, features=[f"f{i}" for i in range(features)],
        schema=pa.schema([]), make_adapter=lambda: None, model_fingerprint="",
    )
    assert (resolved.batch.rows(), resolved.batch.sort_window, note) == (rows, window, "")


def test_default_size_end_to_end(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=20_000, files=1, shard_rows=20_000)
    job.write_text(job.read_text().replace("size = 1000", ""))
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == 20_000
    db = sqlite3.connect(job_dir / ".infermill" / "scores.sqlite")
    ((stats,),) = db.execute("SELECT stats FROM shards").fetchall()
    assert json.loads(stats)["calls"] == 3  # 8,192 + 8,192 + 3,616 rows


def test_a_sort_window_set_by_the_user_is_kept_with_the_default_size() -> None:
    spec = JobSpec(
        input=InputSpec(path="x.parquet"), model=ModelSpec(kind="sentence-transformers"),
        output=OutputSpec(path="out"), batch=BatchSpec(sort_window=100),
    )
    resolved, _ = resolve_batch_size(
        spec, ledger=None, sample=lambda: None, features=["text"], schema=pa.schema([]),
        make_adapter=lambda: None, model_fingerprint="",
    )
    assert (resolved.batch.rows(), resolved.batch.sort_window) == (256, 100)
