"""``[model] accelerate`` end to end: the spec keys and the fingerprint rule, the check on the job's own rows
(used, or a warning and the original's results), and the decision in the ledger, ``status`` and ``profile``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

import infermill
from infermill import registry
from infermill.accelerate.base import Accelerator, Built, Metric
from infermill.errors import SpecError
from infermill.models.base import ModelAdapter
from infermill.models.python import PythonModel
from infermill.spec import load_spec
from tests.conftest import read_output, write_job
from tests.postgres import ledger_line

ROWS = 3_000

SCORER = """
import numpy as np

def score(batch):
    return {"score": batch["f0"] * 2.0 + batch["f1"]}
"""


class Shifted(Accelerator):
    """An "accelerated" model that adds ``shift`` to the original's scores (and sleeps ``delay`` seconds a
    call): a real accelerator, through the real decision code, whose results do or do not agree."""

    method: ClassVar[str] = "compile"
    metric: ClassVar[Metric] = "max_abs_diff"
    default_bound: ClassVar[float] = 1e-6

    def __init__(self, shift: float, delay: float = 0.0) -> None:
        self.shift, self.delay = shift, delay

    def build(self, adapter: ModelAdapter, cache_dir: Path) -> Built:
        import time

        def predict(inputs: Any) -> Any:
            if self.delay:
                time.sleep(self.delay)  # a slower "accelerated" model, for auto's speed rule
            return {k: np.asarray(v) + self.shift for k, v in adapter.predict(inputs).items()}

        return Built(predict, None, 0.0, False)

    def agreement(self, original: Any, accelerated: Any) -> float:
        return max(float(np.abs(np.asarray(original[k]) - np.asarray(accelerated[k])).max()) for k in original)


class ShiftedModel(PythonModel):
    """The python kind with one accelerator; its shift and delay come from the environment of the test."""

    kind = "accel-test"

    def accelerators(self) -> list[Accelerator]:
        return [Shifted(float(os.environ.get("ACCEL_TEST_SHIFT", "0")), float(os.environ.get("ACCEL_TEST_DELAY", "0")))]


@pytest.fixture
def shifted_kind() -> Iterator[None]:
    registry.register(
        "models", "accel-test", ShiftedModel, settings="infermill.models.settings:PythonSettings",
        accelerate=("compile",),
    )
    try:
        yield
    finally:
        registry._FROM_CODE["models"].pop("accel-test", None)


def _python_job(directory: Path, accelerate: str, *, ledger: str | None = None, name: str = "acc") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    pq.write_table(
        pa.table({"id": np.arange(ROWS), "f0": rng.normal(size=ROWS), "f1": rng.normal(size=ROWS)}),
        directory / "data.parquet", row_group_size=1000,
    )
    (directory / "scorer.py").write_text(SCORER)
    return write_job(directory / "job.toml", f"""
        name = "{name}"
        [input]
        path = "data.parquet"
        id_column = "id"
        shard_rows = 1000
        [model]
        kind = "accel-test"
        entrypoint = "scorer.py:score"
        features = ["f0", "f1"]
        outputs = ["score"]
        accelerate = "{accelerate}"
        [batch]
        size = 500
        [output]
        path = "out"
        [runtime]
        {ledger_line(ledger)}
        """)


def _expected(directory: Path) -> np.ndarray:
    table = pq.read_table(directory / "data.parquet")
    return np.asarray(table["f0"]) * 2.0 + np.asarray(table["f1"])


def _scores(directory: Path) -> np.ndarray:
    out = read_output(directory / "out").sort_by("id")
    return np.asarray(out["score"])


def test_an_accelerated_model_that_disagrees_falls_back_with_a_warning(
    tmp_path: Path, shifted_kind: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ACCEL_TEST_SHIFT", "0.001")
    job = _python_job(tmp_path, "compile")
    result = infermill.run(job)
    assert result.state == "complete"
    err = capsys.readouterr().err
    assert "[acc] warning: accelerate = 'compile': compile not used (its results differ from the original's); " \
        "the original model ran: max_abs_diff 0.001 outside 1e-06 on 256 rows" in err
    assert np.array_equal(_scores(tmp_path), _expected(tmp_path))  # the original's results, not the shifted ones
    info = infermill.status(job)
    [decision] = info["accelerate"]
    assert (decision["used"], decision["method"], decision["shards"]) == (False, "compile", 3)
    assert decision["value"] == pytest.approx(0.001) and decision["bound"] == 1e-6


def test_an_accelerated_model_that_agrees_is_used(
    tmp_path: Path, shifted_kind: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # Within a tolerance the job states (1e-3 > 1e-4 shift): the accelerated results are the output.
    monkeypatch.setenv("ACCEL_TEST_SHIFT", "0.0001")
    job = _python_job(tmp_path, "compile")
    text = job.read_text().replace('accelerate = "compile"', 'accelerate = "compile"\naccelerate_tolerance = 1e-3')
    job.write_text(text)
    infermill.run(job)
    assert "[acc] accelerate: compile used: max_abs_diff 0.0001 <= 0.001 on 256 rows" in capsys.readouterr().err
    assert np.allclose(_scores(tmp_path), _expected(tmp_path) + 0.0001, rtol=0, atol=1e-12)
    [decision] = infermill.status(job)["accelerate"]
    assert decision["used"] and decision["bound"] == 1e-3


def test_auto_keeps_an_accelerated_model_only_when_it_is_faster(
    tmp_path: Path, shifted_kind: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ACCEL_TEST_DELAY", "0.05")  # agrees exactly, but slower than the original
    job = _python_job(tmp_path, "auto")
    infermill.run(job)
    assert "[acc] note: accelerate = 'auto': compile not used (not faster on the sample (needs 1.1x))" in \
        capsys.readouterr().err
    [decision] = infermill.status(job)["accelerate"]
    assert not decision["used"] and decision["value"] == 0.0 and decision["speedup"] < 1.0
    assert np.array_equal(_scores(tmp_path), _expected(tmp_path))


SLOW_SCORER = """
import os
import time

