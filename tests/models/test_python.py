"""kind = "python": entrypoints (files, modules, functions, objects), batch formats, and every load error."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from infermill.errors import ItemError, ModelLoadError
from infermill.models import load_adapter
from infermill.models.python import PythonModel
from infermill.testing.models import EchoModel, conformance_batch, make_python_spec
from tests.models.helpers import spec_for


def write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


def ready(tmp_path: Path, entrypoint: str, **model: Any) -> PythonModel:
    adapter = load_adapter(spec_for(tmp_path, kind="python", entrypoint=entrypoint, **model))
    assert isinstance(adapter, PythonModel)
    adapter.setup()
    return adapter


def score(adapter: Any, batch: pa.RecordBatch) -> dict[str, pa.Array]:
    return adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)


def load_error(tmp_path: Path, entrypoint: str | None, **model: Any) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        ready(tmp_path, entrypoint, **model)  # type: ignore[arg-type]
    return info.value


RECORDER = """
class Recorder:
    seen = []

    def predict(self, batch):
        Recorder.seen.append(batch)
        return [0.0] * len(batch["f0"]) if not hasattr(batch, "num_rows") else [0.0] * batch.num_rows
"""


# -- batch formats --------------------------------------------------------------------------------
def test_numpy_format_gives_zero_copy_arrays(tmp_path: Path) -> None:
    write(tmp_path / "rec.py", RECORDER)
    adapter = ready(tmp_path, "rec.py:Recorder")
    batch = conformance_batch(rows=8)
    inputs = adapter.preprocess(batch)
    assert isinstance(inputs, dict) and list(inputs) == ["f0", "f1", "f2"]
    f0 = inputs["f0"]
    assert isinstance(f0, np.ndarray) and f0.dtype == np.float64
    # Same memory as the Arrow buffer: no copy was made.
    assert f0.ctypes.data == batch.column(0).buffers()[1].address
    assert not f0.flags.writeable
    score(adapter, batch)
    assert type(adapter.model.seen[-1]) is dict


def test_numpy_format_converts_strings_and_nulls(tmp_path: Path) -> None:
    adapter = ready(tmp_path, "infermill.testing.models:EchoModel")
    batch = pa.RecordBatch.from_pydict({"name": ["a", None, "c"], "n": pa.array([1, None, 3], pa.int64())})
    inputs = adapter.preprocess(batch)
    assert inputs["name"].tolist() == ["a", None, "c"]
    assert np.isnan(inputs["n"][1])
    assert score(adapter, batch)["prediction"].to_pylist() == ["a", None, "c"]


def test_pandas_format_gives_a_dataframe(tmp_path: Path) -> None:
    write(tmp_path / "rec.py", RECORDER)
    adapter = ready(tmp_path, "rec.py:Recorder", batch_format="pandas")
    score(adapter, conformance_batch(rows=5))
    frame = adapter.model.seen[-1]
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["f0", "f1", "f2"] and len(frame) == 5


def test_arrow_format_gives_the_record_batch(tmp_path: Path) -> None:
    write(tmp_path / "rec.py", RECORDER)
    adapter = ready(tmp_path, "rec.py:Recorder", batch_format="arrow")
    batch = conformance_batch(rows=5)
    score(adapter, batch)
    assert adapter.model.seen[-1] is batch


def test_several_outputs_from_a_dataframe(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        import pandas as pd

        def predict(df):
            return pd.DataFrame({"a": df["f0"] + 1, "b": df["f1"].astype(str)})
    """,
    )
    adapter = ready(tmp_path, "m.py:predict", batch_format="pandas", outputs=["a", "b"])
    batch = conformance_batch(rows=3)
    out = score(adapter, batch)
    assert list(out) == ["a", "b"]
    assert out["a"].to_pylist() == pytest.approx([v + 1 for v in batch.column(0).to_pylist()])
    assert out["b"].type == pa.string()


