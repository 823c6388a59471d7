"""The ``infermill`` command: a thin layer over the library, one command per library call."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import os
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO, cast

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, InfermillError
from .observe.progress import plural

__all__ = ["main"]

EXIT_CODES = """\
exit codes:
  0   the job is complete (or there was nothing left to do)
  1   the job failed (some shards failed, a fatal error, an internal error); verify: output damaged
  2   invalid job file, input, model or usage
  3   another run of this job is active (see --wait); retry later
  75  interrupted (SIGTERM/SIGINT) or a transient error; committed work is kept, rerun to resume
  (a stable contract: docs/scheduling.md; a process killed by a signal is a failure, never a success)
"""

def _example_job() -> str:
    """The example job of ``run --help``, listing the formats the registry knows (plugins' too)."""
    from . import registry

    return EXAMPLE_JOB.replace("{sources}", " | ".join(registry.names("sources"))).replace(
        "{sinks}", " | ".join(registry.names("sinks"))
    )


EXAMPLE_JOB = """\
example job file (job.toml):
  name = "churn-scores"
  [input]
  path = "data/customers/*.parquet"     # file, directory, glob or fsspec URL
  id_column = "customer_id"             # optional: else a stable synthetic _row_id
  format = "parquet"                    # {sources}
                                        # (default: from the extension; sql: from url = "postgresql://..."
                                        # or "sqlite:///...")
  [model]
  kind = "sklearn"                      # python | sklearn | onnx | torch | hf | sentence-transformers
                                        # | llm | http | mlflow
  path = "models/churn.joblib"
  trusted = true                        # joblib/pickle can run code: only for files you trust
  outputs = ["score"]
  [batch]
  size = 65536                          # rows per call; default by kind (sklearn/onnx 65,536, else 8,192)
  [output]
  path = "out/churn/"
  format = "parquet"                    # {sinks}
  [runtime]
  workers = 1
"""


def _print_error(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc) if isinstance(exc, InfermillError) else f"{type(exc).__name__}: {exc}"
    print(f"error: {text}", file=sys.stderr)
    if not isinstance(exc, InfermillError) and not debug:
        print("  (an unexpected error; rerun with --debug for the traceback and report it)", file=sys.stderr)


def _progress_mode(args: argparse.Namespace) -> Any:
    if getattr(args, "quiet", False):
        return "off"
    return getattr(args, "progress", None)


def _param_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--param", action="append", metavar="NAME=VALUE",
        help="a value for a placeholder of [input] path, e.g. --param date=2026-12-01 for data/{date}/*.parquet "
        "(repeatable; {date} defaults to today in [runtime] timezone)",
    )


def _params(values: list[str] | None) -> dict[str, str]:
    """``--param NAME=VALUE`` options as a mapping."""
    params: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            from .errors import SpecError

            raise SpecError(f"--param {item!r} is not NAME=VALUE", hint="e.g. `--param date=2026-12-01`")
        params[name] = value
    return params


def _job(args: argparse.Namespace) -> Any:
    """The job as the command names it: the file, loaded with its ``--param`` values when given."""
    params = _params(getattr(args, "param", None))
    if not params:
        return args.job
    from .spec import load_spec

    return load_spec(args.job, params=params)


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import run
    from .integrations.dagster_pipes import launched_by_pipes

    if launched_by_pipes(args.dagster_pipes):
        return _run_with_pipes(args)
    if args.summary_json:
        return _run_with_summary(args)
    result = run(
        _job(args), restart=args.restart, full=args.full, wait=args.wait, progress=_progress_mode(args)
    )
    _print_result(args, result)
    return 0


def _run_with_pipes(args: argparse.Namespace) -> int:
    """``run`` launched by Dagster Pipes: progress, the materialization and the budget check reported
    through Pipes (infermill/integrations/dagster_pipes.py); ends as ``run`` would."""
    import time

    from .integrations.dagster_pipes import pipes_session, require_dagster_pipes

    started = time.time()
    try:
        require_dagster_pipes()
    except InfermillError as exc:
        if args.summary_json:  # the summary is written whatever the outcome, this one included
            from .engine.summary import run_summary, write_summary

            write_summary(args.summary_json, run_summary(
                args.job, error=exc, exit_code=exc.exit_code, started_at=started, ended_at=time.time(),
                params=_params(getattr(args, "param", None))))
        raise
    with pipes_session(args.job, _params(getattr(args, "param", None))) as session:
        return _run_with_summary(args, subscribers=[session.subscriber], on_summary=session.report)


