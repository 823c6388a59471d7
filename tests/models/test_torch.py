"""kind = "torch": TorchScript, torch.export, factory + weights and trusted checkpoints, with real (small)
torch models; inputs, outputs, dtypes, trust, device selection (CUDA faked) and OOM handling."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402

import infermill  # noqa: E402
from infermill.engine.policy import classify  # noqa: E402
from infermill.errors import ItemError, ModelLoadError, SpecError  # noqa: E402
from infermill.models import load_adapter  # noqa: E402
from infermill.models._torch_runtime import check_device, select_device, worker_index  # noqa: E402
from infermill.models.torch_model import TorchModel, detect_format  # noqa: E402
from infermill.spec import JobSpec, ModelSpec  # noqa: E402
from infermill.testing.models import ModelAdapterConformance, conformance_batch, model_spec_for  # noqa: E402
from tests.conftest import read_output  # noqa: E402

NET = '''
import torch


class Net(torch.nn.Module):
    """A small MLP: 3 features -> 2 scores."""

    def __init__(self, hidden=8, width=3):
        super().__init__()
        self.l1 = torch.nn.Linear(width, hidden)
        self.l2 = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


class Two(Net):
    """Returns a tuple: the scores and their sum per row."""

    def forward(self, x):
        y = super().forward(x)
        return y, y.sum(dim=1)


class Named(Net):
    """Takes a dict of columns, returns a dict."""

    def forward(self, batch):
        x = torch.stack([batch["f0"], batch["f1"], batch["f2"]], dim=1)
        y = super().forward(x)
        return {"score": y[:, 1], "logits": y}


class Keywords(Net):
    def forward(self, f0, f1, f2):
        return super().forward(torch.stack([f0, f1, f2], dim=1))[:, 0]


class Tokens(torch.nn.Module):
    """An embedding bag over integer ids (a dict input with an int64 column)."""

    def __init__(self, hidden=4):
        super().__init__()
        self.emb = torch.nn.Embedding(10, hidden)

    def forward(self, batch):
        return self.emb(batch["token"]).sum(dim=1) + batch["weight"].unsqueeze(1)


class Oom(torch.nn.Module):
    """Runs out of "GPU memory" for batches of more than 4 rows."""

    def __init__(self, hidden=0):
        super().__init__()

    def forward(self, x):
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.sum(dim=1)


class Recorder(torch.nn.Module):
    """Records where it is moved instead of moving (stands in for a GPU)."""

    moved = []

    def __init__(self, hidden=0):
        super().__init__()

    def to(self, *args, **kwargs):
        Recorder.moved.append((args, kwargs))
        return self

    def forward(self, x):
        return x.sum(dim=1)


def build(hidden=8, seed=0, cls="Net"):
    torch.manual_seed(seed)
    return globals()[cls](hidden)


def not_a_module():
    return 42
'''

BATCH = conformance_batch(rows=32)
X = np.column_stack([c.to_numpy() for c in BATCH.columns]).astype(np.float32)


def net_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NET)
    return path


def net(tmp_path: Path, cls: str = "Net", seed: int = 0, hidden: int = 8) -> Any:
    """An instance of a class from NET (imported from the file written under tmp_path)."""
    namespace: dict[str, Any] = {}
    exec(compile(NET, str(net_file(tmp_path)), "exec"), namespace)  # noqa: S102 - our own test source
    return namespace["build"](hidden=hidden, seed=seed, cls=cls).eval()


@contextmanager
def importable_net(tmp_path: Path) -> Iterator[Any]:
    """NET as the importable module ``fullnet`` (a full pickle refers to its class by module name)."""
    (tmp_path / "fullnet.py").write_text(NET)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("fullnet")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fullnet", None)


def reference(module: Any, x: np.ndarray = X) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = module(torch.from_numpy(x)).numpy()
    return out


def save_script(module: Any, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`torch.jit.(script|save)` is deprecated", category=DeprecationWarning
        )
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def save_export(module: Any, path: Path) -> Path:
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.from_numpy(X[:4]),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    return path


def spec_for(tmp_path: Path, **model: Any) -> JobSpec:
    return model_spec_for(tmp_path, ModelSpec(kind="torch", **model))


def factory_spec(tmp_path: Path, weights: str | None = "model.safetensors", **settings: Any) -> JobSpec:
    net_file(tmp_path)
    extra = {"weights": weights} if weights else {}
    return spec_for(tmp_path, settings={"factory": "net.py:build", **extra, **settings})


def ready(spec: JobSpec, threads: int = 1) -> TorchModel:
    adapter = load_adapter(spec, threads=threads)
    assert isinstance(adapter, TorchModel)
    adapter.setup()
    return adapter


def score(adapter: Any, batch: pa.RecordBatch = BATCH) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


def values(column: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(column.type):
        return np.asarray(column.flatten().to_numpy()).reshape(len(column), column.type.list_size)
    return np.asarray(column.to_numpy(zero_copy_only=False))


# -- conformance ----------------------------------------------------------------------------------
class TestTorchScriptConformance(ModelAdapterConformance):
    rtol = 1e-5
    atol = 1e-6

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save_script(net(tmp_path), tmp_path / "model.pt")
        return spec_for(tmp_path, path="model.pt", settings={"device": "cpu"})

    def change_model(self, spec: JobSpec) -> None:
        save_script(net(Path(spec.base_dir), seed=1), Path(spec.resolve("model.pt")))


class TestTorchExportConformance(ModelAdapterConformance):
    rtol = 1e-5
    atol = 1e-6

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save_export(net(tmp_path), tmp_path / "model.pt2")
        return spec_for(tmp_path, path="model.pt2", outputs=["neg", "pos"])

    def change_model(self, spec: JobSpec) -> None:
        save_export(net(Path(spec.base_dir), seed=1), Path(spec.resolve("model.pt2")))


class TestTorchFactoryConformance(ModelAdapterConformance):
    rtol = 1e-5
    atol = 1e-6

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save_file(net(tmp_path).state_dict(), str(tmp_path / "model.safetensors"))
        return factory_spec(tmp_path)

    def change_model(self, spec: JobSpec) -> None:
        save_file(net(Path(spec.base_dir), seed=1).state_dict(), spec.resolve("model.safetensors"))


class TestTorchDictInputConformance(ModelAdapterConformance):
    rtol = 1e-5
    atol = 1e-6

    def make_spec(self, tmp_path: Path) -> JobSpec:
        torch.save(net(tmp_path, "Named").state_dict(), tmp_path / "state.pt")
        net_file(tmp_path)
        return spec_for(
            tmp_path,
            outputs=["score", "logits"],
            options={"cls": "Named"},
            settings={"factory": "net.py:build", "weights": "state.pt", "inputs": "dict"},
        )

    def change_model(self, spec: JobSpec) -> None:
        torch.save(net(Path(spec.base_dir), "Named", seed=1).state_dict(), spec.resolve("state.pt"))


class TestTorchBfloat16Conformance(ModelAdapterConformance):
    rtol = 2e-2
    atol = 2e-2

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save_file(net(tmp_path).state_dict(), str(tmp_path / "model.safetensors"))
        return factory_spec(tmp_path, dtype="bfloat16")


# -- sources and formats --------------------------------------------------------------------------
def test_every_source_gives_the_modules_output(tmp_path: Path) -> None:
    module = net(tmp_path)
    expected = reference(module)
    save_script(module, tmp_path / "script.pt")
    save_export(module, tmp_path / "exported.pt2")
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(module.state_dict(), tmp_path / "state.pth")
    specs = [
        spec_for(tmp_path, path="script.pt"),
        spec_for(tmp_path, path="exported.pt2"),
        factory_spec(tmp_path),
        factory_spec(tmp_path, weights="state.pth"),
        spec_for(tmp_path, path="full.pt", trusted=True),
    ]
    with importable_net(tmp_path) as fullnet:
        full = fullnet.build()
        full.load_state_dict(module.state_dict())
        torch.save(full, tmp_path / "full.pt")
        for spec in specs:
            out = score(ready(spec))["prediction"]
            assert out.type == pa.list_(pa.float32(), 2)
            np.testing.assert_allclose(values(out), expected, rtol=1e-5, atol=1e-6)


def test_format_is_detected_from_the_archive(tmp_path: Path) -> None:
    module = net(tmp_path)
    assert detect_format(str(save_script(module, tmp_path / "a.bin"))) == "torchscript"
    assert detect_format(str(save_export(module, tmp_path / "b.bin"))) == "export"
    torch.save(module.state_dict(), tmp_path / "c.pt")
    assert detect_format(str(tmp_path / "c.pt")) == "checkpoint"
    torch.save(module.state_dict(), tmp_path / "d.pt", _use_new_zipfile_serialization=False)
    assert detect_format(str(tmp_path / "d.pt")) == "checkpoint"


def test_full_checkpoint_needs_trust(tmp_path: Path) -> None:
    with importable_net(tmp_path) as fullnet:
        torch.save(fullnet.build(), tmp_path / "full.pt")
    adapter = load_adapter(spec_for(tmp_path, path="full.pt"))
    with pytest.raises(ModelLoadError, match="unpickling can run arbitrary code") as info:
        adapter.setup()
    assert "trusted = true" in str(info.value) and "weights_only=True" in str(info.value)


def test_state_dict_as_path_says_to_use_a_factory(tmp_path: Path) -> None:
    torch.save(net(tmp_path).state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelLoadError, match="holds a state dict, not a model") as info:
        ready(spec_for(tmp_path, path="state.pt"))
    assert "model.factory" in str(info.value)


def test_wrong_format_setting_is_reported(tmp_path: Path) -> None:
    torch.save(net(tmp_path).state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelLoadError, match="cannot load .* as torchscript"):
        ready(spec_for(tmp_path, path="state.pt", settings={"format": "torchscript"}))


def test_factory_errors(tmp_path: Path) -> None:
    net_file(tmp_path)
    with pytest.raises(ModelLoadError, match="returned a int, not a torch.nn.Module"):
        ready(spec_for(tmp_path, settings={"factory": "net.py:not_a_module"}))
    with pytest.raises(ModelLoadError, match="'biuld' not found .*model.factory") as info:
        ready(spec_for(tmp_path, settings={"factory": "net.py:biuld"}))
    assert "did you mean 'build'" in str(info.value)
    with pytest.raises(ModelLoadError, match="weights file not found"):
        load_adapter(factory_spec(tmp_path, weights="missing.safetensors"))
    with pytest.raises(ModelLoadError, match="either 'model.path'"):
        load_adapter(spec_for(tmp_path, path="net.py", settings={"factory": "net.py:build"}))
    with pytest.raises(ModelLoadError, match="needs 'model.factory'"):
        load_adapter(spec_for(tmp_path, path="net.py", settings={"weights": "x.safetensors"}))


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    save_file(net(tmp_path, hidden=4).state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="do not fit the module"):
        ready(factory_spec(tmp_path))
    partial = {k: v for k, v in net(tmp_path).state_dict().items() if k.startswith("l1.")}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="Missing key"):
        ready(factory_spec(tmp_path))
    ready(factory_spec(tmp_path, strict=False))


def test_options_go_to_the_factory(tmp_path: Path) -> None:
    save_file(net(tmp_path, hidden=5).state_dict(), str(tmp_path / "model.safetensors"))
    spec = model_spec_for(
        tmp_path,
        ModelSpec(
            kind="torch", options={"hidden": 5}, settings={"factory": "net.py:build", "weights": "model.safetensors"}
        ),
    )
    np.testing.assert_allclose(values(score(ready(spec))["prediction"]), reference(net(tmp_path, hidden=5)), rtol=1e-5)


def test_unknown_key_and_bad_values_fail_early(tmp_path: Path) -> None:
    save_script(net(tmp_path), tmp_path / "model.pt")
    with pytest.raises(SpecError, match="unknown key 'model.devcie'") as info:
        spec_for(tmp_path, path="model.pt", settings={"devcie": "cpu"})
    assert "did you mean 'device'" in str(info.value)
    with pytest.raises(SpecError, match="model.dtype"):
        spec_for(tmp_path, path="model.pt", settings={"dtype": "float64"})
    with pytest.raises(ModelLoadError, match="invalid device 'gpu'"):
        load_adapter(spec_for(tmp_path, path="model.pt", settings={"device": "gpu"}))


# -- inputs and outputs ---------------------------------------------------------------------------
def test_outputs_from_columns_tuples_and_dicts(tmp_path: Path) -> None:
    module = net(tmp_path)
    expected = reference(module)
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    split = score(
        ready(
            model_spec_for(
                tmp_path,
                ModelSpec(
                    kind="torch",
                    outputs=["neg", "pos"],
                    settings={"factory": "net.py:build", "weights": "model.safetensors"},
                ),
            )
        )
    )
    assert list(split) == ["neg", "pos"] and split["pos"].type == pa.float32()
    np.testing.assert_allclose(values(split["pos"]), expected[:, 1], rtol=1e-5)

    two = score(
        ready(
            model_spec_for(
                tmp_path,
                ModelSpec(
                    kind="torch",
                    outputs=["logits", "total"],
                    options={"cls": "Two"},
                    settings={"factory": "net.py:build", "weights": "model.safetensors"},
                ),
            )
        )
    )
    np.testing.assert_allclose(values(two["total"]), expected.sum(axis=1), rtol=1e-5, atol=1e-6)
    assert two["logits"].type == pa.list_(pa.float32(), 2)

    named = ready(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                outputs=["score"],
                options={"cls": "Named"},
                settings={"factory": "net.py:build", "weights": "model.safetensors", "inputs": "dict"},
            ),
        )
    )
    np.testing.assert_allclose(values(score(named)["score"]), expected[:, 1], rtol=1e-5)

    keywords = ready(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                options={"cls": "Keywords"},
                settings={"factory": "net.py:build", "weights": "model.safetensors", "inputs": "kwargs"},
            ),
        )
    )
    np.testing.assert_allclose(values(score(keywords)["prediction"]), expected[:, 0], rtol=1e-5)


def test_output_names_that_do_not_fit(tmp_path: Path) -> None:
    save_file(net(tmp_path).state_dict(), str(tmp_path / "model.safetensors"))
    three = ready(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                outputs=["a", "b", "c"],
                settings={"factory": "net.py:build", "weights": "model.safetensors"},
            ),
        )
    )
    with pytest.raises(ModelLoadError, match="one tensor of shape \\[32, 2\\], but 'model.outputs' has 3 names"):
        score(three)
    tuple_ = ready(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                options={"cls": "Two"},
                settings={"factory": "net.py:build", "weights": "model.safetensors"},
            ),
        )
    )
    with pytest.raises(ModelLoadError, match="returned 2 tensors, but 'model.outputs' has 1 names"):
        score(tuple_)
    named = ready(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                outputs=["prob"],
                options={"cls": "Named"},
                settings={"factory": "net.py:build", "weights": "model.safetensors", "inputs": "dict"},
            ),
        )
    )
    with pytest.raises(ModelLoadError, match="lacks the output\\(s\\) \\['prob'\\]"):
        score(named)


def test_list_and_integer_features(tmp_path: Path) -> None:
    module = net(tmp_path, "Tokens", hidden=4)
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    ids = np.array([[1, 2], [3, 4], [0, 9]], dtype=np.int32)
    batch = pa.RecordBatch.from_arrays(
        [pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), 2), pa.array([0.5, 1.0, -1.0])],
        names=["token", "weight"],
    )
    adapter = ready(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                options={"cls": "Tokens", "hidden": 4},
                settings={"factory": "net.py:build", "weights": "model.safetensors", "inputs": "dict"},
            ),
        )
    )
    inputs = adapter.preprocess(batch)
    assert inputs["token"].dtype == torch.int64 and inputs["token"].shape == (3, 2)
    assert inputs["weight"].dtype == torch.float32
    with torch.inference_mode():
        expected = module({"token": torch.from_numpy(ids.astype(np.int64)), "weight": torch.tensor([0.5, 1.0, -1.0])})
    np.testing.assert_allclose(values(score(adapter, batch)["prediction"]), expected.numpy(), rtol=1e-6)


def test_vector_column_is_spread_over_the_input(tmp_path: Path) -> None:
    module = net(tmp_path)
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    adapter = ready(factory_spec(tmp_path))
    vector = pa.FixedSizeListArray.from_arrays(pa.array(X[:, :2].reshape(-1)), 2)
    batch = pa.RecordBatch.from_arrays([vector, pa.array(X[:, 2])], names=["v", "f2"])
    np.testing.assert_allclose(values(score(adapter, batch)["prediction"]), reference(module), rtol=1e-5)


def test_bad_features(tmp_path: Path) -> None:
    save_file(net(tmp_path).state_dict(), str(tmp_path / "model.safetensors"))
    adapter = ready(factory_spec(tmp_path))
    text = pa.RecordBatch.from_arrays([pa.array(["a"]), pa.array([1.0]), pa.array([2.0])], names=["f0", "f1", "f2"])
    with pytest.raises(ModelLoadError, match="feature 'f0' has type string"):
        adapter.preprocess(text)
    nulls = pa.RecordBatch.from_arrays(
        [pa.array([1, None]), pa.array([1.0, 2.0]), pa.array([2.0, 3.0])], names=["f0", "f1", "f2"]
    )
    assert np.isnan(adapter.preprocess(nulls)[1, 0].item())  # a nullable int column is read as float, nulls NaN
    wrong_width = pa.RecordBatch.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["f0", "f1"])
    with pytest.raises(RuntimeError):  # the model's own shape error: an item error for the engine
        adapter.predict(adapter.preprocess(wrong_width))
    listed = pa.RecordBatch.from_arrays(
        [pa.FixedSizeListArray.from_arrays(pa.array([1.0, None, 2.0, 3.0, 4.0, 5.0]), 3)], names=["v"]
    )
    with pytest.raises(ItemError, match="null values inside its lists"):
        adapter.preprocess(listed)


def test_a_result_with_the_wrong_number_of_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "extra.py").write_text(
        "import torch\n\nclass M(torch.nn.Module):\n"
        "    def forward(self, x):\n        return torch.cat([x.sum(dim=1), torch.zeros(1)])\n\n"
        "def build():\n    return M()\n"
    )
    adapter = ready(spec_for(tmp_path, settings={"factory": "extra.py:build"}))
    with pytest.raises(ItemError, match="has 33 values for a batch of 32 rows"):
        score(adapter)


def test_float64_and_bool_outputs_keep_their_type(tmp_path: Path) -> None:
    (tmp_path / "typed.py").write_text(
        "import torch\n\nclass M(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x.double().sum(dim=1), x[:, 0] > 0\n\n"
        "def build():\n    return M()\n"
    )
    adapter = ready(spec_for(tmp_path, outputs=["total", "positive"], settings={"factory": "typed.py:build"}))
    out = score(adapter)
    assert out["total"].type == pa.float64() and out["positive"].type == pa.bool_()
    assert out["positive"].to_pylist() == (X[:, 0] > 0).tolist()
    empty = score(adapter, BATCH.slice(0, 0))
    assert empty["total"].type == pa.float64() and len(empty["positive"]) == 0


# -- devices, threads, errors ---------------------------------------------------------------------
class FakeCuda:
    """torch.cuda as seen on a machine with ``count`` GPUs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_device_auto_without_cuda_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(monkeypatch, 0)
    assert select_device("auto", torch) == torch.device("cpu")
    assert select_device("cpu", torch) == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU") as info:
        select_device("cuda", torch)
    assert 'device = "auto"' in str(info.value)
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        select_device("cuda:1", torch)


