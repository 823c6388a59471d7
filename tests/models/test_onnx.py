"""kind = "onnx": skl2onnx models (ZipMap on and off), output selection, inputs, external data, errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pytest
from onnx import TensorProto, helper, numpy_helper

from infermill.errors import ModelLoadError, SpecError
from infermill.models import load_adapter
from infermill.models._onnx_graph import read_graph
from infermill.models.onnx import OnnxModel
from infermill.testing.models import conformance_batch
from tests.models.helpers import linear, logistic, multiclass, spec_for, write_onnx

BATCH = conformance_batch(rows=32)
X = np.column_stack([c.to_numpy() for c in BATCH.columns])
X32 = X.astype(np.float32)


def adapter_for(
    tmp_path: Path,
    which: str | None = None,
    *,
    zipmap: bool = True,
    setup: bool = True,
    threads: int = 1,
    file: str = "model.onnx",
    **fields: Any,
) -> OnnxModel:
    if which is not None:
        write_onnx(tmp_path / file, which, zipmap)
    adapter = load_adapter(spec_for(tmp_path, kind="onnx", path=file, **fields), threads=threads)
    assert isinstance(adapter, OnnxModel)
    if setup:
        adapter.setup()
    return adapter


def score(adapter: Any, batch: pa.RecordBatch = BATCH) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


def save_graph(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], **save: Any) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=save.pop("initializer", []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path), **save)
    return path


# -- classifiers and regressors from skl2onnx -----------------------------------------------------
@pytest.mark.parametrize("zipmap", [True, False])
def test_binary_classifier_scores_the_positive_class(tmp_path: Path, zipmap: bool) -> None:
    adapter = adapter_for(tmp_path, "logistic", zipmap=zipmap)
    assert adapter.outputs == ["score"] and adapter.plan.mode == "score"
    out = score(adapter)
    assert out["score"].type == pa.float32()
    np.testing.assert_allclose(
        out["score"].to_numpy(), logistic().predict_proba(X32)[:, 1], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("zipmap", [True, False])
def test_positive_class_by_label(tmp_path: Path, zipmap: bool) -> None:
    out = score(adapter_for(tmp_path, "logistic", zipmap=zipmap, positive_class=0))
    np.testing.assert_allclose(
        out["score"].to_numpy(), logistic().predict_proba(X32)[:, 0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("zipmap", [True, False])
def test_string_labels(tmp_path: Path, zipmap: bool) -> None:
    adapter = adapter_for(tmp_path, "logistic_str", zipmap=zipmap, positive_class="no")
    assert adapter.plan.labels == ("no", "yes")
    expected = logistic(labels="str").predict_proba(X32)[:, 0]
    np.testing.assert_allclose(score(adapter)["score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelLoadError, match="positive_class 'maybe' is not one of the model's classes"):
        adapter_for(tmp_path, "logistic_str", zipmap=zipmap, positive_class="maybe")


@pytest.mark.parametrize("zipmap", [True, False])
def test_one_column_per_class(tmp_path: Path, zipmap: bool) -> None:
    out = score(adapter_for(tmp_path, "multiclass", zipmap=zipmap, outputs=["a", "b", "c"]))
    expected = multiclass().predict_proba(X32)
    for i, name in enumerate("abc"):
        np.testing.assert_allclose(out[name].to_numpy(), expected[:, i], rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelLoadError, match="has 2 names \\['a', 'b'\\], but the model has 3 classes"):
        adapter_for(tmp_path, "multiclass", zipmap=zipmap, outputs=["a", "b"])


@pytest.mark.parametrize("zipmap", [True, False])
def test_predict_gives_the_label(tmp_path: Path, zipmap: bool) -> None:
    adapter = adapter_for(tmp_path, "logistic_str", zipmap=zipmap, method="predict")
    assert adapter.outputs == ["prediction"]
    out = score(adapter)
    assert out["prediction"].to_pylist() == logistic(labels="str").predict(X32).tolist()
    assert score(adapter, BATCH.slice(0, 0))["prediction"].type == pa.string()


def test_named_graph_outputs_are_taken_as_they_are(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, "logistic", zipmap=False, outputs=["label", "probabilities"])
    assert adapter.plan.mode == "named"
    out = score(adapter)
    assert out["label"].to_pylist() == logistic().predict(X32).tolist()
    assert out["probabilities"].type == pa.list_(pa.float32(), 2)
    zipped = score(adapter_for(tmp_path, "logistic", outputs=["output_probability"]))
    assert zipped["output_probability"].type == pa.list_(pa.float32(), 2)
    np.testing.assert_allclose(
        np.stack(zipped["output_probability"].to_numpy(zero_copy_only=False)),
        logistic().predict_proba(X32),
        rtol=1e-5,
        atol=1e-6,
    )


def test_regressor(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, "linear")
    assert adapter.outputs == ["prediction"] and adapter.plan.mode == "first"
    out = score(adapter)
    assert out["prediction"].type == pa.float32()
    np.testing.assert_allclose(out["prediction"].to_numpy(), linear().predict(X32), rtol=1e-5, atol=1e-5)


def test_predict_proba_without_probabilities(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, "linear", method="predict_proba")
    assert "has no probability output; its outputs: variable (float32 [N, 1])" in info.value.message


def test_outputs_are_known_without_a_session(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, "logistic", setup=False)
    assert adapter.outputs == ["score"] and adapter.session is None


def test_session_threads(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, "logistic", threads=3)
    options = adapter.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert adapter.session.get_providers() == ["CPUExecutionProvider"]


def test_empty_batch_with_zipmap(tmp_path: Path) -> None:
    out = score(adapter_for(tmp_path, "multiclass", outputs=["a", "b", "c"]), BATCH.slice(0, 0))
    assert [(len(c), c.type) for c in out.values()] == [(0, pa.float32())] * 3


# -- inputs ---------------------------------------------------------------------------------------
def test_several_inputs_fed_by_name(tmp_path: Path) -> None:
    save_graph(
        tmp_path / "model.onnx",
        [helper.make_node("Squeeze", ["a", "axes"], ["a1"]), helper.make_node("Sub", ["b", "a1"], ["diff"])],
        [
            helper.make_tensor_value_info("a", TensorProto.DOUBLE, [None, 1]),
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, [None]),
        ],
        [helper.make_tensor_value_info("diff", TensorProto.DOUBLE, [None])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    adapter = adapter_for(tmp_path, features=["b", "a"])
    batch = pa.RecordBatch.from_pydict({"b": [5.0, 7.0], "a": pa.array([1, 2], pa.int32())})
    feeds = adapter.preprocess(batch)
    assert feeds["a"].shape == (2, 1) and feeds["a"].dtype == np.float64 and feeds["b"].shape == (2,)
    assert score(adapter, batch)["prediction"].to_pylist() == [4.0, 5.0]
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path, features=["a", "c"])
    assert "the model has inputs ['a', 'b']; 'model.features' ['a', 'c'] lacks ['b']" in info.value.message
    assert "features = ['a', 'b']" in str(info.value.hint)


def test_single_input_cast_to_its_type(tmp_path: Path) -> None:
    save_graph(
        tmp_path / "model.onnx",
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("total", TensorProto.INT64, [None])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    adapter = adapter_for(tmp_path)
    batch = pa.RecordBatch.from_pydict({"p": [1, 2], "q": [10.0, 20.0]})
    assert adapter.preprocess(batch)["x"].dtype == np.int64
    out = score(adapter, batch)
    assert out["prediction"].to_pylist() == [11, 22] and out["prediction"].type == pa.int64()
    with pytest.raises(ModelLoadError, match="takes 2 feature\\(s\\), but got 3 from the feature columns"):
        adapter.preprocess(conformance_batch(rows=2))


def test_feature_count_mismatch_is_caught_at_setup(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'X' takes 3 feature\\(s\\), but got 2 from 'model.features'"):
        adapter_for(tmp_path, "logistic", features=["f0", "f1"])


def test_non_numeric_feature(tmp_path: Path) -> None:
    adapter = adapter_for(tmp_path, "logistic")
    with pytest.raises(ModelLoadError, match="feature 'f1' has type string"):
        adapter.preprocess(pa.RecordBatch.from_pydict({"f0": [1.0], "f1": ["x"], "f2": [1.0]}))


# -- external data --------------------------------------------------------------------------------
def _external_model(folder: Path, location: str = "weights.bin") -> Path:
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    weights = numpy_helper.from_array(np.array([[1.0], [2.0], [3.0]], dtype=np.float32), "w")
    path = save_graph(
        folder / "model.onnx",
        [helper.make_node("MatMul", ["X", "w"], ["y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def _relocate(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_beside_the_model_loads(tmp_path: Path) -> None:
    _external_model(tmp_path, "data/weights.bin")
    assert read_graph(str(tmp_path / "model.onnx")).external_locations == ["data/weights.bin"]
    adapter = adapter_for(tmp_path)
    out = score(adapter, BATCH.slice(0, 2))
    np.testing.assert_allclose(out["prediction"].to_numpy(), X32[:2] @ np.array([1.0, 2.0, 3.0]), rtol=1e-5)
    before = adapter.fingerprint()
    weights = tmp_path / "data" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[::-1])
    assert adapter_for(tmp_path, setup=False).fingerprint() != before


@pytest.mark.parametrize("where", ["../outside.bin", "ABSOLUTE", "data/../../outside.bin", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    _external_model(folder)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((folder / "weights.bin").read_bytes())
    if where == "ABSOLUTE":
        where = str(outside)
    if where == "link.bin":
        (folder / "link.bin").symlink_to(outside)
    _relocate(folder / "model.onnx", where)
    adapter = load_adapter(spec_for(folder, kind="onnx", path="model.onnx"))
    for action in (adapter.setup, adapter.fingerprint):
        with pytest.raises(ModelLoadError) as info:
            action()
        assert f"external data location '{where}' is outside the model's folder" in info.value.message
        assert "beside the model" in str(info.value.hint)


def test_external_data_in_a_subgraph_is_found(tmp_path: Path) -> None:
    value = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    value.ClearField("raw_data")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value=value)],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["out2"], value=numpy_helper.from_array(np.zeros(1, np.float32)))],
        "else",
        [],
        [helper.make_tensor_value_info("out2", TensorProto.FLOAT, [1])],
    )
    save_graph(
        tmp_path / "model.onnx",
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    assert read_graph(str(tmp_path / "model.onnx")).external_locations == ["/etc/passwd"]
    with pytest.raises(ModelLoadError, match="'/etc/passwd' is outside the model's folder"):
        adapter_for(tmp_path)


# -- load errors ----------------------------------------------------------------------------------
def test_not_an_onnx_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path)
    assert "is not a valid ONNX model" in info.value.message and "skl2onnx" in str(info.value.hint)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_adapter(spec_for(tmp_path, kind="onnx", path="absent.onnx"))


def test_unknown_method_and_options(tmp_path: Path) -> None:
    write_onnx(tmp_path / "model.onnx", "logistic")
    with pytest.raises(ModelLoadError, match="unknown method 'decision_function' for kind 'onnx'"):
        adapter_for(tmp_path, method="decision_function")
    # The kind's keys are declared (infermill.models.settings): the spec refuses one it lacks, naming it.
    with pytest.raises(SpecError, match="unknown key 'model.options'") as info:
        adapter_for(tmp_path, options={"providers": ["CUDA"]})
    assert "positive_class" in str(info.value.hint)


def test_onnxruntime_rejecting_the_model(tmp_path: Path) -> None:
    save_graph(
        tmp_path / "model.onnx",
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="nowhere.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path)
    assert "cannot load" in info.value.message and "opset" in str(info.value.hint)


def test_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_onnx(tmp_path / "model.onnx", "logistic")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError) as info:
        adapter_for(tmp_path)
    assert info.value.hint == "pip install 'infermill[onnx]'"
