"""kind = "mlflow": real MLflow models saved in the tests (sklearn flavor, a custom PythonModel, the onnx
flavor), the trust rule, local URIs and a local file-store registry, outputs and signatures, end to end,
and the conformance suite."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import infermill
from infermill.errors import ItemError, ModelLoadError, SpecError
from infermill.models import load_adapter
from infermill.models.mlflow_model import MlflowModel, code_on_load
from infermill.spec import JobSpec, ModelSpec
from infermill.testing.models import ModelAdapterConformance, conformance_batch, model_spec_for
from tests.conftest import read_output, write_job
from tests.models.helpers import frame, logistic, training


@contextmanager
def quiet() -> Iterator[None]:
    """MLflow's own warnings (type hints, pickle advice) while importing it and saving test models; some
    are attributed to the caller's module, so they are silenced by category, here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


with quiet():
    pytest.importorskip("mlflow")
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn


class Scorer(mlflow.pyfunc.PythonModel):  # type: ignore[misc, name-defined]
    """A custom pyfunc model: score = 0.5 * f0 + f1 - bias, sign of f2; params may scale the score."""

    def __init__(self, bias: float = 0.25) -> None:
        self.bias = bias

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        scale = (params or {}).get("scale", 1.0)
        score = (0.5 * model_input["f0"] + model_input["f1"] - self.bias) * scale
        return pd.DataFrame({"score": score, "sign": np.sign(model_input["f2"]).astype(np.int64)})


def spec_for(tmp_path: Path, **model: Any) -> JobSpec:
    """A JobSpec around a ModelSpec; the kind's own keys (uri, params, ...) go into its settings."""
    base = set(ModelSpec.__dataclass_fields__)
    settings = {k: model.pop(k) for k in list(model) if k not in base}
    return model_spec_for(tmp_path, ModelSpec(**model, settings=settings))


def _x() -> pd.DataFrame:
    return frame(training()[0])


def save_sklearn(path: Path, c: float = 1.0, predict_fn: str = "predict", signature: bool = True) -> Path:
    from mlflow.models import infer_signature

    model = logistic(c=c, named=True)
    x = _x()
    output = getattr(model, predict_fn)(x)
    with quiet():
        mlflow.sklearn.save_model(
            model, str(path), serialization_format="cloudpickle", pyfunc_predict_fn=predict_fn,
            signature=infer_signature(x, output) if signature else None, pip_requirements=["scikit-learn"],
        )
    return path


def save_scorer(path: Path, bias: float = 0.25, signature: bool = True) -> Path:
    from mlflow.models import infer_signature

    x = _x()
    with quiet():
        sig = infer_signature(x, Scorer(bias).predict(None, x), params={"scale": 1.0}) if signature else None
        mlflow.pyfunc.save_model(str(path), python_model=Scorer(bias), signature=sig, pip_requirements=["pandas"])
    return path


def save_onnx(path: Path, c: float = 1.0) -> Path:
    import mlflow.onnx
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    from skl2onnx import to_onnx

    x = training()[0].astype(np.float32)
    onx = to_onnx(logistic(c=c), x[:1], options={"zipmap": False})
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3), "X")]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label"),
                        TensorSpec(np.dtype(np.float32), (-1, 2), "probabilities")]),
    )
    with quiet():
        mlflow.onnx.save_model(onx, str(path), signature=signature, pip_requirements=["onnxruntime"])
    return path


