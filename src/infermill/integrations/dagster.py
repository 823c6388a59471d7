"""Dagster integration: a job's output as a Dagster asset, and Dagster Pipes (``pip install 'infermill[dagster]'``).

``infermill_asset(job)`` builds an asset whose materialization runs ``infermill run JOB --summary-json ...``
as a child process and maps the exit-code contract (docs/scheduling.md):

* ``0``: materialized, with the run summary as metadata (rows, dead letters by class, manifest, output),
  and the job's ``[errors]`` budget as the asset check ``error_budget``;
* ``75`` (interrupted, transient) and ``3`` (another run holds the job): ``RetryRequested``; the retry
  resumes, committed shards are kept;
* ``1`` and ``2``: ``Failure`` without retries (exit 1 over the budget also reports the check failed);
* a child killed by a signal (the OOM killer): ``Failure``, never a success.

A child process, not a call in Dagster's worker: a killed run is seen as a signal exit, and the run's
memory and threads go away with it. ``run_pipes(context, job)`` does the same through Dagster's
``PipesSubprocessClient``: ``infermill run`` then reports progress and the materialization itself through
Pipes (infermill/integrations/dagster_pipes.py).

This module imports ``dagster``; nothing in ``infermill`` imports it, so ``import infermill`` never does.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotation of an asset's function
# at definition time and accepts only the class itself, not its name as a string.

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

# Not re-exported at dagster's top level (1.13): the one name taken from inside it, for the one exception
# PipesSubprocessClient.run raises on a non-zero exit (anything else it raises is not ours to map).
from dagster._core.errors import DagsterPipesExecutionError

from ..errors import outcome_of
from .dagster_pipes import CHECK_NAME, budget_check, budget_of, materialization_metadata

__all__ = ["infermill_asset", "run_pipes", "summary_metadata"]

Params = Mapping[str, str] | Callable[[dg.AssetExecutionContext], Mapping[str, str]] | None


def summary_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The materialization metadata of a run summary, as Dagster metadata values (the same keys and values
    ``infermill run`` reports through Pipes)."""
    meta: dict[str, Any] = {}
    for key, value in materialization_metadata(summary).items():
        if isinstance(value, dict) and value.get("type") == "json":
            meta[key] = dg.MetadataValue.json(value["raw_value"])
        elif isinstance(value, dict) and value.get("type") == "path":
            meta[key] = dg.MetadataValue.path(str(value["raw_value"]))
        else:
            meta[key] = value
    return meta


def _asset_name(job: str) -> str:
    """The job's ``name`` (or its file name), as a Dagster name (letters, digits, underscores)."""
    try:
        with open(job, "rb") as fh:
            name = str(tomllib.load(fh).get("name") or "")
    except (OSError, tomllib.TOMLDecodeError):
        name = ""
    name = name or os.path.splitext(os.path.basename(job))[0]
    return re.sub(r"\W", "_", name) or "infermill_job"


def _takes_date(job: str) -> bool:
    """Whether the job's ``[input] path`` has ``{date}``: only then is a partition key passed as
    ``--param date=...`` (a param that fills no placeholder is refused)."""
    from ..templates import placeholders

    try:
        with open(job, "rb") as fh:
            path = tomllib.load(fh).get("input", {}).get("path", "")
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return False
    return isinstance(path, str) and "date" in placeholders(path)


def _params(context: dg.AssetExecutionContext, job: str, params: Params) -> dict[str, str]:
    values = dict(params(context) if callable(params) else (params or {}))
    # A daily-partitioned asset fills {date} with its partition key, as serve does with its logical date.
    if "date" not in values and context.has_partition_key and _takes_date(job):
        values["date"] = context.partition_key
    return {str(k): str(v) for k, v in values.items()}


def _command(job: str, params: Mapping[str, str], summary_path: str, python: str | None) -> list[str]:
    argv = [python or sys.executable, "-m", "infermill", "run", job, "--summary-json", summary_path,
            "--progress", "log"]
    for name, value in params.items():
        argv += ["--param", f"{name}={value}"]
    return argv


