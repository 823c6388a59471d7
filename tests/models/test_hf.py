"""kind = "hf": tiny transformers models with random weights (built from configs, nothing downloaded),
checked against the transformers pipelines for every task; text handling, truncation, trust, errors."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import infermill  # noqa: E402
from infermill.errors import ItemError, ModelLoadError, SpecError  # noqa: E402
from infermill.models import load_adapter  # noqa: E402
from infermill.models.hf import HFModel  # noqa: E402
from infermill.spec import JobSpec, ModelSpec  # noqa: E402
from infermill.testing.models import ModelAdapterConformance, model_spec_for  # noqa: E402
from infermill.testing.tiny_hf import save_tiny_model  # noqa: E402
from tests.conftest import read_output, run_cli, run_lanes_job  # noqa: E402

TEXTS = [
    "I love this movie",
    "the service was terrible and the food was bad",
    "john lives in paris",
    "mary visited london today",
    "a",
    "this film is a great example of a good movie and i like it very much",
    "rain",
    "the dog sat on the mat",
]
LONG = " ".join(["the cat sat on the mat"] * 12)  # about 72 tokens; the tiny models take 32
LABELS = ["sports", "politics", "food"]


def text_batch(texts: list[str] = TEXTS, name: str = "text") -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(texts)], names=[name])


def masked(texts: list[str] = TEXTS) -> list[str]:
    return [f"{t} [MASK]" for t in texts]


def images(count: int = 6, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (12 + i, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def spec_for(
    tmp_path: Path, task: str, folder: str = "model", outputs: list[str] | None = None, **settings: Any
) -> JobSpec:
    return model_spec_for(
        tmp_path, ModelSpec(kind="hf", path=folder, outputs=outputs, settings={"task": task, **settings})
    )


def ready(spec: JobSpec) -> HFModel:
    adapter = load_adapter(spec)
    assert isinstance(adapter, HFModel)
    adapter.setup()
    return adapter


def tiny(tmp_path: Path, task: str, seed: int = 0, folder: str = "model", **settings: Any) -> HFModel:
    save_tiny_model(tmp_path / folder, task, seed=seed)
    return ready(spec_for(tmp_path, task, folder, **settings))


def score(adapter: Any, batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


def pipe(tmp_path: Path, task: str, folder: str = "model") -> Any:
    return transformers.pipeline(task, model=str(tmp_path / folder), device="cpu")


# -- conformance ----------------------------------------------------------------------------------
class _HFConformance(ModelAdapterConformance):
    rtol = 1e-4
    atol = 1e-5
    task = "text-classification"
    settings: dict[str, Any] = {}

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save_tiny_model(tmp_path / "model", self.task, seed=0)
        return spec_for(tmp_path, self.task, micro_batch=3, **self.settings)

    def make_batch(self) -> pa.RecordBatch:
        return text_batch()

    def change_model(self, spec: JobSpec) -> None:
        save_tiny_model(spec.resolve("model"), self.task, seed=1)

    def assert_same(self, got: dict[str, pa.Array], expected: dict[str, pa.Array]) -> None:
        # The suite compares floats inside lists with tolerances, but not floats inside structs.
        assert {n: c.type for n, c in got.items()} == {n: c.type for n, c in expected.items()}
        super().assert_same(unnest(got), unnest(expected))


def unnest(columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """List-of-struct columns as one column per struct field (the list lengths stay checked)."""
    out = {}
    for name, column in columns.items():
        flat = column
        while pa.types.is_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
            out[f"{name}#lengths"] = pa.array([len(v) for v in flat.to_pylist()])
            flat = flat.flatten()
        if pa.types.is_struct(flat.type):
            for i in range(flat.type.num_fields):
                out[f"{name}.{flat.type.field(i).name}"] = flat.field(i)
        else:
            out[name] = column
    return out


class TestTextClassificationConformance(_HFConformance):
    settings = {"all_scores": True}


class TestTokenClassificationConformance(_HFConformance):
    task = "token-classification"
    settings = {"aggregation_strategy": "simple"}


class TestZeroShotConformance(_HFConformance):
    task = "zero-shot-classification"
    settings = {"candidate_labels": LABELS, "all_scores": True}


class TestFeatureExtractionConformance(_HFConformance):
    task = "feature-extraction"
    settings = {"normalize": True}


class TestFillMaskConformance(_HFConformance):
    task = "fill-mask"
    settings = {"all_scores": True, "top_k": 3}

    def make_batch(self) -> pa.RecordBatch:
        return text_batch(masked())


class TestImageClassificationConformance(_HFConformance):
    task = "image-classification"

    def make_batch(self) -> pa.RecordBatch:
        pytest.importorskip("PIL")
        return pa.RecordBatch.from_arrays([pa.array(images(), pa.binary())], names=["image"])


# -- the same results as the transformers pipelines -----------------------------------------------
def test_text_classification_matches_the_pipeline(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification", all_scores=True, micro_batch=3)
    out = score(adapter, text_batch())
    assert out["label"].type == pa.string() and out["score"].type == pa.float32()
    expected = pipe(tmp_path, "text-classification")(TEXTS, top_k=None)
    for i, row in enumerate(expected):
        best = max(row, key=lambda r: r["score"])
        assert out["label"][i].as_py() == best["label"]
        assert out["score"][i].as_py() == pytest.approx(best["score"], rel=1e-4)
        by_label = {r["label"]: r["score"] for r in row}
        got = out["scores"][i].as_py()
        assert [g["label"] for g in got] == ["NEGATIVE", "POSITIVE"]  # the model's label order
        assert [g["score"] for g in got] == pytest.approx([by_label[g["label"]] for g in got], rel=1e-4)


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "max", "average"])
def test_token_classification_matches_the_pipeline(tmp_path: Path, strategy: str) -> None:
    adapter = tiny(tmp_path, "token-classification", aggregation_strategy=strategy, micro_batch=3)
    out = score(adapter, text_batch())["entities"].to_pylist()
    expected = pipe(tmp_path, "token-classification")(TEXTS, aggregation_strategy=strategy)
    assert len(out) == len(expected)
    for got, want in zip(out, expected, strict=True):
        assert [e["entity"] for e in got] == [w.get("entity", w.get("entity_group")) for w in want]
        assert [(e["word"], e["start"], e["end"]) for e in got] == [(w["word"], w["start"], w["end"]) for w in want]
        assert [e["score"] for e in got] == pytest.approx([float(w["score"]) for w in want], rel=1e-4)


def test_token_classification_ignore_labels(tmp_path: Path) -> None:
    everything = tiny(tmp_path, "token-classification", ignore_labels=[])
    entities = score(everything, text_batch(["john lives in paris"]))["entities"][0].as_py()
    assert [e["word"] for e in entities] == ["john", "lives", "in", "paris"]
    assert {e["entity"] for e in entities} <= {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_matches_the_pipeline(tmp_path: Path, multi_label: bool) -> None:
    adapter = tiny(
        tmp_path,
        "zero-shot-classification",
        candidate_labels=LABELS,
        multi_label=multi_label,
        all_scores=True,
        micro_batch=4,
    )
    out = score(adapter, text_batch())
    expected = pipe(tmp_path, "zero-shot-classification")(TEXTS, candidate_labels=LABELS, multi_label=multi_label)
    for i, want in enumerate(expected):
        assert out["label"][i].as_py() == want["labels"][0]
        assert out["score"][i].as_py() == pytest.approx(want["scores"][0], rel=1e-4)
        by_label = dict(zip(want["labels"], want["scores"], strict=True))
        got = out["scores"][i].as_py()
        assert [g["label"] for g in got] == LABELS  # candidate order
        assert [g["score"] for g in got] == pytest.approx([by_label[label] for label in LABELS], rel=1e-4)


def test_zero_shot_needs_labels_and_an_nli_model(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "zero-shot-classification")
    with pytest.raises(ModelLoadError, match="needs 'model.candidate_labels'"):
        ready(spec_for(tmp_path, "zero-shot-classification"))
    with pytest.raises(ModelLoadError, match="has no '\\{\\}'"):
        ready(spec_for(tmp_path, "zero-shot-classification", candidate_labels=LABELS, hypothesis_template="About"))
    save_tiny_model(tmp_path / "sentiment", "text-classification")
    with pytest.raises(ModelLoadError, match="names no 'entailment' label"):
        ready(spec_for(tmp_path, "zero-shot-classification", "sentiment", candidate_labels=LABELS))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_feature_extraction_pools_the_pipelines_token_vectors(tmp_path: Path, pooling: str) -> None:
    adapter = tiny(tmp_path, "feature-extraction", pooling=pooling, micro_batch=3)
    out = score(adapter, text_batch())["embedding"]
    assert out.type == pa.list_(pa.float32(), 32)
    got = np.asarray(out.flatten().to_numpy()).reshape(len(TEXTS), 32)
    extractor = pipe(tmp_path, "feature-extraction")
    for i, text in enumerate(TEXTS):
        tokens = np.asarray(extractor(text))[0]  # [tokens, hidden], no padding
        want = tokens.mean(axis=0) if pooling == "mean" else tokens[0]
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    unit = score(tiny(tmp_path, "feature-extraction", normalize=True), text_batch())["embedding"]
    norms = np.linalg.norm(np.asarray(unit.flatten().to_numpy()).reshape(len(TEXTS), 32), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_fill_mask_matches_the_pipeline(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "fill-mask", all_scores=True, top_k=4)
    out = score(adapter, text_batch(masked()))
    expected = pipe(tmp_path, "fill-mask")(masked(), top_k=4)
    for i, want in enumerate(expected):
        got = out["scores"][i].as_py()
        assert [g["token"] for g in got] == [w["token_str"] for w in want]
        assert [g["token_id"] for g in got] == [w["token"] for w in want]
        assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], rel=1e-4)
        assert out["token"][i].as_py() == want[0]["token_str"]


def test_fill_mask_needs_exactly_one_mask(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "fill-mask")
    for text in ("no mask here", "[MASK] and [MASK]"):
        with pytest.raises(ItemError, match="mask tokens"):
            adapter.preprocess(text_batch([text]))


def test_image_classification_matches_the_pipeline(tmp_path: Path) -> None:
    from PIL import Image

    adapter = tiny(tmp_path, "image-classification", all_scores=True, micro_batch=4)
    data = images()
    out = score(adapter, pa.RecordBatch.from_arrays([pa.array(data, pa.binary())], names=["image"]))
    expected = pipe(tmp_path, "image-classification")([Image.open(io.BytesIO(b)) for b in data], top_k=None)
    for i, want in enumerate(expected):
        assert out["label"][i].as_py() == want[0]["label"]
        assert out["score"][i].as_py() == pytest.approx(want[0]["score"], rel=1e-4)


def test_images_from_paths_and_bad_images(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "image-classification")
    data = images(3)
    for i, blob in enumerate(data):
        (tmp_path / f"{i}.png").write_bytes(blob)
    by_path = score(
        adapter, pa.RecordBatch.from_arrays([pa.array(["0.png", "1.png", str(tmp_path / "2.png")])], names=["p"])
    )
    by_bytes = score(adapter, pa.RecordBatch.from_arrays([pa.array(data, pa.binary())], names=["b"]))
    assert by_path["label"].to_pylist() == by_bytes["label"].to_pylist()
    with pytest.raises(ItemError, match="cannot read the image in row 1"):
        adapter.preprocess(pa.RecordBatch.from_arrays([pa.array([data[0], b"not an image"], pa.binary())], names=["b"]))
    with pytest.raises(ItemError, match="cannot read the image in row 0"):
        adapter.preprocess(pa.RecordBatch.from_arrays([pa.array(["missing.png"])], names=["p"]))
    with pytest.raises(ModelLoadError, match="reads encoded image bytes"):
        adapter.preprocess(pa.RecordBatch.from_arrays([pa.array([1, 2])], names=["n"]))


# -- text handling --------------------------------------------------------------------------------
def test_long_text_is_truncated_by_default(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification")
    out = score(adapter, text_batch([LONG, "short"]))
    expected = pipe(tmp_path, "text-classification")([LONG], truncation=True)
    assert out["label"][0].as_py() == expected[0]["label"]
    assert out["score"][0].as_py() == pytest.approx(expected[0]["score"], rel=1e-4)


def test_long_text_without_truncation_is_an_item_error(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification", truncation=False)
    with pytest.raises(ItemError, match="tokens long, more than the model's limit of 32"):
        adapter.preprocess(text_batch(["short", LONG]))
    assert len(score(adapter, text_batch(["short"]))["label"]) == 1
    longer = tiny(tmp_path, "text-classification", folder="m2", truncation=False, max_length=64)
    assert len(score(longer, text_batch([" ".join(["cat"] * 50)]))["label"]) == 1


def test_invalid_utf8_and_nulls_are_item_errors(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification")
    binary = pa.RecordBatch.from_arrays([pa.array([b"fine text", b"\xff\xfe bad"], pa.binary())], names=["t"])
    with pytest.raises(ItemError, match="row 1 of the batch is not valid UTF-8"):
        adapter.preprocess(binary)
    assert (
        score(adapter, binary.slice(0, 1))["label"].to_pylist()
        == score(adapter, text_batch(["fine text"]))["label"].to_pylist()
    )
    unchecked = binary.column(0).view(pa.string())  # a string column whose writer did not check UTF-8
    with pytest.raises(ItemError, match="row 1 of the batch is not valid UTF-8"):
        adapter.preprocess(pa.RecordBatch.from_arrays([unchecked], names=["t"]))
    with pytest.raises(ItemError, match="null in row 1"):
        adapter.preprocess(text_batch(["a", None]))  # type: ignore[list-item]
    with pytest.raises(ModelLoadError, match="has type int64, but kind 'hf' reads text"):
        adapter.preprocess(pa.RecordBatch.from_arrays([pa.array([1])], names=["n"]))


def test_text_column_chooses_among_features(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification")
    two = pa.RecordBatch.from_arrays([pa.array(["x"]), pa.array(["y"])], names=["title", "body"])
    with pytest.raises(ModelLoadError, match="reads one column, but got 2 feature columns"):
        adapter.preprocess(two)
    chosen = ready(spec_for(tmp_path, "text-classification", text_column="body"))
    assert score(chosen, two)["label"].to_pylist() == score(adapter, text_batch(["y"]))["label"].to_pylist()
    with pytest.raises(ModelLoadError, match="'model.text_column' = 'missing' is not among"):
        ready(spec_for(tmp_path, "text-classification", text_column="missing")).preprocess(two)


def test_tokenization_happens_in_preprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = tiny(tmp_path, "text-classification", micro_batch=3)
    prepared = adapter.preprocess(text_batch())
    assert [len(p.tensors["input_ids"]) for p in prepared.parts] == [3, 3, 2]
    lengths = [len(TEXTS[i]) for i in prepared.order]
    assert lengths == sorted(lengths, reverse=True)  # longest first: similar lengths share padding
    assert adapter.task is not None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the tokenizer ran in predict")

    monkeypatch.setattr(type(adapter.task.tokenizer), "__call__", refuse)
    out = adapter.postprocess(adapter.predict(prepared), len(TEXTS))
    assert len(out["label"]) == len(TEXTS)


def test_preprocess_is_safe_from_two_threads(tmp_path: Path) -> None:
    adapter = tiny(tmp_path, "text-classification", truncation=False, micro_batch=2)
    errors: list[BaseException] = []

    def work(texts: list[str]) -> None:
        try:
            for _ in range(30):
                adapter.preprocess(text_batch(texts))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in (TEXTS, TEXTS[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_outputs_rename_the_defaults(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "text-classification")
    out = score(ready(spec_for(tmp_path, "text-classification", outputs=["sentiment", "confidence"])), text_batch())
    assert list(out) == ["sentiment", "confidence"]
    with pytest.raises(ModelLoadError, match="gives 2 output\\(s\\) \\['label', 'score'\\], but 'model.outputs' has 1"):
        load_adapter(spec_for(tmp_path, "text-classification", outputs=["only"]))


def test_bfloat16(tmp_path: Path) -> None:
    full = score(tiny(tmp_path, "feature-extraction"), text_batch())["embedding"]
    half = score(tiny(tmp_path, "feature-extraction", dtype="bfloat16"), text_batch())["embedding"]
    assert half.type == pa.list_(pa.float32(), 32)
    np.testing.assert_allclose(half.flatten().to_numpy(), full.flatten().to_numpy(), rtol=0.1, atol=0.1)


# -- configuration errors -------------------------------------------------------------------------
def test_configuration_errors(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "text-classification")
    with pytest.raises(ModelLoadError, match="needs 'model.task'"):
        load_adapter(model_spec_for(tmp_path, ModelSpec(kind="hf", path="model")))
    with pytest.raises(SpecError, match="model.task"):
        spec_for(tmp_path, "summarization")
    with pytest.raises(SpecError, match="did you mean 'truncation'"):
        spec_for(tmp_path, "text-classification", truncate=True)
    with pytest.raises(ModelLoadError, match="runs Python code shipped in the model folder"):
        load_adapter(spec_for(tmp_path, "text-classification", trust_remote_code=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder"):
        load_adapter(spec_for(tmp_path, "text-classification", "empty"))
    with pytest.raises(ModelLoadError, match="cannot load .* for task 'image-classification'"):
        ready(spec_for(tmp_path, "image-classification"))


def test_trusted_remote_code_is_passed_on(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "text-classification")
    spec = model_spec_for(
        tmp_path,
        ModelSpec(
            kind="hf", path="model", trusted=True, settings={"task": "text-classification", "trust_remote_code": True}
        ),
    )
    assert len(score(ready(spec), text_batch())["label"]) == len(TEXTS)


def pickle_weights(folder: Path, payload: Any = None) -> None:
    """Replace a saved model's model.safetensors by pytorch_model.bin (torch.save: a pickle) holding
    ``payload``, by default the same weights."""
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    torch.save(load_file(weights) if payload is None else payload, folder / "pytorch_model.bin")
    weights.unlink()


class _RunsCode:
    """Unpickling this calls print: what a hostile pickle would do with something worse."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("unpickled",))