@pytest.fixture(scope="session")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each model saved once per session; tests copy them (saving is slow)."""
    base = tmp_path_factory.mktemp("mlflow-models")
    return {
        "sklearn": save_sklearn(base / "sklearn"),
        "sklearn_c": save_sklearn(base / "sklearn_c", c=0.01),
        "proba": save_sklearn(base / "proba", predict_fn="predict_proba"),
        "bare": save_sklearn(base / "bare", signature=False),
        "scorer": save_scorer(base / "scorer"),
        "scorer_b": save_scorer(base / "scorer_b", bias=0.5),
        "scorer_bare": save_scorer(base / "scorer_bare", signature=False),
        "onnx": save_onnx(base / "onnx"),
        "onnx_c": save_onnx(base / "onnx_c", c=0.01),
    }


def place(saved: dict[str, Path], which: str, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(saved[which], dest)
    return dest


def adapter_for(tmp_path: Path, saved: dict[str, Path], which: str, setup: bool = True, **model: Any) -> MlflowModel:
    place(saved, which, tmp_path / "model")
    model.setdefault("trusted", which not in ("onnx", "onnx_c"))
    adapter = load_adapter(spec_for(tmp_path, kind="mlflow", path="model", **model))
    assert isinstance(adapter, MlflowModel)
    if setup:
        adapter.setup()
    return adapter


def score(adapter: Any, batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


# -- conformance ----------------------------------------------------------------------------------
class _MlflowConformance(ModelAdapterConformance):
    which = "sklearn"
    changed: str | None = None
    model: dict[str, Any] = {}

    @pytest.fixture(autouse=True)
    def _models(self, request: pytest.FixtureRequest, saved: dict[str, Path]) -> None:
        request.instance.saved = saved

    def make_spec(self, tmp_path: Path) -> JobSpec:
        place(self.saved, self.which, tmp_path / "model")  # type: ignore[attr-defined]
        trusted = not self.which.startswith("onnx")
        return spec_for(tmp_path, kind="mlflow", path="model", trusted=trusted, **self.model)

    def change_model(self, spec: JobSpec) -> None:
        if self.changed is None:
            raise NotImplementedError
        place(self.saved, self.changed, Path(spec.resolve("model")))  # type: ignore[attr-defined]


class TestMlflowSklearnConformance(_MlflowConformance):
    changed = "sklearn_c"


class TestMlflowSklearnProbaConformance(_MlflowConformance):
    which = "proba"


class TestMlflowPythonModelConformance(_MlflowConformance):
    which = "scorer"
    changed = "scorer_b"


class TestMlflowPythonModelParamsConformance(_MlflowConformance):
    which = "scorer"
    model = {"outputs": ["score"], "params": {"scale": 3.0}}


class TestMlflowNoSignatureConformance(_MlflowConformance):
    which = "scorer_bare"
    model = {"outputs": ["score", "sign"]}
    supports_empty_batch = False


class TestMlflowOnnxConformance(_MlflowConformance):
    which = "onnx"
    changed = "onnx_c"
    rtol = 1e-5
    atol = 1e-6


# -- outputs --------------------------------------------------------------------------------------
def test_sklearn_flavor_matches_the_estimator(tmp_path: Path, saved: dict[str, Path]) -> None:
    adapter = adapter_for(tmp_path, saved, "sklearn")
    batch = conformance_batch(rows=40)
    out = score(adapter, batch)
    expected = logistic(named=True).predict(frame(np.column_stack([c.to_numpy() for c in batch.columns])))
    assert adapter.outputs == ["prediction"]
    assert out["prediction"].type == pa.int64()
    assert out["prediction"].to_pylist() == expected.tolist()


def test_predict_proba_is_a_fixed_size_list(tmp_path: Path, saved: dict[str, Path]) -> None:
    out = score(adapter_for(tmp_path, saved, "proba"), conformance_batch(rows=5))["prediction"]
    assert out.type == pa.list_(pa.float64(), 2)
    np.testing.assert_allclose(np.stack(out.to_numpy(zero_copy_only=False)).sum(axis=1), 1.0)


def test_named_outputs_from_the_signature_and_params(tmp_path: Path, saved: dict[str, Path]) -> None:
    adapter = adapter_for(tmp_path, saved, "scorer", params={"scale": 2.0})
    assert adapter.outputs == ["score", "sign"]
    batch = conformance_batch(rows=6)
    out = score(adapter, batch)
    f0, f1, f2 = (c.to_numpy() for c in batch.columns)
    np.testing.assert_allclose(out["score"].to_numpy(), (0.5 * f0 + f1 - 0.25) * 2.0)
    assert out["sign"].type == pa.int64() and out["sign"].to_pylist() == np.sign(f2).astype(int).tolist()


def test_outputs_that_the_model_does_not_return_are_fatal(tmp_path: Path, saved: dict[str, Path]) -> None:
    adapter = adapter_for(tmp_path, saved, "scorer", outputs=["score", "nope"])
    with pytest.raises(ModelLoadError, match=r"returned columns \['score', 'sign'\]"):
        score(adapter, conformance_batch(rows=3))


def test_onnx_flavor_loads_without_trust(tmp_path: Path, saved: dict[str, Path]) -> None:
    adapter = adapter_for(tmp_path, saved, "onnx", trusted=False)
    assert adapter.outputs == ["label", "probabilities"]
    out = score(adapter, conformance_batch(rows=8))
    assert out["label"].type == pa.int64()
    assert out["probabilities"].type == pa.list_(pa.float32(), 2)


def test_empty_batch_without_signature_is_an_item_error(tmp_path: Path, saved: dict[str, Path]) -> None:
    adapter = adapter_for(tmp_path, saved, "bare")
    batch = conformance_batch(rows=4)
    with pytest.raises(ItemError, match="no output signature"):
        score(adapter, batch.slice(0, 0))
    score(adapter, batch)  # learnt from the first answer
    assert score(adapter, batch.slice(0, 0))["prediction"].type == pa.int64()


def test_signature_columns_are_required_and_ordered(tmp_path: Path, saved: dict[str, Path]) -> None:
    adapter = adapter_for(tmp_path, saved, "sklearn")
    batch = conformance_batch(rows=5)
    shuffled = batch.select(["f2", "f0", "f1"]).append_column("extra", pa.array(np.ones(5)))
    assert score(adapter, shuffled) == score(adapter, batch)
    with pytest.raises(ModelLoadError, match=r"lack \['f2'\]"):
        adapter.preprocess(batch.select(["f0", "f1"]))


# -- trust ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("which", "reason"), [
    ("sklearn", "stored as cloudpickle"),
    ("scorer", "python_model \\(python_model.pkl\\) is a cloudpickle"),
])
def test_code_running_models_need_trust(tmp_path: Path, saved: dict[str, Path], which: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match=reason) as info:
        adapter_for(tmp_path, saved, which, setup=False, trusted=False)
    assert "trusted = true" in str(info.value)


@pytest.mark.parametrize(("pyfunc", "extra", "reason"), [
    ({"loader_module": "mlflow.sklearn", "model_path": "model.skops"}, {"sklearn": {"serialization_format": "skops"}},
     "stored as skops"),
    ({"loader_module": "mlflow.onnx", "code": "code"}, {}, "ships code"),
    ({"loader_module": "mlflow.pyfunc.model", "model_code_path": "m.py"}, {}, "models-from-code"),
    ({"loader_module": "my_pkg.loader"}, {}, "loader 'my_pkg.loader'"),
    ({"loader_module": "mlflow.onnx", "data": "model.onnx"}, {}, None),
])
def test_code_on_load_rule(pyfunc: dict[str, Any], extra: dict[str, Any], reason: str | None) -> None:
    found = code_on_load({"flavors": {"python_function": pyfunc, **extra}})
    if reason is None:
        assert found is None
    else:
        assert found is not None and __import__("re").search(reason, found)


def test_onnx_file_outside_the_folder_is_refused(tmp_path: Path, saved: dict[str, Path]) -> None:
    model = place(saved, "onnx", tmp_path / "model")
    shutil.move(model / "model.onnx", tmp_path / "elsewhere.onnx")
    text = (model / "MLmodel").read_text().replace("data: model.onnx", "data: ../elsewhere.onnx")
    (model / "MLmodel").write_text(text)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_adapter(spec_for(tmp_path, kind="mlflow", path="model"))


def test_no_pyfunc_flavor(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors:\n  keras: {}\n")
    with pytest.raises(ModelLoadError, match="no python_function flavor"):
        load_adapter(spec_for(tmp_path, kind="mlflow", path="model", trusted=True))


# -- locations ------------------------------------------------------------------------------------
def test_file_uri_and_mlmodel_path(tmp_path: Path, saved: dict[str, Path]) -> None:
    model = place(saved, "onnx", tmp_path / "m dir")
    by_uri = load_adapter(spec_for(tmp_path, kind="mlflow", uri=model.as_uri()))
    by_file = load_adapter(spec_for(tmp_path, kind="mlflow", path="m dir/MLmodel"))
    assert isinstance(by_uri, MlflowModel) and isinstance(by_file, MlflowModel)
    assert by_uri.model_dir == by_file.model_dir == str(model)
    assert by_uri.fingerprint() == by_file.fingerprint()


@pytest.mark.parametrize(("model", "error"), [
    ({}, "exactly one of"),
    ({"path": "model", "uri": "file:///x"}, "exactly one of"),
    ({"path": "nothing-here"}, "model file not found"),
    ({"uri": "s3://bucket/model"}, "local models only"),
    ({"uri": "models:/churn/1", "tracking_uri": "http://mlflow.example:5000"}, "is remote"),
])
def test_bad_locations(tmp_path: Path, model: dict[str, Any], error: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SpecError, match=error):
        load_adapter(spec_for(tmp_path, kind="mlflow", **model))


def test_models_uri_needs_a_tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ModelLoadError, match="needs a tracking store"):
        load_adapter(spec_for(tmp_path, kind="mlflow", uri="models:/churn/1"))


def test_models_uri_in_a_local_registry(
    tmp_path: Path, saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this flag
    model = place(saved, "onnx", tmp_path / "registered")
    store = (tmp_path / "mlruns").as_uri()
    with quiet():
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=store, registry_uri=store)
        client.create_registered_model("churn")
        version = client.create_model_version("churn", source=str(model))
        client.set_registered_model_alias("churn", "champion", version.version)
    for uri in (f"models:/churn/{version.version}", "models:/churn@champion"):
        adapter = load_adapter(spec_for(tmp_path, kind="mlflow", uri=uri, tracking_uri="mlruns"))
        assert isinstance(adapter, MlflowModel) and adapter.model_dir == str(model)
    adapter.setup()
    assert len(score(adapter, conformance_batch(rows=3))["label"]) == 3


def test_runs_and_logged_model_uris(
    tmp_path: Path, saved: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.onnx
    import onnx

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with quiet(), mlflow.start_run() as run:
        model = onnx.load(str(saved["onnx"] / "model.onnx"))
        info = mlflow.onnx.log_model(model, name="model", pip_requirements=["onnxruntime"])
    for uri in (f"runs:/{run.info.run_id}/model", info.model_uri):
        adapter = load_adapter(spec_for(tmp_path, kind="mlflow", uri=uri))  # the env var is the tracking store
        assert isinstance(adapter, MlflowModel)
        assert (Path(adapter.model_dir) / "model.onnx").is_file()
        assert str(tmp_path / "mlruns") in adapter.model_dir  # used in place, not copied
    with pytest.raises(ModelLoadError, match="cannot resolve"):
        load_adapter(spec_for(tmp_path, kind="mlflow", uri="runs:/0123456789abcdef/model"))


# -- end to end -----------------------------------------------------------------------------------
def test_run_end_to_end(tmp_path: Path, saved: dict[str, Path]) -> None:
    place(saved, "scorer", tmp_path / "model")
    table = pa.Table.from_batches([conformance_batch(rows=500, seed=3)]).append_column("id", pa.array(range(500)))
    pq.write_table(table, tmp_path / "in.parquet")
    job = write_job(tmp_path / "job.toml", """
        [input]
        path = "in.parquet"
        id_column = "id"
        [model]
        kind = "mlflow"
        path = "model"
        trusted = true
        features = ["f0", "f1", "f2"]
        [batch]
        size = 128
        [output]
        path = "out"
    """)
    result = infermill.run(job, progress="off")
    assert result.rows_succeeded == 500
    out = read_output(tmp_path / "out").sort_by("id")
    assert out.column_names == ["id", "score", "sign"]
    f0, f1 = table.column("f0").to_numpy(), table.column("f1").to_numpy()
    np.testing.assert_allclose(out.column("score").to_numpy(), 0.5 * f0 + f1 - 0.25)
