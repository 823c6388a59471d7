"""Test helpers for sources: an in-memory source and the conformance suite every source runs.

A new source gets the whole contract tested by subclassing :class:`SourceConformance` and saying how
to write rows in its format::

    class TestMySource(SourceConformance):
        def make_dataset(self, tmp_path, rows, **input_options):
            write_my_format(tmp_path / "data", rows)          # several files, small shards
            return source_spec(str(tmp_path / "data"), format="mine", shard_rows=5, **input_options)

:class:`InMemorySource` serves rows from a ``pyarrow.Table``, for engine tests that need no files.
"""

from __future__ import annotations

import pickle
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import InputError
from ..sources import open_source as _open_source
from ..sources._columns import ColumnSource
from ..sources.base import SYNTHETIC_ID, Fragment, Shard, Source, rebatch
from ..spec import InputSpec, JobSpec, ModelSpec, OutputSpec

__all__ = ["InMemorySource", "SourceConformance", "conformance_rows", "source_spec"]


def source_spec(path: str, **input_options: Any) -> JobSpec:
    """A job spec around ``InputSpec(path, **input_options)``, with a placeholder model and output."""
    return JobSpec(
        input=InputSpec(path=path, **input_options),
        model=ModelSpec(kind="python", settings={"entrypoint": "model.py:Model"}),
        output=OutputSpec(path="out"),
    )


class InMemorySource(ColumnSource):
    """Rows from a ``pyarrow.Table``, in shards of ``spec.input.shard_rows`` rows.

    Fragment ``start``/``stop`` are row indexes; synthetic ids are ``"{name}#{row index}"``.
    """

    format = "memory"

    def __init__(self, spec: JobSpec, table: pa.Table, *, name: str = "table") -> None:
        super().__init__(spec)
        self.table = table
        self.name = name

    def plan(self) -> list[Shard]:
        self.check_columns()
        step = self.spec.input.shard_rows
        fingerprint = f"{self.table.num_rows}:{self.table.nbytes}"
        return [
            Shard(
                ordinal=i,
                fragments=(
                    Fragment(
                        path=f"memory-table:{self.name}",
                        relpath=self.name,
                        start=start,
                        stop=min(start + step, self.table.num_rows),
                        row_offset=start,
                        rows=min(step, self.table.num_rows - start),
                        file_fingerprint=fingerprint,
                    ),
                ),
            )
            for i, start in enumerate(range(0, self.table.num_rows, step))
        ]

    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        names = self.projection(columns)
        target = self.target_schema(names)

        def batches() -> Iterator[pa.RecordBatch]:
            for fragment in shard.fragments:
                row = fragment.start
                for batch in self.table.slice(fragment.start, fragment.stop - fragment.start).to_batches():
                    yield self.finish(batch, target, self.schema_origin(), f"{self.name}#", row)
                    row += batch.num_rows

        yield from rebatch(batches(), batch_size)

    def _load_schema(self) -> pa.Schema:
        return self.table.schema

    def schema_origin(self) -> str:
        return f"the in-memory table {self.name!r}"


def conformance_rows(count: int = 47) -> list[dict[str, Any]]:
    """Rows the suite uses: an int key, an exactly representable float, awkward strings, a bool."""
    names = ["plain", "with, comma", 'with "quotes"', "ünïcode", "tab\there", " spaced "]
    return [
        {"key": 1000 + i, "x": i * 0.25 - 3, "name": f"{names[i % len(names)]} {i}", "flag": i % 3 == 0}
        for i in range(count)
    ]


