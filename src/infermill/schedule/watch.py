"""File-system events for ``serve``'s ``on_new_files``: a local input folder is watched with Linux inotify, so
a new file is seen when it lands instead of at the next listing (``poll_seconds``). Object stores have no
events: they are listed every ``poll_seconds``. Events only say *when* to look; what is new is always
decided from a listing (names, sizes, mtimes), so a missed or spurious event changes nothing but timing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct

__all__ = ["FolderEvents", "watch_root"]

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_ISDIR, _IN_Q_OVERFLOW = 0x40000000, 0x4000
_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_MAX_DIRS = 10_000
"""A tree with more folders than this is polled instead (each watch costs kernel memory)."""


def watch_root(path: str) -> str | None:
    """The local folder to watch for an ``[input] path`` (a folder, a file, a glob or a template): the part
    before the first wildcard or placeholder; None for a URL."""
    if "://" in path:
        return None
    cut = min((i for i in (path.find(c) for c in "*?[{") if i >= 0), default=len(path))
    head = path[:cut]
    if cut == len(path) and os.path.isdir(head):
        root = head
    elif head.endswith("/"):
        root = head.rstrip("/") or "/"
    else:
        root = os.path.dirname(head) or "."
    return root if os.path.isdir(root) else None


class FolderEvents:
    """inotify on a folder tree. ``changed()`` drains the events and says whether any arrived since the
    last call; ``fileno()`` can be waited on with ``select``."""

    def __init__(self, fd: int, libc: ctypes.CDLL, root: str) -> None:
        self._fd, self._libc, self.root = fd, libc, root
        self._dirs: dict[int, str] = {}
        self._add_tree(root)

    @classmethod
    def open(cls, root: str) -> FolderEvents | None:
        """Watch ``root`` and every folder below it; None where inotify is not available (then poll)."""
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        events = cls(fd, libc, root)
        if not events._dirs or len(events._dirs) > _MAX_DIRS:
            events.close()
            return None
        return events

    def _add(self, folder: str) -> None:
        if len(self._dirs) > _MAX_DIRS:
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _MASK)
        if wd >= 0:
            self._dirs[wd] = folder

    def _add_tree(self, root: str) -> None:
        self._add(root)
        for folder, subdirs, _files in os.walk(root):
            for sub in subdirs:
                self._add(os.path.join(folder, sub))

    def fileno(self) -> int:
        return self._fd

    def changed(self) -> bool:
        """Whether anything was created, written, moved or deleted in the tree since the last call."""
        seen = False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return seen
                raise
            if not data:
                return seen
            seen = True
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    continue  # events were dropped: the listing that follows sees everything anyway
                if mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO) and wd in self._dirs:
                    self._add_tree(os.path.join(self._dirs[wd], os.fsdecode(name)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
