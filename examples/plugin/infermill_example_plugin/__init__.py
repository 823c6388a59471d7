"""An example infermill plugin, installed like any package: a model kind and an output format.

``kind = "shout"`` upper-cases a text column (a stand-in for a real model); ``format = "tsv"`` writes each
shard as tab-separated text. Both are found through entry points (see pyproject.toml), so a job file can
name them as soon as the package is installed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infermill.models.base import ModelAdapter
from infermill.sinks import FileSink, ShardWriter

__all__ = ["ShoutModel", "TsvSink"]


class ShoutModel(ModelAdapter):
    """Upper-cases its one feature column."""

    kind = "shout"
    default_outputs = ["shouted"]

    def predict(self, inputs: Any) -> Any:
        return {"shouted": pc.utf8_upper(inputs.column(0))}

    def fingerprint(self) -> str:
        return hashlib.sha256(b"shout v1").hexdigest()[:16]


class TsvWriter(ShardWriter):
    def __init__(self, path: str, final_name: str) -> None:
        super().__init__(path, final_name)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _close

    def _write(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            self._fh.write("\t".join("" if v is None else str(v) for v in row.values()) + "\n")

    def _close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class TsvSink(FileSink):
    """Each shard as a .tsv file; every commit, ownership and checksum rule comes from FileSink."""

    extension = ".tsv"
    writer_cls = TsvWriter

    def _read(self, source: Any) -> pa.Table:
        import pyarrow.csv as pacsv

        return pacsv.read_csv(source, parse_options=pacsv.ParseOptions(delimiter="\t"),
                              read_options=pacsv.ReadOptions(autogenerate_column_names=True))