class SourceConformance(ABC):
    """The source contract as tests. Subclass it in a ``Test*`` class and implement
    :meth:`make_dataset`; override :meth:`open_source` when the source is not built from a spec alone."""

    shuffles_listing: bool = False
    """True for file sources: the suite then shuffles the file listing to prove the plan sorts it."""
    roles: dict[str, str] = {"key": "key", "x": "x", "name": "name", "flag": "flag"}  # noqa: RUF012 - read only
    """The columns of :meth:`dataset_rows` the suite reads by name: ``key`` (unique, used as ``id_column``),
    ``x`` and ``name`` (projected together) and ``flag`` (projected alone). A source whose columns are fixed
    (one row per file, say) maps them to its own."""
    free_columns: bool = True
    """Whether the source stores whatever columns it is given; False skips the test of a column named like
    the synthetic id."""

    @abstractmethod
    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        """Store ``rows`` (in order) in this source's format and return a spec that reads them in
        *several* shards; pass ``input_options`` (``id_column``, ``columns``) to the ``InputSpec``."""

    def open_source(self, spec: JobSpec) -> Source:
        """The source under test for ``spec``."""
        return _open_source(spec)

    def dataset_rows(self) -> list[dict[str, Any]]:
        """The rows the suite stores through :meth:`make_dataset` (:func:`conformance_rows`, unless the
        source's columns are fixed: then rows of its columns, in its column order, with :attr:`roles`)."""
        return conformance_rows()

    # -- helpers --------------------------------------------------------------------------------
    def _read(
        self,
        source: Source,
        shards: Sequence[Shard],
        batch_size: int = 1000,
        columns: Sequence[str] | None = None,
    ) -> list[list[pa.RecordBatch]]:
        return [list(source.read(shard, batch_size, columns)) for shard in shards]

    @staticmethod
    def _rows(per_shard: list[list[pa.RecordBatch]]) -> list[dict[str, Any]]:
        return [row for batches in per_shard for batch in batches for row in batch.to_pylist()]

    def _dataset(self, tmp_path: Path, **input_options: Any) -> tuple[JobSpec, list[dict[str, Any]]]:
        rows = self.dataset_rows()
        return self.make_dataset(tmp_path, rows, **input_options), rows

    # -- planning -------------------------------------------------------------------------------
    def test_plan_is_deterministic(self, tmp_path: Path) -> None:
        spec, _ = self._dataset(tmp_path)
        first = self.open_source(spec).plan()
        second = self.open_source(spec).plan()
        assert len(first) > 1, "make_dataset must give several shards for the suite to mean anything"
        assert first == second
        assert [s.shard_id for s in first] == [s.shard_id for s in second]
        assert [s.ordinal for s in first] == list(range(len(first)))
        assert len({s.shard_id for s in first}) == len(first)

    def test_plan_ignores_listing_order(self, tmp_path: Path, monkeypatch: Any) -> None:
        import pytest

        if not self.shuffles_listing:
            pytest.skip("this source has no file listing")
        from ..sources import _fs

        spec, _ = self._dataset(tmp_path)
        expected = self.open_source(spec).plan()
        for seed in range(3):

            def shuffled(*args: Any, _real: Any, _seed: int = seed) -> dict[str, Any]:
                items = list(_real(*args).items())
                random.Random(_seed).shuffle(items)
                return dict(items)

            real_find, real_glob = _fs._find, _fs._glob
            monkeypatch.setattr(_fs, "_find", lambda *a, _r=real_find: shuffled(*a, _real=_r))
            monkeypatch.setattr(_fs, "_glob", lambda *a, _r=real_glob: shuffled(*a, _real=_r))
            assert self.open_source(spec).plan() == expected
            monkeypatch.undo()

    def test_shard_json_round_trip(self, tmp_path: Path) -> None:
        spec, _ = self._dataset(tmp_path)
        source = self.open_source(spec)
        for shard in source.plan():
            again = Shard.from_json(shard.to_json())
            assert again == shard and again.shard_id == shard.shard_id
            assert self._rows([list(source.read(again, 7))]) == self._rows([list(source.read(shard, 7))])

    def test_moved_or_copied_input_keeps_shard_ids(self, tmp_path: Path) -> None:
        """Shard ids name files by their path below the input root, never by an absolute path: the same
        files moved (``mv``) or copied with their times (``cp -a``) plan the same ids and rows."""
        import dataclasses
        import shutil

        import pytest

        if not self.shuffles_listing:
            pytest.skip("this source has no files")
        here, there, copy = tmp_path / "here", tmp_path / "there", tmp_path / "copy"
        spec = self.make_dataset(here, self.dataset_rows())
        before = self.open_source(spec).plan()
        expected = self._rows(self._read(self.open_source(spec), before))

        def at(folder: Path) -> JobSpec:
            moved = spec.input.path.replace(str(here), str(folder), 1)
            return dataclasses.replace(spec, input=dataclasses.replace(spec.input, path=moved))

        shutil.copytree(here, copy, copy_function=shutil.copy2)  # keeps mtimes, as cp -a does
        here.rename(there)
        for folder in (there, copy):
            source = self.open_source(at(folder))
            shards = source.plan()
            assert [s.shard_id for s in shards] == [s.shard_id for s in before]
            assert all(str(folder) in f.path for s in shards for f in s.fragments)
            assert self._rows(self._read(source, shards)) == expected

    # -- reading --------------------------------------------------------------------------------
    def test_reads_every_row_once_in_order(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        got = self._rows(self._read(source, source.plan()))
        assert [{k: r[k] for k in rows[0]} for r in got] == rows

    def test_batch_sizes(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        shards = source.plan()
        for batch_size in (1, 4, 1000):
            total = 0
            for shard, batches in zip(shards, self._read(source, shards, batch_size), strict=True):
                sizes = [b.num_rows for b in batches]
                # Full batches, except that a source may end each fragment (a file's piece) short rather
                # than copy rows across files to fill the batch.
                short = sum(1 for s in sizes[:-1] if s != batch_size)
                assert short <= len(shard.fragments) - 1, (batch_size, sizes)
                assert all(0 < s <= batch_size for s in sizes), (batch_size, sizes)
                if shard.rows is not None:
                    assert sum(sizes) == shard.rows
                total += sum(sizes)
            assert total == len(rows)

    def test_batches_share_one_schema(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        schemas = {b.schema for batches in self._read(source, source.plan(), 3) for b in batches}
        assert schemas == {source.schema().append(pa.field(SYNTHETIC_ID, pa.string()))}
        assert source.schema().names == list(rows[0])

    def test_synthetic_ids_unique_and_stable(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        shards = source.plan()
        ids = [r[SYNTHETIC_ID] for r in self._rows(self._read(source, shards, 3))]
        assert len(set(ids)) == len(rows) and all(isinstance(i, str) and i for i in ids)
        # Another instance, another batch size, shards read backwards: the same id for the same row.
        other = self.open_source(spec)
        backwards = [list(other.read(s, 1000)) for s in reversed(other.plan())]
        assert [r[SYNTHETIC_ID] for r in self._rows(backwards[::-1])] == ids

    def test_pickled_source_reads_the_same(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        shards = source.plan()
        clone = pickle.loads(pickle.dumps(source))
        assert self._rows(self._read(clone, shards)) == self._rows(self._read(source, shards))

    def test_id_column_passthrough(self, tmp_path: Path) -> None:
        key = self.roles["key"]
        spec, rows = self._dataset(tmp_path, id_column=key)
        source = self.open_source(spec)
        batches = self._read(source, source.plan(), 5)
        assert all(SYNTHETIC_ID not in b.schema.names for bs in batches for b in bs)
        assert [r[key] for r in self._rows(batches)] == [r[key] for r in rows]

    def test_projection(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        x, name = self.roles["x"], self.roles["name"]
        batches = self._read(source, source.plan(), 5, columns=[x, name])
        assert {tuple(b.schema.names) for bs in batches for b in bs} == {(x, name, SYNTHETIC_ID)}
        assert [(r[x], r[name]) for r in self._rows(batches)] == [(r[x], r[name]) for r in rows]

    def test_projection_keeps_the_id_column(self, tmp_path: Path) -> None:
        key, flag = self.roles["key"], self.roles["flag"]
        spec, rows = self._dataset(tmp_path, id_column=key)
        source = self.open_source(spec)
        got = self._rows(self._read(source, source.plan(), 5, columns=[flag]))
        assert got == [{flag: r[flag], key: r[key]} for r in rows]

    def test_projection_of_nothing_but_the_id(self, tmp_path: Path) -> None:
        spec, rows = self._dataset(tmp_path)
        source = self.open_source(spec)
        got = self._rows(self._read(source, source.plan(), 4, columns=[]))
        assert len(got) == len(rows) and all(list(r) == [SYNTHETIC_ID] for r in got)

    def test_spec_columns_is_the_default_projection(self, tmp_path: Path) -> None:
        name = self.roles["name"]
        spec, rows = self._dataset(tmp_path, columns=[name])
        source = self.open_source(spec)
        got = self._rows(self._read(source, source.plan()))
        assert [list(r) for r in got[:1]] == [[name, SYNTHETIC_ID]]
        assert [r[name] for r in got] == [r[name] for r in rows]
        assert source.schema().names == list(rows[0])  # the schema is before projection

    def test_unknown_column_is_an_input_error(self, tmp_path: Path) -> None:
        import pytest

        spec, _ = self._dataset(tmp_path)
        source = self.open_source(spec)
        shard = source.plan()[0]
        with pytest.raises(InputError, match="'nope'") as info:
            list(source.read(shard, 10, columns=[self.roles["x"], "nope"]))
        assert self.roles["x"] in str(info.value) and "available" in str(info.value)

    def test_unknown_id_column_fails_at_plan(self, tmp_path: Path) -> None:
        import pytest

        spec, _ = self._dataset(tmp_path, id_column="nope")
        with pytest.raises(InputError, match="'nope'"):
            self.open_source(spec).plan()

    def test_column_named_like_the_synthetic_id(self, tmp_path: Path) -> None:
        import pytest

        if not self.free_columns:
            pytest.skip("this source's columns are fixed")
        rows = [{SYNTHETIC_ID: f"r{i}", "x": float(i)} for i in range(20)]
        with pytest.raises(InputError, match=SYNTHETIC_ID):
            self.open_source(self.make_dataset(tmp_path / "a", rows)).plan()
        source = self.open_source(self.make_dataset(tmp_path / "b", rows, id_column=SYNTHETIC_ID))
        assert [r[SYNTHETIC_ID] for r in self._rows(self._read(source, source.plan()))] == [
            r[SYNTHETIC_ID] for r in rows
        ]