# -- entrypoints ----------------------------------------------------------------------------------
def test_class_gets_options_and_setup_runs_once(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Model:
            setups = 0

            def __init__(self, factor, shift=0.0):
                self.factor, self.shift = factor, shift

            def setup(self):
                Model.setups += 1

            def predict(self, batch):
                return batch["f0"] * self.factor + self.shift
    """,
    )
    adapter = ready(tmp_path, "m.py:Model", options={"factor": 3.0, "shift": 1.0})
    batch = conformance_batch(rows=4)
    out = score(adapter, batch)["prediction"].to_numpy()
    np.testing.assert_allclose(out, batch.column(0).to_numpy() * 3.0 + 1.0)
    score(adapter, batch)
    assert type(adapter.model).setups == 1


def test_function_entrypoint_with_options_as_keywords(tmp_path: Path) -> None:
    write(tmp_path / "fn.py", "def double(batch, k=2):\n    return batch['f0'] * k\n")
    adapter = ready(tmp_path, "fn.py:double", options={"k": 10})
    batch = conformance_batch(rows=3)
    np.testing.assert_allclose(
        score(adapter, batch)["prediction"].to_numpy(), batch.column(0).to_numpy() * 10
    )


def test_module_function_entrypoint(tmp_path: Path) -> None:
    adapter = ready(tmp_path, "infermill.testing.models:echo")
    batch = conformance_batch(rows=3)
    assert score(adapter, batch)["prediction"].equals(batch.column(0))


def test_module_object_entrypoint(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Model:
            def setup(self):
                self.ready = True

            def predict(self, batch):
                return batch["f0"]

        model = Model()
    """,
    )
    adapter = ready(tmp_path, "m.py:model")
    assert adapter.model.ready
    assert score(adapter, conformance_batch(rows=2))["prediction"].to_pylist()


