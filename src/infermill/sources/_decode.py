"""Decode one file's bytes by its type: text (plain, Markdown, HTML, PDF, .docx) or an image.

Each decoder takes the whole file and returns its content, or raises :class:`Unreadable` with why: a
corrupt PDF or image is one bad item (dead-lettered by the source), never a failed shard. pypdf, Pillow
and python-docx are imported on first use, with the ``pip install 'infermill[files]'`` hint when missing.
"""

from __future__ import annotations

import io
import logging
import posixpath
import warnings
from html.parser import HTMLParser
from typing import Any

from ..errors import SpecError

__all__ = ["IMAGE_EXTENSIONS", "TEXT_EXTENSIONS", "Unreadable", "check_image", "decode_text", "kind_of"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".pdf", ".docx"} | HTML_EXTENSIONS)
"""What ``content = "auto"`` reads as text; ``content = "text"`` reads any other file as plain text too."""
_HINT = "pip install 'infermill[files]'"


class Unreadable(Exception):
    """The file's content cannot be decoded as its type (the reason is the message)."""


def extension(relpath: str) -> str:
    return posixpath.splitext(relpath)[1].lower()


def kind_of(relpath: str) -> str:
    """``content = "auto"``: "text", "image" or "bytes", by the file's extension."""
    ext = extension(relpath)
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "text" if ext in TEXT_EXTENSIONS else "bytes"


def decode_text(relpath: str, data: bytes, encoding: str) -> str:
    """The file's text: PDF and .docx by their libraries, HTML without its tags, anything else decoded."""
    ext = extension(relpath)
    if ext == ".pdf":
        return _pdf_text(data)
    if ext == ".docx":
        return _docx_text(data)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise Unreadable(f"bytes that are not valid {encoding} ({exc})") from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark is no content
    return _html_text(text) if ext in HTML_EXTENSIONS else text


def check_image(data: bytes) -> None:
    """Raise :class:`Unreadable` unless Pillow decodes ``data`` whole (a truncated file fails here, not in
    the model)."""
    if not data:
        raise Unreadable("the image file is empty (0 bytes)")
    image_module = _import("PIL.Image", "Pillow")
    with warnings.catch_warnings():
        # A decompression bomb is a warning in Pillow below twice its pixel limit: here it is refused.
        warnings.simplefilter("error", image_module.DecompressionBombWarning)
        try:
            with image_module.open(io.BytesIO(data)) as image:
                image.load()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a corrupt file: all mean "unreadable"
            raise Unreadable(f"not a readable image ({type(exc).__name__}: {exc})") from None


def _pdf_text(data: bytes) -> str:
    pypdf = _import("pypdf", "pypdf")
    # pypdf logs what it repairs in a sloppy PDF; with no logging set up, Python would print each line to
    # stderr. A null handler stops only that: a handler the application configures still gets them.
    logger = logging.getLogger("pypdf")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise Unreadable("the PDF is encrypted")
        return "\n".join(page.extract_text() or "" for page in reader.pages)
    except (Unreadable, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt PDF raises from anywhere in pypdf: all mean "unreadable"
        raise Unreadable(f"not a readable PDF ({type(exc).__name__}: {exc})") from None


def _docx_text(data: bytes) -> str:
    docx = _import("docx", "python-docx")
    try:
        document = docx.Document(io.BytesIO(data))
        return "\n".join(paragraph.text for paragraph in document.paragraphs)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt .docx (a zip) raises many kinds: all mean "unreadable"
        raise Unreadable(f"not a readable .docx document ({type(exc).__name__}: {exc})") from None


def _import(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpecError(
            f"reading these files needs {package}, which is not installed", hint=_HINT
        ) from None


_BLOCKS = frozenset({
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "h1", "h2",
    "h3", "h4", "h5", "h6", "pre", "blockquote", "title", "hr",
})
_HIDDEN = frozenset({"script", "style", "head", "template", "noscript"})


class _TextOf(HTMLParser):
    """The text a browser would show, roughly: no tags, scripts or styles; block elements end lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _HIDDEN:
            self.hidden += 1
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _HIDDEN and self.hidden:
            self.hidden -= 1
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.hidden:
            self.parts.append(data)


def _html_text(html: str) -> str:
    """The visible text of an HTML document: runs of spaces collapsed, one line per block, the ``<title>``
    first when the body does not start with it."""
    parser = _TextOf()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    body = "\n".join(line for line in lines if line)
    title = " ".join("".join(parser.title).split())
    if title and not body.startswith(title):
        return f"{title}\n{body}" if body else title
    return body
