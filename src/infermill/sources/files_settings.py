"""The ``[input]`` keys of ``format = "files"`` (a folder of documents and images, one row per file).

A light module, like :mod:`infermill.sources.settings`: building a job spec imports it, so it imports
nothing heavy (no pyarrow, no Pillow, no pypdf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Content", "FilesSettings"]

Content = Literal["auto", "text", "image", "bytes"]


@dataclass(frozen=True)
class FilesSettings:
    """The ``[input]`` keys of ``format = "files"``: which files are rows, how their content is decoded,
    and how files are grouped into shards."""

    content: Content = "auto"
    """How each file's content becomes columns. "text": a ``text`` column (plain text and Markdown as they
    are, HTML to its text, PDF text through pypdf, .docx through python-docx); "image": an ``image``
    column of the file's encoded bytes, checked by Pillow (for ``kind = "hf"`` image tasks); "bytes": a
    ``bytes`` column of the raw bytes; "auto": by the file's extension, a ``kind`` column ("text",
    "image" or "bytes") and the three columns, the two that do not apply null."""
    include: str | list[str] | None = None
    """Glob(s) a file must match to be read: a glob without ``/`` matches the file's name in any folder
    (``["*.png", "*.jpg"]``), one with ``/`` its whole path relative to the input root (``"2026/**/*.pdf"``;
    ``*`` stays within one folder, ``**`` spans folders). Default: every file."""
    exclude: str | list[str] | None = None
    """Glob(s) of files left out, matched as ``include`` is (e.g. ``"drafts/**"`` or ``"*.tmp"``)."""
    max_file_bytes: int = 64 * 1024 * 1024
    """The largest file read, in bytes; a larger one is dead-lettered (class ``input``) without being read."""
    shard_files: int = 1000
    """The most files in one shard (``[input] shard_rows`` caps it too: one row per file)."""
    shard_bytes: int = 256 * 1024 * 1024
    """About how many bytes of files make one shard (a file larger than this is a shard of its own)."""
    encoding: str = "utf-8"
    """The encoding of plain text, Markdown and HTML files; a file not valid in it is dead-lettered."""

    def __post_init__(self) -> None:
        import codecs

        from ..errors import SpecError

        for name in ("max_file_bytes", "shard_files", "shard_bytes"):
            if getattr(self, name) < 1:
                raise SpecError(f"'input.{name}' must be positive", hint=f"set [input] {name} to 1 or more")
        for name in ("include", "exclude"):
            for pattern in self.patterns(name):
                if not pattern or pattern.startswith("/"):
                    raise SpecError(
                        f"'input.{name}' holds {pattern!r}; its globs match paths relative to the input root",
                        hint=f'write [input] {name} = "**/*.pdf" (no leading "/")',
                    )
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise SpecError(
                f"unknown 'input.encoding' {self.encoding!r}",
                hint='use a Python codec name such as "utf-8", "latin-1" or "cp1252"',
            ) from None

    def patterns(self, name: str) -> tuple[str, ...]:
        """``include`` or ``exclude`` as a tuple of globs (empty when unset)."""
        value = getattr(self, name)
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else tuple(value)