def score(batch):
    with open(os.environ["ACCEL_TEST_LOG"], "a") as log:
        log.write(f"{len(batch['f0'])}\\n")
    time.sleep(0.06)  # a model slower than the check's timing budget (TIMING_SECONDS), as a transformer is
    return {"score": batch["f0"] * 2.0 + batch["f1"]}
"""


def test_the_check_scores_a_slow_models_sample_once_per_model_and_reuses_a_whole_batchs_result(
    tmp_path: Path, shifted_kind: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One lane, 200-row batches (the sample is the whole first batch): the check is one warm-up call of
    WARM_ROWS rows and one timed call per model, and the first batch's output is the accelerated model's
    result from the check, not a third scoring of it."""
    from infermill.accelerate.verify import WARM_ROWS

    log = tmp_path / "calls.log"
    monkeypatch.setenv("ACCEL_TEST_LOG", str(log))
    monkeypatch.setenv("ACCEL_TEST_SHIFT", "0.0001")
    job = _python_job(tmp_path, "compile")
    (tmp_path / "scorer.py").write_text(SLOW_SCORER)
    text = job.read_text().replace("size = 500", "size = 200")
    job.write_text(text.replace('accelerate = "compile"', 'accelerate = "compile"\naccelerate_tolerance = 1e-3')
                   + "threads_per_worker = 1\n")
    assert infermill.run(job, progress="off").state == "complete"
    calls = [int(line) for line in log.read_text().split()]
    # The accelerated model of this test calls the original inside, so every call of either is logged:
    # warm-up and timed call of the original, the same of the accelerated one, then the other 14 batches.
    assert calls == [WARM_ROWS, 200, WARM_ROWS, 200] + [200] * 14
    assert np.allclose(_scores(tmp_path), _expected(tmp_path) + 0.0001, rtol=0, atol=1e-12)
    [decision] = infermill.status(job)["accelerate"]
    assert decision["used"] and decision["sample_rows"] == 200


def _tree_job(directory: Path, accelerate: str, *, ledger: str | None = None, name: str = "trees") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(ROWS, 4))
    model = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(x, (x[:, 0] - x[:, 2] > 0).astype(int))
    joblib.dump(model, directory / "model.joblib")
    pq.write_table(pa.table({"id": np.arange(ROWS), **{f"f{i}": x[:, i] for i in range(4)}}),
                   directory / "data.parquet", row_group_size=1000)
    return write_job(directory / "job.toml", f"""
        name = "{name}"
        [input]
        path = "data.parquet"
        id_column = "id"
        shard_rows = 1000
        [model]
        kind = "sklearn"
        path = "model.joblib"
        trusted = true
        accelerate = "{accelerate}"
        [batch]
        size = 1000
        [output]
        path = "out"
        [runtime]
        {ledger_line(ledger)}
        """)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infermill", *args], capture_output=True, text=True, check=False)


