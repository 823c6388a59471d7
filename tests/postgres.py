"""A real PostgreSQL 15 server for the tests marked ``postgres``, started once per session on a temporary
data directory and a free loopback port, and a fresh database per test.

PostgreSQL refuses to run as root: as root (CI) the server runs as the ``postgres`` user through
``runuser``, on a data directory under /tmp owned by that user; as anyone else it runs as that user. The
binaries are looked up in ``INFERMILL_PG_BIN``, then /usr/lib/postgresql/15/bin, then ``PATH``. Without
them the fixture fails saying what to install (CI must not skip silently); a developer without
PostgreSQL sets ``INFERMILL_SKIP_POSTGRES=1`` to skip these tests instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
_counter = itertools.count()


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _find(binary: str) -> str | None:
    for directory in (os.environ.get("INFERMILL_PG_BIN", ""), *_BIN_DIRS):
        if directory and os.access(os.path.join(directory, binary), os.X_OK):
            return os.path.join(directory, binary)
    return shutil.which(binary)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if os.environ.get("INFERMILL_SKIP_POSTGRES") == "1":
        pytest.skip("INFERMILL_SKIP_POSTGRES=1")
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail(
            "PostgreSQL 15 server binaries (initdb, pg_ctl) not found: install them (`apt-get install -y "
            "postgresql-15`, which .ci/run does) or set INFERMILL_PG_BIN; to skip these tests set "
            "INFERMILL_SKIP_POSTGRES=1",
            pytrace=False,
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg 3 is not installed: pip install -e '.[dev]'", pytrace=False)
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    user = "postgres" if as_root else os.environ.get("USER") or "postgres"
    # Under /tmp (not pytest's 0700 tmp folder), so that the postgres user can reach it.
    data = tempfile.mkdtemp(prefix="infermill-pg-")
    if as_root:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    log = os.path.join(data, "server.log")

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)

    run(initdb, "-D", f"{data}/db", "-U", user, "--auth=trust", "--no-sync", "-E", "UTF8")
    options = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    run(pg_ctl, "-D", f"{data}/db", "-l", log, "-o", options, "-w", "-t", "60", "start")
    try:
        yield PostgresServer("127.0.0.1", port, user)
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", f"{data}/db", "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    """The ``[runtime] ledger`` of a job under test: None (the default SQLite file beside the job file) or
    a new PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def ledger_line(url: str | None) -> str:
    """The ``[runtime]`` line that points a job at ``url`` (nothing for the default)."""
    return "" if url is None else f'ledger = "{url}"'
