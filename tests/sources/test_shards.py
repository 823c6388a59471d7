"""Shard ids: computed once per shard, stable across JSON and pickle, and free of absolute paths."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest

from infermill.sources import base, open_source
from infermill.sources.base import Fragment, Shard
from infermill.testing.sources import conformance_rows, source_spec
from tests.sources.helpers import write_rows


class _CountingHashlib:
    """Stands in for ``hashlib`` inside ``infermill.sources.base``: counts the digests made there."""

    def __init__(self) -> None:
        self.calls = 0

    def sha256(self, data: bytes = b"") -> Any:
        self.calls += 1
        return hashlib.sha256(data)


def test_shard_id_is_hashed_once_per_shard_not_per_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 one-row-group files merged into one shard: an id re-serialised on every access costs
    # O(fragments) each time, and the engine reads it for every batch and event.
    write_rows(tmp_path / "data", conformance_rows(40), "parquet", files=40, row_group_size=1)
    source = open_source(source_spec(str(tmp_path / "data"), shard_rows=1_000))
    counter = _CountingHashlib()
    monkeypatch.setattr(base, "hashlib", counter)
    (shard,) = source.plan()
    assert len(shard.fragments) == 40
    made = counter.calls
    assert made <= 1
    ids = {shard.shard_id for _ in range(1_000)}
    rows = sum(batch.num_rows for batch in source.read(shard, 3))
    assert rows == 40 and len(ids) == 1
    assert counter.calls == made, f"shard_id was hashed {counter.calls - made} times after planning"


def test_shard_id_survives_json_and_pickle(tmp_path: Path) -> None:
    write_rows(tmp_path / "data", conformance_rows(), "csv")
    shards = open_source(source_spec(str(tmp_path / "data"), shard_bytes=90)).plan()
    assert len(shards) > 1
    for shard in shards:
        for again in (Shard.from_json(shard.to_json()), pickle.loads(pickle.dumps(shard))):
            assert again == shard and again.shard_id == shard.shard_id


def test_shard_id_ignores_the_absolute_path_but_not_what_identifies_the_file() -> None:
    fragment = Fragment(path="/old/data/a.csv", relpath="a.csv", start=0, stop=100, file_fingerprint="100:1.5")
    shard = Shard(ordinal=3, fragments=(fragment,))
    assert shard.shard_id.startswith("00003-")

    def with_(**changes: Any) -> str:
        return Shard(ordinal=3, fragments=(Fragment(**{**fragment.__dict__, **changes}),)).shard_id

    assert with_(path="/mnt/elsewhere/data/a.csv") == shard.shard_id
    assert with_(path="s3://bucket/data/a.csv") == shard.shard_id
    for change in ({"relpath": "b.csv"}, {"stop": 99}, {"file_fingerprint": "100:2.5"}, {"rows": 7}):
        assert with_(**change) != shard.shard_id, change