def test_compiled_trees_end_to_end_recorded_in_the_ledger_and_shown(tmp_path: Path, ledger_url: str | None) -> None:
    pytest.importorskip("tl2cgen")
    job = _tree_job(tmp_path / "a", "compile", ledger=ledger_url)
    run = _cli("run", str(job))
    assert run.returncode == 0, run.stderr
    assert "[trees] accelerate: compile used: max_abs_diff" in run.stderr and "built in" in run.stderr
    model = joblib.load(tmp_path / "a" / "model.joblib")
    features = np.column_stack([np.asarray(pq.read_table(tmp_path / "a" / "data.parquet")[f"f{i}"]) for i in range(4)])
    assert np.abs(_scores(tmp_path / "a") - model.predict_proba(features)[:, 1]).max() <= 1e-6

    status = _cli("status", str(job))
    assert status.returncode == 0
    [line] = [x for x in status.stdout.splitlines() if x.startswith("accel:")]
    assert line.startswith("accel:   compile used: max_abs_diff") and line.endswith("(3 shards)")
    assert "<= 1e-06 on 256 rows" in line and "built in" in line
    profile = _cli("profile", str(job))
    assert "  accelerate: compile used: max_abs_diff" in profile.stdout
    [recorded] = json.loads(_cli("profile", str(job), "--json").stdout)["accelerate"]
    assert recorded["used"] and recorded["cache_hit"] is False and recorded["build_seconds"] > 0
    assert Path(recorded["artifact"]).exists()

    # Another job on the same model file (its own ledger, the same cache): loaded, not built again.
    second = _tree_job(tmp_path / "b", "compile", ledger=None, name="trees-again")
    env = {**os.environ, "INFERMILL_CACHE_DIR": str(Path(recorded["artifact"]).parent)}
    shutil.copyfile(tmp_path / "a" / "model.joblib", tmp_path / "b" / "model.joblib")  # the same fingerprint
    again = subprocess.run([sys.executable, "-m", "infermill", "run", str(second)], capture_output=True, text=True,
                           env=env, check=False)
    assert again.returncode == 0, again.stderr
    assert "loaded from the cache" in again.stderr
    [reloaded] = json.loads(_cli("profile", str(second), "--json").stdout)["accelerate"]
    assert reloaded["cache_hit"] is True and reloaded["build_seconds"] == 0.0
    assert reloaded["artifact"] == recorded["artifact"]


def test_compiled_trees_on_lanes(tmp_path: Path) -> None:
    """Two lanes (threads_per_worker = 2, parallel = "rows") score batches at once, each with its own
    single-threaded predictor of the compiled library: the same results as predict_proba."""
    pytest.importorskip("tl2cgen")
    job = _tree_job(tmp_path, "compile")
    job.write_text(job.read_text() + "threads_per_worker = 2\n")
    result = infermill.run(job, progress="off")
    assert result.state == "complete"
    model = joblib.load(tmp_path / "model.joblib")
    table = pq.read_table(tmp_path / "data.parquet")
    features = np.column_stack([np.asarray(table[f"f{i}"]) for i in range(4)])
    assert np.abs(_scores(tmp_path) - model.predict_proba(features)[:, 1]).max() <= 1e-6
    [decision] = infermill.status(job)["accelerate"]
    assert decision["used"] and decision["shards"] == 3


def test_two_worker_processes_share_one_build(tmp_path: Path) -> None:
    """Two worker processes of one run each verify the compiled model; the cache holds one library, built
    under the lock by one of them, and no scratch files."""
    pytest.importorskip("tl2cgen")
    job = _tree_job(tmp_path, "compile")
    job.write_text(job.read_text() + "workers = 2\nthreads_per_worker = 1\n")
    assert infermill.run(job, progress="off").state == "complete"
    model = joblib.load(tmp_path / "model.joblib")
    table = pq.read_table(tmp_path / "data.parquet")
    features = np.column_stack([np.asarray(table[f"f{i}"]) for i in range(4)])
    assert np.abs(_scores(tmp_path) - model.predict_proba(features)[:, 1]).max() <= 1e-6
    cache = tmp_path / ".infermill" / "accelerate"
    assert len(list(cache.glob("*.so"))) == 1
    assert [p.name for p in cache.iterdir() if not p.name.endswith((".so", ".lock"))] == []
    decisions = infermill.status(job)["accelerate"]
    assert all(d["used"] for d in decisions) and sum(d["shards"] for d in decisions) == 3


