"""Find the input files: one file, a directory, a glob or an fsspec URL, listed in a stable order.

Shards must be the same every time the same input is planned, and object stores list in no promised
order, so the listing is sorted by path relative to the input root. Each file carries a fingerprint
(size plus etag or mtime) so that a changed file can be told apart from the one that was planned.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from ..errors import InputError
from ..spec import JobSpec, compressible_formats, input_extensions, is_url, strip_compression
from ..store import retrying

__all__ = ["InputFile", "InputListing", "display_path", "infer_format", "list_input", "open_filesystem"]

_MAGIC = re.compile(r"[*?\[]")
_ETAG_KEYS = ("ETag", "etag", "md5Hash", "md5", "crc32c", "checksum")
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")
_BROKEN_LINK = "broken link"
"""The listing's type for a symbolic link to nothing (or to a loop of links)."""
_IDENTITY = "infermill_identity"
_LINKS = "infermill_links"


@dataclass(frozen=True)
class InputFile:
    """One input file as planned."""

    path: str
    """What ``fs.open`` takes: a local path, or the URL for a remote file."""
    relpath: str
    """Path relative to the input root, with ``/`` separators (used in synthetic ids)."""
    size: int
    fingerprint: str
    """Size and etag (or mtime) when listed."""


@dataclass(frozen=True)
class InputListing:
    """The files of an input, sorted by ``relpath``, and the filesystem that opens them."""

    fs: AbstractFileSystem
    root: str
    files: tuple[InputFile, ...]


def display_path(path: str) -> str:
    """A path or URL fit for a message: any ``user:password@`` part of a URL is removed."""
    if "@" not in path:
        return path  # nothing to remove; the check is the common case, once per file read
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", path)


