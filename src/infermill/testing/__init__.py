"""Test doubles and conformance suites shipped with infermill, for its tests and for users' own.

``infermill.testing.sources`` holds :class:`InMemorySource` and the :class:`SourceConformance` suite
(which needs pytest only when its tests run).
``infermill.testing.models`` holds :class:`EchoModel` and the :class:`ModelAdapterConformance` suite.
``infermill.testing.sinks`` holds the :class:`SinkConformance` suite every sink passes.
"""

from __future__ import annotations

from .models import (
    EchoModel,
    ModelAdapterConformance,
    conformance_batch,
    echo,
    make_python_spec,
    model_spec_for,
)
from .sinks import SinkConformance, sink_spec
from .sources import InMemorySource, SourceConformance, conformance_rows, source_spec

__all__ = [
    "EchoModel",
    "InMemorySource",
    "ModelAdapterConformance",
    "SinkConformance",
    "SourceConformance",
    "conformance_batch",
    "conformance_rows",
    "echo",
    "make_python_spec",
    "model_spec_for",
    "sink_spec",
    "source_spec",
]
