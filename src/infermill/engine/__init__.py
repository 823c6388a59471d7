"""The engine: columns, worker pipeline, executors and the coordinator that commits results."""

from __future__ import annotations

from .runner import RunResult, run, status

__all__ = ["RunResult", "run", "status"]
