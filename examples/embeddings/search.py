"""Search the embedded corpus: embed a query with the same model and print the closest documents.

python search.py "a cat sleeping on a warm windowsill"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def load_output(folder: Path) -> pa.Table:
    manifest = json.loads((folder / "_manifest.json").read_text())
    return pa.concat_tables(pq.read_table(folder / f["path"]) for f in manifest["files"])


def main() -> None:
    from sentence_transformers import SentenceTransformer

    query = " ".join(sys.argv[1:]) or "a cat sleeping on a warm windowsill"
    table = load_output(HERE / "out")
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy()).reshape(table.num_rows, -1)
    model = SentenceTransformer(str(HERE / "model"), device="cpu", local_files_only=True)
    q = model.encode([query], normalize_embeddings=True)[0]
    scores = vectors @ q  # the stored vectors are unit length (normalize = true)
    print(f"query: {query}")
    for i in np.argsort(-scores)[:5]:
        row = table.slice(int(i), 1).to_pylist()[0]
        print(f"  {scores[i]:.3f}  {row['doc_id']}  [{row['topic']}]  {row['title']}")


if __name__ == "__main__":
    main()
