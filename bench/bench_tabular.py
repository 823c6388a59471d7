"""Tabular benchmark: infermill end to end against the model alone and a hand-written pyarrow loop.

Measures, in one run, on ``--rows`` rows x ``--features`` features over several Parquet files:

  (a) the model's ``predict_proba`` on data already in memory as one numpy array: the limit;
  (b) infermill end to end (read Parquet, score, write Parquet, ledger) through ``infermill.engine.run``;
  (c) a hand-written loop: ``iter_batches`` -> ``predict_proba`` -> ``pq.ParquetWriter``;

and infermill's peak RSS at ``--rows`` and at ``--big-rows`` (default 4x). Every measurement runs in a
fresh child process (this script, with ``--child``), so timings and peak RSS do not leak between them.

Targets: (b) >= 0.90 x (a); (b) >= (c); peak RSS at the big size <= 1.2 x at ``--rows``.

    python bench/bench_tabular.py                              # 2M rows, 8M-row memory check
    python bench/bench_tabular.py --rows 200000 --skip-8m      # quick smoke run

Generated data and models are cached under bench/data/; results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH_DIR = Path(__file__).resolve().parent
ROWS_PER_FILE = 250_000
ROW_GROUP_ROWS = 65_536
TRAIN_ROWS = 200_000
MAX_ITER = 100
ID_COLUMN = "id"
TARGET_LIMIT_RATIO = 0.90
TARGET_RSS_RATIO = 1.2
QUIET_WAIT_S = 30.0
"""Before each measurement, wait up to this long for other processes to leave the CPUs alone."""


# -- data and model ---------------------------------------------------------------------------------


def feature_names(count: int) -> list[str]:
    return [f"f{i:02d}" for i in range(count)]


def _features(rows: int, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Half float32, half float64 columns with assorted distributions (normal, lognormal, uniform)."""
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(feature_names(count)):
        kind = i % 3
        if kind == 0:
            values = rng.standard_normal(rows) * (1.0 + i)
        elif kind == 1:
            values = rng.lognormal(0.0, 0.75, rows)
        else:
            values = rng.uniform(-5.0, 5.0, rows)
        columns[name] = values.astype(np.float32 if i < count // 2 else np.float64)
    return columns


def _label(columns: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    names = list(columns)
    x = np.column_stack([columns[n] for n in names]).astype(np.float64)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    logit = z @ (np.linspace(1.0, -1.0, len(names)) / np.sqrt(len(names)))
    # A little non-linearity, so that the trees have something to find.
    logit += 0.8 * np.sin(z[:, 0]) * z[:, 1] + rng.normal(0.0, 0.5, len(logit))
    churned: np.ndarray = rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))
    return churned.astype(np.int8)


