"""The PostgreSQL ledger against the ledger contract, on a real server (a new database per test). Lease
times are the server's: the suite's clock waits for the server's clock to move on."""

from __future__ import annotations

import time

import pytest

from infermill.ledger import Ledger, open_ledger
from infermill.testing import LedgerConformance

pytestmark = pytest.mark.postgres


class TestPostgresLedger(LedgerConformance):
    lease_seconds = 1.0

    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str) -> None:
        self.location = postgres_url

    def make_ledger(self, job: str = "job", *, whoami: tuple[str, int] | None = None) -> Ledger:
        return open_ledger(self.location, job=job, whoami=whoami)

    def advance_clock(self, seconds: float) -> None:
        import psycopg

        with psycopg.connect(self.location) as conn:

            def server_time() -> float:
                row = conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()
                assert row is not None
                return float(row[0])

            start = server_time()
            # The server's clock is the only one that counts: wait for it, not for ours.
            while server_time() - start < seconds:
                time.sleep(0.02)
