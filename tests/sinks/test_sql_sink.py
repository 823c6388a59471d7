"""``[output] format = "sql"``: the conformance suite, then real `infermill` runs into SQLite and a real
PostgreSQL 15 server (tests/postgres.py), SIGKILLed at each step of the sink's commit and resumed: the
table must equal a clean run's, row for row."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from infermill.errors import OutputConflictError, SpecError
from infermill.sinks import OwnerRecord, open_sink
from infermill.spec import JobSpec
from infermill.testing.sinks import SinkConformance, sink_spec
from tests.conftest import SCORER, write_job, write_parquet_files
from tests.postgres import PostgresServer

ROWS, SHARD_ROWS = 6_000, 1_000
FAILING_SCORER = SCORER.replace(
    "    def predict(self, batch):\n",
    "    def predict(self, batch):\n"
    "        if (batch['f0'] > 2.2).any():\n            raise ValueError('f0 too large')\n",
)


# -- the conformance suite -----------------------------------------------------------------------
class TestSqliteSink(SinkConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "", format="sql", url="sqlite:///out.db", table="scores")


@pytest.mark.postgres
class TestPostgresSink(SinkConformance):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str) -> None:
        self.url = postgres_url

    def make_spec(self, tmp_path: Path) -> JobSpec:
        return sink_spec(tmp_path, "", format="sql", url=self.url, table="scores")


# -- helpers -------------------------------------------------------------------------------------
def _url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return "sqlite:///out.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _job(directory: Path, url: str, *, mode: str = "insert", table: str = "scores", scorer: str = SCORER,
         extra: str = "", runtime: str = "") -> Path:
    if not (directory / "data").exists():
        write_parquet_files(directory / "data", ROWS, files=2)
    (directory / "scorer.py").write_text(scorer)
    return write_job(
        directory / "job.toml",
        f"""
        name = "tosql"
        [input]
        path = "data/"
        id_column = "customer_id"
        shard_rows = {SHARD_ROWS}
        [model]
        kind = "python"
        entrypoint = "scorer.py:Scorer"
        features = ["f0", "f1", "f2"]
        outputs = ["score"]
        [batch]
        size = 500
        [output]
        format = "sql"
        url = "{url}"
        table = '{table}'
        mode = "{mode}"
        keep = ["segment"]
        {extra}
        [runtime]
        {runtime}
        """,
    )


def _cli(job: Path, *args: str, fault: str | None = None, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    extra = {"INFERMILL_FAULT": fault} if fault else {}
    return subprocess.run(
        [sys.executable, "-m", "infermill", args[0], str(job), *args[1:], *(["--quiet"] if args[0] == "run" else [])],
        env={**os.environ, **extra, **(env or {})}, capture_output=True, text=True, timeout=300,
    )


def _query(directory: Path, url: str, sql: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        with sqlite3.connect(directory / "out.db") as conn:
            rows = conn.execute(sql).fetchall()
        conn.close()
        return rows
    import psycopg

    with psycopg.connect(url) as pg:
        return [tuple(r) for r in pg.execute(sql).fetchall()]


def _table(directory: Path, url: str, table: str = "scores") -> list[tuple[Any, ...]]:
    return _query(directory, url, f'SELECT customer_id, segment, score FROM "{table}" ORDER BY customer_id')


def _clean(tmp_path: Path, request: pytest.FixtureRequest, backend: str, **job: Any) -> tuple[list[Any], list[Any]]:
    """A clean run's table and errors table."""
    directory = tmp_path / "clean"
    directory.mkdir()
    url = _url(backend, request)
    done = _cli(_job(directory, url, **job), "run")
    assert done.returncode == 0, done.stderr
    errors = _query(directory, url, 'SELECT customer_id FROM "scores_errors" ORDER BY customer_id') \
        if "scorer" in job else []
    return _table(directory, url), errors


