"""The conformance suite every sink runs.

A new sink gets the contract of :class:`infermill.sinks.Sink` tested by subclassing
:class:`SinkConformance` and saying how to make a job spec whose output is that sink::

    class TestMySink(SinkConformance):
        def make_spec(self, tmp_path):
            return sink_spec(tmp_path, "memory://bucket/out", format="parquet")

The suite checks: a staged result is invisible until committed; commit is atomic and idempotent (twice
leaves one copy); a redo of a shard (another attempt) replaces the first once the sink recovers; a commit
never replaces another attempt's result; abort leaves nothing; finalize lists exactly the committed results;
claim refuses another job's output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import OutputConflictError
from ..sinks import CommittedFile, OwnerRecord, Sink, StagedFile, open_sink
from ..spec import InputSpec, JobSpec, ModelSpec, OutputSpec

__all__ = ["SinkConformance", "sink_spec"]


def sink_spec(tmp_path: Path, output: str, **output_options: Any) -> JobSpec:
    """A job spec whose output is ``output`` (a folder or URL), with a placeholder input and model."""
    return JobSpec(
        input=InputSpec(path="data.parquet"),
        model=ModelSpec(kind="python", settings={"entrypoint": "model.py:Model"}),
        output=OutputSpec(path=output, **output_options),
        base_dir=str(tmp_path),
        name="conformance",
    )


class SinkConformance(ABC):
    """Subclass and implement :meth:`make_spec`; pytest collects the ``test_`` methods."""

    @abstractmethod
    def make_spec(self, tmp_path: Path) -> JobSpec:
        """A spec whose output is the sink under test, in a fresh location below ``tmp_path``."""

    def rows(self, start: int = 0, count: int = 10) -> pa.Table:
        """Result rows the sink can write (override for a sink with a fixed shape)."""
        return pa.table({"_row_id": [f"r{i}" for i in range(start, start + count)],
                         "score": [float(i) for i in range(start, start + count)]})

    # -- helpers -----------------------------------------------------------------------------------
    def _sink(self, tmp_path: Path) -> Sink:
        sink = open_sink(self.make_spec(tmp_path))
        assert sink.claim(OwnerRecord("conformance", "uid-1", str(tmp_path / "ledger")))
        sink.prepare()
        return sink

    def _stage(self, sink: Sink, ordinal: int, *, errors: bool = False, start: int | None = None) -> StagedFile:
        # As in a real job, different shards hold different ids (a table sink keys its rows by them); a redo
        # of a shard holds the same ids unless the test says otherwise.
        start = 1000 * ordinal if start is None else start
        writer = sink.open_writer(ordinal, errors=errors)
        writer.write(self.rows(start) if not errors else self.rows(start).select(["_row_id"]).append_column(
            "_error_class", pa.array(["ValueError"] * 10)))
        return writer.close()

    def exists(self, location: str) -> bool:
        """Whether a staged location still exists (override for a store that needs options)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return bool(fs.exists(path))

    # -- the contract --------------------------------------------------------------------------------
    def test_a_staged_result_is_invisible_until_committed(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        staged = self._stage(sink, 3)
        assert staged.rows == 10 and staged.bytes > 0 and len(staged.sha256) == 64
        assert sink.list_parts() == []
        committed = sink.commit(staged, 7)
        assert committed is not None and committed.name.endswith(f"part-00003-a7{Path(committed.name).suffix}")
        assert sink.list_parts() == [committed.name]
        stat = sink.stat(committed.name)
        assert stat is not None and stat[0] == staged.bytes
        assert sink.checksum(committed.name) == staged.sha256
        assert not self.exists(staged.location)

    def test_commit_is_idempotent(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        staged = self._stage(sink, 0)
        first = sink.commit(staged, 2)
        again = sink.commit(staged, 2)
        assert first is not None and again is not None
        assert (again.name, again.bytes, again.sha256) == (first.name, first.bytes, first.sha256)
        assert sink.list_parts() == [first.name]

    def test_a_redo_replaces_the_first_attempt(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        first = sink.commit(self._stage(sink, 0), 1)
        redo = sink.commit(self._stage(sink, 0, start=100), 2)
        assert first is not None and redo is not None and first.name != redo.name
        # The ledger names the redo; recovering removes the other attempt.
        assert sink.recover({redo.name}) == [first.name]
        assert sink.list_parts() == [redo.name]
        assert sink.checksum(redo.name) == redo.sha256

    def test_a_commit_never_replaces_another_attempt(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        newer = sink.commit(self._stage(sink, 0), 5)
        stale = sink.commit(self._stage(sink, 0, start=50), 4)  # a fenced-out run, waking up late
        assert newer is not None and stale is not None
        assert sink.checksum(newer.name) == newer.sha256
        assert sorted(sink.list_parts()) == sorted([newer.name, stale.name])

    def test_abort_leaves_nothing(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        staged = self._stage(sink, 1)
        assert self.exists(staged.location)
        sink.abort(staged)
        assert not self.exists(staged.location)
        assert sink.list_parts() == []

    def test_a_result_without_rows_commits_nothing(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        staged = sink.open_writer(2).close()
        assert sink.commit(staged, 1) is None
        assert sink.list_parts() == []

    def test_recover_removes_staged_results_of_dead_attempts(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        kept = sink.commit(self._stage(sink, 0), 1)
        orphan = self._stage(sink, 1)  # its run died before committing
        assert kept is not None
        assert sink.recover({kept.name}) == []
        assert not self.exists(orphan.location)
        assert sink.list_parts() == [kept.name]

    def test_finalize_lists_exactly_the_committed_results(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        committed: list[CommittedFile] = []
        for ordinal in range(3):
            result = sink.commit(self._stage(sink, ordinal, start=10 * ordinal), 1)
            assert result is not None
            committed.append(result)
        errors = sink.commit(self._stage(sink, 1, errors=True), 1)
        assert errors is not None and errors.name.startswith("_errors/")
        debris = sink.commit(self._stage(sink, 2), 9)  # an attempt the ledger does not name
        assert debris is not None
        keep = {c.name for c in [*committed, errors]}
        sink.recover(keep)
        manifest = {
            "job": "conformance",
            "files": [{"path": c.name, "rows": c.rows, "sha256": c.sha256} for c in committed],
            "error_files": [{"path": errors.name, "rows": errors.rows, "sha256": errors.sha256}],
        }
        sink.finalize(manifest)
        assert sink.read_manifest() == manifest
        assert sorted(sink.list_parts()) == sorted(keep)
        sink.unfinalize()
        assert sink.read_manifest() is None

    def test_claim_refuses_another_job(self, tmp_path: Path) -> None:
        sink = self._sink(tmp_path)
        assert not sink.claim(OwnerRecord("conformance", "uid-1", str(tmp_path / "ledger")))
        other = open_sink(self.make_spec(tmp_path))
        try:
            other.claim(OwnerRecord("another-job", "uid-2", str(tmp_path / "other-ledger")))
        except OutputConflictError as exc:
            assert "belongs to job 'conformance'" in str(exc)
        else:
            raise AssertionError("a second job claimed the output")
