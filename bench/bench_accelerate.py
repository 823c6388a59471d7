"""``[model] accelerate`` benchmark: infermill end to end with acceleration on, against the library's own call
on data already in memory, in the same run. Each contender runs in a fresh child process.

tabular: bench_bt.py's data (2M rows x 20 features) and model (HistGradientBoostingClassifier, 100
    iterations). (a) ``predict_proba`` on the whole float64 array in memory (and in chunks of infermill's
    batch size; the faster counts); (b) ``infermill run`` of a job with ``accelerate = "compile"``: read
    Parquet, verify and score with the compiled trees, write Parquet, ledger. The first (b) of the run builds
    the library into a fresh cache (its time is printed apart); later ones load it, as every later run and
    worker does. Target: (b) >= 2x (a) rows/s, with the max abs difference of infermill's output against (a)'s
    probabilities printed (it must be <= 1e-6).

embeddings: the part for transformer encoders through ONNX Runtime plugs in at ``embeddings()`` (a part is a
    function of the parsed arguments returning its summary, its report lines and its targets).

    python bench/bench_accelerate.py                          # every part, 2M rows
    python bench/bench_accelerate.py --rows 200000 --repeat 1 # smoke run
    python bench/bench_accelerate.py --parts tabular          # one part
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import _harness as h
import bench_tabular as bt
import numpy as np
import pyarrow.parquet as pq

TARGET_TABULAR = 2.0
TOLERANCE = 1e-6

Part = tuple[dict[str, Any], list[str], list[h.Target]]
"""What a part returns: its summary (saved as JSON), its report lines and its targets."""


# -- tabular ---------------------------------------------------------------------------------------------


def child_library(args: argparse.Namespace) -> dict[str, Any]:
    """(a): the library's own ``predict_proba`` on the data in memory (bench_tabular's measurement)."""
    return bt.child_predict(args)


def child_compiled(args: argparse.Namespace) -> dict[str, Any]:
    """(b): ``infermill run`` with ``accelerate = "compile"``, and the decision the ledger recorded."""
    import sklearn.ensemble  # noqa: F401 - as in bench_tabular: import time is not measured

    from infermill.engine.profile import acceleration

    result = bt.timed_infermill_run(args.job)
    decisions = acceleration(args.job)
    return {**result, "accelerate": decisions[0] if decisions else None}


def _job(run_dir: Path, dataset: Path, model: Path, args: argparse.Namespace) -> Path:
    job = bt.write_job(run_dir, dataset, model, args.features, args.batch_size)
    text = job.read_text().replace("trusted = true\n", 'trusted = true\naccelerate = "compile"\n')
    job.write_text(text.replace('outputs = ["prediction"]', 'outputs = ["score"]'))
    return job


def _max_abs_diff(out_dir: Path, dataset: Path, model_path: Path, features: int) -> float:
    """infermill's scores against the library's ``predict_proba`` on the same rows (computed here, once)."""
    import joblib

    out = pq.read_table(out_dir, columns=[bt.ID_COLUMN, "score"]).sort_by(bt.ID_COLUMN)
    table = pq.read_table(dataset, columns=[bt.ID_COLUMN, *bt.feature_names(features)])
    table = table.sort_by(bt.ID_COLUMN)
    x = np.column_stack([c.to_numpy() for c in table.columns[1:]]).astype(np.float64)
    reference = joblib.load(model_path).predict_proba(x)[:, 1]
    return float(np.abs(out["score"].to_numpy() - reference).max())


def tabular(args: argparse.Namespace) -> Part:
    h.default_batch_size(args, "sklearn")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    dataset = bt.ensure_dataset(args.data_dir, args.rows, args.features, args.seed)
    model = bt.ensure_model(args.data_dir, args.features, args.seed)
    runs_dir = args.data_dir / "runs" / "accelerate"
    cache = runs_dir / "cache"
    shutil.rmtree(runs_dir, ignore_errors=True)  # a cold cache: the first compiled run builds
    runs_dir.mkdir(parents=True)
    bt._warm(dataset)
    library: list[dict[str, Any]] = []
    compiled: list[dict[str, Any]] = []
    cold: dict[str, Any] = {}
    last_out: Path | None = None
    for i in range(args.repeat + 1):  # round 0's infermill run builds the library: counted apart
        print(f"tabular round {i} of {args.repeat}: library predict_proba, infermill accelerate = \"compile\"",
              flush=True)
        if i > 0:
            library.append(h.spawn(__file__, "library", dataset=dataset, model=model, features=args.features,
                                   batch_size=args.batch_size))
        run_dir = runs_dir / f"run-{i}"
        run_dir.mkdir()
        job = _job(run_dir, dataset, model, args)
        result = h.spawn(__file__, "compiled", job=job, cache=cache)
        if i == 0:
            cold = result
        else:
            compiled.append(result)
        last_out = run_dir / "out"
    assert last_out is not None
    best_library, best_compiled = h.best(library), h.best(compiled)
    ratio = best_compiled["rows_per_s"] / best_library["rows_per_s"]
    diff = _max_abs_diff(last_out, dataset, model, args.features)
    decision = best_compiled.get("accelerate") or {}
    summary = {"library": best_library, "compiled": best_compiled, "cold": cold, "ratio": ratio,
               "max_abs_diff": diff, "rows": args.rows, "features": args.features, "batch_size": args.batch_size}
    lines = [
        f"tabular: HistGradientBoostingClassifier({bt.MAX_ITER}) on {args.rows:,} rows x {args.features}",
        f"  (a) library predict_proba, data in memory   {best_library['seconds']:8.2f}s  "
        f"{h.rate(best_library['rows_per_s'])} rows/s  (runs {best_library['all_seconds']})",
        f"  (b) infermill, accelerate = \"compile\"       {best_compiled['seconds']:8.2f}s  "
        f"{h.rate(best_compiled['rows_per_s'])} rows/s  (runs {best_compiled['all_seconds']}, library from the cache)",
        f"      first run, building the library        {cold['seconds']:8.2f}s  "
        f"(build {((cold.get('accelerate') or {}).get('build_seconds') or 0.0):.2f}s)",
        f"  (b) / (a): {ratio:.2f}x   max abs diff of (b)'s scores vs (a): {diff:.3g}",
        f"  decision: {decision.get('text', 'none recorded')}",
        "  other processes' cores during the counted runs: "
        f"(a) {best_library.get('others_cores')}, (b) {best_compiled.get('others_cores')}",
    ]
    targets: list[h.Target] = [
        ("tabular: (b) compiled infermill / (a) predict_proba", ratio, f">= {TARGET_TABULAR:.1f}",
         ratio >= TARGET_TABULAR),
        ("tabular: max abs diff (b) vs (a) probabilities", diff, f"<= {TOLERANCE:g}", diff <= TOLERANCE),
    ]
    return summary, lines, targets


# -- embeddings ------------------------------------------------------------------------------------------


def embeddings(args: argparse.Namespace) -> Part | None:
    """The transformer-encoder part (ONNX Runtime): added by its own change; None until then."""
    return None


PARTS = {"tabular": tabular, "embeddings": embeddings}
CHILDREN = {"library": child_library, "compiled": child_compiled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_tabular_args(parser)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement; the best counts")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts (default: {','.join(PARTS)})")
    h.add_common_args(parser, list(CHILDREN), ("dataset", "model", "job", "cache"))
    args = parser.parse_args(argv)
    if args.child:
        if args.cache:
            os.environ["INFERMILL_CACHE_DIR"] = args.cache
        print(json.dumps(CHILDREN[args.child](args), default=str), flush=True)
        return 0
    loadavg_before = h.machine()["loadavg"]
    summary: dict[str, Any] = {}
    lines: list[str] = []
    targets: list[h.Target] = []
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if name not in PARTS:
            parser.error(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
        part = PARTS[name](args)
        if part is None:
            lines.append(f"{name}: not measured here (no such part yet)")
            continue
        summary[name], part_lines, part_targets = part
        lines += part_lines
        targets += part_targets
    summary["targets"] = targets
    summary["config"] = {"repeat": args.repeat, "seed": args.seed, **h.machine(), "loadavg_before": loadavg_before,
                         "loadavg_after": h.machine()["loadavg"]}
    lines += [f"load average before/after: {loadavg_before} / {summary['config']['loadavg_after']}"]
    h.save(args.results_dir, "accelerate", summary, "\n".join(lines + h.target_lines(targets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