def ensure_dataset(data_dir: Path, rows: int, features: int, seed: int) -> Path:
    """``rows`` rows in files of 250k rows (row groups of 64k), generated once and cached."""
    target = data_dir / f"tabular-{rows}r-{features}f-s{seed}"
    if (target / "_done.json").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=data_dir))
    started = time.perf_counter()
    files = max(1, math.ceil(rows / ROWS_PER_FILE))
    first = 0
    for index in range(files):
        count = min(ROWS_PER_FILE, rows - first)
        rng = np.random.default_rng([seed, 1, index])
        ids = np.arange(first, first + count, dtype=np.int64)
        table = pa.table({ID_COLUMN: ids, **_features(count, features, rng)})
        pq.write_table(table, staging / f"part-{index:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
        first += count
    (staging / "_done.json").write_text(json.dumps({"rows": rows, "files": files}))
    staging.rename(target)
    seconds = time.perf_counter() - started
    print(f"  generated {rows:,} rows in {files} files ({seconds:.1f}s): {target}", flush=True)
    return target


def ensure_model(data_dir: Path, features: int, seed: int) -> Path:
    """A HistGradientBoostingClassifier (max_iter=100) trained on a separate generated sample, cached."""
    path = data_dir / f"hgb-{features}f-it{MAX_ITER}-s{seed}.joblib"
    if path.exists():
        return path
    import joblib
    from sklearn.ensemble import HistGradientBoostingClassifier

    started = time.perf_counter()
    rng = np.random.default_rng([seed, 2])
    columns = _features(TRAIN_ROWS, features, rng)
    y = _label(columns, rng)
    x = np.column_stack(list(columns.values())).astype(np.float64)
    model = HistGradientBoostingClassifier(max_iter=MAX_ITER, early_stopping=False, random_state=seed)
    model.fit(x, y)
    tmp = path.with_suffix(".tmp")
    joblib.dump(model, tmp)
    tmp.rename(path)
    seconds = time.perf_counter() - started
    print(f"  trained the model on {TRAIN_ROWS:,} rows ({seconds:.1f}s): {path}", flush=True)
    return path


def _files(dataset: Path) -> list[Path]:
    return sorted(dataset.glob("part-*.parquet"))


def _warm(dataset: Path) -> None:
    """Read every file once so that all measurements start from the same (warm) page cache."""
    for file in _files(dataset):
        with open(file, "rb") as fh:
            while fh.read(1 << 24):
                pass


def write_job(run_dir: Path, dataset: Path, model: Path, features: int, batch_size: int) -> Path:
    names = ", ".join(f'"{n}"' for n in feature_names(features))
    job = run_dir / "bench.toml"
    job.write_text(
        f"""\
[input]
path = "{dataset.as_posix()}/"
format = "parquet"
id_column = "{ID_COLUMN}"

[model]
kind = "sklearn"
path = "{model.as_posix()}"
trusted = true
features = [{names}]
outputs = ["prediction"]

[batch]
size = {batch_size}

[output]
path = "out/"
format = "parquet"

[runtime]
workers = 1
""",
        encoding="utf-8",
    )
    return job


# -- children: one measurement each ---------------------------------------------------------------


def _rss() -> dict[str, int]:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"peak_rss_self": own, "peak_rss_children": children, "peak_rss": max(own, children)}


def child_predict(args: argparse.Namespace) -> dict[str, Any]:
    import joblib

    table = pq.read_table(args.dataset, columns=feature_names(args.features))
    x = np.column_stack([c.to_numpy() for c in table.columns]).astype(np.float64)
    del table
    model = joblib.load(args.model)
    model.predict_proba(x[: args.batch_size])  # first-call overhead (thread pool start) is not the limit
    rows = len(x)
    started, cpu = time.perf_counter(), time.process_time()
    model.predict_proba(x)[:, 1]
    whole, cpu_whole = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    out = np.empty(rows)
    for lo in range(0, rows, args.batch_size):
        out[lo : lo + args.batch_size] = model.predict_proba(x[lo : lo + args.batch_size])[:, 1]
    chunks, cpu_chunks = time.perf_counter() - started, time.process_time() - cpu
    return {"rows": rows, "seconds": min(whole, chunks), "seconds_whole": whole, "seconds_chunks": chunks,
            "cpu_seconds_whole": cpu_whole, "cpu_seconds_chunks": cpu_chunks, **_rss()}


def child_loop(args: argparse.Namespace) -> dict[str, Any]:
    import joblib
    import sklearn.ensemble  # noqa: F401 - the library's import time (~1 s) is not what is measured

    names = feature_names(args.features)
    out_dir = Path(args.out)
    started, cpu = time.perf_counter(), time.process_time()
    model = joblib.load(args.model)
    rows = 0
    schema = pa.schema([(ID_COLUMN, pa.int64()), ("prediction", pa.float64())])
    for index, file in enumerate(_files(Path(args.dataset))):
        source = pq.ParquetFile(file)
        with pq.ParquetWriter(out_dir / f"part-{index:05d}.parquet", schema) as writer:
            for batch in source.iter_batches(batch_size=args.batch_size, columns=[ID_COLUMN, *names]):
                x = np.column_stack([batch.column(n).to_numpy() for n in names])
                scores = model.predict_proba(x.astype(np.float64, copy=False))[:, 1]
                out = pa.record_batch([batch.column(ID_COLUMN), pa.array(scores)], schema=schema)
                writer.write_batch(out)
                rows += batch.num_rows
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu, **_rss()}