# -- crash safety ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "point"), [
    ("insert", "sql_after_copy"), ("insert", "sql_in_merge"), ("insert", "after_rename"), ("insert", "after_commit"),
    ("upsert", "sql_in_merge"), ("upsert", "after_rename"),
])
def test_kill_at_each_step_of_the_commit_then_resume_equals_a_clean_run(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str, point: str, mode: str
) -> None:
    """SIGKILL after the COPY, inside the merge, after the merge before the ledger, after the ledger: at the
    1st and the 3rd time, resuming in between; the table then holds each row once, as a clean run's."""
    reference, reference_errors = _clean(tmp_path, request, backend, mode=mode, scorer=FAILING_SCORER)
    assert len(reference) + len(reference_errors) == ROWS and reference_errors
    directory = tmp_path / "crashed"
    directory.mkdir()
    url = _url(backend, request)
    job = _job(directory, url, mode=mode, scorer=FAILING_SCORER)
    for nth in (1, 3):
        killed = _cli(job, "run", fault=f"{point}:{nth}")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        if nth == 3:  # killed inside the first commit, the table's creation was rolled back with it
            ids = [r[0] for r in _query(directory, url, "SELECT customer_id FROM scores")]
            assert len(ids) == len(set(ids)), "a key twice in the table after a kill"
    final = _cli(job, "run")
    assert final.returncode == 0, final.stderr
    assert _table(directory, url) == reference
    errors = _query(directory, url, 'SELECT customer_id FROM "scores_errors" ORDER BY customer_id')
    assert errors == reference_errors
    # One marker per shard (and per shard with dead letters): the dead attempts' markers are gone.
    parts = [r[0] for r in _query(directory, url, "SELECT part FROM _infermill_commits")]
    assert len([p for p in parts if not p.startswith("_errors/")]) == ROWS // SHARD_ROWS
    verify = _cli(job, "verify")
    assert verify.returncode == 0 and "ok: the committed output is intact" in verify.stdout, verify.stdout


@pytest.mark.postgres
def test_insert_mode_copies_each_shard_straight_into_the_table(tmp_path: Path, postgres_server: PostgresServer
                                                              ) -> None:
    """Insert mode on PostgreSQL loads a shard with one COPY into the target (no staging table and second
    ``INSERT ... SELECT`` pass over the rows): a row trigger on the table sees only COPY statements. The
    markers still list every key, as ``key::text``, so a redo and ``verify`` find the rows."""
    import psycopg

    url = postgres_server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE scores (customer_id BIGINT PRIMARY KEY, segment TEXT, score DOUBLE PRECISION)")
        conn.execute("CREATE TABLE seen (query TEXT)")
        conn.execute("CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN INSERT INTO seen VALUES (current_query()); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER note BEFORE INSERT ON scores FOR EACH ROW EXECUTE FUNCTION note()")
    job = _job(tmp_path, url)
    done = _cli(job, "run")
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in _table(tmp_path, url)] == list(range(ROWS))
    statements = _query(tmp_path, url, "SELECT split_part(query, ' ', 1), count(*) FROM seen GROUP BY 1")
    assert statements == [("COPY", ROWS)]
    keys = _query(tmp_path, url, "SELECT k FROM _infermill_commits, unnest(keys) AS k ORDER BY k::bigint")
    assert [r[0] for r in keys] == [str(i) for i in range(ROWS)]
    assert _cli(job, "verify").returncode == 0


def _staged_into(tmp_path: Path, url: str, table: pa.Table, **options: Any) -> tuple[list[str], list[Any]]:
    """Stage ``table`` as one shard's result of a sink into table ``t`` keyed by ``k``: the names of the
    staged files (the suffixes after the attempt's hex), and the rows ``t`` holds after the commit."""
    sink = open_sink(sink_spec(tmp_path, "", format="sql", url=url, table="t", key="k", **options))
    assert sink.claim(OwnerRecord("conformance", "uid-1", str(tmp_path / "ledger")))
    sink.prepare()
    writer = sink.open_writer(0)
    for batch in table.to_batches(max_chunksize=3):  # several writes: one stream, one header and trailer
        writer.write(pa.Table.from_batches([batch]))
    staged = writer.close()
    scratch = os.path.dirname(staged.location)
    files = sorted(name.split(".", 3)[-1] for name in os.listdir(scratch))
    assert sink.commit(staged, 1) is not None
    sink.tidy()
    names = ", ".join(f'"{c}"' for c in table.column_names)
    return files, _query(tmp_path, url, f"SELECT {names} FROM t ORDER BY k")


