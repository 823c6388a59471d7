"""``infermill demo``: a customer churn dataset, a small model, a job file, and a run over them.

:func:`make_demo` writes, under one folder::

    data/customers/customers-00000.parquet ...   the customers to score (no label)
    models/churn.joblib                          a HistGradientBoostingClassifier trained on other rows
    churn.toml                                   the job file, commented key by key

:func:`run_demo` makes the demo when needed, runs the job, and returns the result with the text the CLI
prints. Everything is generated from ``seed``, so the same arguments always give the same files.

Example::

    result, text = run_demo("infermill-demo", rows=100_000)
    print(text)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from .engine import RunResult
    from .observe.progress import Mode

__all__ = ["FEATURES", "closing_text", "command_paths", "generate_customers", "make_demo", "run_demo"]

FEATURES: list[str] = [
    "age",
    "tenure_months",
    "contract",
    "monthly_charges",
    "total_charges",
    "num_support_calls",
    "has_fiber",
    "has_streaming",
    "paperless_billing",
    "payment_method",
    "num_dependents",
    "data_usage_gb",
    "late_payments_12m",
    "days_since_last_login",
]
"""The model's input columns, in order."""

JOB_NAME = "churn"
ROW_GROUP_ROWS = 65_536
TRAIN_ROWS = 100_000
FIRST_CUSTOMER_ID = 10_000_001
_MARKER = ".infermill-demo.json"
_OUTPUT_COLUMNS = ("customer_id", "contract", "monthly_charges", "churn_probability")


def generate_customers(rows: int, rng: np.random.Generator, *, first_id: int = FIRST_CUSTOMER_ID) -> pa.Table:
    """``rows`` synthetic customers with ids from ``first_id`` and a ``churned`` label (0/1).

    The label follows a logistic model of the features (short tenure, month-to-month contracts, support
    calls, fiber, electronic checks and late payments raise the odds; long contracts and dependents
    lower them) plus noise, so a model can learn it but not perfectly.
    """
    n = rows
    age = np.clip(rng.normal(45.0, 15.0, n), 18, 90).astype(np.int16)
    # 0 = month-to-month, 1 = one year, 2 = two years.
    contract = rng.choice(3, size=n, p=[0.55, 0.25, 0.20]).astype(np.int8)
    tenure = np.minimum(rng.gamma(1.5, 10.0 + 12.0 * contract), 72).astype(np.int16)
    has_fiber = rng.random(n) < 0.45
    has_streaming = rng.random(n) < 0.30 + 0.20 * has_fiber
    monthly = np.round(20.0 + 25.0 * has_fiber + 12.0 * has_streaming + rng.gamma(2.0, 8.0, n), 2)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.normal(1.0, 0.03, n), 2)
    support_calls = rng.poisson(0.8 + 0.6 * has_fiber).astype(np.int16)
    paperless = rng.random(n) < 0.6
    # 0 = bank transfer, 1 = credit card, 2 = electronic check, 3 = mailed check.
    payment = rng.choice(4, size=n, p=[0.22, 0.22, 0.34, 0.22]).astype(np.int8)
    dependents = rng.poisson(np.where((age >= 30) & (age <= 55), 0.9, 0.3)).astype(np.int8)
    usage = rng.gamma(2.0, 20.0 + 30.0 * has_fiber).astype(np.float32)
    late = rng.poisson(0.3 + 0.5 * (payment == 2)).astype(np.int16)
    last_login = np.minimum(rng.exponential(12.0, n), 365).astype(np.int16)

    logit = (
        -1.6
        + 1.2 * (contract == 0)
        - 1.0 * (contract == 2)
        - 0.9 * np.log1p(tenure / 6.0)
        + 0.015 * (monthly - 65.0)
        + 0.45 * np.minimum(support_calls, 4)
        + 0.4 * has_fiber
        + 0.45 * (payment == 2)
        + 0.2 * paperless
        - 0.25 * np.minimum(dependents, 3)
        + 0.35 * late
        + 0.025 * np.minimum(last_login, 60)
        - 0.012 * (age - 45)
        + rng.normal(0.0, 0.6, n)
    )
    churned = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    return pa.table(
        {
            "customer_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "age": age,
            "tenure_months": tenure,
            "contract": contract,
            "monthly_charges": monthly,
            "total_charges": total,
            "num_support_calls": support_calls,
            "has_fiber": has_fiber.astype(np.int8),
            "has_streaming": has_streaming.astype(np.int8),
            "paperless_billing": paperless.astype(np.int8),
            "payment_method": payment,
            "num_dependents": dependents,
            "data_usage_gb": usage,
            "late_payments_12m": late,
            "days_since_last_login": last_login,
            "churned": churned.astype(np.int8),
        }
    )