def _run_with_summary(
    args: argparse.Namespace, subscribers: list[Any] | None = None, on_summary: Any = None
) -> int:
    """``run`` that writes the run summary (``--summary-json``; and hands it to ``on_summary``) whatever the
    outcome, then ends as ``run`` would."""
    import time

    from .engine import run
    from .engine.summary import exit_code_of, run_summary, write_summary

    def deliver(summary: dict[str, Any]) -> None:
        if args.summary_json:
            write_summary(args.summary_json, summary)
        if on_summary is not None:
            on_summary(summary)

    started = time.time()
    params = _params(getattr(args, "param", None))
    try:
        result = run(
            _job(args), restart=args.restart, full=args.full, wait=args.wait, progress=_progress_mode(args),
            subscribers=subscribers or (),
        )
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code_of(exc)
        deliver(run_summary(
            args.job, error=exc, exit_code=code, started_at=started, ended_at=time.time(), params=params))
        raise
    deliver(run_summary(
        args.job, result=result, exit_code=result.exit_code, started_at=started, ended_at=time.time(),
        params=params))
    _print_result(args, result)
    return 0


def _print_result(args: argparse.Namespace, result: Any) -> None:
    for line in result.lines():
        print(line)
    if not result.already_complete and not getattr(args, "quiet", False):
        for line in result.verdict:
            print(line)


def cmd_serve(args: argparse.Namespace) -> int:
    from .schedule.serve import serve

    return serve(args.jobs, poll_seconds=args.poll)


