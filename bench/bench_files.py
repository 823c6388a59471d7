"""Many small files: infermill on a folder of 20,000 Parquet files of 100 rows each, against pyarrow.dataset.

Spark and streaming jobs write folders of many small files; planning, reading and batching them must cost
about the same per row as a few large files. Both legs run as whole processes, as a user runs them:

(b) baseline: ``python -c`` that reads the folder with ``pyarrow.dataset`` (``id`` and ``f00``) and writes
    it as one Parquet file.
(i) infermill: ``python -m infermill run job.toml`` with a no-op ``kind = "python"`` model (returns ``f00``).

Targets: (i) >= 0.5 x (b) in rows/s at 20,000 files, and (i)'s time per row at 20,000 files within 1.5 x
its time per row at 1,000 files.

    python bench/bench_files.py                      # 1,000 and 20,000 files, best of 3
    python bench/bench_files.py --repeat 1           # one round
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import _harness as h
import bench_tabular as tabular
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET_BASELINE = 0.5
TARGET_PER_ROW = 1.5
MODELS = Path(__file__).resolve().parent / "_models.py"

BASELINE = textwrap.dedent("""\
    import sys
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    table = ds.dataset(sys.argv[1], format="parquet").to_table(columns=["id", "f00"])
    pq.write_table(table, sys.argv[2])
    print(table.num_rows)
""")


def make_data(data_dir: Path, files: int, rows: int, seed: int) -> Path:
    """``files`` Parquet files of ``rows`` rows (``id``, ``f00``-``f03``), written once and cached."""
    folder = data_dir / f"files-{files}x{rows}"
    done = folder / "_COMPLETE"  # names starting with "_" are skipped by both legs
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    print(f"writing {files:,} files of {rows} rows to {folder} ...", flush=True)
    for i in range(files):
        ids = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
        columns: dict[str, Any] = {"id": ids}
        for j in range(4):
            columns[f"f{j:02d}"] = rng.random(rows)
        pq.write_table(pa.table(columns), folder / f"part-{i:05d}.parquet")
    done.write_text("")
    return folder


def write_job(run_dir: Path, dataset: Path) -> Path:
    job = run_dir / "files.toml"
    job.write_text(
        f"""\
[input]
path = "{dataset.as_posix()}/"
format = "parquet"
id_column = "id"

[model]
kind = "python"
entrypoint = "{MODELS.as_posix()}:Noop"
features = ["f00"]

[output]
path = "out/"
format = "parquet"
""",
        encoding="utf-8",
    )
    return job


def timed(argv: list[str], cwd: Path, quiet_wait: float) -> dict[str, Any]:
    """Run ``argv`` as a whole process; its wall-clock seconds (start-up included) and others' load."""
    quiet_before = tabular.wait_for_quiet(quiet_wait)
    busy, own, started = tabular._machine_busy(), tabular._own_cpu(), time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[1:4]} failed with exit code {proc.returncode}:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = {"seconds": seconds, "cpu_seconds": tabular._own_cpu() - own,
                              "others_cores_before": quiet_before}
    after = tabular._machine_busy()
    if busy is not None and after is not None:
        result["others_cores"] = round(max(0.0, (after - busy) - result["cpu_seconds"]) / seconds, 2)
    return result


def measure_baseline(runs_dir: Path, dataset: Path, rows: int, quiet_wait: float) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="baseline-", dir=runs_dir))
    try:
        result = timed([sys.executable, "-c", BASELINE, str(dataset), str(out / "all.parquet")], out, quiet_wait)
        got = pq.read_metadata(out / "all.parquet").num_rows
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if got != rows:
        raise SystemExit(f"baseline wrote {got} rows, not {rows}")
    return result | {"rows": rows, "rows_per_s": rows / result["seconds"]}