def test_validate_fails_clearly_for_a_named_method_that_cannot_apply(tmp_path: Path) -> None:
    job = _tree_job(tmp_path, "compile")
    joblib.dump(LogisticRegression().fit(np.eye(4), [0, 1, 0, 1]), tmp_path / "model.joblib")
    done = _cli("validate", str(job))
    assert done.returncode == 2
    assert "accelerate = 'compile' cannot be used: LogisticRegression is not a supported tree ensemble" in done.stderr
    ran = _cli("run", str(job))
    assert ran.returncode == 2 and "LogisticRegression is not a supported tree ensemble" in ran.stderr


# -- the spec -------------------------------------------------------------------------------------------------

BASE_JOB = """
name = "fp"
[input]
path = "data.parquet"
[model]
kind = "sklearn"
path = "model.joblib"
trusted = true
{extra}
[output]
path = "out"
"""
FINGERPRINT_BEFORE_ACCELERATE = "4fbc998961665c7b"
"""``BASE_JOB``'s fingerprint as infermill computed it before ``[model] accelerate`` existed."""


def _spec(tmp_path: Path, extra: str = "") -> Any:
    (tmp_path / "job.toml").write_text(BASE_JOB.format(extra=extra))
    return load_spec(tmp_path / "job.toml")


def test_fingerprint_rule(tmp_path: Path) -> None:
    off = _spec(tmp_path).fingerprint()
    assert off == FINGERPRINT_BEFORE_ACCELERATE  # started jobs stay unchanged
    assert _spec(tmp_path, 'accelerate = "off"').fingerprint() == off
    assert _spec(tmp_path, 'accelerate = "off"\naccelerate_tolerance = 0.5').fingerprint() == off
    compiled = _spec(tmp_path, 'accelerate = "compile"').fingerprint()
    auto = _spec(tmp_path, 'accelerate = "auto"').fingerprint()
    looser = _spec(tmp_path, 'accelerate = "compile"\naccelerate_tolerance = 1e-4').fingerprint()
    assert len({off, compiled, auto, looser}) == 4  # results may differ within the tolerance: never mixed


@pytest.mark.parametrize(
    ("extra", "message", "hint"),
    [
        ('accelerate = "fast"', "'model.accelerate' must be one of 'off', 'auto', 'compile', 'onnx', 'onnx-int8'",
         "auto"),
        ('accelerate = "onnx"', "'model.accelerate' = 'onnx' does not apply to model kind 'sklearn'",
         'use one of "compile", "auto" or "off"'),
        ('accelerate = "compile"\naccelerate_tolerance = -1.0', "'model.accelerate_tolerance' must be a finite",
         "1e-5"),
    ],
)
def test_invalid_accelerate_keys(tmp_path: Path, extra: str, message: str, hint: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")) as info:
        _spec(tmp_path, extra)
    assert hint in (info.value.hint or "")


def test_kinds_without_an_accelerated_form_refuse_a_named_method(tmp_path: Path) -> None:
    text = BASE_JOB.format(extra='accelerate = "compile"').replace('kind = "sklearn"', 'kind = "python"\n'
                                                                    'entrypoint = "m.py:f"')
    (tmp_path / "job.toml").write_text(text.replace('path = "model.joblib"\ntrusted = true\n', ""))
    with pytest.raises(SpecError, match="does not apply to model kind 'python'") as info:
        load_spec(tmp_path / "job.toml")
    assert "has no accelerated form" in (info.value.hint or "")
    # "auto" is accepted for every kind: where nothing applies, the original runs.
    (tmp_path / "job.toml").write_text((tmp_path / "job.toml").read_text().replace('"compile"', '"auto"'))
    assert load_spec(tmp_path / "job.toml").model.accelerate == "auto"