@pytest.mark.postgres
def test_postgres_shards_load_as_binary_copy_with_exact_values(tmp_path: Path, postgres_server: PostgresServer
                                                                ) -> None:
    """A result of integers, doubles, booleans and text is staged in PostgreSQL's binary COPY format (no
    CSV beside it) and loads every value exactly: NULLs, NaN, infinities, -0.0, extreme integers, the
    empty string against NULL, quotes, newlines and non-ASCII text."""
    url = postgres_server.create_database()
    big = 2**63 - 1
    table = pa.table({
        "k": pa.array([-big - 1, -1, 0, 1, 2, big, 7], pa.int64()),
        "small": pa.array([1, None, -32768, 32767, 0, 5, None], pa.int16()),
        "u": pa.array([0, 4_294_967_295, None, 1, 2, 3, 4], pa.uint32()),
        "x": pa.array([0.1, None, float("nan"), float("inf"), float("-inf"), -0.0, 1e-310]),
        "flag": pa.array([True, False, None, True, False, None, True]),
        "s": pa.array(["", None, 'a "quoted", line\nbreak', "é✓ ünï", "\\N", "NULL", "x" * 5000]),
        "nothing": pa.nulls(7),
    })
    files, rows = _staged_into(tmp_path, url, table)
    assert files == ["pgcopy.tmp", "tmp"], files
    expected = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    expected.sort(key=lambda r: r[0])
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert got[:3] == want[:3] and got[4:] == want[4:], (got, want)
        x, y = got[3], want[3]
        assert (x is None and y is None) or (x != x and y != y) or (x == y and str(x) == str(y)), (x, y)


