"""The error policy: classification by exception type and adapter hooks."""

from __future__ import annotations

import errno

import pytest

from infermill.engine.policy import classify
from infermill.errors import ItemError, ModelLoadError, OutputError, TransientError
from infermill.models.onnx import OnnxModel


class RuntimeException(Exception):  # noqa: N818 - the name onnxruntime's pybind exception has
    pass


class OutOfMemoryError(RuntimeError):  # the name torch.cuda's has
    pass


class Flaky(Exception):
    transient = True


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ItemError("bad"), "item"),
        (ValueError("nan"), "item"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), "item"),
        (TransientError("busy"), "transient"),
        (Flaky(), "transient"),
        (TimeoutError(), "transient"),
        (ConnectionResetError(), "transient"),
        (MemoryError(), "oom"),
        (OutOfMemoryError("CUDA out of memory"), "oom"),
        (ModelLoadError("gone"), "fatal"),
        (OutputError("disk"), "fatal"),
        (PermissionError("denied"), "fatal"),
        (OSError(errno.ENOSPC, "No space left on device"), "fatal"),
        (KeyboardInterrupt(), "fatal"),
    ],
)
def test_classification(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_onnx_allocation_failure_is_oom() -> None:
    hook = OnnxModel.classify_error
    assert classify(RuntimeException("Failed to allocate memory for requested buffer of size 1e12"),
                    type("A", (), {"classify_error": lambda self, e: hook(self, e)})()) == "oom"
    assert hook(None, RuntimeException("some other failure")) is None  # type: ignore[arg-type]