def _read_summary(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None  # the child died before writing it (killed by a signal)
    return data if isinstance(data, dict) else None


def _check_result(asset_key: dg.AssetKey | None, summary: dict[str, Any], job: str, params: Mapping[str, str],
                  ) -> tuple[bool, dg.AssetCheckResult]:
    passed, meta = budget_check(summary, *budget_of(job, dict(params)))
    return passed, dg.AssetCheckResult(
        asset_key=asset_key, check_name=CHECK_NAME, passed=passed, metadata=meta,
        severity=dg.AssetCheckSeverity.ERROR,
    )


def _fail_or_retry(code: int, summary: dict[str, Any] | None, *, retry_seconds: float, max_retries: int) -> None:
    """Raise what the exit code asks for (never returns): ``RetryRequested`` for 75 and 3, else ``Failure``."""
    outcome = outcome_of(code)
    message = (summary or {}).get("message") or f"infermill run ended {outcome.state} (exit code {code})"
    if outcome.retry:
        raise dg.RetryRequested(max_retries=max_retries, seconds_to_wait=retry_seconds) from dg.Failure(message)
    meta: dict[str, Any] = {"exit_code": code, "state": outcome.state}
    if summary is not None:
        meta["summary"] = dg.MetadataValue.json(summary)
        if (summary.get("error") or {}).get("hint"):
            meta["hint"] = summary["error"]["hint"]
    raise dg.Failure(description=f"infermill: {message}", metadata=meta, allow_retries=False)


def infermill_asset(
    job: str | os.PathLike[str],
    *,
    name: str | None = None,
    params: Params = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    description: str | None = None,
    deps: Sequence[Any] | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    retry_seconds: float = 30.0,
    max_retries: int = 3,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dg.AssetsDefinition:
    """The output of the infermill job ``job`` (a job file) as a Dagster asset, with the asset check
    ``error_budget``.

    ``name``: the asset's name (default: the job's ``name``). ``params``: ``--param`` values for the job's
    path template, or a function of the asset's context that returns them; a partitioned asset whose job
    path has ``{date}`` gets its partition key as ``date``. ``retry_seconds``, ``max_retries``: the wait and
    the number of retries asked for on exit 75 or 3 (the retry resumes). ``python``: the interpreter whose
    ``infermill`` runs the job (default: this one). ``env``: extra environment for the run.
    """
    job_file = os.fspath(job)
    asset_name = name or _asset_name(job_file)
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    key = dg.AssetKey([*prefix, asset_name])

    @dg.asset(
        name=asset_name,
        key_prefix=prefix or None,
        group_name=group_name,
        description=description or f"The output of the infermill job {job_file}.",
        deps=deps,
        partitions_def=partitions_def,
        check_specs=[dg.AssetCheckSpec(
            CHECK_NAME, asset=key,
            description="Dead-lettered rows stay within the job's [errors] budget "
            "(max_failed_rows, max_failed_fraction).",
        )],
        kinds={"infermill"},
    )
    def _infermill_asset(context: dg.AssetExecutionContext) -> Iterator[Any]:
        values = _params(context, job_file, params)
        with tempfile.TemporaryDirectory(prefix="infermill-dagster-") as folder:
            summary_path = os.path.join(folder, "summary.json")
            argv = _command(job_file, values, summary_path, python)
            context.log.info("running " + " ".join(argv))
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, **dict(env or {})},
            )
            assert proc.stdout is not None
            with proc.stdout:
                for line in proc.stdout:  # the run's progress lines, into Dagster's log as they come
                    context.log.info(line.rstrip())
            code = proc.wait()
            summary = _read_summary(summary_path)
        outcome = outcome_of(code)
        if outcome.success and summary is not None:
            _passed, check = _check_result(key, summary, job_file, values)
            yield dg.MaterializeResult(asset_key=key, metadata=summary_metadata(summary), check_results=[check])
            return
        if summary is not None and outcome.state == "failed":
            passed, check = _check_result(key, summary, job_file, values)
            if not passed:
                yield check  # exit 1 over the budget: the check says so, the step fails below
        _fail_or_retry(code, summary, retry_seconds=retry_seconds, max_retries=max_retries)

    return _infermill_asset


def run_pipes(
    context: dg.AssetExecutionContext,
    job: str | os.PathLike[str],
    *,
    client: dg.PipesSubprocessClient | None = None,
    params: Mapping[str, str] | None = None,
    retry_seconds: float = 30.0,
    max_retries: int = 3,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    """Run the job under Dagster Pipes from an asset's body (``yield from``), and yield its materialization
    as ``infermill run`` reported it through Pipes (progress logs, metadata, the ``error_budget`` check).

    Exit 75 or 3: ``RetryRequested``; 1, 2 or killed: ``Failure`` (exit 1 over the budget yields the failed
    check first), as ``infermill_asset`` does::

        @dg.asset(check_specs=[dg.AssetCheckSpec("error_budget", asset="scores")])
        def scores(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
            yield from run_pipes(context, "job.toml", client=pipes_subprocess_client)
    """
    job_file = os.fspath(job)
    values = {str(k): str(v) for k, v in (params or {}).items()}
    with tempfile.TemporaryDirectory(prefix="infermill-dagster-") as folder:
        summary_path = os.path.join(folder, "summary.json")
        argv = [*_command(job_file, values, summary_path, python), "--dagster-pipes"]
        try:
            invocation = (client or dg.PipesSubprocessClient()).run(
                command=argv, context=context, env=dict(env or {}),
            )
        except DagsterPipesExecutionError:
            invocation = None
            # The client says only "failed"; the summary has the exit code (none: killed by a signal).
            summary = _read_summary(summary_path)
    if invocation is not None:
        yield invocation.get_materialize_result()
        return
    code = int(summary["exit_code"]) if summary is not None else -1
    if summary is not None and outcome_of(code).state == "failed":
        # What the run reported through Pipes goes with the failed step: exit 1 over the budget is yielded
        # as the failed check here, as infermill_asset does.
        passed, check = _check_result(context.asset_key, summary, job_file, values)
        if not passed:
            yield check
    _fail_or_retry(code, summary, retry_seconds=retry_seconds, max_retries=max_retries)