def test_device_with_cuda_spreads_workers_over_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(monkeypatch, 2)
    assert select_device("auto", torch, worker=0) == torch.device("cuda", 0)
    assert select_device("cuda", torch, worker=1) == torch.device("cuda", 1)
    assert select_device("cuda", torch, worker=3) == torch.device("cuda", 1)
    assert select_device("cuda:1", torch, worker=0) == torch.device("cuda", 1)
    assert select_device("cpu", torch) == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="'cuda:2' does not exist: 2 GPU\\(s\\) are visible"):
        select_device("cuda:2", torch)


def test_worker_index_comes_from_the_process_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    class Proc:
        name = "infermill-worker-5"

    assert worker_index() == 0
    monkeypatch.setattr(multiprocessing, "current_process", lambda: Proc())
    assert worker_index() == 5
    FakeCuda(monkeypatch, 4)
    assert select_device("cuda", torch) == torch.device("cuda", 1)


def test_setup_moves_the_model_to_the_workers_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    class Proc:
        name = "infermill-worker-1"

    FakeCuda(monkeypatch, 2)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: Proc())
    net_file(tmp_path)
    adapter = ready(spec_for(tmp_path, options={"cls": "Recorder"}, settings={"factory": "net.py:build"}))
    assert adapter.device == torch.device("cuda", 1)
    moved = type(adapter.module).moved
    assert moved == [((torch.device("cuda", 1),), {})]
    half = ready(
        spec_for(tmp_path, options={"cls": "Recorder"}, settings={"factory": "net.py:build", "dtype": "float16"})
    )
    assert type(half.module).moved[-1] == ((), {"device": torch.device("cuda", 1), "dtype": torch.float16})