def test_nested_attribute_entrypoint(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Outer:
            class Inner:
                def predict(self, batch):
                    return batch["f0"]
    """,
    )
    assert ready(tmp_path, "m.py:Outer.Inner").model.__class__.__name__ == "Inner"


def test_file_in_a_subfolder_imports_its_siblings_without_leaving_sys_path_changed(tmp_path: Path) -> None:
    write(tmp_path / "models" / "helper_mod_for_infermill.py", "FACTOR = 7\n")
    write(
        tmp_path / "models" / "m.py",
        """
        from helper_mod_for_infermill import FACTOR

        def predict(batch):
            return batch["f0"] * FACTOR
    """,
    )
    before = list(sys.path)
    adapter = ready(tmp_path, "models/m.py:predict")
    assert sys.path == before
    batch = conformance_batch(rows=2)
    np.testing.assert_allclose(score(adapter, batch)["prediction"].to_numpy(), batch.column(0).to_numpy() * 7)
    sys.modules.pop("helper_mod_for_infermill", None)


def test_two_files_with_the_same_name_do_not_collide(tmp_path: Path) -> None:
    write(tmp_path / "a" / "model.py", "def predict(batch):\n    return batch['f0'] * 0 + 1\n")
    write(tmp_path / "b" / "model.py", "def predict(batch):\n    return batch['f0'] * 0 + 2\n")
    batch = conformance_batch(rows=2)
    one = score(ready(tmp_path, "a/model.py:predict"), batch)["prediction"].to_pylist()
    two = score(ready(tmp_path, "b/model.py:predict"), batch)["prediction"].to_pylist()
    assert (one, two) == ([1.0, 1.0], [2.0, 2.0])
    assert "model" not in sys.modules or not str(getattr(sys.modules["model"], "__file__", "")).startswith(
        str(tmp_path)
    )


def test_module_entrypoint_found_beside_the_job_file(tmp_path: Path) -> None:
    write(tmp_path / "jobpkg_for_infermill" / "__init__.py", "")
    write(tmp_path / "jobpkg_for_infermill" / "scoring.py", "def predict(batch):\n    return batch['f0']\n")
    before = list(sys.path)
    try:
        adapter = ready(tmp_path, "jobpkg_for_infermill.scoring:predict")
        assert sys.path == before
        assert score(adapter, conformance_batch(rows=2))["prediction"].to_pylist()
    finally:
        for name in [n for n in sys.modules if n.startswith("jobpkg_for_infermill")]:
            del sys.modules[name]


def test_model_errors_pass_through_predict(tmp_path: Path) -> None:
    adapter = ready(tmp_path, "infermill.testing.models:EchoModel", options={"fail_on": [2.0]})
    with pytest.raises(ItemError, match="refuses the value 2.0"):
        score(adapter, pa.RecordBatch.from_pydict({"x": [1.0, 2.0]}))


def test_wrong_number_of_values_is_an_item_error(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "def predict(batch):\n    return [1.0]\n")
    with pytest.raises(ItemError, match="1 values for a batch of 3 rows"):
        score(ready(tmp_path, "m.py:predict"), conformance_batch(rows=3))


# -- fingerprint ----------------------------------------------------------------------------------
def test_fingerprint_follows_source_entrypoint_and_options(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "def predict(batch):\n    return batch['f0']\n")

    def fp(**model: Any) -> str:
        model.setdefault("entrypoint", "m.py:predict")
        return load_adapter(spec_for(tmp_path, kind="python", **model)).fingerprint()

    first = fp()
    assert fp() == first
    assert fp(options={"k": 1}) != first
    assert fp(entrypoint="./m.py:predict") != first  # the entrypoint text is part of it
    write(tmp_path / "m.py", "def predict(batch):\n    return batch['f1']\n")
    assert fp() != first


def test_fingerprint_of_a_module_does_not_run_it(tmp_path: Path) -> None:
    write(tmp_path / "boom_for_infermill.py", "raise RuntimeError('imported!')\n")
    adapter = load_adapter(spec_for(tmp_path, kind="python", entrypoint="boom_for_infermill:Model"))
    assert adapter.fingerprint()
    assert "boom_for_infermill" not in sys.modules


def test_fingerprint_of_an_installed_module(tmp_path: Path) -> None:
    first = load_adapter(make_python_spec(tmp_path)).fingerprint()
    assert first == load_adapter(make_python_spec(tmp_path / "elsewhere")).fingerprint()
    assert first != load_adapter(make_python_spec(tmp_path, options={"column": "f1"})).fingerprint()


# -- load errors ----------------------------------------------------------------------------------
def test_missing_entrypoint(tmp_path: Path) -> None:
    err = load_error(tmp_path, None)
    assert "needs 'model.entrypoint'" in err.message and "pkg.module:Name" in str(err.hint)


@pytest.mark.parametrize("text", ["scorer", "scorer.py", ":Model", "scorer.py:", "a b:Model", "m.py:9x"])
def test_malformed_entrypoint(tmp_path: Path, text: str) -> None:
    write(tmp_path / "scorer.py", "")
    err = load_error(tmp_path, text)
    assert "entrypoint" in err.message and "pkg.module:Name" in str(err.hint)


def test_missing_file_fails_before_setup(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_adapter(spec_for(tmp_path, kind="python", entrypoint="nope/scorer.py:Model"))
    assert (
        "model file not found" in info.value.message
        and str(tmp_path / "nope" / "scorer.py") in info.value.message
    )
    assert "job file's folder" in str(info.value.hint)


def test_module_not_importable(tmp_path: Path) -> None:
    err = load_error(tmp_path, "no_such_pkg_for_infermill.mod:Model")
    assert "cannot import module 'no_such_pkg_for_infermill.mod'" in err.message
    assert "No module named 'no_such_pkg_for_infermill'" in err.message
    assert "installed" in str(err.hint) and "file.py:Name" in str(err.hint)
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_adapter(
            spec_for(tmp_path, kind="python", entrypoint="no_such_pkg_for_infermill.mod:M")
        ).fingerprint()


def test_file_with_a_missing_dependency(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "import not_installed_dep_for_infermill\n")
    err = load_error(tmp_path, "m.py:Model")
    assert "cannot import" in err.message and "ModuleNotFoundError" in err.message
    assert "install the missing package 'not_installed_dep_for_infermill'" in str(err.hint)
    path = str(tmp_path / "m.py")
    assert not [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == path]


def test_file_with_a_syntax_error(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "def predict(batch)\n    return 1\n")
    err = load_error(tmp_path, "m.py:predict")
    assert "SyntaxError" in err.message and "line 1" in str(err.hint)


def test_file_raising_on_import(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "raise ValueError('bad config')\n")
    err = load_error(tmp_path, "m.py:predict")
    assert "ValueError: bad config" in err.message and isinstance(err.__cause__, ValueError)


def test_attribute_missing_lists_what_the_module_defines(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        import numpy as np
        from collections import OrderedDict

        class Scorer:
            def predict(self, batch):
                return batch

        def helper():
            pass
    """,
    )
    err = load_error(tmp_path, "m.py:Scorr")
    assert "'Scorr' not found in" in err.message
    assert "did you mean 'Scorer'?" in str(err.hint)
    assert "Scorer, helper" in str(err.hint) and "OrderedDict" not in str(err.hint)


