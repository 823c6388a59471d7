"""infermill: batch ML inference over large datasets, exactly once, resumable.

Public API::

    import infermill
    result = infermill.run("job.toml")          # or a JobSpec
    print(result.state, result.rows_succeeded)
"""

from __future__ import annotations

from .errors import (
    InfermillError,
    InputError,
    InterruptedRunError,
    ItemError,
    JobChangedError,
    JobFailedError,
    JobLockedError,
    ModelLoadError,
    OutputConflictError,
    OutputError,
    SpecError,
    TransientError,
)
from .spec import (
    BatchSpec,
    ErrorsSpec,
    InputSpec,
    JobSpec,
    ModelSpec,
    OutputSpec,
    RetrySpec,
    RuntimeSpec,
    ScheduleSpec,
    load_spec,
)

__version__ = "0.1.0"

_LAZY = {
    "run": ("infermill.engine.runner", "run"),
    "status": ("infermill.engine.runner", "status"),
    "RunResult": ("infermill.engine.runner", "RunResult"),
    "validate": ("infermill.engine.validate", "validate"),
    "verify": ("infermill.engine.outputs", "verify"),
    "retry": ("infermill.engine.retry", "retry"),
    "failures": ("infermill.engine.failures", "failures"),
    "runs": ("infermill.schedule.history", "runs"),
}


def __getattr__(name: str) -> object:
    # The engine imports pyarrow; loading it lazily keeps `import infermill` and `infermill --help` fast.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'infermill' has no attribute {name!r}")


__all__ = [
    "BatchSpec",
    "ErrorsSpec",
    "InfermillError",
    "InputError",
    "InputSpec",
    "InterruptedRunError",
    "ItemError",
    "JobChangedError",
    "JobFailedError",
    "JobLockedError",
    "JobSpec",
    "ModelLoadError",
    "ModelSpec",
    "OutputConflictError",
    "OutputError",
    "OutputSpec",
    "RetrySpec",
    "RunResult",
    "RuntimeSpec",
    "ScheduleSpec",
    "SpecError",
    "TransientError",
    "__version__",
    "failures",
    "load_spec",
    "retry",
    "run",
    "runs",
    "status",
    "validate",
    "verify",
]