def test_cuda_device_without_a_gpu_fails_setup(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    save_script(net(tmp_path), tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        ready(spec_for(tmp_path, path="model.pt", settings={"device": "cuda"}))


def test_check_device() -> None:
    for good in ("cpu", "auto", "cuda", "cuda:0", "cuda:12"):
        check_device(good, "torch")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "mps"):
        with pytest.raises(ModelLoadError):
            check_device(bad, "torch")


def test_threads_are_set_in_setup(tmp_path: Path) -> None:
    save_script(net(tmp_path), tmp_path / "model.pt")
    before = torch.get_num_threads()
    try:
        ready(spec_for(tmp_path, path="model.pt"), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_out_of_memory_is_classified_oom(tmp_path: Path) -> None:
    net_file(tmp_path)
    adapter = ready(spec_for(tmp_path, options={"cls": "Oom"}, settings={"factory": "net.py:build"}))
    with pytest.raises(torch.OutOfMemoryError) as info:
        score(adapter)
    assert adapter.classify_error(info.value) == "oom"
    assert classify(info.value, adapter) == "oom"
    assert classify(torch.cuda.OutOfMemoryError("x"), adapter) == "oom"
    assert classify(RuntimeError("shape mismatch"), adapter) == "item"
    accelerator = getattr(torch, "AcceleratorError", None)
    if accelerator is not None:
        assert classify(accelerator("device-side assert triggered"), adapter) == "fatal"


def test_inference_mode_is_on(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(
        "import torch\n\nclass M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.full((x.shape[0],), float(torch.is_inference_mode_enabled()))\n\n"
        "def build():\n    return M()\n"
    )
    out = score(ready(spec_for(tmp_path, settings={"factory": "probe.py:build"})))
    assert out["prediction"].to_pylist() == [1.0] * BATCH.num_rows


def test_missing_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_script(net(tmp_path), tmp_path / "model.pt")
    adapter = load_adapter(spec_for(tmp_path, path="model.pt"))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelLoadError, match="needs the 'torch' package") as info:
        adapter.setup()
    assert "pip install 'infermill[torch]'" in str(info.value)


def test_importing_the_adapter_does_not_import_torch() -> None:
    code = "import sys, infermill.models.torch_model\nassert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_fingerprint_covers_factory_source_weights_and_options(tmp_path: Path) -> None:
    save_file(net(tmp_path).state_dict(), str(tmp_path / "model.safetensors"))
    first = load_adapter(factory_spec(tmp_path)).fingerprint()
    (tmp_path / "net.py").write_text(NET + "\n# changed\n")
    changed_source = load_adapter(
        spec_for(tmp_path, settings={"factory": "net.py:build", "weights": "model.safetensors"})
    ).fingerprint()
    assert changed_source != first
    options = load_adapter(
        model_spec_for(
            tmp_path,
            ModelSpec(
                kind="torch",
                options={"hidden": 8},
                settings={"factory": "net.py:build", "weights": "model.safetensors"},
            ),
        )
    ).fingerprint()
    assert options != changed_source


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's CPU backend imports deprecated jit code
def test_compile(tmp_path: Path) -> None:
    module = net(tmp_path)
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    adapter = ready(factory_spec(tmp_path, compile=True))
    np.testing.assert_allclose(values(score(adapter)["prediction"]), reference(module), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_runs_on_a_gpu(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    module = net(tmp_path)
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    for dtype, tol in (("float32", 1e-4), ("float16", 1e-2)):
        adapter = ready(factory_spec(tmp_path, device="cuda", dtype=dtype))
        assert adapter.device is not None and adapter.device.type == "cuda"
        np.testing.assert_allclose(values(score(adapter)["prediction"]), reference(module), rtol=tol, atol=tol)


# -- end to end -----------------------------------------------------------------------------------
def write_job(tmp_path: Path, model: str, rows: int = 300, batch: int = 64) -> tuple[Path, pa.Table]:
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(rows), **{f"f{i}": rng.normal(size=rows).astype(np.float32) for i in range(3)}})
    pq.write_table(table, tmp_path / "data.parquet")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "data.parquet"\nid_column = "id"\n[model]\n{model}\n'
        f'[batch]\nsize = {batch}\n[output]\npath = "out"\n'
    )
    return job, table


def test_run_end_to_end(tmp_path: Path) -> None:
    module = net(tmp_path)
    save_file(module.state_dict(), str(tmp_path / "model.safetensors"))
    job, table = write_job(
        tmp_path,
        'kind = "torch"\nfactory = "net.py:build"\nweights = "model.safetensors"\ndevice = "auto"\n'
        'features = ["f0", "f1", "f2"]\noutputs = ["neg", "pos"]',
    )
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.rows_succeeded == 300
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.schema.field("pos").type == pa.float32()
    x = np.column_stack([table.column(f"f{i}").to_numpy() for i in range(3)])
    np.testing.assert_allclose(out.column("pos").to_numpy(), reference(module, x)[:, 1], rtol=1e-5, atol=1e-6)


def test_run_splits_batches_that_run_out_of_memory(tmp_path: Path) -> None:
    net_file(tmp_path)
    job, table = write_job(
        tmp_path,
        'kind = "torch"\nfactory = "net.py:build"\nfeatures = ["f0", "f1", "f2"]\n[model.options]\ncls = "Oom"',
    )
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.rows_succeeded == 300 and result.rows_failed == 0
    out = read_output(tmp_path / "out").sort_by("id")
    x = np.column_stack([table.column(f"f{i}").to_numpy() for i in range(3)])
    np.testing.assert_allclose(out.column("prediction").to_numpy(), x.sum(axis=1), rtol=1e-5)


@pytest.mark.slow
def test_torch_example_runs(tmp_path: Path) -> None:
    import shutil

    example = tmp_path / "torch"
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(
        root / "examples" / "torch", example, ignore=shutil.ignore_patterns("data", "out*", ".infermill", "model.*")
    )
    subprocess.run([sys.executable, "make_model.py"], cwd=example, check=True, timeout=120, capture_output=True)
    tables = []
    for job in ("job.toml", "job_export.toml"):
        result = infermill.run(example / job, progress="off")
        assert result.state == "complete" and result.rows_succeeded == 5_000
        tables.append(read_output(example / ("out" if job == "job.toml" else "out_export")).sort_by("customer_id"))
    assert tables[0].schema.field("churn_probability").type == pa.float32()
    probabilities = tables[0].column("churn_probability").to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities, tables[1].column("churn_probability").to_numpy(), rtol=1e-5, atol=1e-6)


