"""Table -> no-op model -> table, against psycopg moving the same rows alone (issue #15: >= 0.6x).

One PostgreSQL server (``--url``, or a temporary PostgreSQL 15 server this script starts on a free
loopback port) holds ``bench_src`` (id bigint primary key, three doubles, a text column; ``--rows``,
default 2,000,000). In the same run:

- baseline: ``COPY (SELECT * FROM bench_src) TO STDOUT (FORMAT binary)`` streamed by psycopg into
  ``COPY bench_base FROM STDIN (FORMAT binary)`` on a second connection (``bench_base`` has the same
  columns and primary key);
- infermill: ``infermill run`` of a job reading ``bench_src`` (``[input] format = "sql"``, once the SQL
  source is installed) through a python model that returns one input column as ``y``, into ``[output]
  format = "sql"`` (mode insert: COPY into a staging table, merge with the commit marker, one transaction
  per shard). Until the SQL source exists, the job reads the same rows from a Parquet export of the table
  (made before the clock starts) and the report says so.

The ratio is baseline seconds / infermill seconds (process start included); PASS at >= 0.6.

    python bench/bench_sql.py                     # 2M rows, a temporary server
    python bench/bench_sql.py --rows 20000        # a quick check
    python bench/bench_sql.py --url postgresql://user@host/db
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TARGET = 0.6
MODEL = "class Model:\n    def predict(self, batch):\n        return {'y': batch['f0']}\n"


def _find(binary: str) -> str | None:
    for folder in (os.environ.get("INFERMILL_PG_BIN", ""), "/usr/lib/postgresql/15/bin"):
        if folder and os.access(os.path.join(folder, binary), os.X_OK):
            return os.path.join(folder, binary)
    return shutil.which(binary)


def _ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of a process, in clock ticks (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _server_cpu(postmaster: int) -> float:
    """CPU seconds the PostgreSQL server has used so far: the postmaster, its children that exited (reaped by it)
    and those still running (backends, autovacuum, the checkpointer)."""
    own, reaped = _ticks(postmaster)
    total = own + reaped
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
            if ppid == postmaster:
                total += _ticks(int(entry))[0]
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return total / os.sysconf("SC_CLK_TCK")


def _backends(postmaster: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    count += int(fh.read().rpartition(")")[2].split()[1]) == postmaster
            except (OSError, ValueError, IndexError):
                continue
    return count


def _settled(postmaster: int | None, children: int) -> None:
    """Wait (at most 5 s) until the backends of a finished client have exited, so their CPU is counted."""
    deadline = time.monotonic() + 5
    while postmaster is not None and _backends(postmaster) > children and time.monotonic() < deadline:
        time.sleep(0.02)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def _server(url: str | None) -> Iterator[tuple[str, int | None]]:
    """``url``, or a temporary PostgreSQL 15 server (as tests/postgres.py starts one) for the run, with the
    postmaster's process id when this script started it (its CPU is then measured)."""
    if url:
        yield url, None
        return
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if not initdb or not pg_ctl:
        sys.exit("PostgreSQL 15 binaries not found: install postgresql-15, set INFERMILL_PG_BIN, or pass --url")
    root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    user = "postgres" if root else os.environ.get("USER") or "postgres"
    data = tempfile.mkdtemp(prefix="bench-sql-pg-")
    if root:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*prefix, initdb, "-D", f"{data}/db", "-U", user, "--auth=trust", "--no-sync"], check=True,
                   capture_output=True)
    options = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", f"{data}/db", "-l", f"{data}/log", "-o", options, "-w", "start"],
                   check=True, capture_output=True)
    with open(f"{data}/db/postmaster.pid") as fh:
        postmaster = int(fh.readline())
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres", postmaster
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", f"{data}/db", "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _fill(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("bench_src", "bench_base", "bench_out", "bench_out_errors", "_infermill_commits",
                      "_infermill_outputs"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("CREATE TABLE bench_src (id BIGINT PRIMARY KEY, f0 DOUBLE PRECISION, f1 DOUBLE PRECISION, "
                     "f2 DOUBLE PRECISION, segment TEXT)")
        conn.execute("INSERT INTO bench_src SELECT g, random(), random(), random(), 'seg' || (g %% 7) "
                     "FROM generate_series(0, %s - 1) AS g", (rows,))
        conn.execute("VACUUM ANALYZE bench_src")
        conn.execute("CREATE TABLE bench_base (LIKE bench_src INCLUDING ALL)")


def _quiesce(url: str, written: str | None = None) -> None:
    """Leave the server quiet before a measurement: the table the last one wrote vacuumed and analyzed (else
    autovacuum does it, about a second of the server's CPU, during the next measurement) and the WAL
    checkpointed."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if written is not None:
            conn.execute(f"VACUUM ANALYZE {written}")
        conn.execute("CHECKPOINT")


def _baseline(url: str) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url) as src, psycopg.connect(url) as dst:
        with src.cursor().copy("COPY (SELECT * FROM bench_src) TO STDOUT (FORMAT binary)") as out, \
                dst.cursor().copy("COPY bench_base FROM STDIN (FORMAT binary)") as into:
            for chunk in out:
                into.write(chunk)
        dst.commit()
    return time.perf_counter() - started


def _has_sql_source() -> bool:
    from infermill import registry

    return registry.find("sources", "sql") is not None


def _export_parquet(url: str, path: Path) -> None:
    """The same rows as a Parquet file, for an infermill without the SQL source."""
    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, f0, f1, f2, segment FROM bench_src ORDER BY id").fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    table = pa.table({name: pa.array(col) for name, col in zip(("id", "f0", "f1", "f2", "segment"), columns,
                                                                strict=True)})
    pq.write_table(table, path, row_group_size=100_000)


def _job(folder: Path, url: str, rows: int, from_sql: bool, workers: int | None) -> Path:
    (folder / "model.py").write_text(MODEL)
    shard_rows = max(rows // 8, 1000)
    source = (f'format = "sql"\nurl = "{url}"\ntable = "bench_src"' if from_sql else 'path = "src.parquet"')
    job = folder / "bench_sql.toml"
    job.write_text(f"""name = "bench_sql"
[input]
{source}
id_column = "id"
shard_rows = {shard_rows}
[model]
kind = "python"
entrypoint = "model.py:Model"
features = ["f0"]
outputs = ["y"]
batch_format = "arrow"
[batch]
size = 65536
[output]
format = "sql"
url = "{url}"
table = "bench_out"
keep = ["f1", "f2", "segment"]
""" + ("" if workers is None else f"[runtime]\nworkers = {workers}\n"))
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--url", help="a PostgreSQL database to use (its bench_* tables are replaced)")
    parser.add_argument("--workers", type=int,
                        help="[runtime] workers of the job (default: none written, the job's default of one)")
    args = parser.parse_args()
    with _server(args.url) as (url, postmaster), tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
        folder = Path(tmp)
        _fill(url, args.rows)
        from_sql = _has_sql_source()
        if not from_sql:
            _export_parquet(url, folder / "src.parquet")
        _quiesce(url)
        children = _backends(postmaster) if postmaster is not None else 0
        load = Path("/proc/loadavg").read_text().split()[:3]
        server_before, client_before = _server_cpu(postmaster) if postmaster else 0.0, _cpu(resource.RUSAGE_SELF)
        base_s = _baseline(url)
        base_cpu = _cpu(resource.RUSAGE_SELF) - client_before
        _settled(postmaster, children)
        base_server = _server_cpu(postmaster) - server_before if postmaster else None
        _quiesce(url, "bench_base")
        job = _job(folder, url, args.rows, from_sql, args.workers)
        server_before, ours_before = _server_cpu(postmaster) if postmaster else 0.0, _cpu(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "infermill", "run", str(job), "--quiet"], capture_output=True,
                              text=True)
        ours_s = time.perf_counter() - started
        ours_cpu = _cpu(resource.RUSAGE_CHILDREN) - ours_before
        _settled(postmaster, children)
        ours_server = _server_cpu(postmaster) - server_before if postmaster else None
        if done.returncode != 0:
            sys.exit(f"infermill run failed ({done.returncode}):\n{done.stderr}")
        import psycopg

        with psycopg.connect(url) as conn:
            count = conn.execute("SELECT count(*) FROM bench_out").fetchone()
        assert count is not None and count[0] == args.rows, f"bench_out holds {count} rows, not {args.rows}"
        ratio = base_s / ours_s
        source = "bench_src through the SQL source" if from_sql else \
            "a Parquet export of bench_src (no SQL source installed yet)"

        def cpu(client: float, server: float | None) -> str:
            if server is None:
                return f"CPU {client:.2f} s (client; the server's is not measured with --url)"
            return f"CPU {client + server:.2f} s = {client:.2f} client + {server:.2f} PostgreSQL"

        print(f"rows:      {args.rows:,}  (load average at the start {' '.join(load)}, {os.cpu_count()} cores)")
        print(f"baseline:  {base_s:.2f} s  psycopg COPY TO + COPY FROM ({args.rows / base_s:,.0f} rows/s); "
              f"{cpu(base_cpu, base_server)}")
        print(f"infermill: {ours_s:.2f} s  reading {source}, no-op model, sql sink, {args.workers or 1} worker(s) "
              f"({args.rows / ours_s:,.0f} rows/s); {cpu(ours_cpu, ours_server)}")
        print(f"ratio:     {ratio:.2f}x of the baseline (target >= {TARGET}x): {'PASS' if ratio >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