JOB_TOML = """\
# infermill job: score every customer with the churn model.
# Run it with `infermill run churn.toml`; relative paths are resolved against this file's folder.

[input]
# A folder of Parquet files (a single file, a glob or an s3:// URL work too).
path = "data/customers/"
format = "parquet"
# Each row's unique id. It is written next to the predictions, so results join back to customers.
id_column = "customer_id"
# A shard is the unit of work that is committed (and redone after a crash): runs of whole row groups.
shard_rows = {shard_rows}

[model]
kind = "sklearn"
path = "models/churn.joblib"
# joblib files are pickles, and unpickling can run arbitrary code: infermill loads them only when
# you say you trust the file. This one was written by `infermill demo` on this machine.
trusted = true
# The columns given to the model, in the order it was trained on.
features = [{features}]
# predict_proba's positive-class column becomes this output column.
method = "predict_proba"
outputs = ["churn_probability"]

[batch]
# Rows per model call: large enough to amortise the model's per-call cost. Left out, it is the model
# kind's default (65,536 rows for sklearn and onnx with this many features).
size = 65536

[output]
# Results go to part-NNNNN.parquet files, one per shard; _manifest.json appears when all are done.
path = "out/churn/"
format = "parquet"
# Input columns copied next to the id and the prediction.
keep = ["contract", "monthly_charges"]

[runtime]
# Worker processes, each loading the model once. The model itself uses the cores given to its worker.
workers = 1
"""


