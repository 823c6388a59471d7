"""Remote model servers at high concurrency (issue 17 part 2): `infermill run` against a plain aiohttp script.

A stub OpenAI-compatible chat server (``infermill.testing.latency_server``: asyncio, its own process,
answering after ``--delay`` seconds, 50 ms by default) is started once for the whole run. For each
concurrency in ``--concurrency`` (8, 32, 128), two contenders send the same ``--prompts`` requests
(4,000), each as a whole process, timed from start to exit:

(i) infermill: ``python -m infermill run job.toml`` (Parquet in, ``kind = "http"``, ``protocol =
    "openai-chat"``, ``concurrency = C``, Parquet out, ledger), in a fresh folder each time;
(p) a plain aiohttp script (this file with ``--child aiohttp``): reads the same Parquet prompts, sends one
    chat request per prompt through one ``aiohttp.ClientSession`` with an ``asyncio.Semaphore(C)``, and
    writes the answers to Parquet.

Each pair runs ``--repeat`` times (contenders taking turns), the fastest run of each counts. Printed per
concurrency: seconds, the ideal (``prompts / C x delay``), the ratio (p) / (i) seconds (target >= 0.8)
and each side's CPU per request in ms (user + system of the whole process tree, from ``getrusage``).

    python bench/bench_http.py                     # 4,000 prompts, best of 3
    python bench/bench_http.py --prompts 400 --repeat 1   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h
import pyarrow as pa
import pyarrow.parquet as pq

BENCH_DIR = Path(__file__).resolve().parent
TARGET = 0.8


def child_aiohttp(args: argparse.Namespace) -> None:
    """The plain client a user would write: read the prompts, send them all, write the answers."""
    import aiohttp

    table = pq.read_table(args.input)
    ids, prompts = table.column("id").to_pylist(), table.column("prompt").to_pylist()
    url = args.url + "/v1/chat/completions"

    async def main() -> list[str]:
        semaphore = asyncio.Semaphore(args.concurrency)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(prompt: str) -> str:
                body = {"model": "stub", "messages": [{"role": "user", "content": prompt}]}
                async with semaphore, session.post(url, json=body) as response:
                    response.raise_for_status()
                    data = await response.json()
                text: str = data["choices"][0]["message"]["content"]
                return text

            return await asyncio.gather(*(one(p) for p in prompts))

    texts = asyncio.run(main())
    pq.write_table(pa.table({"id": ids, "text": texts}), args.out)


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv`` as a process: (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def write_job(folder: Path, data: Path, url: str, concurrency: int) -> Path:
    job = folder / "job.toml"
    job.write_text(
        f'[input]\npath = "{data}"\nid_column = "id"\n'
        f'[model]\nkind = "http"\nprotocol = "openai-chat"\nurl = "{url}"\nmodel = "stub"\n'
        f'outputs = ["text"]\nconcurrency = {concurrency}\n'
        f'[output]\npath = "{folder / "out"}"\n'
    )
    return job


def check_infermill_output(folder: Path, n: int) -> None:
    table = pq.read_table(folder / "out", columns=["id", "text"]).sort_by("id")
    expected = [f"echo: {prompt(i)}" for i in range(n)]
    if table.num_rows != n or table.column("text").to_pylist() != expected:
        raise SystemExit(f"infermill wrote {table.num_rows} rows, not the {n} expected answers")


def prompt(i: int) -> str:
    # Varied lengths, as prompts are: 3 to 60 words.
    return f"prompt {i}: " + " ".join(["word"] * (3 + (i * 7919) % 58))


def run(args: argparse.Namespace) -> None:
    from infermill.testing.latency_server import LatencyServer

    env = dict(os.environ)
    src = str(BENCH_DIR.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        data = work / "prompts.parquet"
        n = args.prompts
        pq.write_table(pa.table({"id": list(range(n)), "prompt": [prompt(i) for i in range(n)]}), data)
        rows: list[dict[str, Any]] = []
        with LatencyServer(delay=args.delay) as server:
            for concurrency in args.concurrency:
                runs: dict[str, list[tuple[float, float]]] = {"infermill": [], "aiohttp": []}
                for attempt in range(args.repeat):
                    folder = work / f"c{concurrency}-{attempt}"
                    folder.mkdir()
                    job = write_job(folder, data, server.url, concurrency)
                    runs["infermill"].append(measure([sys.executable, "-m", "infermill", "run", str(job),
                                                      "--progress", "off", "--quiet"], env))
                    check_infermill_output(folder, n)
                    runs["aiohttp"].append(measure([
                        sys.executable, str(Path(__file__).resolve()), "--child", "aiohttp", "--url", server.url,
                        "--input", str(data), "--out", str(folder / "aiohttp.parquet"),
                        "--concurrency", str(concurrency),
                    ], env))
                    shutil.rmtree(folder)
                best = {name: min(found) for name, found in runs.items()}
                rows.append({
                    "concurrency": concurrency,
                    "ideal_s": n / concurrency * args.delay,
                    "infermill_s": best["infermill"][0],
                    "aiohttp_s": best["aiohttp"][0],
                    "ratio": best["aiohttp"][0] / best["infermill"][0],
                    "infermill_cpu_ms_per_request": best["infermill"][1] / n * 1e3,
                    "aiohttp_cpu_ms_per_request": best["aiohttp"][1] / n * 1e3,
                    "all_infermill_s": [round(w, 3) for w, _ in runs["infermill"]],
                    "all_aiohttp_s": [round(w, 3) for w, _ in runs["aiohttp"]],
                })
                print(f"concurrency {concurrency}: infermill {rows[-1]['all_infermill_s']} s, "
                      f"aiohttp {rows[-1]['all_aiohttp_s']} s", flush=True)
            served = server.stats()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = [f"{x:.2f}" for x in os.getloadavg()]
    lines = [
        f"{n} prompts, server latency {args.delay * 1e3:.0f} ms, best of {args.repeat}; "
        f"load average {' '.join(load)}",
        "",
        f"{'concurrency':>11} {'infermill s':>12} {'aiohttp s':>10} {'ideal s':>8} {'ratio':>6} "
        f"{'infermill CPU ms/req':>21} {'aiohttp CPU ms/req':>19}",
    ]
    for r in rows:
        lines.append(
            f"{r['concurrency']:>11} {r['infermill_s']:>12.2f} {r['aiohttp_s']:>10.2f} {r['ideal_s']:>8.2f} "
            f"{r['ratio']:>6.2f} {r['infermill_cpu_ms_per_request']:>21.2f} {r['aiohttp_cpu_ms_per_request']:>19.2f}"
        )
    targets = [(f"aiohttp s / infermill s at concurrency {r['concurrency']}", r["ratio"], f">= {TARGET}",
                r["ratio"] >= TARGET) for r in rows]
    lines += h.target_lines(targets)
    summary = {"machine": h.machine(), "prompts": n, "delay_s": args.delay, "loadavg": load, "rows": rows,
               "server": served}
    h.save(args.results_dir, "http", summary, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--delay", type=float, default=0.05, help="the stub server's latency, seconds")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[8, 32, 128],
                        help="comma-separated, default 8,32,128")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--child", choices=["aiohttp"], help=argparse.SUPPRESS)
    for hidden in ("url", "input", "out"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "aiohttp":
        args.concurrency = args.concurrency[0]
        child_aiohttp(args)
        return
    run(args)


if __name__ == "__main__":
    main()
