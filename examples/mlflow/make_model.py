"""Train a small churn classifier, save it as an MLflow model (sklearn flavor, with a signature), and
write the customers to score.

    python make_model.py            # writes model/ and customers.parquet beside this file

Needs scikit-learn and mlflow (or mlflow-skinny): pip install 'infermill[mlflow,sklearn]'.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
FEATURES = ["tenure_months", "monthly_charges", "support_calls"]


def customers(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": np.arange(rows),
            "tenure_months": rng.integers(1, 72, rows).astype(np.float64),
            "monthly_charges": rng.normal(60, 20, rows).round(2),
            "support_calls": rng.poisson(1.5, rows).astype(np.float64),
        }
    )


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints and pickles, not needed here
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        train = customers(2_000, seed=0)
        x = train[FEATURES]
        churned = (0.04 * train.support_calls * 10 - 0.03 * train.tenure_months + 0.01 * train.monthly_charges) > 0
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, churned.astype(int))
        target = HERE / "model"
        shutil.rmtree(target, ignore_errors=True)
        mlflow.sklearn.save_model(
            model,
            str(target),
            serialization_format="cloudpickle",
            pyfunc_predict_fn="predict_proba",  # the model's pyfunc returns [P(stay), P(churn)]
            signature=infer_signature(x, model.predict_proba(x)),
            pip_requirements=["scikit-learn"],
        )
    customers(10_000, seed=1).to_parquet(HERE / "customers.parquet", index=False)
    print(f"wrote {target} and {HERE / 'customers.parquet'}")


if __name__ == "__main__":
    main()