# -- lanes: parallel = "batches" (opt-in) -----------------------------------------------------------
def test_parallel_batches_is_opt_in_and_not_with_compile(tmp_path: Path) -> None:
    save_script(net(tmp_path), tmp_path / "model.pt")
    assert ready(spec_for(tmp_path, path="model.pt"), threads=2).lanes() == 1  # default: library
    batches = ready(spec_for(tmp_path, path="model.pt", settings={"parallel": "batches"}), threads=2)
    assert batches.lanes() == 2
    with pytest.raises(ModelLoadError, match="torch.compile") as info:
        load_adapter(spec_for(tmp_path, path="model.pt", settings={"parallel": "batches", "compile": True}))
    assert 'parallel = "library"' in (info.value.hint or "")


def test_run_on_lanes_gives_the_modules_output(tmp_path: Path) -> None:
    module = net(tmp_path)
    save_script(module, tmp_path / "model.pt")
    x = np.random.default_rng(5).normal(size=(300, X.shape[1])).astype(np.float32)
    names = [f"f{i}" for i in range(x.shape[1])]
    table = pa.table({"id": np.arange(300), **{n: x[:, i] for i, n in enumerate(names)}})
    pq.write_table(table, tmp_path / "x.parquet")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\npath = "x.parquet"\nid_column = "id"\n'
        f'[model]\nkind = "torch"\npath = "model.pt"\nfeatures = {json.dumps(names)}\ndevice = "cpu"\n'
        f'parallel = "batches"\n[batch]\nsize = 16\n[output]\npath = "out"\n'
        "[runtime]\nworkers = 1\nthreads_per_worker = 2\n"
    )
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.rows_succeeded == 300
    out = read_output(tmp_path / "out")
    assert out.column("id").to_pylist() == list(range(300))
    got = values(out.column("prediction").combine_chunks())
    np.testing.assert_allclose(got, reference(module, x).reshape(300, -1).squeeze(), rtol=1e-5, atol=1e-6)
