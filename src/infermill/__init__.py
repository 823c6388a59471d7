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
    OutputError,
    SpecError,
    TransientError,
)
from .spec import BatchSpec, InputSpec, JobSpec, ModelSpec, OutputSpec, RuntimeSpec, load_spec

__version__ = "0.1.0"

__all__ = [
    "BatchSpec",
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
    "OutputError",
    "OutputSpec",
    "RuntimeSpec",
    "SpecError",
    "TransientError",
    "__version__",
    "load_spec",
]
