"""Tabular benchmark against Ray Data: the same data, model and output as bench_tabular.py's (b).

In one run, taking turns, each in a fresh child process:

  (b) infermill end to end (bench_tabular.py's own measurement, ``workers = 1``);
  (r) Ray Data: ``read_parquet`` -> ``map_batches`` (an actor that loads the joblib model once and calls
      ``predict_proba``; ``concurrency=1, num_cpus=1``) -> ``write_parquet``, timed end to end after
      ``ray.init(num_cpus=2)``; the ``ray.init`` time is reported separately and not counted.

Target: (b) / (r) rows/s >= 3.

    python bench/bench_ray.py                      # 2M rows, best of 3
    python bench/bench_ray.py --rows 200000        # smoke run
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
import numpy as np
import pyarrow.parquet as pq

TARGET_RATIO = 3.0


class Scorer:
    """The Ray Data actor: loads the model once, scores numpy batches."""

    def __init__(self, model_path: str, features: list[str], id_column: str) -> None:
        import joblib

        self.model = joblib.load(model_path)
        self.features = features
        self.id_column = id_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.column_stack([batch[n] for n in self.features]).astype(np.float64, copy=False)
        # Only names from the constructor: Ray pickles this class by value, and bench_tabular is not
        # importable in Ray's worker processes.
        return {self.id_column: batch[self.id_column], "prediction": self.model.predict_proba(x)[:, 1]}


def child_ray(args: argparse.Namespace) -> dict[str, Any]:
    import sklearn.ensemble  # noqa: F401 - import time is not measured, as in bench_tabular

    init_s = h.ray_init()
    import ray
    import ray.data

    files = [str(f) for f in tabular._files(Path(args.dataset))]
    names = tabular.feature_names(int(args.features))
    started = time.perf_counter()
    ds = ray.data.read_parquet(files)  # the files hold just the id and the features
    ds = ds.map_batches(Scorer, fn_constructor_args=(args.model, names, tabular.ID_COLUMN),
                        batch_size=int(args.batch_size), batch_format="numpy", num_cpus=1, **h.one_actor())
    ds.write_parquet(args.out)
    seconds = time.perf_counter() - started
    ray.shutdown()
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(args.out).glob("*.parquet"))
    return {"rows": rows, "seconds": seconds, "ray_init_seconds": init_s}


CHILDREN = {"ray": child_ray}


def report(summary: dict[str, Any]) -> str:
    cfg, b, r = summary["config"], summary["infermill"], summary.get("ray")
    lines = [
        f"infermill vs Ray Data, tabular: {cfg['rows']:,} rows x {cfg['features']} features, "
        f"HistGradientBoostingClassifier(max_iter={tabular.MAX_ITER}), batch {cfg['batch_size']:,}, "
        f"{cfg['cpus']} CPUs, best of {cfg['repeat']}, ray {cfg.get('ray', '-')}",
        "",
        f"{'measurement':<52}{'rows/s':>10}{'seconds':>10}{'others':>8}",
        f"{'(b) infermill end to end (workers = 1)':<52}{h.rate(b['rows_per_s']):>10}{b['seconds']:>10.2f}"
        f"{b.get('others_cores', '?'):>8}",
    ]
    if r is not None:
        lines.append(f"{'(r) Ray Data read_parquet/map_batches/write_parquet':<52}{h.rate(r['rows_per_s']):>10}"
                     f"{r['seconds']:>10.2f}{r.get('others_cores', '?'):>8}")
        lines.append(f"    ray.init (not counted): {r['ray_init_seconds']:.2f}s; all runs (s): (b) {b['all_seconds']}, "
                     f"(r) {r['all_seconds']}")
    else:
        lines.append(f"    (r) skipped: {h.RAY_MISSING}")
    lines.append(f"    load average (1 min) before and after: {cfg['loadavg_before']} -> {cfg['loadavg_after']}; "
                 "'others' = cores used by other processes during the counted run"
                 " (for (r) this includes Ray's own daemons)")
    return "\n".join(lines + h.target_lines(summary["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_tabular_args(parser)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (b), (r); the best of each counts")
    h.add_common_args(parser, list(CHILDREN), ("dataset", "model", "out"))
    args = parser.parse_args(argv)
    h.default_batch_size(args, "sklearn")
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    ray = h.has_ray()
    if not ray:
        # Without Ray there is nothing to compare against: say so and leave (make bench carries on).
        print(h.RAY_MISSING, flush=True)
        return 0
    args.data_dir.mkdir(parents=True, exist_ok=True)
    dataset = tabular.ensure_dataset(args.data_dir, args.rows, args.features, args.seed)
    model = tabular.ensure_model(args.data_dir, args.features, args.seed)
    runs_dir = args.data_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    tabular._warm(dataset)
    loadavg_before = h.machine()["loadavg"]
    engines: list[dict[str, Any]] = []
    rays: list[dict[str, Any]] = []
    for i in range(args.repeat):
        print(f"round {i + 1} of {args.repeat}: (b) infermill" + (", (r) Ray Data" if ray else ""), flush=True)
        engines.append(tabular.measure_infermill(runs_dir, dataset, model, args))
        if ray:
            out = Path(tempfile.mkdtemp(prefix="ray-", dir=runs_dir))
            try:
                rays.append(h.spawn(__file__, "ray", dataset=dataset, model=model, features=args.features,
                                    batch_size=args.batch_size, out=out / "out"))
            finally:
                shutil.rmtree(out, ignore_errors=True)
    summary: dict[str, Any] = {"infermill": h.best(engines)}
    found: list[h.Target] = []
    if rays:
        summary["ray"] = h.best(rays)
        ratio = summary["infermill"]["rows_per_s"] / summary["ray"]["rows_per_s"]
        found.append(("(b) infermill / (r) Ray Data rows/s", ratio, f">= {TARGET_RATIO:.1f}", ratio >= TARGET_RATIO))
    summary["targets"] = found
    summary["config"] = {"rows": args.rows, "features": args.features, "batch_size": args.batch_size,
                         "repeat": args.repeat, "seed": args.seed, **h.machine(),
                         "loadavg_before": loadavg_before, "loadavg_after": h.machine()["loadavg"]}
    if ray:
        import ray as ray_module

        summary["config"]["ray"] = ray_module.__version__
    h.save(args.results_dir, "ray", summary, report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
