"""The ``[output]`` keys of the built-in formats, beyond the common ones of :class:`~infermill.spec.OutputSpec`.

Each format registers its dataclass (``registry`` meta ``settings``); the job spec checks a format's keys
against it while it is built. This module imports nothing heavy, so building a spec imports no sink.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ArrowSettings", "FileSettings", "ParquetSettings"]


@dataclass(frozen=True)
class FileSettings:
    """The ``[output]`` keys every file format shares (parquet, arrow, jsonl, csv): the output's layout."""

    target_file_mb: float | None = None
    """Write each shard's result as parts of about this many MiB (one shard may then give several files);
    unset: one file per shard."""
    partition_by: list[str] = field(default_factory=list)
    """Result columns whose values name Hive-style folders (``country=DE/part-...``); each shard writes one
    file (or more, with ``target_file_mb``) per value it holds, all committed together. The columns stay in
    the files too."""

    def __post_init__(self) -> None:
        from ..errors import SpecError

        if self.target_file_mb is not None and not self.target_file_mb > 0:
            raise SpecError(
                f"'output.target_file_mb' must be positive, not {self.target_file_mb}",
                hint="e.g. target_file_mb = 256, or leave it out for one file per shard",
            )
        names = list(self.partition_by)
        if any(not isinstance(n, str) or not n or "/" in n or "=" in n for n in names) or len(set(names)) != len(names):
            raise SpecError(
                f"'output.partition_by' must name distinct result columns, not {self.partition_by!r}",
                hint='e.g. partition_by = ["country"]',
            )

    @property
    def layout(self) -> bool:
        """Whether a shard's result is a set of files (``target_file_mb`` or ``partition_by`` set)."""
        return self.target_file_mb is not None or bool(self.partition_by)


@dataclass(frozen=True)
class ParquetSettings(FileSettings):
    """The ``[output]`` keys of ``format = "parquet"``."""

    compression: str | None = None
    """The Parquet compression codec: snappy (default), zstd, gzip, brotli, lz4 or none."""


@dataclass(frozen=True)
class ArrowSettings(FileSettings):
    """The ``[output]`` keys of ``format = "arrow"`` (Arrow IPC files, readable as Feather v2)."""

    compression: str | None = None
    """Compress the IPC buffers: lz4 or zstd; default none (Feather readers older than Arrow 0.17 cannot
    read compressed files)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..errors import SpecError

        if self.compression not in (None, "none", "lz4", "zstd"):
            raise SpecError(
                f"'output.compression' of format \"arrow\" must be lz4 or zstd, not {self.compression!r}",
                hint='set compression = "zstd", or leave it out',
            )
