"""Overhead and scaling benchmarks on bench_tabular.py's 2M-row data, each contender in a fresh child process.

(3) overhead: infermill with a no-op ``kind = "python"`` model (returns ``f00`` as the prediction) against
    a pyarrow stream copy of the same columns (``iter_batches`` -> ``ParquetWriter`` of ``id`` + ``f00``).
    Target: infermill >= 0.7 x the copy.
(4) scaling: a ``kind = "python"`` model doing a fixed amount of single-threaded numpy work per row
    (``--reps`` rounds of sin + add), at ``workers = 1`` and ``workers = 2`` (``threads_per_worker = 1``).
    Target: 2 workers >= 1.8 x 1 worker.

    python bench/bench_overhead.py                        # 2M rows, best of 3
    python bench/bench_overhead.py --rows 200000          # smoke run (one shard: no scaling to see)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h
import bench_tabular as tabular
import pyarrow as pa
import pyarrow.parquet as pq

TARGET_COPY = 0.7
TARGET_SCALING = 1.8
MODELS = Path(__file__).resolve().parent / "_models.py"
COLUMN = "f00"


def child_copy(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out)
    started, cpu = time.perf_counter(), time.process_time()
    rows = 0
    for index, file in enumerate(tabular._files(Path(args.dataset))):
        source = pq.ParquetFile(file)
        writer: pq.ParquetWriter | None = None
        for batch in source.iter_batches(batch_size=int(args.batch_size), columns=[tabular.ID_COLUMN, COLUMN]):
            if writer is None:
                writer = pq.ParquetWriter(out_dir / f"part-{index:05d}.parquet", batch.schema)
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
    return {"rows": rows, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def child_infermill(args: argparse.Namespace) -> dict[str, Any]:
    return h.infermill_child(args.job)


CHILDREN = {"copy": child_copy, "infermill": child_infermill}


def write_job(run_dir: Path, dataset: Path, model: str, batch_size: int, workers: int, reps: int | None) -> Path:
    job = run_dir / "overhead.toml"
    options = "" if reps is None else f"\n[model.options]\nreps = {reps}\n"
    threads = "" if reps is None else "threads_per_worker = 1\n"
    job.write_text(
        f"""\
[input]
path = "{dataset.as_posix()}/"
format = "parquet"
id_column = "{tabular.ID_COLUMN}"

[model]
kind = "python"
entrypoint = "{MODELS.as_posix()}:{model}"
features = ["{COLUMN}"]
{options}
[batch]
size = {batch_size}

[output]
path = "out/"
format = "parquet"

[runtime]
workers = {workers}
{threads}""",
        encoding="utf-8",
    )
    return job


def measure_infermill(runs_dir: Path, dataset: Path, model: str, batch_size: int, workers: int,
                      reps: int | None) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="overhead-", dir=runs_dir))
    try:
        return h.spawn(__file__, "infermill", job=write_job(run_dir, dataset, model, batch_size, workers, reps))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def measure_copy(runs_dir: Path, dataset: Path, batch_size: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="copy-", dir=runs_dir))
    try:
        return h.spawn(__file__, "copy", dataset=dataset, batch_size=batch_size, out=out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    lines = [
        f"infermill overhead and scaling: {cfg['rows']:,} rows ({cfg['files']} Parquet files), batch "
        f"{cfg['batch_size']:,}, {cfg['cpus']} CPUs, best of {cfg['repeat']}",
        "",
        f"{'measurement':<58}{'rows/s':>10}{'seconds':>10}{'CPU s':>8}{'others':>8}",
    ]
    rows = [("(3) pyarrow stream copy (id + f00)", summary["copy"]),
            ("(3) infermill, no-op python model", summary["noop"]),
            (f"(4) infermill, busy model ({cfg['reps']} reps), workers = 1", summary["busy_1"]),
            (f"(4) infermill, busy model ({cfg['reps']} reps), workers = 2", summary["busy_2"])]
    for label, r in rows:
        lines.append(f"{label:<58}{h.rate(r['rows_per_s']):>10}{r['seconds']:>10.2f}{r['cpu_seconds']:>8.2f}"
                     f"{r.get('others_cores', '?'):>8}")
    for key in ("copy", "noop", "busy_1", "busy_2"):
        stages = ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in summary[key].get("stages", {}).items())
        lines.append(f"    {key}: runs {summary[key]['all_seconds']}" + (f"; stages: {stages}" if stages else ""))
    lines.append("    CPU s is the parent process only: worker processes are not counted for infermill; "
                 f"load average (1 min): {cfg['loadavg_before']} -> {cfg['loadavg_after']}")
    return "\n".join(lines + h.target_lines(summary["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_tabular_args(parser)
    parser.add_argument("--reps", type=int, default=1600, help="work per row of the busy model (about 10 us at 1600)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every measurement; the best of each counts")
    h.add_common_args(parser, list(CHILDREN), ("dataset", "job", "out"))
    args = parser.parse_args(argv)
    h.default_batch_size(args, "python")
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    args.data_dir.mkdir(parents=True, exist_ok=True)
    dataset = tabular.ensure_dataset(args.data_dir, args.rows, args.features, args.seed)
    runs_dir = args.data_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    tabular._warm(dataset)
    loadavg_before = h.machine()["loadavg"]
    runs: dict[str, list[dict[str, Any]]] = {"copy": [], "noop": [], "busy_1": [], "busy_2": []}
    for i in range(args.repeat):
        print(f"round {i + 1} of {args.repeat}: copy, no-op, busy x1, busy x2", flush=True)
        runs["copy"].append(measure_copy(runs_dir, dataset, args.batch_size))
        runs["noop"].append(measure_infermill(runs_dir, dataset, "Noop", args.batch_size, 1, None))
        for workers in (1, 2):
            runs[f"busy_{workers}"].append(
                measure_infermill(runs_dir, dataset, "Busy", args.batch_size, workers, args.reps))
    summary: dict[str, Any] = {key: h.best(value) for key, value in runs.items()}
    copy = summary["noop"]["rows_per_s"] / summary["copy"]["rows_per_s"]
    scaling = summary["busy_2"]["rows_per_s"] / summary["busy_1"]["rows_per_s"]
    summary["targets"] = [
        ("(3) no-op infermill / pyarrow copy rows/s", copy, f">= {TARGET_COPY:.2f}", copy >= TARGET_COPY),
        ("(4) workers = 2 / workers = 1 rows/s", scaling, f">= {TARGET_SCALING:.2f}", scaling >= TARGET_SCALING),
    ]
    summary["config"] = {"rows": args.rows, "files": len(tabular._files(dataset)), "batch_size": args.batch_size,
                         "reps": args.reps, "repeat": args.repeat, "seed": args.seed, "pyarrow": pa.__version__,
                         **h.machine(), "loadavg_before": loadavg_before, "loadavg_after": h.machine()["loadavg"]}
    h.save(args.results_dir, "overhead", summary, report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