@pytest.mark.postgres
def test_postgres_columns_that_differ_from_the_binary_encoding_load_as_csv(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """Binary COPY fields must be of the column's exact type: an existing table with ``integer``, ``real``
    and ``varchar`` columns, and a result column (float32) staged as CSV, still load, as CSV."""
    url = postgres_server.create_database()
    _create(tmp_path, url, "CREATE TABLE t (k INTEGER PRIMARY KEY, x REAL, s VARCHAR(10))")
    table = pa.table({"k": pa.array([3, 1, 2], pa.int64()), "x": pa.array([0.5, None, 2.25]),
                      "s": ["a", None, "ccc"]})
    files, rows = _staged_into(tmp_path, url, table)
    assert files == ["pgcopy.tmp", "tmp"], files  # staged in binary, loaded from the IPC file as CSV
    assert rows == [(1, None, None), (2, 2.25, "ccc"), (3, 0.5, "a")]
    vectors = pa.table({"k": pa.array([1, 2], pa.int64()), "v": pa.array([[0.5, 1.0], [2.0, 3.5]],
                                                                          pa.list_(pa.float32(), 2))})
    files, rows = _staged_into(tmp_path, postgres_server.create_database(), vectors)
    assert files == ["csv.tmp", "tmp"], files
    assert rows == [(1, [0.5, 1.0]), (2, [2.0, 3.5])]


@pytest.mark.postgres
def test_marker_keys_are_stored_uncompressed(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """The keys of a marker (one per row written) are stored as they are, not compressed at each commit:
    a shard of 5,000 integer keys takes their text and its array header in the table, no less."""
    url = postgres_server.create_database()
    _staged_into(tmp_path, url, pa.table({"k": pa.array(range(100_000, 105_000), pa.int64())}))
    storage = _query(tmp_path, url, "SELECT attstorage FROM pg_attribute WHERE attrelid = "
                     "'_infermill_commits'::regclass AND attname = 'keys'")
    assert storage == [("e",)]
    ((size, text),) = _query(tmp_path, url, "SELECT pg_column_size(keys), sum(length(k) + 4) FROM "
                             "_infermill_commits, unnest(keys) AS k GROUP BY keys")
    assert size >= text


@pytest.mark.postgres
def test_staging_and_committing_a_shard_imports_no_pandas(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """pyarrow imports pandas (about a second) the first time it converts a Python object (``pa.array``,
    ``pa.scalar``, ``to_numpy(zero_copy_only=False)``): a fresh process that stages a PostgreSQL shard of
    integers, doubles, booleans and text with NULLs and commits it, straight into the table, never does."""
    url = postgres_server.create_database()
    rows = pa.table({"k": pa.array(range(500), pa.int64()), "x": pa.array([None, *range(499)], pa.float64()),
                     "b": pa.array([True, None] * 250), "s": pa.array(["a", None] * 250)})
    with pa.ipc.new_file(tmp_path / "rows.arrow", rows.schema) as writer:
        writer.write_table(rows)
    script = f"""
import sys
import pyarrow as pa
from infermill.sinks import OwnerRecord, open_sink
from infermill.testing.sinks import sink_spec
rows = pa.ipc.open_file({str(tmp_path / "rows.arrow")!r}).read_all()
sink = open_sink(sink_spec({str(tmp_path)!r}, "", format="sql", url={url!r}, table="t", key="k"))
assert sink.claim(OwnerRecord("conformance", "uid-1", "ledger"))
sink.prepare()
writer = sink.open_writer(0)
writer.write(rows)
assert sink.commit(writer.close(), 1) is not None
print("pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert _query(tmp_path, url, "SELECT count(*), count(x), count(b), count(s) FROM t") == [(500, 499, 250, 250)]


@pytest.mark.postgres
def test_string_keys_reach_the_marker_as_postgres_prints_them(tmp_path: Path, postgres_server: PostgresServer
                                                              ) -> None:
    """The keys a direct COPY's marker records (one array literal built by Arrow) read back as each key's
    ``key::text``: quotes, backslashes, commas, braces, blanks, the word NULL and the empty string."""
    import psycopg

    from infermill.sinks.sql import SqlSink

    url = postgres_server.create_database()
    keys = ['a"b', "c\\d", "", "x,y}{", "NULL", " pad ", "é\n✓"]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v VARCHAR(5), c CHAR(3))")
        sink = open_sink(sink_spec(tmp_path, "", format="sql", url=url, table="t", key="k"))
        assert isinstance(sink, SqlSink)
        table = pa.table({"k": keys, "v": keys, "c": keys})
        with conn.cursor() as cur:
            literal = sink._keys_as_text(cur, table, None, "t", "k")
            assert literal is not None
            row = cur.execute("SELECT %s::text[]", (literal,)).fetchone()
            assert row is not None and row[0] == keys
            assert sink._keys_as_text(cur, table, None, "t", "c") is None  # char(n): its text drops blanks


@pytest.mark.postgres
def test_a_ledger_in_the_same_postgres_database(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """The ledger (schema ``infermill``) and the target table share one database; a kill after the merge
    and before the ledger's commit is reconciled by the marker on resume."""
    url = postgres_server.create_database()
    job = _job(tmp_path, url, runtime=f'ledger = "{url}"')
    assert _cli(job, "run", fault="after_rename:2").returncode == -signal.SIGKILL
    assert _cli(job, "run").returncode == 0
    rows = _table(tmp_path, url)
    assert [r[0] for r in rows] == list(range(ROWS))


def test_retry_and_restart_keep_each_row_once(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    """``retry`` replaces a shard's part with one holding its old rows and the newly scored ones: the old
    part's marker goes, its rows stay; the resolved dead letters leave ``<table>_errors``. ``--restart``
    deletes the job's rows and writes them again."""
    reference, _ = _clean(tmp_path, request, backend)
    url = _url(backend, request)
    job = _job(tmp_path, url, scorer=FAILING_SCORER)
    assert _cli(job, "run").returncode == 0
    failed = _query(tmp_path, url, "SELECT count(*) FROM scores_errors")[0][0]
    assert failed and len(_table(tmp_path, url)) == ROWS - failed
    (tmp_path / "scorer.py").write_text(SCORER)
    retried = _cli(job, "retry")
    assert retried.returncode == 0, retried.stderr
    assert _table(tmp_path, url) == reference
    assert _query(tmp_path, url, "SELECT count(*) FROM scores_errors") == [(0,)]
    restarted = _cli(job, "run", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert _table(tmp_path, url) == reference
    assert len(_query(tmp_path, url, "SELECT part FROM _infermill_commits")) == ROWS // SHARD_ROWS
    assert _cli(job, "verify").returncode == 0


def test_a_dropped_table_is_damaged_and_recomputed(tmp_path: Path) -> None:
    url = "sqlite:///out.db"
    job = _job(tmp_path, url)
    assert _cli(job, "run").returncode == 0
    reference = _table(tmp_path, url)
    _create(tmp_path, url, "DROP TABLE scores")
    status = _cli(job, "status")
    assert "damaged" in status.stdout, status.stdout
    assert _cli(job, "verify").returncode != 0
    again = _cli(job, "run")
    assert again.returncode == 0, again.stderr
    assert _table(tmp_path, url) == reference
    assert _cli(job, "verify").returncode == 0


# -- modes -----------------------------------------------------------------------------------------
def test_a_key_repeated_inside_one_batch_upserts_once(tmp_path: Path, request: pytest.FixtureRequest,
                                                        backend: str) -> None:
    url = _url(backend, request)
    spec = sink_spec(tmp_path, "", format="sql", url=url, table="scores", mode="upsert", key="id")
    sink = open_sink(spec)
    sink.claim(OwnerRecord("conformance", "uid-1", "ledger"))
    sink.prepare()
    writer = sink.open_writer(0)
    writer.write(pa.table({"id": [1, 2, 1, 3, 1], "score": [0.1, 0.2, 0.3, 0.4, 0.5]}))
    assert sink.commit(writer.close(), 1) is not None
    writer = sink.open_writer(1)
    writer.write(pa.table({"id": [3, 4], "score": [3.0, 4.0]}))  # 3 again, in another shard: updated
    assert sink.commit(writer.close(), 1) is not None
    rows = _query(tmp_path, url, "SELECT id, score FROM scores ORDER BY id")
    assert rows == [(1, 0.5), (2, 0.2), (3, 3.0), (4, 4.0)]


def test_upsert_updates_an_existing_table(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    url = _url(backend, request)
    _create(tmp_path, url, "CREATE TABLE scores (customer_id BIGINT PRIMARY KEY, segment TEXT, score DOUBLE "
            "PRECISION, note TEXT)", "INSERT INTO scores VALUES (0, 'old', -1.0, 'kept'), (999999, 'x', 9.0, 'other')")
    reference, _ = _clean(tmp_path, request, backend)
    job = _job(tmp_path, url, mode="upsert")
    assert _cli(job, "run").returncode == 0
    rows = _query(tmp_path, url, "SELECT customer_id, segment, score, note FROM scores ORDER BY customer_id")
    assert [r[:3] for r in rows[:-1]] == reference and rows[0][3] == "kept"
    assert rows[-1] == (999999, "x", 9.0, "other")


def test_replace_is_all_or_nothing(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    url = _url(backend, request)
    _create(tmp_path, url, "CREATE TABLE scores (customer_id BIGINT, segment TEXT, score DOUBLE PRECISION)",
            "INSERT INTO scores VALUES (-1, 'old', 0.0)")
    reference, _ = _clean(tmp_path, request, backend)
    job = _job(tmp_path, url, mode="replace")
    old = [(-1, "old", 0.0)]
    # Killed after 3 shards, then right before the swap: the old table stays whole until the job completes.
    assert _cli(job, "run", fault="after_commit:3").returncode == -signal.SIGKILL
    assert _table(tmp_path, url) == old
    assert _cli(job, "run", fault="before_manifest").returncode == -signal.SIGKILL
    assert _table(tmp_path, url) == old
    done = _cli(job, "run")
    assert done.returncode == 0, done.stderr
    assert _table(tmp_path, url) == reference
    tables = _query(tmp_path, url, "SELECT name FROM sqlite_master WHERE type = 'table'") if backend == "sqlite" \
        else _query(tmp_path, url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert not [t for (t,) in tables if t.startswith("_infermill_new")]
    again = _cli(job, "run")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_missing_table_is_created_from_the_output_schema(tmp_path: Path, request: pytest.FixtureRequest,
                                                           backend: str) -> None:
    """Each output type gets its column type, and a part reads back as it was staged."""
    import datetime as dt

    url = _url(backend, request)
    sink = open_sink(sink_spec(tmp_path, "", format="sql", url=url, table="typed", key="id"))
    sink.claim(OwnerRecord("conformance", "uid-1", "ledger"))
    sink.prepare()
    when = dt.datetime(2026, 12, 1, 3, 4, 5, 123456, tzinfo=dt.UTC)
    table = pa.table({
        "id": pa.array([1, 2], pa.int64()),
        "score": pa.array([0.25, None], pa.float64()),
        "flag": pa.array([True, False]),
        "label": pa.array(["a", 'quote " and, comma\nnewline']),
        "at": pa.array([when, None], pa.timestamp("us", tz="UTC")),
        "embedding": pa.array([[0.5, 1.0, -2.0], None], pa.list_(pa.float32(), 3)),
        "meta": pa.array([{"k": 1, "v": "x"}, {"k": 2, "v": None}], pa.struct([("k", pa.int64()), ("v", pa.string())])),
    })
    writer = sink.open_writer(0)
    writer.write(table)
    committed = sink.commit(writer.close(), 1)
    assert committed is not None
    if backend == "postgres":
        types = dict(_query(tmp_path, url, "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute "
                                           "a WHERE a.attrelid = 'typed'::regclass AND a.attnum > 0"))
        assert types == {"id": "bigint", "score": "double precision", "flag": "boolean", "label": "text",
                         "at": "timestamp with time zone", "embedding": "real[]", "meta": "jsonb"}
        found = _query(tmp_path, url, "SELECT embedding, meta->>'v' FROM typed WHERE id = 1")
        assert found == [([0.5, 1.0, -2.0], "x")]
    back = sink.read_part(committed.name)
    assert back is not None and back.sort_by("id").equals(table)


# -- refusals --------------------------------------------------------------------------------------
def test_an_incompatible_existing_table_is_refused_before_anything_is_written(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = _url(backend, request)
    affinity = "BLOB" if backend == "sqlite" else "BOOLEAN"
    _create(tmp_path, url, f"CREATE TABLE scores (customer_id BIGINT, segment TEXT, score {affinity}, "
            "must TEXT NOT NULL)")
    job = _job(tmp_path, url)
    checked = _cli(job, "validate")
    assert checked.returncode != 0
    assert "incompatible columns score" in checked.stderr and "must (NOT NULL" in checked.stderr, checked.stderr
    ran = _cli(job, "run")
    assert ran.returncode != 0 and "incompatible columns score" in ran.stderr, ran.stderr
    assert _query(tmp_path, url, "SELECT count(*) FROM scores") == [(0,)]
    assert _query(tmp_path, url, "SELECT count(*) FROM _infermill_commits") == [(0,)]


def test_an_injection_named_table_is_refused(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    url = _url(backend, request)
    _create(tmp_path, url, "CREATE TABLE x (a INTEGER)")
    job = _job(tmp_path, url, table='scores"; DROP TABLE x; --')
    for command in ("validate", "run"):
        refused = _cli(job, command)
        assert refused.returncode == 2, refused.stderr
        assert "invalid SQL output.table" in refused.stderr and "DROP TABLE x" in refused.stderr
    assert _query(tmp_path, url, "SELECT count(*) FROM x") == [(0,)]
    with pytest.raises(SpecError, match="invalid SQL output.key"):
        sink_spec(tmp_path, "", format="sql", url=url, table="scores", key='id"--')


def test_another_jobs_table_is_refused(tmp_path: Path) -> None:
    spec = sink_spec(tmp_path, "", format="sql", url="sqlite:///out.db", table="scores")
    assert open_sink(spec).claim(OwnerRecord("one", "uid-1", "l1"))
    with pytest.raises(OutputConflictError, match="belongs to job 'one'"):
        open_sink(spec).claim(OwnerRecord("two", "uid-2", "l2"))


# -- credentials -----------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize("how", ["url", "password_env"])
def test_the_password_is_never_shown(tmp_path: Path, postgres_server: PostgresServer, how: str) -> None:
    """The test server trusts every local login, so any password connects: it must appear nowhere."""
    secret = "s3cret-pw-4711"
    database = postgres_server.create_database().rsplit("/", 1)[1]
    user, host, port = postgres_server.user, postgres_server.host, postgres_server.port
    if how == "url":
        url, extra, env = f"postgresql://{user}:{secret}@{host}:{port}/{database}", "", {}
    else:
        url, extra, env = f"postgresql://{user}@{host}:{port}/{database}", 'password_env = "SQL_PW"', {"SQL_PW": secret}
    job = _job(tmp_path, url, extra=extra)
    seen = ""
    for command in ("validate", "run", "status", "verify"):
        done = _cli(job, command, env=env)
        assert done.returncode == 0, done.stderr
        seen += done.stdout + done.stderr
    assert f"{host}:{port}/{database} table scores" in seen
    # A failure's message too: the same credentials against a port where nothing listens.
    (tmp_path / "broken").mkdir()
    broken = _job(tmp_path / "broken", url.replace(f":{port}/", ":1/"), extra=extra)
    failed = _cli(broken, "run", env=env)
    assert failed.returncode != 0 and "cannot connect" in failed.stderr, failed.stderr
    seen += failed.stdout + failed.stderr
    assert secret not in seen
    ledger = (tmp_path / ".infermill" / "tosql.sqlite").read_bytes()
    assert secret.encode() not in ledger
    if how == "password_env":  # without the variable, what connects says what is missing
        for command in ("status", "run"):
            unset = _cli(job, command)
            assert unset.returncode == 2 and "'SQL_PW' (password_env) is not set" in unset.stderr, unset.stderr


# -- helpers that create tables --------------------------------------------------------------------
def _create(directory: Path, url: str, *statements: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(directory / "out.db")
        with conn:
            for sql in statements:
                conn.execute(sql)
        conn.close()
        return
    import psycopg

    with psycopg.connect(url) as pg:
        for sql in statements:
            pg.execute(sql)
