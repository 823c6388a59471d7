"""Telling a broken model from bad data: the streak of batches in which every row failed the same way.

One bad row never fails a job, but a model that cannot score anything (an ImportError inside ``predict``,
a server answering 500 to every request) would otherwise dead-letter the whole input, bisecting each batch
down to single rows on the way. When every row of ``[errors] stop_after_identical_batch_failures``
consecutive batches failed with the same error class and message, the worker stops the run with a
:class:`ModelFailedError` instead. Bad data rarely looks like that: its rows fail with different messages,
or share a batch with rows that score.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelFailedError
from ..spec import JobSpec
from .scoring import DeadItem

__all__ = ["FailureStreak"]


@dataclass
class FailureStreak:
    """Counts consecutive batches (in input order) whose rows all failed with one and the same error."""

    limit: int
    """Batches in a row that make a model failure; 0: never."""
    job: str = "job"
    """The job's name, for the error."""
    job_ref: str = "JOB"
    """How the hint's commands name the job (its job file)."""
    count: int = 0
    rows: int = 0
    signature: tuple[str, str] | None = None

    @classmethod
    def for_spec(cls, spec: JobSpec) -> FailureStreak:
        return cls(spec.errors.stop_after_identical_batch_failures, spec.name, spec.source_file or spec.name)

    def observe(self, rows: int, dead: list[DeadItem]) -> ModelFailedError | None:
        """Record one scored batch of ``rows`` rows of which ``dead`` failed; the error to stop with, if any."""
        if self.limit <= 0 or rows == 0:
            return None
        signatures = {(d.error_class, d.message) for d in dead}
        if len(dead) < rows or len(signatures) != 1:
            self.count, self.rows, self.signature = 0, 0, None
            return None
        (signature,) = signatures
        if signature != self.signature:
            self.count, self.rows, self.signature = 0, 0, signature
        self.count += 1
        self.rows += rows
        if self.count < self.limit:
            return None
        error_class, message = signature
        first_line = message.splitlines()[0] if message else error_class
        return ModelFailedError(
            f"model failure: every row of {self.count} consecutive batches ({self.rows:,} rows) failed with the "
            f"same error, {error_class}: {first_line}; stopped rather than dead-letter the whole input",
            error_class=error_class,
            error_message=message,
            hint=f"fix the model and rerun the same command: committed shards are kept (`infermill validate "
            f"{self.job_ref}` tries the model on a few rows); if these rows are really bad data, set [errors] "
            "stop_after_identical_batch_failures = 0 to dead-letter them instead",
            job=self.job,
        )