def preimport_infermill(job: str) -> None:
    """Import the modules a run of ``job`` imports on first use (its source, sink and model adapter, and
    fsspec through the source): import time is not measured, for infermill as for the libraries."""
    from infermill.models import adapter_class
    from infermill.sinks import open_sink
    from infermill.sources import input_format, source_class
    from infermill.spec import load_spec

    spec = load_spec(job)
    source_class(input_format(spec))
    open_sink(spec)
    adapter_class(spec.model.kind)


def timed_infermill_run(job: str) -> dict[str, Any]:
    """One ``infermill.engine.run`` of ``job``, timed, with the stage seconds its ledger recorded."""
    import sqlite3

    from infermill.engine import run

    preimport_infermill(job)
    started, cpu = time.perf_counter(), time.process_time()
    result = run(job, progress="off")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if result.state != "complete":
        raise SystemExit(f"infermill run ended {result.state}: {result.message}")
    stages: dict[str, float] = {}
    with sqlite3.connect(result.ledger_path) as conn:
        for (raw,) in conn.execute("SELECT stats FROM shards"):
            for key, value in json.loads(raw or "{}").items():
                if key.endswith("_s"):
                    stages[key] = stages.get(key, 0.0) + float(value)
    return {"rows": result.rows_succeeded, "seconds": seconds, "cpu_seconds": cpu, "engine_seconds": result.seconds,
            "shards": result.shards_total, "stages": {k: round(v, 3) for k, v in stages.items()}}


def child_infermill(args: argparse.Namespace) -> dict[str, Any]:
    import sklearn.ensemble  # noqa: F401 - as in child_loop: import time is not measured

    return {**timed_infermill_run(args.job), **_rss()}


CHILDREN = {"predict": child_predict, "loop": child_loop, "infermill": child_infermill}


def _machine_busy() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux), or None where unknown."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float | None:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` cores; return their use."""
    deadline = time.monotonic() + max_wait
    while True:
        busy, own = _machine_busy(), _own_cpu()
        time.sleep(0.5)
        after = _machine_busy()
        if busy is None or after is None:
            return None
        others = max(0.0, (after - busy) - (_own_cpu() - own)) / 0.5
        if others < threshold or time.monotonic() >= deadline:
            return round(others, 2)


