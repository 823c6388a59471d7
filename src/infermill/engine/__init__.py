"""The engine: columns, worker pipeline, executors and the coordinator that commits results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job_status import status
    from .runner import RunResult, run

__all__ = ["RunResult", "run", "status"]


def __getattr__(name: str) -> Any:
    # The runner imports the worker pipeline (numpy, pyarrow): `infermill status` needs none of it.
    if name in ("RunResult", "run"):
        from . import runner

        return getattr(runner, name)
    if name == "status":
        from .job_status import status

        return status
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
