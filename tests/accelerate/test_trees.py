"""``accelerate = "compile"``: each supported tree ensemble compiled with treelite + tl2cgen gives the sklearn
kind's results (max abs difference <= 1e-6 on probabilities, the same labels), and is built once."""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression

from infermill.accelerate.base import Built
from infermill.accelerate.trees import TreeCompiler, WalkedTrees
from infermill.errors import ModelLoadError
from infermill.models import load_adapter
from infermill.models.sklearn import SklearnModel
from tests.models.helpers import save, spec_for

pytest.importorskip("treelite")
pytest.importorskip("tl2cgen")

ROWS = 2_000


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 6))
    x[::97, 2] = np.nan  # missing values: each library's own rule for them must survive the compilation
    clean = np.nan_to_num(x)
    binary = (clean[:, 0] + 0.5 * clean[:, 1] > 0).astype(np.int64)
    three = np.digitize(clean[:, 0] - clean[:, 3], [-0.5, 0.5]).astype(np.int64)
    regression = 2.0 * clean[:, 0] - clean[:, 1] + np.sin(clean[:, 4])
    return x, binary, three, regression


def _models() -> list[Any]:
    small: dict[str, Any] = {"random_state": 0}
    models: list[Any] = [
        ("hgb-binary", HistGradientBoostingClassifier(max_iter=20, **small), "binary"),
        ("hgb-3class", HistGradientBoostingClassifier(max_iter=10, **small), "three"),
        ("hgb-regressor", HistGradientBoostingRegressor(max_iter=20, **small), "regression"),
        ("rf-binary", RandomForestClassifier(n_estimators=10, max_depth=6, **small), "binary"),
        ("rf-3class", RandomForestClassifier(n_estimators=10, max_depth=6, **small), "three"),
        ("rf-regressor", RandomForestRegressor(n_estimators=10, max_depth=6, **small), "regression"),
        ("et-binary", ExtraTreesClassifier(n_estimators=10, max_depth=6, **small), "binary"),
        ("et-regressor", ExtraTreesRegressor(n_estimators=10, max_depth=6, **small), "regression"),
        ("gb-binary", GradientBoostingClassifier(n_estimators=10, max_depth=3, **small), "binary"),
        ("gb-3class", GradientBoostingClassifier(n_estimators=5, max_depth=3, **small), "three"),
        ("gb-regressor", GradientBoostingRegressor(n_estimators=10, max_depth=3, **small), "regression"),
    ]
    if importlib.util.find_spec("lightgbm") is not None:
        import lightgbm

        quiet = {"n_estimators": 20, "num_leaves": 15, "verbose": -1, "random_state": 0}
        models += [
            ("lgbm-binary", lightgbm.LGBMClassifier(**quiet), "binary"),
            ("lgbm-3class", lightgbm.LGBMClassifier(**quiet), "three"),
            ("lgbm-regressor", lightgbm.LGBMRegressor(**quiet), "regression"),
        ]
    if importlib.util.find_spec("xgboost") is not None:
        import xgboost

        small_xgb = {"n_estimators": 20, "max_depth": 4, "random_state": 0}
        models += [
            ("xgb-binary", xgboost.XGBClassifier(**small_xgb), "binary"),
            ("xgb-3class", xgboost.XGBClassifier(**small_xgb), "three"),
            ("xgb-regressor", xgboost.XGBRegressor(**small_xgb), "regression"),
        ]
    return models


MODELS = _models()


def _fitted(model: Any, target: str) -> Any:
    x, binary, three, regression = _data()
    y = {"binary": binary, "three": three, "regression": regression}[target]
    if type(model).__module__.startswith("sklearn.ensemble._forest") or type(model).__name__.startswith("Gradient"):
        # Forests and classic boosting of this scikit-learn accept NaN only in some versions: train on zeros.
        x = np.nan_to_num(x)
    return model.fit(x, y)