def test_not_callable(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "THRESHOLD = 3\n")
    err = load_error(tmp_path, "m.py:THRESHOLD")
    assert "is a int, not callable" in err.message and "predict(batch)" in str(err.hint)


def test_class_without_predict(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Model:
            def score(self, batch):
                return batch

            def fit(self, x):
                pass
    """,
    )
    err = load_error(tmp_path, "m.py:Model")
    assert "class 'Model'" in err.message and "has no predict method" in err.message
    assert "def predict(self, batch)" in str(err.hint) and "fit, score" in str(err.hint)


def test_setup_raising(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Model:
            def setup(self):
                raise FileNotFoundError("weights.bin")

            def predict(self, batch):
                return batch
    """,
    )
    err = load_error(tmp_path, "m.py:Model")
    assert "Model.setup() raised FileNotFoundError: weights.bin" in err.message
    assert "setup()" in str(err.hint) and isinstance(err.__cause__, FileNotFoundError)


def test_constructor_raising(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Model:
            def __init__(self, size=1):
                raise RuntimeError("no GPU")

            def predict(self, batch):
                return batch
    """,
    )
    err = load_error(tmp_path, "m.py:Model", options={"size": 2})
    assert "Model(**options) raised RuntimeError: no GPU" in err.message


def test_unknown_option(tmp_path: Path) -> None:
    write(
        tmp_path / "m.py",
        """
        class Model:
            def __init__(self, threshold=0.5):
                pass

            def predict(self, batch):
                return batch
    """,
    )
    err = load_error(tmp_path, "m.py:Model", options={"treshold": 0.2})
    assert "does not accept the option(s) ['treshold']" in err.message and "threshold" in str(err.hint)


def test_options_for_an_object(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "class M:\n    def predict(self, b):\n        return b\n\nmodel = M()\n")
    err = load_error(tmp_path, "m.py:model", options={"x": 1})
    assert "cannot be passed" in err.message


def test_predict_before_setup(tmp_path: Path) -> None:
    adapter = load_adapter(make_python_spec(tmp_path))
    with pytest.raises(ModelLoadError, match="before setup"):
        adapter.predict({})


# -- the echo model -------------------------------------------------------------------------------
def test_echo_model_directly() -> None:
    model = EchoModel(column="b", scale=2.0, offset=1.0)
    model.setup()
    assert model.ready
    assert model.predict({"a": np.array([1.0]), "b": np.array([3.0])}).tolist() == [7.0]
    assert EchoModel().predict(pd.DataFrame({"a": [5]})).tolist() == [5]
    assert EchoModel().predict(pa.RecordBatch.from_pydict({"a": [5]})).to_pylist() == [5]
    assert EchoModel(fail_on=["x"]).predict({"a": np.array(["y"], dtype=object)}).tolist() == ["y"]
