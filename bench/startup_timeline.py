"""Where a small job's wall time goes: a timeline of one ``infermill run JOB`` from process start to exit.

    python bench/startup_timeline.py JOB.toml [--repeat 3] [--keep-output]

Runs the job ``--repeat`` times, each in a fresh interpreter (this script with ``--child``), and prints, for
the fastest run, when each step began and ended, in milliseconds since the process was started (the parent
notes the time just before it starts the child; the child's marks use the same wall clock). The child wraps
a few of infermill's functions with timestamps; nothing else about the run changes. Steps:

  interpreter    until this script's first line (Python start-up, site-packages)
  import cli     ``import infermill.cli``
  spec           loading and validating the job file
  ledger open    taking the job's lease (the SQLite ledger opened, or created)
  plan           listing the input, planning shards, the model fingerprint, the ledger's job record
  executor       choosing and starting the executor (processes, when the plan has several workers)
  worker:*       inside the (first) worker: source, sink, model adapter, ``setup()`` (the model load)
  first batch    the first ``predict`` call
  commit         each shard's commit (``commit_shard``)
  finish         the manifest and the job's end in the ledger
  exit           from ``run()`` returning to the process's exit, as the parent saw it

Every run deletes the job's output folder and ``.infermill/`` ledger first (``--keep-output`` to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKS: list[tuple[str, str, float]] = []
_LOCK = threading.Lock()


def _mark(name: str, edge: str) -> None:
    with _LOCK:
        MARKS.append((name, edge, time.time()))


def _wrap(owner: Any, attr: str, name: str, once: bool = False) -> None:
    original: Callable[..., Any] = getattr(owner, attr)
    seen = [False]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record = not (once and seen[0])
        seen[0] = True
        if record:
            _mark(name, "start")
        try:
            return original(*args, **kwargs)
        finally:
            if record:
                _mark(name, "end")

    setattr(owner, attr, wrapper)


def child(job: str) -> None:
    _mark("interpreter", "end")
    _mark("import cli", "start")
    import infermill.cli as cli

    _mark("import cli", "end")
    _mark("import engine", "start")
    from infermill.engine import runner, worker

    _mark("import engine", "end")
    from infermill.engine import executor as executor_mod
    from infermill.engine import lease

    _wrap(runner, "as_spec", "spec")
    _wrap(lease, "as_spec", "spec")
    _wrap(runner, "holding", "ledger open (enter)")
    _wrap(runner._Coordinator, "_plan", "plan")
    _wrap(runner, "resolve_batch_size", "batch size")
    _wrap(runner, "make_executor", "executor (make)")
    for cls in (executor_mod.InlineExecutor, executor_mod.ProcessExecutor):
        _wrap(cls, "start", f"executor start ({cls.__name__})")
    _wrap(worker, "open_source", "worker: open source", once=True)
    _wrap(worker, "open_sink", "worker: open sink", once=True)
    original_load = worker.load_adapter

    def load_adapter(*args: Any, **kwargs: Any) -> Any:
        _mark("worker: load adapter", "start")
        adapter = original_load(*args, **kwargs)
        _mark("worker: load adapter", "end")
        _wrap(adapter, "setup", "worker: setup (model load)")
        _wrap(adapter, "predict", "first batch (predict)", once=True)
        return adapter

    worker.load_adapter = load_adapter
    _wrap(runner, "commit_shard", "commit")
    _wrap(runner._Coordinator, "_finish", "finish")
    _wrap(runner, "run", "run()")
    code = 0
    try:
        cli.main(["run", job, "--progress", "off"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    print(json.dumps({"marks": MARKS, "code": code}), flush=True)
    # What follows is timed by the parent as "exit": the command's own way out when it has one
    # (``cli.exit_fast``), else the interpreter's teardown.
    exit_fast = getattr(cli, "exit_fast", None)
    if exit_fast is not None:
        exit_fast(code)


def one_run(job: Path, keep: bool) -> dict[str, Any]:
    if not keep:
        shutil.rmtree(job.parent / ".infermill", ignore_errors=True)
        shutil.rmtree(job.parent / "out", ignore_errors=True)
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", str(job)], stdout=subprocess.PIPE, text=True,
                          cwd=job.parent)
    ended = time.time()
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(started=started, ended=ended, total=ended - started)
    return result


def report(run: dict[str, Any]) -> str:
    t0 = run["started"]
    spans: dict[str, list[float]] = {}
    order: list[str] = []
    for name, edge, at in run["marks"]:
        if name not in spans:
            spans[name] = [float("nan"), float("nan")]
            order.append(name)
        ms = (at - t0) * 1000
        if edge == "start" and spans[name][0] != spans[name][0]:
            spans[name][0] = ms
        if edge == "end":
            spans[name][1] = ms
    spans["interpreter"][0] = 0.0
    last = max(end for _start, end in spans.values() if end == end)
    spans["exit"] = [last, run["total"] * 1000]
    order.append("exit")
    lines = [f"{'step':<36}{'start ms':>10}{'end ms':>10}{'took ms':>10}"]
    for name in order:
        start, end = spans[name]
        lines.append(f"{name:<36}{start:>10.0f}{end:>10.0f}{end - start:>10.0f}")
    lines.append(f"{'total (process start to exit)':<36}{'':>10}{run['total'] * 1000:>10.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(str(args.job))
        return 0
    runs = [one_run(args.job.resolve(), args.keep_output) for _ in range(args.repeat)]
    fastest = min(runs, key=lambda r: r["total"])
    totals = ", ".join(f"{r['total']:.2f}" for r in runs)
    print(f"{args.job}: {len(runs)} runs, {totals} s; the fastest:")
    print(report(fastest))
    print(f"load average: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