def measure_infermill(runs_dir: Path, dataset: Path, rows: int, quiet_wait: float) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="files-", dir=runs_dir))
    try:
        job = write_job(run_dir, dataset)
        result = timed([sys.executable, "-m", "infermill", "run", str(job), "--progress", "off"], run_dir, quiet_wait)
        got = sum(pq.read_metadata(p).num_rows for p in (run_dir / "out").glob("part-*.parquet"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if got != rows:
        raise SystemExit(f"infermill wrote {got} rows, not {rows}")
    return result | {"rows": rows, "rows_per_s": rows / result["seconds"]}


def report(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    lines = [
        f"many small files: {cfg['rows_per_file']} rows per file, no-op model, whole processes, "
        f"{cfg['cpus']} CPUs, best of {cfg['repeat']}",
        "",
        f"{'measurement':<64}{'rows/s':>10}{'seconds':>10}{'us/row':>8}{'others':>8}",
    ]
    for files in cfg["files"]:
        for key, label in (("baseline", "(b) pyarrow.dataset read + one Parquet write"),
                           ("infermill", "(i) infermill run, no-op python model")):
            r = summary[f"{key}_{files}"]
            lines.append(f"{label + f', {files:,} files':<64}{h.rate(r['rows_per_s']):>10}{r['seconds']:>10.2f}"
                         f"{1e6 / r['rows_per_s']:>8.2f}{r.get('others_cores', '?'):>8}")
            lines.append(f"    runs {r['all_seconds']}, others {r['all_others_cores']}")
    lines.append(f"    load average (1 min): {cfg['loadavg_before']} -> {cfg['loadavg_after']}")
    return "\n".join(lines + h.target_lines(summary["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="1000,20000", help="file counts, smallest first (the targets compare "
                        "the first and the last)")
    parser.add_argument("--rows-per-file", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every measurement; the best of each counts")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="before each measurement, wait at most this long for a quiet machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=tabular.BENCH_DIR / "data")
    parser.add_argument("--results-dir", type=Path, default=tabular.BENCH_DIR / "results")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.files.split(",")]
    datasets = {n: make_data(args.data_dir, n, args.rows_per_file, args.seed) for n in counts}
    runs_dir = args.data_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for folder in datasets.values():  # a warm page cache for every measurement, the first one included
        for path in folder.iterdir():
            path.read_bytes()

    loadavg_before = h.machine()["loadavg"]
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_no in range(args.repeat):
        for n in counts:
            rows = n * args.rows_per_file
            # Contenders take turns, so a busy moment on a shared machine does not favour one of them.
            for key, measure in (("baseline", measure_baseline), ("infermill", measure_infermill)):
                result = measure(runs_dir, datasets[n], rows, args.quiet_wait)
                runs.setdefault(f"{key}_{n}", []).append(result)
                print(f"round {round_no + 1}: {key} {n:,} files {result['seconds']:.2f} s "
                      f"(others {result.get('others_cores', '?')})", flush=True)

    summary: dict[str, Any] = {key: h.best(results) for key, results in runs.items()}
    small, large = counts[0], counts[-1]
    versus = summary[f"infermill_{large}"]["rows_per_s"] / summary[f"baseline_{large}"]["rows_per_s"]
    per_row = summary[f"infermill_{small}"]["rows_per_s"] / summary[f"infermill_{large}"]["rows_per_s"]
    summary["targets"] = [
        (f"(i) / (b) rows/s at {large:,} files", versus, f">= {TARGET_BASELINE}", versus >= TARGET_BASELINE),
        (f"(i) time per row, {large:,} / {small:,} files", per_row, f"<= {TARGET_PER_ROW}", per_row <= TARGET_PER_ROW),
    ]
    summary["config"] = {"files": counts, "rows_per_file": args.rows_per_file, "repeat": args.repeat,
                         "loadavg_before": loadavg_before, "loadavg_after": h.machine()["loadavg"], **h.machine()}
    h.save(args.results_dir, "files", summary, report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
