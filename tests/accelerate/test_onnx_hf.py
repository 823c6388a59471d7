"""``accelerate = "onnx"`` / ``"onnx-int8"`` for kind "hf", tasks feature-extraction (min cosine, as the
sentence-transformers kind) and text-classification (max abs difference of the probabilities), with the tiny
random-weight BERTs of ``infermill.testing.tiny_hf``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import infermill  # noqa: E402
from infermill.accelerate.onnx_encoder import OnnxClassifier, OnnxEncoder, OnnxInt8Encoder  # noqa: E402
from infermill.accelerate.verify import candidates  # noqa: E402
from infermill.engine.profile import acceleration  # noqa: E402
from infermill.errors import ModelLoadError  # noqa: E402
from infermill.models import load_adapter  # noqa: E402
from infermill.models.hf import HFModel  # noqa: E402
from infermill.spec import ModelSpec  # noqa: E402
from infermill.testing.models import model_spec_for  # noqa: E402
from infermill.testing.tiny_hf import WORDS, save_tiny_model  # noqa: E402
from tests.conftest import read_output  # noqa: E402


def corpus(count: int, seed: int = 1) -> list[str]:
    """Texts of 2 to 25 words of the tiny models' vocabulary."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, n)) for n in rng.integers(2, 26, count)]


def tiny(tmp_path: Path, task: str, **settings: Any) -> HFModel:
    save_tiny_model(tmp_path / "model", task, seed=0)
    spec = model_spec_for(tmp_path, ModelSpec(kind="hf", path="model", settings={"task": task, **settings}))
    adapter = load_adapter(spec)
    assert isinstance(adapter, HFModel)
    adapter.setup()
    return adapter


def prepared(adapter: HFModel, texts: list[str]) -> Any:
    return adapter.preprocess(pa.RecordBatch.from_arrays([pa.array(texts)], names=["text"]))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_feature_extraction_through_onnx_runtime_agrees(tmp_path: Path, pooling: str) -> None:
    adapter = tiny(tmp_path, "feature-extraction", pooling=pooling, normalize=True, micro_batch=8)
    (accelerator, int8) = adapter.accelerators()
    assert isinstance(accelerator, OnnxEncoder) and isinstance(int8, OnnxInt8Encoder)
    assert accelerator.unavailable(adapter) is None
    inputs = prepared(adapter, [*corpus(60), *["the cat sat on the mat"] * 8])
    before = adapter.predict(inputs)
    built = accelerator.build(adapter, tmp_path / "cache")
    original, fast = adapter.predict(inputs), built.predict(inputs)
    np.testing.assert_allclose(np.concatenate(original[1]), np.concatenate(before[1]), rtol=1e-5, atol=1e-6)
    assert accelerator.agreement(original, fast) >= 0.999
    ours = adapter.postprocess(fast, inputs.rows)["embedding"]
    theirs = adapter.postprocess(original, inputs.rows)["embedding"]
    np.testing.assert_allclose(
        ours.flatten().to_numpy(), theirs.flatten().to_numpy(), rtol=1e-4, atol=1e-5
    )


def test_text_classification_through_onnx_runtime_agrees_on_probabilities(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification", all_scores=True, micro_batch=8)
    (accelerator, _int8) = adapter.accelerators()
    assert isinstance(accelerator, OnnxClassifier)
    assert accelerator.metric == "max_abs_diff" and accelerator.default_bound == 1e-4
    inputs = prepared(adapter, corpus(60, seed=2))
    built = accelerator.build(adapter, tmp_path / "cache")
    original, fast = adapter.predict(inputs), built.predict(inputs)
    assert accelerator.agreement(original, fast) <= 1e-5
    ours, theirs = adapter.postprocess(fast, inputs.rows), adapter.postprocess(original, inputs.rows)
    assert ours["label"].to_pylist() == theirs["label"].to_pylist()
    np.testing.assert_allclose(ours["score"].to_numpy(), theirs["score"].to_numpy(), atol=1e-5)
    sample = inputs.iloc[np.linspace(0, 59, 7).astype(np.int64)]  # how accelerate.verify samples
    assert len(sample) == 7 and accelerator.agreement(adapter.predict(sample), built.predict(sample)) <= 1e-5


def test_other_tasks_have_no_onnx_form(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "token-classification")
    assert adapter.accelerators() == []
    spec = model_spec_for(
        tmp_path, ModelSpec(kind="hf", path="model", accelerate="onnx", settings={"task": "token-classification"})
    )
    with pytest.raises(ModelLoadError, match="does not apply"):
        candidates(adapter, spec)


def test_run_with_onnx_on_a_text_classifier(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "text-classification", seed=0)
    texts = corpus(80, seed=3)
    pq.write_table(pa.table({"id": np.arange(80), "text": texts}), tmp_path / "texts.parquet")
    outputs = {}
    for method in ("off", "onnx"):
        job = tmp_path / f"{method}.toml"
        job.write_text(
            f'[input]\npath = "texts.parquet"\nid_column = "id"\n'
            f'[model]\nkind = "hf"\npath = "model"\ntask = "text-classification"\naccelerate = "{method}"\n'
            f'[runtime]\nworkers = 1\n[output]\npath = "out-{method}"\n'
        )
        assert infermill.run(job, progress="off").state == "complete"
        outputs[method] = read_output(tmp_path / f"out-{method}").sort_by("id")
        if method == "onnx":
            (decision,) = acceleration(job)
            assert decision["used"] and decision["metric"] == "max_abs_diff" and decision["value"] <= 1e-4
            assert decision["sample_rows"] == 80
    assert outputs["onnx"].column("label").to_pylist() == outputs["off"].column("label").to_pylist()
    np.testing.assert_allclose(
        outputs["onnx"].column("score").to_numpy(), outputs["off"].column("score").to_numpy(), atol=1e-4
    )
