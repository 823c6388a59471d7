"""``format = "files"``: a folder (or glob, or fsspec URL) of documents and images, one row per file.

Every file below the input root is a row (names starting with ``.`` or ``_`` are skipped, as for every
format; ``[input] include`` and ``exclude`` narrow the set) with its ``path`` relative to the root, its
``size``, ``modified`` time and ``sha256``, then its content by ``[input] content`` (see
:class:`~infermill.sources.files_settings.FilesSettings`): text (PDF through pypdf, .docx through
python-docx, HTML without its markup), an image's encoded bytes checked by Pillow, or the raw bytes.

A file that cannot be read as its type (a corrupt or truncated PDF, an image Pillow cannot decode, a
zero-byte image, text not valid in ``[input] encoding``) or one over ``[input] max_file_bytes`` is an
unreadable row (``base.INPUT_ERROR``, its content null): dead-lettered with class ``input`` and its path,
never a failed shard. A file gone or changed since the job was planned fails its shard (an InputError),
as for every file format: the row would not be the file that was planned.

Shards are runs of files in path order, at most ``shard_files`` files (and ``[input] shard_rows``) and
about ``shard_bytes`` bytes each, planned from the listing alone (no file is read to plan). The synthetic
row id is the file's relative path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from ..errors import InputError, SpecError
from ..spec import JobSpec
from ._decode import IMAGE_EXTENSIONS, Unreadable, check_image, decode_text, extension, kind_of
from ._files import FileSource
from ._fs import InputFile, InputListing, _fingerprint, _glob_match, display_path, list_input
from .base import INPUT_ERROR, INPUT_ERROR_TYPE, SYNTHETIC_ID, Fragment, Shard
from .files_settings import FilesSettings

__all__ = ["BATCH_BYTES", "FilesSource", "files_schema"]

BATCH_BYTES = 64 * 1024 * 1024
"""A batch ends early (at a file boundary) once its files hold this many bytes, so that a batch of large
files never holds ``batch_size`` of them in memory at once."""

_META = [
    pa.field("path", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("modified", pa.timestamp("us", tz="UTC")),
    pa.field("sha256", pa.string()),
]
_CONTENT = {
    "text": [pa.field("text", pa.string())],
    "image": [pa.field("image", pa.binary())],
    "bytes": [pa.field("bytes", pa.binary())],
}
_CONTENT["auto"] = [pa.field("kind", pa.string()), *_CONTENT["text"], *_CONTENT["image"], *_CONTENT["bytes"]]
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")
_NEEDS = {".pdf": ("pypdf", "pypdf"), ".docx": ("docx", "python-docx")}


def files_schema(content: str) -> pa.Schema:
    """The columns of ``format = "files"`` for ``[input] content``."""
    return pa.schema(_META + _CONTENT[content])


class FilesSource(FileSource):
    """Reads a folder of documents and images, one row per file."""

    format = "files"
    settings: FilesSettings

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self.settings = spec.input_settings(self.format)

    # -- listing and planning ------------------------------------------------------------------------
    def listing(self) -> InputListing:
        """Every file of the input (any extension), narrowed by ``include`` and ``exclude``."""
        if self._listing is None:
            listed = list_input(self.spec, self.format, every_file=True)
            files = tuple(f for f in listed.files if self._wanted(f.relpath))
            if not files:
                raise InputError(
                    f"no file of the input {display_path(self.spec.resolve(self.spec.input.path))} matches "
                    f"[input] include {list(self.settings.patterns('include'))} and exclude "
                    f"{list(self.settings.patterns('exclude'))}",
                    hint="check [input] include and exclude: a glob without '/' matches file names, one with "
                    "'/' paths relative to the input root",
                )
            self._listing = dataclasses.replace(listed, files=files)
            self._fs = listed.fs
        return self._listing

    def _wanted(self, relpath: str) -> bool:
        include = self.settings.patterns("include")
        if include and not any(_matches(relpath, p) for p in include):
            return False
        return not any(_matches(relpath, p) for p in self.settings.patterns("exclude"))

    def plan(self) -> list[Shard]:
        files = self.listing().files
        self.check_columns()
        self._check_libraries(files)
        most = min(self.settings.shard_files, self.spec.input.shard_rows)
        groups: list[list[InputFile]] = []
        size = 0
        for file in files:
            if not groups or len(groups[-1]) >= most or (size and size + file.size > self.settings.shard_bytes):
                groups.append([])
                size = 0
            groups[-1].append(file)
            size += file.size
        return [
            Shard(ordinal=i, fragments=tuple(_fragment(f) for f in group)) for i, group in enumerate(groups)
        ]

    def _check_libraries(self, files: Sequence[InputFile]) -> None:
        """A library a listed file needs, missing, fails the plan (not every row of its kind, one by one)."""
        content = self.settings.content
        exts = {extension(f.relpath) for f in files}
        wanted: list[tuple[str, str]] = []
        if content in ("auto", "text"):
            wanted += [_NEEDS[ext] for ext in sorted(exts & _NEEDS.keys())]
        if content == "image" or (content == "auto" and exts & IMAGE_EXTENSIONS):
            wanted.append(("PIL.Image", "Pillow"))
        for module, package in wanted:
            try:
                importlib.import_module(module)
            except ImportError:
                raise SpecError(
                    f"the input holds files that need {package} (content = {content!r}), which is not installed",
                    hint="pip install 'infermill[files]'",
                ) from None

    # -- schema --------------------------------------------------------------------------------------
    def _infer_schema(self, files: Sequence[InputFile]) -> pa.Schema:
        return files_schema(self.settings.content)

    def schema_origin(self) -> str:
        return f"the files of {display_path(self.spec.resolve(self.spec.input.path))} (format 'files')"

    # -- reading -------------------------------------------------------------------------------------
    def read(
        self, shard: Shard, batch_size: int, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        names = self.projection(columns)
        rows: list[dict[str, Any]] = []
        errors: list[dict[str, str] | None] = []
        held = 0
        for fragment in shard.fragments:
            row, error = self._row(fragment)
            rows.append(row)
            errors.append(error)
            held += fragment.stop
            if len(rows) >= batch_size or held >= BATCH_BYTES:
                yield self._batch(rows, errors, names)
                rows, errors, held = [], [], 0
        if rows:
            yield self._batch(rows, errors, names)

    def _batch(
        self, rows: list[dict[str, Any]], errors: list[dict[str, str] | None], names: list[str]
    ) -> pa.RecordBatch:
        schema = self.data_schema()
        arrays = [pa.array([r.get(n) for r in rows], schema.field(n).type) for n in names]
        fields = [schema.field(n) for n in names]
        if self.spec.input.id_column is None:
            arrays.append(pa.array([r["path"] for r in rows], pa.string()))
            fields.append(pa.field(SYNTHETIC_ID, pa.string()))
        if any(e is not None for e in errors):
            arrays.append(pa.array(errors, INPUT_ERROR_TYPE))
            fields.append(pa.field(INPUT_ERROR, INPUT_ERROR_TYPE))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def _row(self, fragment: Fragment) -> tuple[dict[str, Any], dict[str, str] | None]:
        """One file's row, and the input error when its content cannot be read (then the content is null)."""
        info = self._info(fragment)
        row: dict[str, Any] = {"path": fragment.relpath, "size": fragment.stop, "modified": _modified(info)}
        limit = self.settings.max_file_bytes
        try:
            if fragment.stop > limit:
                raise Unreadable(_too_big(fragment.stop, limit))
            with self.open_file(fragment.path) as handle:
                data = handle.read(limit + 1)
            if len(data) != fragment.stop:
                raise self._changed(fragment, f"it holds {len(data):,} bytes, not {fragment.stop:,}")
            row["sha256"] = hashlib.sha256(data).hexdigest()
            row.update(self._content(fragment.relpath, data))
        except Unreadable as exc:
            message = f"{display_path(fragment.path)}: {exc}"
            return row, {"message": message, "item": fragment.relpath}
        return row, None

    def _content(self, relpath: str, data: bytes) -> dict[str, Any]:
        content = self.settings.content
        kind = kind_of(relpath) if content == "auto" else content
        out: dict[str, Any] = {"kind": kind} if content == "auto" else {}
        if kind == "text":
            out["text"] = decode_text(relpath, data, self.settings.encoding)
        elif kind == "image":
            check_image(data)
            out["image"] = data
        else:
            out["bytes"] = data
        return out

    def _info(self, fragment: Fragment) -> dict[str, Any]:
        """The file's info now, checked against the planned fingerprint."""
        try:
            info = dict(self.fs.info(fragment.path))
        except FileNotFoundError:
            self.open_file(fragment.path)  # raises the InputError of a file gone since planning
            raise
        if fragment.file_fingerprint and _fingerprint(info) != fragment.file_fingerprint:
            raise self._changed(fragment, "its size or modification time differs")
        return info

    @staticmethod
    def _changed(fragment: Fragment, why: str) -> InputError:
        return InputError(
            f"the input file {display_path(fragment.path)} changed since the job was planned: {why}",
            hint="restore the file, or start the job afresh (`infermill run JOB --restart`) to read it as it is now",
        )


def _fragment(file: InputFile) -> Fragment:
    return Fragment(
        path=file.path, relpath=file.relpath, start=0, stop=file.size, row_offset=0, rows=1,
        file_fingerprint=file.fingerprint,
    )


def _matches(relpath: str, pattern: str) -> bool:
    """A glob without ``/`` matches the file's name in any folder; one with ``/`` the whole relative path."""
    parts = relpath.split("/")
    if "/" not in pattern:
        return _glob_match(parts[-1:], [pattern])
    return _glob_match(parts, pattern.strip("/").split("/"))


def _too_big(size: int, limit: int) -> str:
    return (
        f"the file is {size:,} bytes, over [input] max_file_bytes ({limit:,}); it was not read (raise "
        "max_file_bytes to read it)"
    )


def _modified(info: dict[str, Any]) -> dt.datetime | None:
    """The file's modification time (UTC) from an fsspec info dict, or None when the store has none."""
    for key in _TIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, (int, float)):
            return dt.datetime.fromtimestamp(value, tz=dt.UTC)
        if isinstance(value, str):
            try:
                return _modified({key: dt.datetime.fromisoformat(value.replace("Z", "+00:00"))})
            except ValueError:
                continue
    return None
