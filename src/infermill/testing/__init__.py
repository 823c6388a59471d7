"""Test doubles and conformance suites shipped with infermill, for its tests and for users' own.

``infermill.testing.sources`` holds :class:`InMemorySource` and the :class:`SourceConformance` suite
(which needs pytest only when its tests run).
``infermill.testing.models`` holds :class:`EchoModel` and the :class:`ModelAdapterConformance` suite.
``infermill.testing.sinks`` holds the :class:`SinkConformance` suite every sink passes.
``infermill.testing.ledger`` holds the :class:`LedgerConformance` suite every ledger backend runs, and
:class:`FakeClock` for leases aged without sleeping.
"""

from __future__ import annotations

from .ledger import FakeClock, LedgerConformance
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
    "FakeClock",
    "InMemorySource",
    "LedgerConformance",
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