def open_filesystem(spec: JobSpec) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of the input and the input path as that filesystem spells it."""
    target = spec.resolve(spec.input.path)
    try:
        fs, fspath = url_to_fs(target, **spec.input.storage_options)
    except (ImportError, ValueError, TypeError) as exc:
        # An unknown protocol, a missing extra (s3fs, gcsfs) or a bad option. The text names the package
        # to install, but may echo an option's value: credentials are masked.
        text = str(exc)
        for value in spec.input.storage_options.values():
            if isinstance(value, str) and value:
                text = text.replace(value, "***")
        raise InputError(
            f"cannot open the input {display_path(target)}: {text}",
            hint="check [input] storage_options, and install the fsspec backend for this URL "
            "(e.g. pip install 'infermill[s3]')",
        ) from None
    return fs, str(fspath)


def list_input(spec: JobSpec, fmt: str, *, every_file: bool = False) -> InputListing:
    """List the files of ``spec.input.path`` for format ``fmt``, sorted, with fingerprints.

    A directory yields every file below it with an extension of ``fmt`` (e.g. ``.csv``/``.tsv``), or every
    file at all with ``every_file`` (``format = "files"``, whose rows are files of any type), skipping
    names that start with ``.`` or ``_`` (hidden files, ``_SUCCESS``, staging folders).
    A glob yields the files it matches, skipping the same hidden names below its fixed prefix.
    """
    fs, fspath = open_filesystem(spec)
    shown = display_path(spec.resolve(spec.input.path))
    url = is_url(spec.resolve(spec.input.path))
    if _MAGIC.search(fspath):
        root = _glob_root(fspath)
        infos = _glob(fs, fspath)
        found = [(p, i) for p, i in infos.items() if i.get("type") != "directory" and not _hidden(p, root)]
        if not found:
            raise InputError(
                f"the input glob {shown} matches no files",
                hint="check [input] path; '**' matches nested folders, and names starting with '.' or '_' "
                "are skipped",
            )
    else:
        try:
            info = retrying(f"look up {shown}", lambda: fs.info(fspath))
        except FileNotFoundError:
            raise _not_found(spec) from None
        if info.get("type") == "directory":
            root = fspath.rstrip("/") or "/"
            exts = tuple(ext for ext, f in input_extensions().items() if f == fmt)
            infos = _find(fs, root)
            found = [
                (p, i)
                for p, i in infos.items()
                if i.get("type") != "directory"
                and (every_file or _named(p, fmt).endswith(exts))
                and not _hidden(p, root)
            ]
            if not found:
                raise InputError(
                    f"the input folder {shown} holds no files"
                    if every_file
                    else f"the input folder {shown} holds no {fmt} files ({', '.join(exts)})",
                    hint="check [input] path and format; names starting with '.' or '_' are skipped",
                )
        else:
            root = posixpath.dirname(fspath.rstrip("/"))
            found = [(fspath, info)]
    found = _resolve_links(found)
    root = _template_root(spec, root)
    files = [
        InputFile(
            path=fs.unstrip_protocol(p) if url else p,
            relpath=_relpath(p, root),
            size=int(i.get("size") or 0),
            fingerprint=_fingerprint(i),
        )
        for p, i in found
    ]
    files.sort(key=lambda f: (f.relpath, f.path))
    return InputListing(fs=fs, root=root, files=tuple(files))


def _template_root(spec: JobSpec, root: str) -> str:
    """For a path template (``data/{date}/*.parquet``), the folder before its first placeholder, which
    files are named relative to (``2026-12-01/x.parquet``): the same name in two partitions is two files."""
    from ..templates import template_base

    base = template_base(spec.input_template) if spec.input_template else None
    if base is None:
        return root
    _, fixed = url_to_fs(spec.resolve(base), **spec.input.storage_options)
    fixed = str(fixed).rstrip("/") or "/"
    return fixed if (root + "/").startswith(fixed.rstrip("/") + "/") else root


def infer_format(spec: JobSpec) -> str | None:
    """The one input format among the files of a folder or glob input, by extension; None when the
    path is not a folder or glob, holds no known files, or mixes formats."""
    fs, fspath = open_filesystem(spec)
    if _MAGIC.search(fspath):
        root, infos = _glob_root(fspath), _glob(fs, fspath)
    else:
        try:
            if retrying(f"look up {display_path(fspath)}", lambda: fs.info(fspath)).get("type") != "directory":
                return None
        except FileNotFoundError:
            raise _not_found(spec) from None
        root = fspath.rstrip("/") or "/"
        infos = _find(fs, root)
    found = {
        fmt
        for path, info in infos.items()
        if info.get("type") != "directory" and not _hidden(path, root)
        for ext, fmt in input_extensions().items()
        if _named(path, fmt).endswith(ext)
    }
    return found.pop() if len(found) == 1 else None


def _named(path: str, fmt: str) -> str:
    """The lower-cased name a file's format is told by: CSV and JSONL files may be compressed
    (``x.csv.gz`` is a CSV file)."""
    lowered = path.lower()
    return strip_compression(lowered) if fmt in compressible_formats() else lowered


def _not_found(spec: JobSpec) -> InputError:
    target = spec.resolve(spec.input.path)
    if not is_url(target) and os.path.islink(target):
        return InputError(
            f"the input {target} is a symbolic link to {os.readlink(target)}, which does not exist",
            hint="restore what the link points to, or point [input] path at the data",
        )
    return InputError(
        f"input not found: {display_path(spec.resolve(spec.input.path))}",
        hint="check [input] path; a relative path is resolved against the job file's folder "
        f"({spec.base_dir})",
    )


def _find(fs: AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Every file below ``root`` with its info (a seam: tests shuffle it to prove the order is ours)."""
    if isinstance(fs, LocalFileSystem):
        return _walk_local(fs, root)
    # Object stores list in pages; a page that fails (503, SlowDown, a dropped connection) fails the call,
    # which starts the listing over: a listing is only ever used whole.
    return dict(retrying(f"list {display_path(root)}", lambda: fs.find(root, withdirs=False, detail=True)))


def _glob(fs: AbstractFileSystem, pattern: str) -> dict[str, dict[str, Any]]:
    """Every path matching ``pattern`` with its info (a seam, like :func:`_find`)."""
    root = _glob_root(pattern)
    if isinstance(fs, LocalFileSystem) and root.startswith("/"):
        parts = pattern[len(root) :].strip("/").split("/")
        infos = _walk_local(fs, root, depth=None if "**" in parts else len(parts))
        return {path: info for path, info in infos.items() if _glob_match(_relpath(path, root).split("/"), parts)}
    return dict(retrying(f"list {display_path(pattern)}", lambda: fs.glob(pattern, detail=True)))


def _walk_local(fs: AbstractFileSystem, root: str, depth: int | None = None) -> dict[str, dict[str, Any]]:
    """Every file below the local folder ``root`` (``depth`` levels at most), following symbolic links,
    skipping hidden names (see :func:`_hidden`).

    fsspec's own walk lists a link as a file (a link to a folder then fails to open as one) and never
    enters linked folders, so their rows would be silently missing. Here a link is what it points to:
    a linked folder is walked (whatever its name, ``x.parquet`` included), and a link back to a folder
    being walked (a loop) is not entered again. Each file's info records the file it is (``_IDENTITY``)
    and the links on its route (``_LINKS``), for :func:`_resolve_links`; a link to nothing is returned
    with type ``_BROKEN_LINK``.
    """
    found: dict[str, dict[str, Any]] = {}

    def walk(folder: str, level: int, links: int, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(
                f"cannot list the input folder {folder}: {exc.strerror or exc}",
                hint="check the folder's permissions, or point [input] path at a folder without it",
            ) from None
        for entry in entries:
            if entry.name.startswith((".", "_")):
                continue
            path = posixpath.join(folder, entry.name)
            is_link = entry.is_symlink()
            try:
                target = entry.stat()  # follows links
            except OSError as exc:
                if is_link:  # a link to nothing, or a loop of links
                    found[path] = {
                        "name": path,
                        "type": _BROKEN_LINK,
                        "size": 0,
                        "destination": os.readlink(path),
                        "reason": exc.strerror or str(exc),
                    }
                elif not isinstance(exc, FileNotFoundError):  # one removed while listed was as good as gone
                    raise InputError(
                        f"cannot read the input file {path}: {exc.strerror or exc}",
                        hint="check the file's permissions, or remove it from the input",
                    ) from None
                continue
            identity = (target.st_dev, target.st_ino)
            if stat.S_ISDIR(target.st_mode):
                if identity not in ancestors and (depth is None or level < depth):
                    walk(path, level + 1, links + is_link, ancestors | {identity})
                continue
            # A link's own info describes the link; the target's size and mtime are what the fingerprint needs.
            info = dict(fs.info(path)) if is_link else _file_info(path, target)
            if target.st_ino:  # 0 where the filesystem has no stable inode numbers: nothing to compare
                info[_IDENTITY] = identity
            info[_LINKS] = links + is_link
            found[path] = info

    try:
        top = os.stat(root)
    except OSError:
        return found  # a glob whose folder does not exist matches nothing
    walk(root, 1, 0, frozenset({(top.st_dev, top.st_ino)}))
    return found


def _file_info(path: str, st: os.stat_result) -> dict[str, Any]:
    """What ``LocalFileSystem.info`` says of a file that is not a link, from the stat the walk already has:
    fsspec's own call stats the file again and costs ten times as much, which tells on 20,000 files."""
    kind = "file" if stat.S_ISREG(st.st_mode) else "other"
    info: dict[str, Any] = {
        "name": path, "size": st.st_size, "type": kind, "created": getattr(st, "st_birthtime", st.st_ctime),
        "islink": False,
    }
    for key in ("mode", "uid", "gid", "mtime", "ino", "nlink"):
        info[key] = getattr(st, f"st_{key}")
    return info


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Whether a relative path (split on ``/``) matches a glob (split the same way), as fsspec matches:
    ``*``, ``?`` and ``[...]`` within one name, ``**`` for any number of folders."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_match(parts[i:], rest) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _glob_match(parts[1:], rest)


def _resolve_links(found: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The input files once each: a link to nothing among them is an :class:`InputError` (at planning,
    not "the input changed" later), and a file reached by several routes (a link to a file or folder
    that is also listed directly, or a hard link) is kept under the route with the fewest links, then
    the first path in order, so no row is scored twice."""
    for path, info in found:
        if info.get("type") == _BROKEN_LINK:
            raise InputError(
                f"the input file {path} is a symbolic link to {info.get('destination')}, which cannot be read "
                f"({info.get('reason')})",
                hint="restore what the link points to, or remove the link; infermill follows links to files "
                "and folders",
            )
    best: dict[Any, tuple[int, str]] = {}
    for path, info in found:
        identity = info.get(_IDENTITY)
        route = (int(info.get(_LINKS, 0)), path)
        if identity is not None and (identity not in best or route < best[identity]):
            best[identity] = route
    keep = {path for _links, path in best.values()}
    return [(p, i) for p, i in found if i.get(_IDENTITY) is None or p in keep]


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    return "/".join(fixed) or ("/" if pattern.startswith("/") else "")


def _relpath(path: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    if root and path.startswith(prefix):
        return path[len(prefix) :]
    return path.lstrip("/")


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith((".", "_")) for part in _relpath(path, root).split("/"))


def _fingerprint(info: dict[str, Any]) -> str:
    size = info.get("size")
    for key in _ETAG_KEYS:
        if info.get(key):
            return f"{size}:{str(info[key]).strip(chr(34))}"
    for key in _TIME_KEYS:
        value = info.get(key)
        if isinstance(value, dt.datetime):
            return f"{size}:{value.timestamp()!r}"
        if value is not None:
            return f"{size}:{value!r}" if isinstance(value, float) else f"{size}:{value}"
    return str(size)
