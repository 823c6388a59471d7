"""The ``[input]`` keys of the built-in formats, beyond the common ones of :class:`~infermill.spec.InputSpec`.

Each format registers its dataclass (``registry`` meta ``settings``); the job spec checks a format's keys
against it while it is built. This module imports nothing heavy, so building a spec imports no source.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CsvSettings", "TextSettings"]


@dataclass(frozen=True)
class TextSettings:
    """The ``[input]`` keys of line-based formats: jsonl, openai-batch (and csv, which adds ``csv_delimiter``)."""

    shard_bytes: int = 128 * 1024 * 1024
    """Target bytes per shard (byte ranges aligned on line ends)."""
    split_files: bool = True
    """Split large files into byte ranges. Set false when quoted CSV values contain newlines."""
    encoding: str = "utf-8"
    """The text encoding of the files (any Python codec name, e.g. ``latin-1``). A row whose bytes are not
    valid in it is dead-lettered (class ``input``), never written."""
    max_row_bytes: int = 16 * 1024 * 1024
    """The longest row (line) read, in bytes; a longer one is dead-lettered (class ``input``) without being
    held in memory."""
    max_decompressed_bytes: int = 64 * 1024**3
    """Compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zst``): the most bytes one file may expand to; a file
    that expands further (a decompression bomb) fails its shard with an input error."""

    def __post_init__(self) -> None:
        import codecs

        from ..errors import SpecError

        if self.shard_bytes < 1:
            raise SpecError("'input.shard_bytes' must be positive")
        if self.max_row_bytes < 1 or self.max_decompressed_bytes < 1:
            raise SpecError("'input.max_row_bytes' and 'input.max_decompressed_bytes' must be positive")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SpecError(
                f"unknown 'input.encoding' {self.encoding!r}",
                hint='use a Python codec name such as "utf-8", "latin-1" or "cp1252"',
            ) from None


@dataclass(frozen=True)
class CsvSettings(TextSettings):
    """The ``[input]`` keys of ``format = "csv"``."""

    csv_delimiter: str | None = None
    """The field delimiter; default ``,`` (``\\t`` for .tsv files)."""