def cmd_runs(args: argparse.Namespace) -> int:
    from .schedule.history import format_time, runs

    entries = runs(args.job)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], sort_keys=True))
        return 0
    if not entries:
        print(f"{args.job}: no runs yet")
        return 0
    print(f"{'RUN':>5}  {'STARTED':<19}  {'STATE':<11}  {'TRIGGER':<36}  {'DATE':<10}  {'ROWS':>10}  MESSAGE")
    for e in entries:
        run = "-" if e.run_id is None else str(e.run_id)
        message = (e.message or "").splitlines()[0] if e.message else ""
        print(f"{run:>5}  {format_time(e.started_at):<19}  {e.state:<11}  {e.trigger[:36]:<36}  "
              f"{e.logical_date or '-':<10}  {e.rows_done:>10,}  {message[:80]}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .engine.profile import acceleration, profile

    report = profile(args.job)
    accelerate = acceleration(args.job)
    if args.json:
        print(json.dumps({**report.as_dict(), "accelerate": accelerate}, sort_keys=True))
        return 0
    for line in report.lines():
        print(line)
    for item in accelerate:
        print(f"  accelerate: {item['text']} ({plural(item['shards'], 'shard')})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .engine import status

    info = status(_job(args))
    if args.json:
        print(json.dumps(info, default=str, sort_keys=True))
        return 0
    # Until a CSV or JSONL job completes its row count is unknown: say so rather than "N of ?".
    total = f" of {info['rows_total']:,}" if info["rows_total"] is not None else ""
    print(f"job:     {info['job']}")
    print(f"state:   {info['state']}")
    print(f"rows:    {info['rows_succeeded']:,}{total} succeeded, {info['rows_failed']:,} failed")
    print(f"shards:  {info['shards_committed']} of {info['shards_total']} committed, {info['shards_failed']} failed")
    print(f"runs:    {info['runs']}")
    if info.get("holder"):
        h = info["holder"]
        print(f"holder:  host {h['host']}, pid {h['pid']}")
    if info["last_run"] and info["last_run"].get("message"):
        print(f"last:    {info['last_run']['message']}")
    for row in info["failed_shards"][:10]:
        print(f"failed:  {row['shard']}: {row['error']}")
    for text in info.get("damaged_parts", [])[:10]:
        print(f"damaged: {text}")
    if info.get("damaged_parts"):
        print(f"         rerun `infermill run {args.job}` to recompute them")
    for text in info.get("input_changes", [])[:10]:
        print(f"changed: {text}")
    if info.get("input_changes"):
        print(f"         `infermill run {args.job} --restart` reads the input again from the start")
    for item in info.get("accelerate", []):
        print(f"accel:   {item['text']} ({plural(item['shards'], 'shard')})")
    print(f"output:  {info['output']}")
    print(f"ledger:  {info['ledger']}")
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    from .engine.failures import failures

    info = failures(args.job, limit=args.limit)
    if args.json:
        print(json.dumps(info, default=str, sort_keys=True))
        return 0
    if not info["rows_failed"]:
        print(f"{info['job']}: no dead-lettered items")
        return 0
    print(f"{info['job']}: {plural(info['rows_failed'], 'dead-lettered item')} (files in {info['errors_dir']})")
    width = max(len(g["error_class"]) for g in info["groups"])
    for group in info["groups"]:
        example = group["example"].splitlines()[0] if group["example"] else ""
        if len(example) > 100:
            example = example[:97] + "..."
        print(f"  {group['count']:>8,}  {group['error_class']:<{width}}  {group['error_kind']:<9}  e.g. {example}")
    kinds = {group["error_kind"] for group in info["groups"]}
    if kinds - {"input"}:
        print("fix the model or the data, then reprocess only these items: infermill retry JOB")
    if "input" in kinds:
        # A retry reads the same bytes again; a fixed file changes the input, and a plain run (incremental)
        # recomputes that file's shards.
        print(
            "class input: the rows could not be read from the input files (file and byte offset shown); "
            "fix or remove them there, then rerun: infermill run JOB (it recomputes the fixed files' shards)"
        )
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from .engine.retry import retry

    result = retry(args.job, wait=args.wait)
    print(f"{result.job}: {result.message}")
    print(f"  rows: {result.rows_succeeded:,} succeeded, {result.rows_failed:,} failed")
    if result.manifest_path:
        print(f"  manifest: {result.manifest_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .engine.outputs import verify

    report = verify(args.job)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        for line in report.lines():
            print(line)
        if report.intact:
            print("ok: the committed output is intact")
        else:
            print(f"damaged: rerun `infermill run {args.job}` to recompute the damaged shards")
    return 0 if report.intact else EXIT_FAILED


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import schema_text

    text = schema_text()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote the job file's JSON Schema to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .engine.validate import validate

    report = validate(_job(args))
    for line in report:
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _result, text = run_demo(args.directory, rows=args.rows, progress=_progress_mode(args))
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="infermill",
        description="Run a model over a large dataset: sharded, streamed, exactly once, resumable.",
        epilog=EXIT_CODES + "\nRun `infermill demo` for a complete example.",
        formatter_class=formatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"infermill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str) -> Any:
        p = sub.add_parser(
            name,
            help=summary,
            description=textwrap.dedent(description),
            epilog=EXIT_CODES,
            formatter_class=formatter,
        )
        p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        p.set_defaults(func=func)
        return p

    p = add(
        "run",
        cmd_run,
        "run a job (or resume it after a crash)",
        # Dedented on its own: the example's indentation must survive the dedent of the whole text.
        textwrap.dedent("""\
        Run JOB: plan shards from the input, score them with the model, commit each shard's results
        atomically and record it in the ledger. Rerunning after a crash, kill or preemption resumes
        where it stopped; rerunning a complete job does nothing. If the spec or model changed since
        the last run, infermill refuses to mix results: use --restart to start over.

        If only the input changed (files added, changed or deleted), the rerun is incremental: it
        prints what changed, scores only new and changed files (a changed file's shards are
        recomputed, no others), and removes the rows of deleted files from the output ([input]
        on_deleted = "keep" keeps them); the manifest describes the whole output after. --full
        recomputes everything over the input as it is now. [input] path may be a template,
        "data/{date}/*.parquet", filled by --param date=2026-12-01 ({date} defaults to today in
        [runtime] timezone, default UTC).

        """)
        + _example_job(),
    )
    p.add_argument("job", help="the job file (TOML)")
    p.add_argument("--restart", action="store_true", help="discard earlier results of this job and start over")
    p.add_argument(
        "--full", action="store_true",
        help="recompute everything over the input as it is now, instead of only what changed (as --restart)",
    )
    _param_option(p)
    p.add_argument("--wait", action="store_true", help="if another run of this job is active, wait for it")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument(
        "--progress", choices=["bar", "log", "off"], default=None,
        help="progress display (default: a bar on a terminal, log lines otherwise)",
    )
    p.add_argument(
        "--summary-json", metavar="PATH", default=None,
        help="write the run summary (state, exit_code, counts, dead letters by class, output, manifest, "
        "durations) to PATH as JSON, atomically, whatever the outcome (docs/scheduling.md)",
    )
    p.add_argument(
        "--dagster-pipes", action="store_true",
        help="report progress, the materialization and the error budget check to Dagster through Pipes "
        "(automatic when launched by a Dagster Pipes client; needs dagster-pipes; docs/integrations.md)",
    )

    p = add(
        "serve",
        cmd_serve,
        "run jobs when their [schedule] says: cron times, new input files",
        """\
        Watch the jobs (job files, or folders of them) and run each when its [schedule] says so: at
        its cron times (in its time zone, with catchup for times missed while serve was down), and,
        with on_new_files = true, when new input files have arrived and settled. Each run is an
        `infermill run` of its own, recorded with its trigger (`infermill runs JOB`); never two runs
        of one job at once, never the same trigger twice, also across restarts and with two serve
        processes. A failed run is logged and serve goes on. SIGTERM or Ctrl-C stops serve after the
        running job, which drains as `infermill run` does; the next serve resumes it.
        See docs/scheduling.md.
        """,
    )
    p.add_argument("jobs", nargs="+", metavar="JOB_OR_DIR", help="job files (TOML) or folders of them")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the clock (default 1)")

    p = add(
        "runs",
        cmd_runs,
        "list a job's runs with their trigger, state and counts",
        """\
        List JOB's runs, oldest first: each run's state, what started it (manual, or serve's trigger:
        a cron due time, new files), its logical date and rows; serve's triggers that started no run
        (nothing to do, job locked, invalid job) too.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    p.add_argument(
        "--json", action="store_true",
        help="print a JSON list (keys: run_id, state, trigger, trigger_kind, logical_date, started_at, ended_at, "
        "rows_done, rows_succeeded, rows_failed, exit_code, attempts, message)",
    )

    p = add(
        "status",
        cmd_status,
        "show a job's state from its ledger",
        """\
        Show JOB's state (pending, running, complete, failed, interrupted), row and shard counts, and
        failed shards, read from the ledger without running anything.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    _param_option(p)
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object (keys: state, rows_total, rows_succeeded, rows_failed, shards_total, "
        "shards_committed, ...)",
    )

    p = add(
        "failures",
        cmd_failures,
        "list dead-lettered items, grouped by error class",
        """\
        List the items of JOB that the model could not score (dead letters), grouped by error class
        with counts and an example message. The items themselves, with their input values and
        tracebacks, are in the output's _errors/ folder and in the ledger.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: rows_failed, groups, items)")
    p.add_argument("--limit", type=int, default=20, help="items listed in --json output (default 20)")

    p = add(
        "retry",
        cmd_retry,
        "reprocess only the dead-lettered items",
        """\
        Score JOB's dead-lettered items again, typically after fixing the model, and merge the ones
        that now succeed into the output (each id stays exactly once, in input order). Items that
        fail again stay dead-lettered with their new error. The spec and input must be unchanged;
        the model may have changed.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    p.add_argument("--wait", action="store_true", help="if another run of this job is active, wait for it")

    p = add(
        "verify",
        cmd_verify,
        "check that the committed output is present and intact",
        """\
        Check every committed part file of JOB against the size and SHA-256 recorded in the ledger
        when it was committed, and the manifest against the ledger. Exit 0 when intact, 1 when a part
        is missing or changed (listed); `infermill run JOB` then recomputes only those shards.
        Result-like files that no committed shard owns are listed as extra.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object (keys: intact, parts_checked, problems, manifest, extra_files, ...)",
    )

    p = add(
        "profile",
        cmd_profile,
        "show where a job's time went, and what would make it faster",
        """\
        Sum the time JOB's committed shards spent reading, preprocessing, in the model, waiting for
        data and writing, and print a verdict (model-bound, input-bound, output-bound, overhead-bound)
        with a concrete suggestion. `infermill run` prints the same verdict when it finishes.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    p.add_argument("--json", action="store_true", help="print one JSON object (stages, shares, verdict, suggestion)")

    p = add(
        "validate",
        cmd_validate,
        "check a job without running it",
        """\
        Check JOB without running it: the spec, the input (files, shards, schema against
        id_column/features/keep, at least one row), the model (loads it and scores a few rows), and
        that the output can be written.
        """,
    )
    p.add_argument("job", help="the job file (TOML)")
    _param_option(p)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of a job file (for editors)",
        description=textwrap.dedent("""\
        Print the JSON Schema (draft 2020-12) of a job file, built from the same definitions infermill
        checks job files with: every section and key with its type, default and description, the model
        kinds, formats and executors registered (plugins included), and each kind's own keys. Editors
        that read JSON Schema for TOML (Taplo, Even Better TOML) complete and check job files with it:
        put `#:schema ./infermill.schema.json` on the first line of a job file.
        """),
        formatter_class=formatter,
    )
    p.add_argument("--output", "-o", help="write it to this file instead of standard output")
    p.set_defaults(func=cmd_schema)

    p = add(
        "demo",
        cmd_demo,
        "generate a churn dataset and model, then run a job over it",
        """\
        Generate a realistic customer churn dataset (1,000,000 rows over several Parquet files),
        train a small model, write a job file, and run it with a progress bar. Prints where the
        results, the manifest and the ledger are. Takes about a minute on 2 cores.
        """,
    )
    p.add_argument("--directory", default="infermill-demo", help="where to put the demo (default: ./infermill-demo)")
    p.add_argument("--rows", type=int, default=1_000_000, help="customers to generate (default: 1,000,000)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--progress", choices=["bar", "log", "off"], default=None, help="progress display")
    return parser


class _ReaderGoneStdout(io.TextIOBase):
    """Stands in for ``sys.stdout`` while a command runs. When the reader of a pipe goes away early
    (``infermill status JOB | head -1``) the rest of the output is dropped: the command's work is done,
    and neither a BrokenPipeError traceback nor a failing exit code would tell the user anything."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._drop()

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def _drop(self) -> None:
        self.gone = True
        # The real stdout's buffer still holds text that the interpreter flushes at exit, which would
        # fail again ("Exception ignored ... BrokenPipeError", exit 120): point its descriptor at devnull.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)


@contextlib.contextmanager
def _tolerate_closed_stdout() -> Iterator[None]:
    original = sys.stdout
    guard = _ReaderGoneStdout(original)
    sys.stdout = cast(TextIO, guard)
    try:
        yield
        guard.flush()  # while still guarded: a closed pipe shows up here at the latest
    finally:
        sys.stdout = original


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``infermill`` command line; returns the exit code."""
    with _tolerate_closed_stdout():
        return _main(argv)


def console() -> NoReturn:
    """The ``infermill`` command (and ``python -m infermill``): :func:`main`, then a fast exit."""
    exit_fast(main())


def exit_fast(code: int) -> NoReturn:
    """End the process as the interpreter would, minus tearing down every module.

    By the time a command returns, its work is durable: a run has committed its shards, closed its ledger
    and written its manifest. What a normal exit does next is unload each module and free every object,
    0.2-0.6 s of CPU once torch or pandas is loaded, which would count against every short job. So this
    does the parts of ``Py_Finalize`` that anyone can observe, in its order: wait for non-daemon threads
    (and run their exit hooks, e.g. ``concurrent.futures``' joins), run ``atexit`` handlers (logging's
    flush, multiprocessing's reaping of daemon workers, a model's own), flush stdout and stderr; then
    ``os._exit``. Object finalizers (``__del__``) that only a full teardown would reach do not run.
    ``INFERMILL_FULL_EXIT=1`` exits the normal way instead.
    """
    if os.environ.get("INFERMILL_FULL_EXIT") == "1":
        sys.exit(code)
    shutdown = getattr(threading, "_shutdown", None)  # what Py_Finalize calls first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        code: int = args.func(args)
        return code
    except InfermillError as exc:
        _print_error(exc, debug)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort: a clear line instead of a bare traceback
        _print_error(exc, debug)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    console()
