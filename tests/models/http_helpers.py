"""A job over a table of prompts, for the tests of the http kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import job_toml


def http_job(
    base: Path,
    url: str,
    prompts: int | Sequence[str],
    *,
    protocol: str = "openai-chat",
    model: dict[str, Any] | None = None,
    input: dict[str, Any] | None = None,  # noqa: A002 - the job file's section name
    **sections: dict[str, Any] | None,
) -> Path:
    """``base/in.parquet`` (``id``, ``prompt``: ``"row 0"``, ``"row 1"``... or the given texts) and
    ``base/job.toml`` scoring it with the http kind at ``url`` into ``base/out``. ``model``, ``input`` and
    the other sections (``batch``, ``retry``, ``runtime``...) add their keys."""
    texts = [f"row {i}" for i in range(prompts)] if isinstance(prompts, int) else list(prompts)
    base.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(texts))), "prompt": texts}), base / "in.parquet")
    return job_toml(
        base / "job.toml",
        input={"path": "in.parquet", "id_column": "id", **(input or {})},
        model={"kind": "http", "protocol": protocol, "url": url, **(model or {})},
        **sections,
        output={"path": "out"},
    )