def _adapter(tmp_path: Path, model: Any, **fields: Any) -> SklearnModel:
    """The sklearn kind's adapter, set up, for ``model`` saved in ``tmp_path`` (None: the file saved there)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save(model, tmp_path / "model.joblib")
    adapter = load_adapter(spec_for(tmp_path, kind="sklearn", path="model.joblib", trusted=True, **fields))
    assert isinstance(adapter, SklearnModel)
    adapter.setup()
    return adapter


@pytest.mark.parametrize(("name", "model", "target"), MODELS, ids=[m[0] for m in MODELS])
def test_compiled_model_gives_the_libraries_results(tmp_path: Path, name: str, model: Any, target: str) -> None:
    fitted = _fitted(model, target)
    x = _data(seed=1)[0]
    if type(fitted).__name__.startswith(("RandomForest", "ExtraTrees", "Gradient")):
        x = np.nan_to_num(x)
    adapter = _adapter(tmp_path, fitted)
    accelerator = TreeCompiler()
    assert accelerator.unavailable(adapter) is None
    built = accelerator.build(adapter, tmp_path / "cache")
    assert not built.cache_hit and built.build_seconds > 0 and Path(str(built.artifact)).exists()
    original, compiled = adapter.predict(x), built.predict(x)
    assert compiled.shape == original.shape
    assert np.abs(compiled - original).max() <= 1e-6
    assert accelerator.passes(accelerator.agreement(original, compiled), accelerator.default_bound)
    # The adapter's output mapping (the positive class's probability, or the value) applies unchanged.
    mine, theirs = adapter.postprocess(compiled, len(x)), adapter.postprocess(original, len(x))
    assert list(mine) == list(theirs) == adapter.outputs
    for column in mine:
        assert np.abs(mine[column].to_numpy() - theirs[column].to_numpy()).max() <= 1e-6
    if target != "regression":  # method = "predict" of a classifier: the same labels
        labels = _adapter(tmp_path / "labels", fitted, method="predict")
        labelled = accelerator.build(labels, tmp_path / "cache")
        assert labelled.cache_hit  # one artifact per model file, whatever the method
        assert np.array_equal(labelled.predict(x), labels.predict(x))


def test_second_build_loads_from_the_cache(tmp_path: Path) -> None:
    fitted = _fitted(GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0), "binary")
    first = TreeCompiler().build(_adapter(tmp_path, fitted), tmp_path / "cache")
    second = TreeCompiler().build(_adapter(tmp_path, fitted), tmp_path / "cache")
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.build_seconds > 0 and second.build_seconds == 0.0
    assert first.artifact == second.artifact
    # Another model (another fingerprint) gets its own artifact.
    other = _fitted(GradientBoostingClassifier(n_estimators=11, max_depth=3, random_state=0), "binary")
    third = TreeCompiler().build(_adapter(tmp_path / "other", other), tmp_path / "cache")
    assert not third.cache_hit and third.artifact != first.artifact


def test_hist_gradient_boosting_is_walked_without_branches(tmp_path: Path) -> None:
    """HistGradientBoosting models are scored by the branch-free walk (one library per machine, the trees
    handed to it as arrays), with the library's results to the last bit, NaN and infinities included, on a
    lane (one thread) and off it (one row range per thread)."""
    x = np.concatenate([_data(seed=2)[0], _data(seed=3)[0]])  # 4,000 rows: two ranges off a lane
    x[5, :] = np.inf
    x[6, :] = -np.inf
    walks = []
    for name, model, target in [m for m in MODELS if m[0].startswith("hgb-")]:
        adapter = _adapter(tmp_path / name, _fitted(model, target))
        adapter.threads = 2
        built = TreeCompiler().build(adapter, tmp_path / "cache")
        assert isinstance(built.predict, WalkedTrees), name
        assert Path(str(built.artifact)).name.startswith("walk-")
        walks.append(built)
        original = adapter.predict(x)
        assert np.array_equal(built.predict(x), original), name
        adapter.enter_lane()  # this thread becomes a lane: one range, one thread
        assert np.array_equal(built.predict(x[:777]), original[:777]), name
        adapter.close()
    assert [w.cache_hit for w in walks] == [False, True, True]  # the walk is compiled once, for every model
    assert len({w.artifact for w in walks}) == 1


def _build_in_process(folder: str, barrier: Any, results: Any) -> None:
    adapter = _adapter(Path(folder), None)
    barrier.wait()  # both workers reach the build at the same moment
    built: Built = TreeCompiler().build(adapter, Path(folder) / "cache")
    results.put((built.cache_hit, built.build_seconds, built.artifact))


def test_two_workers_building_at_once_build_once(tmp_path: Path) -> None:
    save(_fitted(HistGradientBoostingClassifier(max_iter=30, random_state=0), "binary"), tmp_path / "model.joblib")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_build_in_process, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(hit for hit, _, _ in outcomes) == [False, True]  # one built it, the other waited and loaded it
    assert [seconds for hit, seconds, _ in outcomes if hit] == [0.0]
    assert len({artifact for _, _, artifact in outcomes}) == 1
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".so", ".lock"))]
    assert leftovers == []  # no half-built files


def test_unsupported_models_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, binary, _, _ = _data()
    linear = _adapter(tmp_path, LogisticRegression().fit(np.nan_to_num(x), binary))
    assert "LogisticRegression is not a supported tree ensemble" in str(TreeCompiler().unavailable(linear))
    fitted = _fitted(HistGradientBoostingClassifier(max_iter=5, random_state=0), "binary")
    boosted = _adapter(tmp_path, fitted, method="decision_function")
    assert "'decision_function' is not compiled" in str(TreeCompiler().unavailable(boosted))
    monkeypatch.setitem(sys.modules, "tl2cgen", None)  # as if it were not installed
    reason = str(TreeCompiler().unavailable(_adapter(tmp_path, fitted)))
    assert "tl2cgen" in reason and "pip install 'infermill[accelerate]'" in reason


def test_named_compile_without_its_packages_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infermill.accelerate.verify import accelerated

    fitted = _fitted(HistGradientBoostingClassifier(max_iter=5, random_state=0), "binary")
    adapter = _adapter(tmp_path, fitted, accelerate="compile")
    monkeypatch.setitem(sys.modules, "treelite", None)
    with pytest.raises(ModelLoadError, match="accelerate = 'compile' cannot be used: it needs treelite") as info:
        accelerated(adapter, adapter.spec)
    assert "auto" in (info.value.hint or "")
    # "auto" falls back instead: the original model runs, and the decision says why.
    auto = _adapter(tmp_path, fitted, accelerate="auto")
    wrapped = accelerated(auto, auto.spec, warn=lambda text: None)
    x = np.nan_to_num(_data()[0][:100])
    assert np.array_equal(wrapped.predict(x), auto.predict(x))
    decision = wrapped.decision  # type: ignore[attr-defined]
    assert decision is not None and not decision.used and "treelite" in str(decision.reason)
