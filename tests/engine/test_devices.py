"""[runtime] devices: GPU detection, the worker plan, pinning with CUDA_VISIBLE_DEVICES (GPUs faked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import infermill
from infermill.engine import devices
from infermill.engine.columns import Columns
from infermill.engine.devices import detect_gpus, plan_workers
from infermill.engine.executor import InlineExecutor, ProcessExecutor, make_executor
from infermill.errors import SpecError
from infermill.spec import JobSpec
from tests.conftest import read_output


def _spec(kind: str = "torch", runtime: dict[str, Any] | None = None, **model: Any) -> JobSpec:
    if kind == "torch":
        model.setdefault("path", "model.pt")
    if kind == "python":
        model.setdefault("entrypoint", "scorer.py:Scorer")
    return JobSpec.from_dict(
        {
            "input": {"path": "data.parquet"},
            "model": {"kind": kind, **model},
            "output": {"path": "out"},
            "runtime": runtime or {},
        }
    )


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "detect_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(devices, "_cores", lambda: 16)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "detect_gpus", lambda: [])
    monkeypatch.setattr(devices, "_cores", lambda: 16)


def _gpus(plan: list[devices.WorkerSlot]) -> list[str | None]:
    return [slot.gpu for slot in plan]


# -- detection ---------------------------------------------------------------------------------------
def test_detection_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_count_nvidia_smi", lambda: 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert detect_gpus() == ["1", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")
    assert detect_gpus() == ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []


def test_detection_counts_with_nvidia_smi_then_proc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_count_nvidia_smi", lambda: 2)
    assert detect_gpus() == ["0", "1"]
    monkeypatch.setattr(devices, "_count_nvidia_smi", lambda: None)
    for name in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(devices, "_PROC_GPUS", str(tmp_path))
    assert detect_gpus() == ["0", "1", "2"]
    monkeypatch.setattr(devices, "_PROC_GPUS", str(tmp_path / "missing"))
    monkeypatch.delitem(__import__("sys").modules, "torch", raising=False)
    assert detect_gpus() == []


# -- the plan ----------------------------------------------------------------------------------------
def test_cpu_machine_keeps_the_configured_workers(no_gpu: None) -> None:
    plan = plan_workers(_spec(runtime={"workers": 4}), shards=10)
    assert _gpus(plan) == [None] * 4
    assert [s.threads for s in plan] == [4] * 4
    assert [s.worker_id for s in plan] == [0, 1, 2, 3]


def test_auto_starts_one_worker_per_gpu_and_replica(two_gpus: None) -> None:
    plan = plan_workers(_spec(runtime={"workers": 7}), shards=10)
    assert _gpus(plan) == ["0", "1"]
    assert [s.threads for s in plan] == [8, 8]
    plan = plan_workers(_spec(runtime={"replicas_per_device": 2}), shards=10)
    assert _gpus(plan) == ["0", "1", "0", "1"]
    assert [s.threads for s in plan] == [4] * 4
    plan = plan_workers(_spec(runtime={"replicas_per_device": 2, "threads_per_worker": 3}), shards=10)
    assert [s.threads for s in plan] == [3] * 4


def test_few_shards_spread_over_the_gpus(two_gpus: None) -> None:
    plan = plan_workers(_spec(runtime={"replicas_per_device": 3}), shards=2)
    assert _gpus(plan) == ["0", "1"]
    assert [s.threads for s in plan] == [2, 2]  # shared out as if all six were running


def test_auto_stays_on_cpu_for_cpu_kinds_and_cpu_device(two_gpus: None) -> None:
    assert _gpus(plan_workers(_spec("python", runtime={"workers": 3}), shards=10)) == [None] * 3
    assert _gpus(plan_workers(_spec(device="cpu", runtime={"workers": 2}), shards=10)) == [None] * 2
    assert _gpus(plan_workers(_spec(device="cuda:1", runtime={"workers": 2}), shards=10)) == [None] * 2
    assert _gpus(plan_workers(_spec(device="cuda"), shards=10)) == ["0", "1"]
    assert _gpus(plan_workers(_spec(runtime={"devices": "cpu", "workers": 2}), shards=10)) == [None] * 2


def test_listed_devices_pin_any_kind(two_gpus: None) -> None:
    plan = plan_workers(_spec("python", runtime={"devices": [1], "replicas_per_device": 2}), shards=10)
    assert _gpus(plan) == ["1", "1"]
    with pytest.raises(SpecError, match="lists GPU 2, but the visible GPUs are 0, 1"):
        plan_workers(_spec(runtime={"devices": [0, 2]}), shards=10)


def test_executor_choice(two_gpus: None) -> None:
    columns = Columns(id="id", features=["x"], keep=[], read=["id", "x"])
    shards: list[Any] = [object(), object()]
    auto = make_executor(_spec(), columns, shards)
    assert isinstance(auto, ProcessExecutor) and auto.workers == 2
    assert isinstance(make_executor(_spec(), columns, shards[:1]), InlineExecutor)
    listed = make_executor(_spec(runtime={"devices": [1]}), columns, shards[:1])
    assert isinstance(listed, ProcessExecutor) and _gpus(listed.plan) == ["1"]
    assert isinstance(make_executor(_spec("python"), columns, shards), InlineExecutor)


# -- the spec ----------------------------------------------------------------------------------------
def test_devices_are_not_fingerprinted() -> None:
    base = _spec().fingerprint()
    assert _spec(runtime={"devices": [0, 1], "replicas_per_device": 3}).fingerprint() == base
    assert _spec(runtime={"devices": "cpu"}).fingerprint() == base


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"devices": "gpu"}, "must be \"auto\", \"cpu\" or a list, not 'gpu'"),
        ({"devices": []}, "non-empty list"),
        ({"devices": [0, -1]}, "invalid device index -1"),
        ({"devices": [0, "1"]}, r"'runtime.devices' must be str or a list of ints, not \[0, '1'\]"),
        ({"devices": [1, 1]}, "lists a device twice"),
        ({"replicas_per_device": 0}, "'runtime.replicas_per_device' must be at least 1"),
    ],
)
def test_invalid_devices(runtime: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        _spec(runtime=runtime)


# -- end to end, two fake GPUs -----------------------------------------------------------------------
DEVICE_SCORER = '''
import os
import time
from pathlib import Path

import numpy as np


class Scorer:
    """Records the GPU its worker was pinned to; waits until both workers are up, so both take shards."""

    def __init__(self, ready_dir):
        self.ready = Path(ready_dir)

    def setup(self):
        (self.ready / os.environ["CUDA_VISIBLE_DEVICES"]).write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while len(list(self.ready.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

    def predict(self, batch):
        n = len(batch["f0"])
        return {"device": np.array([os.environ["CUDA_VISIBLE_DEVICES"]] * n), "pid": np.full(n, os.getpid())}
'''


def test_two_fake_gpus_each_worker_sees_its_own(
    parquet_job: Any, job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "detect_gpus", lambda: ["0", "1"])
    ready = job_dir / "ready"
    ready.mkdir()
    (job_dir / "scorer.py").write_text(DEVICE_SCORER)
    job, _ = parquet_job(rows=8_000, files=4, shard_rows=1_000, batch=250, extra="devices = [0, 1]\nprefetch = 1")
    model = f'outputs = ["device", "pid"]\noptions = {{ ready_dir = "{ready}" }}'
    job.write_text(job.read_text().replace('outputs = ["score"]', model))
    result = infermill.run(job, progress="off")
    assert result.state == "complete"
    assert sorted(p.name for p in ready.iterdir()) == ["0", "1"]
    pid_of = {p.name: int(p.read_text()) for p in ready.iterdir()}
    out = read_output(job_dir / "out")
    assert sorted(out.column("customer_id").to_pylist()) == list(range(8_000))
    for part in sorted((job_dir / "out").glob("part-*")):
        shard = pq.read_table(part)
        seen = set(zip(shard.column("device").to_pylist(), shard.column("pid").to_pylist(), strict=True))
        assert len(seen) == 1, part  # one worker scored the whole shard
        device, pid = seen.pop()
        assert pid_of[device] == pid  # and that worker saw its own GPU
    assert set(out.column("device").to_pylist()) <= {"0", "1"}
