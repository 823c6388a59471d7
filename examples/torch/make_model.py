"""Train the example's tiny churn model and write its inputs (runs offline in a few seconds):

* data/customers.parquet: 5,000 customers with three numeric features
* model.safetensors: the trained weights for net.py's factory (job.toml)
* model.pt2: the same model as a torch.export program (job_export.toml)

    python make_model.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from net import build
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(0)
    rows = 5_000
    tenure = rng.uniform(0, 10, rows).astype(np.float32)
    charges = rng.normal(60, 20, rows).astype(np.float32)
    tickets = rng.poisson(1.5, rows).astype(np.float32)
    churn = (0.3 * tickets - 0.4 * tenure + 0.02 * charges + rng.normal(0, 0.5, rows) > -1.0).astype(np.float32)
    (HERE / "data").mkdir(exist_ok=True)
    pq.write_table(
        pa.table({"customer_id": np.arange(rows), "tenure": tenure, "charges": charges, "tickets": tickets}),
        HERE / "data" / "customers.parquet",
    )

    torch.manual_seed(0)
    x = torch.from_numpy(np.column_stack([tenure / 10, (charges - 60) / 20, tickets / 3]))
    y = torch.from_numpy(churn)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    # Fold the feature scaling into the first layer, so the model takes the raw columns.
    with torch.no_grad():
        first = model.body[0]
        scale = torch.tensor([1 / 10, 1 / 20, 1 / 3])
        shift = torch.tensor([0.0, -60 / 20, 0.0])
        first.bias += first.weight @ shift
        first.weight *= scale
    save_file(model.state_dict(), str(HERE / "model.safetensors"))
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:8] * 0,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(HERE / "model.pt2"))
    print(f"trained (loss {loss.item():.3f}); wrote data/customers.parquet, model.safetensors, model.pt2")
    print("next: infermill run job.toml")


if __name__ == "__main__":
    main()
