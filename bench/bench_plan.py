"""Plan once: time to the first scored batch for a fresh run and for a resume, and list calls per run.

A fresh run lists the input and reads every Parquet footer to plan its shards; a resume of the same job
over an unchanged input takes its shards from the ledger (``engine/plan.py``). Measured in one process
per run (the first ``Progress`` event, through a run subscriber, marks the first scored batch):

- local: a folder of 20,000 Parquet files of 100 rows (``bench_files.py``'s data);
- s3: 5,000 objects of 100 rows in moto's S3 server on 127.0.0.1 (``--s3``), output to the same server,
  with 1 and with 2 worker processes. The runs reach moto through ``infermill.testing.faulty_proxy``
  (no faults), which counts the LIST requests (ListObjectsV2) each run sent for the input prefix.

The resume is made by deleting one committed part after a complete run: the next run sends that shard
back to pending and recomputes it, so it plans (or does not) exactly as a resume after a crash does.
"listings" counts infermill's listings of the input (``list_input``) in the run's process; worker
processes are counted by the LIST requests the proxy saw.

    python bench/bench_plan.py                 # local only
    python bench/bench_plan.py --s3            # and the S3 leg
    python bench/bench_plan.py --s3 --skip-local --objects 500   # a quick S3 smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_files

CHILD = textwrap.dedent("""\
    import json, sys, time
    started = time.perf_counter()
    import infermill
    from infermill.engine.events import Progress
    from infermill.sources import _files
    calls = {"list": 0}
    real = _files.list_input
    def counting(*args, **kwargs):
        calls["list"] += 1
        return real(*args, **kwargs)
    _files.list_input = counting
    first = {}
    class First:
        def on_event(self, event):
            if isinstance(event, Progress) and "t" not in first:
                first["t"] = time.perf_counter() - started
    result = infermill.run(sys.argv[1], progress="off", subscribers=[First()])
    print(json.dumps({"first_batch_s": first.get("t"), "total_s": time.perf_counter() - started,
                      "list_calls": calls["list"], "rows_this_run": result.rows_this_run}))
""")


def _job(folder: Path, data: str, storage: str = "", output: str = "out", workers: int = 1) -> Path:
    model = "class Model:\n    def predict(self, batch):\n        return {'y': batch['f00']}\n"
    (folder / "model.py").write_text(model)
    job = folder / "job.toml"
    job.write_text(
        f'name = "plan"\n[input]\npath = "{data}"\nformat = "parquet"\nid_column = "id"\nshard_rows = 100000\n'
        f'{storage}[model]\nkind = "python"\nentrypoint = "model.py:Model"\nfeatures = ["f00"]\noutputs = ["y"]\n'
        f'[output]\npath = "{output}"\n{storage if output != "out" else ""}[runtime]\nworkers = {workers}\n'
    )
    return job


def _run(job: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(job)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def _drop_local_part(job: Path) -> None:
    sorted((job.parent / "out").glob("part-*.parquet"))[0].unlink()


def measure(
    label: str,
    job: Path,
    env: dict[str, str] | None = None,
    drop_part: Callable[[], None] | None = None,
    list_requests: Callable[[], int] | None = None,
) -> list[str]:
    """A fresh run, then a resume after one committed part was deleted (``drop_part``); ``list_requests``
    reads a counter of LIST requests sent to the store, if there is one."""
    runs = []
    for _ in ("fresh", "resume"):
        before = list_requests() if list_requests else 0
        result = _run(job, env)
        result["list_requests"] = list_requests() - before if list_requests else None
        runs.append(result)
        if len(runs) == 1:
            (drop_part or (lambda: _drop_local_part(job)))()
    lines = []
    for name, r in zip(("fresh", "resume"), runs, strict=True):
        requests = f"   LIST requests {r['list_requests']}" if r["list_requests"] is not None else ""
        lines.append(
            f"{label:<30} {name:<7} first batch {r['first_batch_s']:6.2f} s   whole run {r['total_s']:6.2f} s   "
            f"listings {r['list_calls']}{requests}   rows this run {r['rows_this_run']:,}"
        )
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_leg(objects: int, workers: list[int], latency_ms: float = 0.0) -> list[str]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from infermill.testing.faulty_proxy import Fault, FaultyProxy

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        direct = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        fs = s3fs.S3FileSystem(**direct)
        fs.mkdir("bench")
        print(f"uploading {objects:,} objects of 100 rows to moto ...", flush=True)
        started = time.perf_counter()
        for first in range(0, objects, 500):
            batch = {}
            for i in range(first, min(objects, first + 500)):
                table = pa.table({"id": pa.array(range(i * 100, (i + 1) * 100), pa.int64()),
                                  "f00": pa.array([float(j) for j in range(100)])})
                buffer = io.BytesIO()
                pq.write_table(table, buffer)
                batch[f"bench/data/part-{i:05d}.parquet"] = buffer.getvalue()
            fs.pipe(batch)  # concurrent PUTs
        print(f"uploaded in {time.perf_counter() - started:.1f} s", flush=True)
        lines = []
        # --latency-ms: every request waits that long in the proxy, as across a network to a real store.
        delay = [Fault("delay", seconds=latency_ms / 1000, times=None)] if latency_ms else []
        with FaultyProxy(direct["endpoint_url"], delay) as proxy:
            options = {**direct, "endpoint_url": proxy.url}
            storage = "storage_options = " + json.dumps(options).replace('": ', '" = ').replace('{"', '{ "') + "\n"
            for count in workers:
                folder = Path(tempfile.mkdtemp(prefix="bench-plan-s3-"))
                out = f"bench/out-{count}"
                job = _job(folder, "s3://bench/data/", storage, output=f"s3://{out}/", workers=count)

                def drop(out: str = out) -> None:
                    fs.invalidate_cache()
                    fs.rm_file(sorted(fs.glob(f"{out}/part-*.parquet"))[0])

                latency = f", +{latency_ms:g} ms" if latency_ms else ""
                lines += measure(
                    f"s3, {objects:,} objects, {count} worker{'s' if count > 1 else ''}{latency}", job, env, drop,
                    lambda: proxy.count("GET", r"list-type=2.*prefix=data"),
                )
        return lines
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--s3", action="store_true", help="also measure 5,000 objects in moto's S3 server")
    parser.add_argument("--objects", type=int, default=5_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts of the S3 leg")
    parser.add_argument("--skip-local", action="store_true", help="only the S3 leg")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="S3 leg: latency the proxy adds to every request")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parent / "data"))
    args = parser.parse_args()
    lines: list[str] = []
    if not args.skip_local:
        data = bench_files.make_data(Path(args.data_dir), args.files, 100, 0)
        folder = Path(tempfile.mkdtemp(prefix="bench-plan-"))
        lines += measure(f"local, {args.files:,} files", _job(folder, str(data)))
    if args.s3:
        lines += s3_leg(args.objects, args.workers, args.latency_ms)
    print("\nplan once: time to the first scored batch (fresh plans; a resume takes the plan from the ledger)")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
