"""Credentials out of every message: the one place URLs and driver errors are masked.

Light (``re`` only): the spec, the SQL URL parser, the ledgers and the sinks all import it.
"""

from __future__ import annotations

import re

__all__ = ["mask_url", "scrub", "without_password"]

_SCHEME = r"[a-zA-Z][\w+.-]*://"
# In free text a URL ends at whitespace; its userinfo ends at the LAST "@" before the path, so a password
# holding "@" or ":" is masked whole (the greedy run stops at "/", whitespace or a quote).
_URL_PASSWORD = re.compile(rf"({_SCHEME}[^/@:\s'\"]*):[^/\s'\"]*@")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s'\"]*")


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (any scheme), and any
    ``password=`` query value -> ``password=***``. Text that is not a URL comes back unchanged."""
    return _PASSWORD_PARAM.sub(r"\1***", _userinfo(url, ":***"))


def without_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db``, and no ``password=`` query
    parameter: the form for a command in a hint (``psql URL`` then asks for the password)."""
    head, sep, rest = _userinfo(url, "").partition("?")
    if not sep:
        return head
    kept = "&".join(p for p in rest.split("&") if not p.lower().startswith("password="))
    return f"{head}?{kept}" if kept else head


def _userinfo(url: str, password: str) -> str:
    """``url`` with the password of its userinfo replaced by ``password`` (the whole of it, up to the last
    ``@`` before the path, so a password holding ``@`` or ``:`` goes whole)."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{head}{sep}{userinfo.split(':', 1)[0]}{password}@{host}{slash}{path}"


def scrub(text: str) -> str:
    """Any text (a driver's error message, a log line) with every URL password and ``password=`` value
    masked."""
    return _PASSWORD_PARAM.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))
