"""Fault injection for crash tests: ``INFERMILL_FAULT=point[:n]`` kills the process with SIGKILL the n-th
time (default: first) it reaches ``point``. Points: ``after_stage`` (a shard's file is staged),
``before_rename``, ``after_rename``, ``after_commit`` (ledger updated), ``before_manifest``,
``after_manifest``, ``after_batch`` (a batch was scored), and ``after_replan`` (an incremental run's new plan
is in the ledger; not in ``POINTS``, which every run reaches). Unset in normal use; costs one dict lookup."""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["POINTS", "fault_point"]

POINTS = (
    "after_batch",
    "after_stage",
    "before_rename",
    "after_rename",
    "after_commit",
    "before_manifest",
    "after_manifest",
)

_seen: Counter[str] = Counter()


def _target() -> tuple[str, int] | None:
    raw = os.environ.get("INFERMILL_FAULT")
    if not raw:
        return None
    name, _, count = raw.partition(":")
    return name, int(count or 1)


_TARGET = _target()


def fault_point(name: str) -> None:
    """Kill this process here if the fault hook asks for it."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _seen[name] += 1
    if _seen[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
