"""The SQLite ledger against the ledger contract, leases aged by a fake clock (no sleeping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermill.ledger import Ledger, open_ledger
from infermill.testing import FakeClock, LedgerConformance


class TestSQLiteLedger(LedgerConformance):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.location = str(tmp_path / "ledger.sqlite")
        self.clock = FakeClock()

    def make_ledger(self, job: str = "job", *, whoami: tuple[str, int] | None = None) -> Ledger:
        return open_ledger(self.location, job=job, clock=self.clock, whoami=whoami)

    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)