def spawn(kind: str, **options: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter.

    While it runs, sample its process tree's RSS, and count the CPU time that other processes on the
    machine used meanwhile (``others_cores``: a shared machine makes timings noisy).
    """
    import psutil

    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    quiet_before = wait_for_quiet(QUIET_WAIT_S)
    busy, own, started = _machine_busy(), _own_cpu(), time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    tree_peak = 0
    try:
        handle = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                total = handle.memory_info().rss + sum(
                    c.memory_info().rss for c in handle.children(recursive=True)
                )
            except psutil.Error:
                total = 0
            tree_peak = max(tree_peak, total)
            time.sleep(0.05)
    except psutil.Error:
        pass
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child '{kind}' failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_tree_sampled"] = tree_peak
    after = _machine_busy()
    if busy is not None and after is not None:
        others = max(0.0, (after - busy) - (_own_cpu() - own))
        result["others_cores"] = round(others / (time.monotonic() - started), 2)
    result["others_cores_before"] = quiet_before
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


# -- the run ----------------------------------------------------------------------------------------


def measure_infermill(runs_dir: Path, dataset: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="infermill-", dir=runs_dir))
    try:
        job = write_job(run_dir, dataset, model, args.features, args.batch_size)
        return spawn("infermill", job=job)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def measure_loop(runs_dir: Path, dataset: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="loop-", dir=runs_dir))
    try:
        return spawn("loop", dataset=dataset, model=model, features=args.features, batch_size=args.batch_size,
                     out=out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(results, key=lambda r: r["seconds"]))
    best["all_seconds"] = [round(r["seconds"], 3) for r in results]
    # CPU time next to wall time tells a starved run (others used the cores) from a stalled one.
    best["all_cpu_seconds"] = [round(r["cpu_seconds"], 3) for r in results]
    best["all_others_cores"] = [r.get("others_cores") for r in results]
    for key in ("peak_rss", "peak_rss_tree_sampled"):
        best[key] = max(r[key] for r in results)
    return best


def _best_predict(results: list[dict[str, Any]]) -> dict[str, Any]:
    best = {mode: min(r[f"seconds_{mode}"] for r in results) for mode in ("whole", "chunks")}
    mode = min(best, key=lambda k: best[k])
    fastest = min(results, key=lambda r: r[f"seconds_{mode}"])
    return {"rows": results[0]["rows"], "seconds": best[mode], "mode": mode, "seconds_whole": best["whole"],
            "cpu_seconds": fastest[f"cpu_seconds_{mode}"], "others_cores": fastest.get("others_cores"),
            "all_others_cores": [r.get("others_cores") for r in results],
            "seconds_chunks": best["chunks"], "rows_per_s": results[0]["rows"] / best[mode],
            "all_seconds_whole": [round(r["seconds_whole"], 3) for r in results],
            "all_seconds_chunks": [round(r["seconds_chunks"], 3) for r in results],
            "all_cpu_seconds_whole": [round(r["cpu_seconds_whole"], 3) for r in results],
            "all_cpu_seconds_chunks": [round(r["cpu_seconds_chunks"], 3) for r in results]}


def _rows(value: int) -> str:
    return f"{value / 1e6:g}M" if value >= 1e6 else f"{value / 1e3:g}k"


def _rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / 2**20:,.0f} MiB"


def report(summary: dict[str, Any]) -> str:
    a, b, c = summary["predict"], summary["infermill"], summary["loop"]
    big = summary.get("infermill_big")
    limit = a["rows_per_s"]
    cfg = summary["config"]
    lines = [
        f"infermill tabular benchmark: {cfg['rows']:,} rows x {cfg['features']} features "
        f"({cfg['files']} Parquet file{'s' if cfg['files'] != 1 else ''}), "
        f"HistGradientBoostingClassifier(max_iter={MAX_ITER}), "
        f"batch {cfg['batch_size']:,}, {cfg['cpus']} CPUs, best of {cfg['repeat']} "
        f"({cfg['big_repeat']} for the big set)",
        "",
        f"{'measurement':<44}{'rows/s':>10}{'seconds':>10}{'CPU s':>8}{'vs (a)':>9}{'peak RSS':>12}"
        f"{'tree RSS':>12}",
        f"{'(a) predict_proba in memory (' + a['mode'] + ')':<44}{_rate(limit):>10}{a['seconds']:>10.2f}"
        f"{a['cpu_seconds']:>8.2f}{1.0:>9.2f}{'-':>12}{'-':>12}",
    ]
    rows = [("(b) infermill end to end", b), ("(c) pyarrow chunk loop", c)]
    if big is not None:
        rows.append((f"(b) infermill end to end, {cfg['big_rows']:,} rows", big))
    for label, r in rows:
        lines.append(
            f"{label:<44}{_rate(r['rows_per_s']):>10}{r['seconds']:>10.2f}{r['cpu_seconds']:>8.2f}"
            f"{r['rows_per_s'] / limit:>9.2f}"
            f"{_mib(r['peak_rss']):>12}{_mib(r['peak_rss_tree_sampled']):>12}"
        )
    lines.append(
        f"    (a) whole array {a['seconds_whole']:.2f}s, in chunks of {cfg['batch_size']:,} "
        f"{a['seconds_chunks']:.2f}s (best of each); (b) engine-reported {b['engine_seconds']:.2f}s, "
        f"{b['shards']} shards"
    )
    lines.append(
        f"    all runs (s): (a) whole {a['all_seconds_whole']}, chunks {a['all_seconds_chunks']}; "
        f"(b) {b['all_seconds']}; (c) {c['all_seconds']}"
    )
    lines.append(f"    load average (1 min) before and after: {cfg['loadavg_before']} -> {cfg['loadavg_after']}")
    others = [("(a)", a), ("(b)", b), ("(c)", c)] + ([("(b) big", big)] if big is not None else [])
    lines.append(
        "    cores used by other processes during the counted runs: "
        + ", ".join(f"{name} {r.get('others_cores', '?')}" for name, r in others)
    )
    if b.get("stages"):
        stages = ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in b["stages"].items())
        lines.append(f"    (b) per-stage seconds summed over shards (stages overlap): {stages}")
    lines += ["", "targets"]
    for name, value, target, ok in summary["targets"]:
        verdict = "PASS" if ok else "FAIL"
        lines.append(f"  {name:<44}{value:>8.3f}  (target {target})  {verdict}")
    return "\n".join(lines)


def targets(summary: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    a, b, c = summary["predict"], summary["infermill"], summary["loop"]
    out: list[tuple[str, float, str, bool]] = []
    ratio = b["rows_per_s"] / a["rows_per_s"]
    out.append(("(b) / (a) rows/s", ratio, f">= {TARGET_LIMIT_RATIO:.2f}", ratio >= TARGET_LIMIT_RATIO))
    ratio = b["rows_per_s"] / c["rows_per_s"]
    out.append(("(b) / (c) rows/s", ratio, ">= 1.00", ratio >= 1.0))
    big = summary.get("infermill_big")
    if big is not None:
        measures = (("peak_rss", "getrusage"), ("peak_rss_tree_sampled", "tree, sampled"))
        for key, label in measures:
            ratio = big[key] / b[key]
            name = f"peak RSS {_rows(big['rows'])} / {_rows(b['rows'])} ({label})"
            out.append((name, ratio, f"<= {TARGET_RSS_RATIO:.2f}", ratio <= TARGET_RSS_RATIO))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the main set (default 2M)")
    parser.add_argument("--big-rows", type=int, default=None, help="memory-check rows (default 4x --rows)")
    parser.add_argument("--skip-8m", action="store_true", help="skip the big memory-check set")
    parser.add_argument("--big-repeat", type=int, default=2, help="runs on the big set (default 2)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="default: infermill's default for the model kind")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of (a), (c), (b); the best of each counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    # Internal: one measurement in a child process.
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for name in ("job", "dataset", "model", "out"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size is None:
        from infermill.spec import default_batch_rows

        args.batch_size = default_batch_rows("sklearn", args.features)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    big_rows = args.big_rows or 4 * args.rows
    args.data_dir.mkdir(parents=True, exist_ok=True)
    print("preparing data (cached under bench/data/)", flush=True)
    dataset = ensure_dataset(args.data_dir, args.rows, args.features, args.seed)
    big = None if args.skip_8m else ensure_dataset(args.data_dir, big_rows, args.features, args.seed)
    model = ensure_model(args.data_dir, args.features, args.seed)
    runs_dir = args.data_dir / "runs"
    runs_dir.mkdir(exist_ok=True)

    _warm(dataset)
    loadavg_before = round(os.getloadavg()[0], 2)
    predicts: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    engines: list[dict[str, Any]] = []
    for i in range(args.repeat):
        # (a), (c) and (b) take turns, so that a busy moment of the machine does not favour one of them.
        print(f"round {i + 1} of {args.repeat}: (a) predict_proba, (c) pyarrow loop, (b) infermill", flush=True)
        predicts.append(spawn("predict", dataset=dataset, model=model, features=args.features,
                              batch_size=args.batch_size))
        loops.append(measure_loop(runs_dir, dataset, model, args))
        engines.append(measure_infermill(runs_dir, dataset, model, args))
    summary: dict[str, Any] = {"predict": _best_predict(predicts), "loop": _best(loops)}
    summary["infermill"] = _best(engines)
    if big is not None:
        _warm(big)
        bigs = []
        for i in range(args.big_repeat):
            print(f"(b) infermill on {big_rows:,} rows (memory check), run {i + 1} of {args.big_repeat}", flush=True)
            bigs.append(measure_infermill(runs_dir, big, model, args))
        summary["infermill_big"] = _best(bigs)

    summary["config"] = {
        "rows": args.rows, "big_rows": None if big is None else big_rows, "features": args.features,
        "files": len(_files(dataset)), "batch_size": args.batch_size, "repeat": args.repeat,
        "big_repeat": args.big_repeat,
        "seed": args.seed,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__, "pyarrow": pa.__version__, "sklearn": _sklearn_version(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        # The machine may be shared: a high load average means noisy timings.
        "loadavg_before": loadavg_before, "loadavg_after": round(os.getloadavg()[0], 2),
    }
    summary["targets"] = targets(summary)
    text = report(summary)
    print()
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"tabular-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nresults: {out}")
    return 0


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


if __name__ == "__main__":
    sys.exit(main())
