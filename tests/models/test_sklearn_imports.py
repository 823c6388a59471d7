"""Loading a scikit-learn model imports only what its pickle needs: no ``sklearn.compose`` for a model
without a ColumnTransformer (start-up time of every small job), and a ColumnTransformer is still found."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LOAD = textwrap.dedent("""
    import sys
    from infermill.models import load_adapter
    from infermill.spec import JobSpec

    spec = JobSpec.from_dict({
        "input": {"path": "in.parquet"},
        "model": {"kind": "sklearn", "path": sys.argv[1], "trusted": True, "features": ["a", "b"]},
        "output": {"path": "out"},
    })
    adapter = load_adapter(spec)
    adapter.setup()
    print("sklearn.compose" in sys.modules, adapter._pandas)
""")


def _load(tmp_path: Path, model: object) -> str:
    joblib.dump(model, tmp_path / "m.joblib")
    done = subprocess.run([sys.executable, "-c", LOAD, "m.joblib"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(64, 2)), columns=["a", "b"])
    return x, (x["a"] > 0).to_numpy().astype(int)


def test_no_compose_import_for_a_model_without_a_column_transformer(tmp_path: Path) -> None:
    assert _load(tmp_path, LogisticRegression().fit(*_frame())) == "False False"


def test_a_column_transformer_still_gets_a_dataframe(tmp_path: Path) -> None:
    model = make_pipeline(ColumnTransformer([("s", StandardScaler(), ["a", "b"])]), LogisticRegression())
    assert _load(tmp_path, model.fit(*_frame())) == "True True"
