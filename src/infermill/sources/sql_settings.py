"""The ``[input]`` keys of ``format = "sql"`` (a PostgreSQL or SQLite table or query). Light: no driver
is imported here, so building a job spec stays cheap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

__all__ = ["SqlSettings"]


@dataclass(frozen=True)
class SqlSettings:
    """The ``[input]`` keys of ``format = "sql"``."""

    url: str = ""
    """The database: ``postgresql://user@host:5432/db`` (psycopg 3, ``pip install 'infermill[postgres]'``)
    or ``sqlite:///data.db`` (relative to the job file; ``sqlite:////abs/data.db`` for an absolute path).
    A password in it is masked in every message, log, status and ledger."""
    password_env: str | None = None
    """The environment variable that holds the PostgreSQL password, instead of writing it in ``url``."""
    table: str | None = None
    """The table to read (``name`` or ``schema.name``). Exactly one of ``table`` and ``query``."""
    query: str | None = None
    """A ``SELECT`` whose rows are the input (read as a subquery, filtered by key range). Exactly one of
    ``table`` and ``query``."""
    key: str | list[str] = "id"
    """The unique, non-null column (or list of columns: a composite key) that shards are key ranges of.
    A NULL or repeated key is refused when the job is planned."""
    cursor: str | None = None
    """A column that grows whenever a row is written (``updated_at``: a timestamp, an integer version or
    sequence; any orderable type). A rerun then also recomputes the key ranges holding a row whose cursor is
    above the previous run's high-water mark (``updated_at > T``), so an updated row replaces its old output
    row. Without it a rerun picks up only the rows above the previous run's highest key. Rows with a NULL
    cursor count as unchanged."""
    consistency: Literal["key_range", "snapshot"] = "key_range"
    """``"key_range"``: each shard reads its key range when it runs; rows inserted later into a range that
    already committed are reported by ``infermill status``. ``"snapshot"`` (PostgreSQL): every shard of a run
    reads one exported snapshot, held open by the coordinator for the whole run."""
    fetch_rows: int = 10_000
    """Rows fetched per round trip from the database cursor (bounds the memory of a read); PostgreSQL shards
    whose columns are all booleans, integers, floats or text stream through ``COPY`` instead, one batch
    (``[batch] size`` rows) at a time."""
    sample_above_rows: int = 10_000_000
    """PostgreSQL tables that the statistics (``pg_class.reltuples``, kept by ``ANALYZE``) count at least
    this many rows, and whose key a unique index and NOT NULL guarantee, are cut at keys of a block sample
    (``TABLESAMPLE SYSTEM``) instead of an ordered scan of every key: planning reads a small part of the
    table, and shards hold about ``shard_rows`` rows rather than exactly."""
    snapshot_warn_seconds: float = 3600.0
    """``consistency = "snapshot"``: warn once the snapshot has been held this long (a long-held snapshot
    keeps PostgreSQL from vacuuming rows deleted since)."""
    snapshot_id: str | None = None
    """Set by the coordinator of a ``"snapshot"`` run for its workers (the exported snapshot); leave unset."""

    result_neutral: ClassVar[tuple[str, ...]] = (
        "password_env", "fetch_rows", "sample_above_rows", "snapshot_warn_seconds", "snapshot_id", "cursor"
    )
    """Keys that cannot change results: left out of the job's fingerprint (``cursor`` only decides what a
    rerun recomputes; a job given one later recomputes every range once, having no mark yet)."""

    def __post_init__(self) -> None:
        from ..errors import SpecError
        from ..redact import mask_url
        from ..sql._ident import validate_ident
        from ..sql._url import is_sql_url

        if not self.url or not is_sql_url(self.url):
            raise SpecError(
                f"'input.url' must be a postgresql:// or sqlite:/// URL, not {mask_url(self.url)!r}",
                hint='set [input] url = "postgresql://user@host:5432/db" or "sqlite:///data.db"',
            )
        if (self.table is None) == (self.query is None):
            raise SpecError(
                "set exactly one of 'input.table' and 'input.query'",
                hint='[input] table = "scores", or query = "SELECT id, text FROM scores WHERE ..."',
            )
        if self.table is not None:
            validate_ident(self.table, "table name")
        keys = [self.key] if isinstance(self.key, str) else list(self.key)
        if not keys:
            raise SpecError("'input.key' is empty", hint='name the unique key column: key = "id"')
        for name in keys:
            validate_ident(name, "key column")
        if self.cursor is not None:
            validate_ident(self.cursor, "cursor column")
        if len(set(keys)) != len(keys):
            raise SpecError(f"'input.key' repeats a column: {keys}", hint="name each key column once")
        if self.fetch_rows < 1:
            raise SpecError("'input.fetch_rows' must be positive", hint="fetch_rows = 10000")
        if self.consistency == "snapshot" and self.url.lower().startswith("sqlite:"):
            raise SpecError(
                "consistency = \"snapshot\" needs PostgreSQL (SQLite cannot share a snapshot between processes)",
                hint='use consistency = "key_range" with SQLite',
            )

    @property
    def keys(self) -> list[str]:
        """``key`` as a list."""
        return [self.key] if isinstance(self.key, str) else list(self.key)
