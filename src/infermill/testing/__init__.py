"""Test doubles and conformance suites shipped with infermill, for its tests and for users' own.

``infermill.testing.sources`` holds :class:`InMemorySource` and the :class:`SourceConformance` suite
(which needs pytest only when its tests run).
"""

from __future__ import annotations

from .sources import InMemorySource, SourceConformance, conformance_rows, source_spec

__all__ = [
    "InMemorySource",
    "SourceConformance",
    "conformance_rows",
    "source_spec",
]
