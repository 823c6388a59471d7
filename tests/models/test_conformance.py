"""Every model kind runs the shipped conformance suite, with real models."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from infermill.spec import JobSpec
from infermill.testing.models import ModelAdapterConformance, make_python_spec
from tests.models.helpers import boosting, forest, linear, logistic, multiclass, save, spec_for, write_onnx

SCORER = """
import numpy as np

class Scorer:
    def __init__(self, weight=0.5):
        self.weight = weight

    def setup(self):
        self.bias = 0.25

    def predict(self, batch):
        return {"score": batch["f0"] * self.weight + batch["f1"] - self.bias, "sign": np.sign(batch["f2"])}
"""


# -- python ---------------------------------------------------------------------------------------
class TestEchoModelConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        return make_python_spec(tmp_path, options={"column": "f1"})


class TestPythonFileConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        (tmp_path / "scorer.py").write_text(SCORER)
        return spec_for(tmp_path, kind="python", entrypoint="scorer.py:Scorer", outputs=["score", "sign"])

    def change_model(self, spec: JobSpec) -> None:
        path = Path(spec.resolve("scorer.py"))
        path.write_text(path.read_text().replace("self.bias = 0.25", "self.bias = 0.5"))


class TestPythonPandasFunctionConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        (tmp_path / "fn.py").write_text("def score(df, k=2.0):\n    return df['f0'] * k\n")
        return spec_for(tmp_path, kind="python", entrypoint="fn.py:score", batch_format="pandas")

    def change_model(self, spec: JobSpec) -> None:
        Path(spec.resolve("fn.py")).write_text("def score(df, k=3.0):\n    return df['f0'] * k\n")


class TestPythonArrowConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        source = "import pyarrow.compute as pc\n\ndef score(b):\n    return pc.multiply(b.column('f2'), 2)\n"
        (tmp_path / "fn.py").write_text(source)
        return spec_for(tmp_path, kind="python", entrypoint="fn.py:score", batch_format="arrow")


# -- sklearn --------------------------------------------------------------------------------------
class TestSklearnLogisticConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        save(logistic(), tmp_path / "model.joblib")
        return spec_for(tmp_path, kind="sklearn", path="model.joblib", trusted=True)

    def change_model(self, spec: JobSpec) -> None:
        save(logistic(c=0.01), Path(spec.resolve("model.joblib")))


class TestSklearnBoostingConformance(ModelAdapterConformance):
    """Fitted on a DataFrame: the feature names are checked, and no warning reaches the test."""

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save(boosting(), tmp_path / "model.pkl")
        return spec_for(tmp_path, kind="sklearn", path="model.pkl", trusted=True, features=["f0", "f1", "f2"])

    def change_model(self, spec: JobSpec) -> None:
        save(boosting(max_iter=3), Path(spec.resolve("model.pkl")))


class TestSklearnClassColumnsConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        save(multiclass(), tmp_path / "model.joblib")
        return spec_for(
            tmp_path, kind="sklearn", path="model.joblib", trusted=True, outputs=["p0", "p1", "p2"]
        )


class TestSklearnLabelsConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        save(logistic(labels="str"), tmp_path / "model.joblib")
        return spec_for(tmp_path, kind="sklearn", path="model.joblib", trusted=True, method="predict")


class TestSklearnRegressorConformance(ModelAdapterConformance):
    def make_spec(self, tmp_path: Path) -> JobSpec:
        save(linear(), tmp_path / "model.joblib")
        return spec_for(tmp_path, kind="sklearn", path="model.joblib", trusted=True)

    def change_model(self, spec: JobSpec) -> None:
        save(linear(scale=2.0), Path(spec.resolve("model.joblib")))


class TestSklearnForestConformance(ModelAdapterConformance):
    threads = 2

    def make_spec(self, tmp_path: Path) -> JobSpec:
        save(forest(n_jobs=-1), tmp_path / "model.joblib")
        return spec_for(tmp_path, kind="sklearn", path="model.joblib", trusted=True)


# -- onnx -----------------------------------------------------------------------------------------
class _OnnxConformance(ModelAdapterConformance):
    rtol = 1e-5
    atol = 1e-6
    which = "logistic"
    zipmap = True
    changed = "logistic_c"
    outputs: list[str] | None = None
    method: str | None = None

    def make_spec(self, tmp_path: Path) -> JobSpec:
        write_onnx(tmp_path / "model.onnx", self.which, self.zipmap)
        return spec_for(tmp_path, kind="onnx", path="model.onnx", outputs=self.outputs, method=self.method)

    def change_model(self, spec: JobSpec) -> None:
        write_onnx(Path(spec.resolve("model.onnx")), self.changed, self.zipmap)


class TestOnnxZipMapConformance(_OnnxConformance):
    pass


class TestOnnxNoZipMapConformance(_OnnxConformance):
    zipmap = False


class TestOnnxClassColumnsConformance(_OnnxConformance):
    which = "multiclass"
    outputs = ["p0", "p1", "p2"]


class TestOnnxStringLabelsConformance(_OnnxConformance):
    which = "logistic_str"


class TestOnnxLabelConformance(_OnnxConformance):
    which = "logistic_str"
    zipmap = False
    method = "predict"


class TestOnnxRegressorConformance(_OnnxConformance):
    which = "linear"
    changed = "linear_x2"


class TestOnnxForestConformance(_OnnxConformance):
    which = "forest"
    zipmap = False
    threads = 2


def test_conformance_batch_is_what_the_models_were_trained_on() -> None:
    from infermill.testing.models import conformance_batch

    assert conformance_batch().schema == pa.schema([(n, pa.float64()) for n in ("f0", "f1", "f2")])
