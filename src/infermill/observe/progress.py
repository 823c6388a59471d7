"""Progress: a rich bar on a terminal, plain periodic log lines otherwise (CI logs, cron mail).

When the plan does not know the row count (CSV, JSONL) the total and the ETA come from a
:class:`~infermill.observe.estimate.RowEstimate`, shown with a ``~`` until every shard has committed.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from .estimate import RowEstimate

__all__ = ["ProgressReporter", "format_rate", "plural"]

Mode = Literal["bar", "log", "off"]


def plural(count: int, noun: str) -> str:
    """``1 shard``, ``5 shards``, ``1,000 rows``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def format_rate(rows: float, seconds: float) -> str:
    rate = rows / seconds if seconds > 0 else 0.0
    if rate >= 1e6:
        return f"{rate / 1e6:.2f}M rows/s"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k rows/s"
    return f"{rate:.0f} rows/s"


def _eta(remaining: float, rate: float) -> str:
    if rate <= 0 or remaining <= 0:
        return "-"
    seconds = int(remaining / rate)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressReporter:
    """Counts rows and shards of one run and shows them."""

    def __init__(
        self,
        *,
        job: str,
        rows_total: int | None,
        shards_total: int,
        rows_done: int = 0,
        shards_done: int = 0,
        mode: Mode | None = None,
        interval: float = 10.0,
        stream: TextIO | None = None,
        estimate: RowEstimate | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        if mode is None:
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.mode: Mode = mode
        self.job = job
        self.rows_total = rows_total
        self.estimate = estimate if rows_total is None else None
        self.shards_total = shards_total
        self.rows_done = rows_done
        self.shards_done = shards_done
        self._run_rows = 0
        self.interval = interval
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar: Any = None
        self._task: Any = None
        if self.mode == "bar":
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("shards {task.fields[shards]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._task = self._bar.add_task(self.job, total=self._total()[0], completed=self.rows_done, **self._fields())
        self._bar.start()

    def _total(self) -> tuple[int | None, str]:
        """The rows of the whole job, and ``"~"`` when that is an estimate."""
        if self.rows_total is not None or self.estimate is None:
            return self.rows_total, ""
        if self.estimate.exact:
            return self.estimate.total(), ""
        total = self.estimate.total()
        # Shards in flight may already have passed an estimate made from other shards.
        return (None if total is None else max(total, self.rows_done)), "~"

    def _fields(self) -> dict[str, str]:
        elapsed = time.monotonic() - self.started
        rate = self._run_rows / elapsed if elapsed > 0 else 0.0
        rows_total, about = self._total()
        total = f"/{about}{rows_total:,}" if rows_total is not None else ""
        remaining = (rows_total - self.rows_done) if rows_total is not None else 0
        return {
            "rows": f"{self.rows_done:,}{total} rows",
            "rate": format_rate(self._run_rows, elapsed),
            "shards": f"{self.shards_done}/{self.shards_total}",
            "eta": _eta(remaining, rate),
        }

    def advance(self, rows: int) -> None:
        self.rows_done += rows
        self._run_rows += rows
        self._refresh()

    def shard_done(self, shard_id: str | None = None, rows: int | None = None) -> None:
        """A shard committed; ``rows`` (succeeded and dead-lettered) refines an estimated total."""
        self.shards_done += 1
        if self.estimate is not None and shard_id is not None and rows is not None:
            self.estimate.commit(shard_id, rows)
        self._refresh(force=self.mode == "bar")

    def _refresh(self, force: bool = False) -> None:
        if self.mode == "bar":
            self._bar.update(self._task, total=self._total()[0], completed=self.rows_done, **self._fields())
        elif self.mode == "log":
            now = time.monotonic()
            if force or now - self._last_log >= self.interval:
                self._last_log = now
                self.log_line()

    def log_line(self) -> None:
        f = self._fields()
        print(f"[{self.job}] {f['rows']}, {f['rate']}, shards {f['shards']}, ETA {f['eta']}", file=self.stream)
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(self._task, total=self._total()[0], completed=self.rows_done, **self._fields())
            self._bar.stop()
            self._bar = None
        elif self.mode == "log" and self._run_rows:
            self.log_line()