def test_pickled_weights_need_trusted(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "text-classification")
    pickle_weights(tmp_path / "model")
    pq.write_table(pa.table({"id": [1, 2], "text": TEXTS[:2]}), tmp_path / "docs.parquet")
    job = '[input]\npath = "docs.parquet"\nid_column = "id"\n[model]\nkind = "hf"\npath = "model"\n'
    job += 'task = "text-classification"\n{trusted}[output]\npath = "out"\n'
    (tmp_path / "job.toml").write_text(job.format(trusted=""))
    refused = run_cli("validate", str(tmp_path / "job.toml"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "its weights (pytorch_model.bin) are pickled" in refused.stderr and "trusted = true" in refused.stderr
    assert "unexpected" not in refused.stderr

    (tmp_path / "job.toml").write_text(job.format(trusted="trusted = true\n"))
    accepted = run_cli("validate", str(tmp_path / "job.toml"))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    trusted = model_spec_for(
        tmp_path, ModelSpec(kind="hf", path="model", trusted=True, settings={"task": "text-classification"})
    )
    save_tiny_model(tmp_path / "safe", "text-classification")
    np.testing.assert_allclose(
        score(ready(trusted), text_batch())["score"].to_numpy(),
        score(ready(spec_for(tmp_path, "text-classification", "safe")), text_batch())["score"].to_numpy(),
        rtol=1e-6,
    )

    # Trusted or not, torch reads the pickle with weights_only: an object that runs code is refused, in words.
    pickle_weights(tmp_path / "safe", {"weight": _RunsCode()})
    trusted_hostile = model_spec_for(
        tmp_path, ModelSpec(kind="hf", path="safe", trusted=True, settings={"task": "text-classification"})
    )
    with pytest.raises(ModelLoadError, match="pickled weights hold objects other than tensors"):
        ready(trusted_hostile)


def test_missing_transformers_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny_model(tmp_path / "model", "text-classification")
    adapter = load_adapter(spec_for(tmp_path, "text-classification"))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match="pip install 'infermill\\[hf\\]'"):
        adapter.setup()


@pytest.mark.gpu
def test_runs_on_a_gpu(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = score(tiny(tmp_path, "text-classification", device="cpu"), text_batch())
    gpu_adapter = tiny(tmp_path, "text-classification", device="cuda", dtype="float16")
    assert gpu_adapter.device is not None and gpu_adapter.device.type == "cuda"
    gpu = score(gpu_adapter, text_batch())
    np.testing.assert_allclose(gpu["score"].to_numpy(), cpu["score"].to_numpy(), rtol=1e-2, atol=1e-2)


def test_importing_the_adapter_imports_no_heavy_library() -> None:
    code = (
        "import sys, infermill.models.hf\n"
        "loaded = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- end to end -----------------------------------------------------------------------------------
def test_run_end_to_end_with_bad_rows(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", "text-classification")
    texts = [TEXTS[i % len(TEXTS)].encode() for i in range(40)]
    texts[7] = b"\xc3\x28 invalid"
    texts[23] = LONG.encode()
    pq.write_table(pa.table({"id": np.arange(40), "text": pa.array(texts, pa.binary())}), tmp_path / "docs.parquet")
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\npath = "docs.parquet"\nid_column = "id"\n'
        '[model]\nkind = "hf"\npath = "model"\ntask = "text-classification"\ntruncation = false\nmicro_batch = 4\n'
        '[batch]\nsize = 16\n[output]\npath = "out"\n'
    )
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == 38 and result.rows_failed == 2
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.schema.field("label").type == pa.string() and out.schema.field("score").type == pa.float32()
    assert 7 not in out.column("id").to_pylist() and 23 not in out.column("id").to_pylist()
    direct = score(ready(spec_for(tmp_path, "text-classification")), text_batch([t.decode() for t in texts[:7]]))
    assert out.column("label").to_pylist()[:7] == direct["label"].to_pylist()
    np.testing.assert_allclose(out.column("score").to_numpy()[:7], direct["score"].to_numpy(), rtol=1e-4)


@pytest.mark.slow
def test_hf_example_runs(tmp_path: Path) -> None:
    import shutil

    example = tmp_path / "hf"
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(
        root / "examples" / "hf", example, ignore=shutil.ignore_patterns("data", "model", "nli", "out*", ".infermill")
    )
    subprocess.run([sys.executable, "make_model.py"], cwd=example, check=True, timeout=120, capture_output=True)
    reviews = infermill.run(example / "job.toml", progress="off")
    topics = infermill.run(example / "job_zero_shot.toml", progress="off")
    assert reviews.rows_succeeded == topics.rows_succeeded == 500
    out = read_output(example / "out")
    assert out.column_names == ["review_id", "text", "sentiment", "confidence"]
    assert set(out.column("sentiment").to_pylist()) <= {"NEGATIVE", "POSITIVE"}
    labels = read_output(example / "out_topics").column("label").to_pylist()
    assert set(labels) <= {"movies", "food", "travel"}


# -- token counts for [batch] max_tokens ----------------------------------------------------------
def test_token_counts_follow_the_tokenizer_and_shape_the_calls(tmp_path: Path) -> None:
    from infermill.engine.columns import Columns
    from infermill.engine.scoring import BatchScorer
    from infermill.spec import RetrySpec

    adapter = tiny(tmp_path, "text-classification")
    assert adapter.task is not None
    texts = [*TEXTS, LONG]
    counts = adapter.token_counts(text_batch(texts))
    assert counts is not None
    expected = [len(adapter.task.tokenizer(t, truncation=True, max_length=32)["input_ids"]) for t in texts]
    assert counts.tolist() == expected and counts[-1] == 32
    batch = pa.RecordBatch.from_arrays([pa.array(range(len(texts))), pa.array(texts)], names=["id", "text"])
    columns = Columns(id="id", features=["text"], keep=[], read=["id", "text"])
    scorer = BatchScorer(adapter, columns, RetrySpec(max_attempts=1), 8, max_tokens=40)
    calls: list[int] = []
    predict = adapter.predict
    adapter.predict = lambda inputs: (calls.append(inputs.rows), predict(inputs))[1]  # type: ignore[method-assign]
    tables, dead = scorer.score(batch)
    assert dead == [] and sum(t.num_rows for t in tables) == len(texts)
    starts = np.cumsum([0, *calls])
    for start, rows in zip(starts, calls, strict=False):
        assert rows == 1 or counts[start : start + rows].sum() <= 40
    assert len(calls) > 2


# -- lanes: parallel = "batches" ------------------------------------------------------------------
@pytest.mark.parametrize(("task", "parallel"), [("text-classification", "batches"), ("fill-mask", "batches"),
                                                ("fill-mask", "library")])
def test_run_with_lanes_matches_one_call(
    tmp_path: Path, task: str, parallel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fill-mask decodes with the tokenizer after each call: on a lane, while the reader encodes with it.
    save_tiny_model(tmp_path / "model", task)
    texts = masked() if task == "fill-mask" else TEXTS
    texts = [texts[i % len(texts)] for i in range(48)]
    model = f'kind = "hf"\npath = "model"\ntask = "{task}"\nmicro_batch = 2\ndevice = "cpu"\nall_scores = true\n'
    out = run_lanes_job(tmp_path, monkeypatch, HFModel, texts, model, "size = 3\n", parallel)
    direct = score(ready(spec_for(tmp_path, task, parallel="library", all_scores=True)), text_batch(texts))
    first = "token" if task == "fill-mask" else "label"
    assert out.column(first).to_pylist() == direct[first].to_pylist()
    np.testing.assert_allclose(out.column("score").to_numpy(), direct["score"].to_numpy(), rtol=1e-4, atol=1e-6)

    def ranked(rows: list[Any]) -> list[list[Any]]:
        return [[s.get("token_id", s.get("label")) for s in row] for row in rows]

    assert ranked(out.column("scores").to_pylist()) == ranked(direct["scores"].to_pylist())


def test_lanes_only_on_the_cpu_with_batches(tmp_path: Path) -> None:
    import torch

    save_tiny_model(tmp_path / "model", "text-classification")
    adapter = load_adapter(spec_for(tmp_path, "text-classification"), threads=2)
    assert adapter.lanes() == 1  # before setup: no device yet
    adapter.setup()
    assert adapter.lanes() == 2
    library = load_adapter(spec_for(tmp_path, "text-classification", parallel="library"), threads=2)
    library.setup()
    assert library.lanes() == 1
    assert isinstance(adapter, HFModel)
    adapter.device = torch.device("cuda", 0)
    assert adapter.lanes() == 1