def make_demo(directory: str | Path, *, rows: int = 1_000_000, files: int = 8, seed: int = 0) -> Path:
    """Write the demo dataset, model and job file under ``directory``; return the job file's path.

    Rows are spread over ``files`` Parquet files (row groups of 64k rows). The model is trained on
    100k separately generated customers. Output of an earlier demo in the same folder is removed,
    since it no longer matches the data.
    """
    if rows < 1 or files < 1:
        raise ValueError(f"rows and files must be positive, not rows={rows}, files={files}")
    root = Path(directory)
    data_dir = root / "data" / "customers"
    model_dir = root / "models"
    job_path = root / f"{JOB_NAME}.toml"
    (root / _MARKER).unlink(missing_ok=True)
    # Results and ledger of an earlier demo describe other data; the job would refuse to mix them.
    shutil.rmtree(root / "out" / JOB_NAME, ignore_errors=True)
    for ledger_file in (root / ".infermill").glob(f"{JOB_NAME}.sqlite*"):
        ledger_file.unlink()
    if data_dir.exists():
        for old in data_dir.glob("*.parquet"):
            old.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)

    first_id = FIRST_CUSTOMER_ID
    for index, count in enumerate(_split(rows, files)):
        rng = np.random.default_rng([seed, 1, index])
        table = generate_customers(count, rng, first_id=first_id).drop_columns(["churned"])
        pq.write_table(table, data_dir / f"customers-{index:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
        first_id += count

    _train(model_dir / f"{JOB_NAME}.joblib", seed)

    shard_rows = max(ROW_GROUP_ROWS, min(250_000, rows // 4))
    features = ", ".join(f'"{name}"' for name in FEATURES)
    job_path.write_text(JOB_TOML.format(shard_rows=shard_rows, features=features), encoding="utf-8")
    marker = {"rows": rows, "files": files, "seed": seed}
    (root / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return job_path


def _split(rows: int, files: int) -> list[int]:
    base, extra = divmod(rows, files)
    sizes = [base + (1 if i < extra else 0) for i in range(files)]
    return [size for size in sizes if size > 0]


def _train(path: Path, seed: int) -> None:
    import joblib
    from sklearn.ensemble import HistGradientBoostingClassifier

    # Separate customers (other ids, another random stream) from the ones the job scores.
    train = generate_customers(TRAIN_ROWS, np.random.default_rng([seed, 2]), first_id=1)
    x = np.column_stack([train.column(name).to_numpy() for name in FEATURES]).astype(np.float64)
    y = train.column("churned").to_numpy()
    model = HistGradientBoostingClassifier(max_iter=50, early_stopping=False, random_state=seed)
    model.fit(x, y)
    joblib.dump(model, path)


def _is_current(root: Path, rows: int) -> bool:
    try:
        marker = json.loads((root / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(
        marker.get("rows") == rows
        and (root / f"{JOB_NAME}.toml").is_file()
        and (root / "models" / f"{JOB_NAME}.joblib").is_file()
    )


def run_demo(
    directory: str | Path, *, rows: int = 1_000_000, progress: Mode | None = None
) -> tuple[RunResult, str]:
    """Make the demo under ``directory`` (or reuse one made with the same ``rows``) and run its job.

    Returns the run's result and the closing text to print. Running it again on a complete demo does
    nothing, which is the point: the ledger knows every shard is committed.
    """
    from .engine import run

    root = Path(directory)
    job = root / f"{JOB_NAME}.toml"
    if not _is_current(root, rows):
        if progress != "off":
            print(f"Generating {rows:,} customers and a churn model in {_show(root)}/ ...", file=sys.stderr)
        job = make_demo(root, rows=rows)
    result = run(job, progress=progress)
    return result, closing_text(result, job)


def _show(path: str | os.PathLike[str] | None) -> str:
    """A path relative to the current directory when it is below it, else absolute."""
    if path is None:
        return "-"
    text = str(path)
    try:
        rel = os.path.relpath(text)
    except ValueError:
        return text
    return text if rel.startswith("..") else rel


def closing_text(result: RunResult, job: str | os.PathLike[str]) -> str:
    """What ``infermill demo`` prints after the run: where things are and what to try next."""
    from .observe.progress import format_rate, plural

    infermill, python = command_paths()
    job_arg = _show(job)
    output = _show(result.output_path).rstrip("/") + "/"
    total = result.rows_total or result.rows_succeeded
    if result.rows_this_run == 0 and result.state == "complete":
        head = (
            f"Nothing to do: all {result.rows_succeeded:,} customers were scored by an earlier run "
            "(the ledger says every shard is committed)."
        )
    else:
        head = (
            f"Scored {result.rows_this_run:,} customers in {result.seconds:.1f} s "
            f"({format_rate(result.rows_this_run, result.seconds)}): {result.rows_succeeded:,} of "
            f"{plural(total, 'row')} done in {result.shards_committed} of {plural(result.shards_total, 'shard')}, "
            f"{result.rows_failed:,} failed."
        )
    places = [
        ("results", f"{output}part-*.parquet", f"{', '.join(_OUTPUT_COLUMNS)}"),
        ("manifest", _show(result.manifest_path), "written last, lists every file: the output is complete"),
        ("ledger", _show(result.ledger_path), "per-shard state: resumes a stopped run, skips finished work"),
    ]
    width = max(len(path) for _, path, _ in places)
    lines = [head, ""] + [f"  {name:<9} {path:<{width}}  {note}" for name, path, note in places]
    top = _riskiest(result.output_path)
    if top:
        lines += ["", "  Highest churn risk: customers " + ", ".join(f"{cid} ({p:.2f})" for cid, p in top)]
    commands = [
        (f"{infermill} status {job_arg}", "the job's state, read from the ledger"),
        (f"{infermill} run {job_arg}", "run it again: nothing to do, the job is complete"),
        (f"{infermill} run {job_arg} --restart", "discard the results and score everything again"),
    ]
    width = max(len(command) for command, _ in commands)
    lines += ["", "Try next:"] + [f"  {command:<{width}}  # {note}" for command, note in commands]
    read = f"{python} -c \"import pandas as pd; print(pd.read_parquet('{output}'))\""
    lines += ["", "Read the results:", f"  {read}"]
    activate = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "activate")
    if infermill != "infermill" and os.path.exists(activate):
        lines += ["", f"Or run `source {_show(activate)}` first: then plain `infermill` and `python` work."]
    return "\n".join(lines)


def command_paths() -> tuple[str, str]:
    """How to call ``infermill`` and ``python`` from a fresh shell: the bare names when they are this
    environment's (an activated virtual environment, or an install on PATH), else their paths, such as
    ``.venv/bin/infermill`` after ``make demo``, whose shell never activated anything."""
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))

    def on_path(name: str) -> bool:
        found = shutil.which(name)
        return found is not None and os.path.dirname(os.path.abspath(found)) == bin_dir

    python = "python" if on_path("python") else _show(sys.executable)
    if on_path("infermill"):
        return "infermill", python
    script = os.path.join(bin_dir, "infermill")
    if not os.path.exists(script):  # no console script (e.g. run from a source checkout): the module
        return f"{_show(sys.executable)} -m infermill", python
    return _show(script), python


def _riskiest(output_path: str, count: int = 3) -> list[tuple[int, float]]:
    """The ``count`` customers with the highest predicted churn, or [] if the output cannot be read."""
    try:
        table = pq.read_table(output_path, columns=["customer_id", "churn_probability"])
    except (OSError, ValueError, pa.ArrowException):
        return []
    if table.num_rows == 0:
        return []
    ids = table.column("customer_id").to_numpy()
    scores = table.column("churn_probability").to_numpy()
    order = np.argsort(-scores, kind="stable")[:count]
    return [(int(ids[i]), float(scores[i])) for i in order]
