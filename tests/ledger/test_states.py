"""A job's state derived from its ledger records (what ``infermill status`` reports)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infermill.ledger import JobRecord, LedgerSummary, RunRecord, derive_job_state

JOB = JobRecord(name="j", job_uid="u", spec_fingerprint="s", model_fingerprint="m", input_fingerprint="i",
                output_path="out", spec_json="{}", created_at=1.0, completed_at=None)


DONE = replace(JOB, completed_at=2.0)


def _summary(committed: int, total: int = 3) -> LedgerSummary:
    return LedgerSummary(shards_total=total, shards_committed=committed, shards_failed=0,
                         shards_pending=total - committed, shards_running=0, rows_succeeded=committed * 10,
                         rows_failed=0, rows_planned=total * 10, shards_with_rows_planned=total)


def _run(state: str) -> RunRecord:
    return RunRecord(run_id=1, token=1, host="h", pid=1, started_at=1.0, ended_at=None, state=state,
                     rows_done=0, message=None)


@pytest.mark.parametrize(
    ("job", "committed", "last", "live", "damaged", "expected"),
    [
        (None, 0, None, False, False, "pending"),
        (JOB, 1, _run("running"), True, False, "running"),
        (JOB, 1, _run("running"), False, False, "interrupted"),  # its process died without an end
        (JOB, 1, _run("interrupted"), False, False, "interrupted"),
        (JOB, 2, _run("failed"), False, False, "failed"),
        (JOB, 3, _run("running"), True, False, "running"),  # all committed, manifest not yet written
        (DONE, 3, _run("complete"), False, False, "complete"),
        (DONE, 3, _run("complete"), False, True, "damaged"),
    ],
)
def test_job_state_is_derived_from_the_records(job, committed, last, live, damaged, expected) -> None:
    assert derive_job_state(job, _summary(committed), last, lease_live=live, damaged=damaged) == expected
