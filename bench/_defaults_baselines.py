"""The plain-library scripts bench_defaults.py measures infermill against: one function per workload.

Run as a whole process, as a user would: ``python _defaults_baselines.py WORKLOAD INPUT MODEL OUTPUT``.
Each imports its library, loads the model, reads the input Parquet file, scores every row the way the
library is fastest on this machine (whole arrays for the tabular kinds, length-sorted micro-batches for
text) and writes ``id`` + the outputs as one Parquet file, the format infermill writes. Only the imports a
workload needs are made: a user's script would not import torch to score a scikit-learn model.
"""

from __future__ import annotations

import sys
from pathlib import Path

FEATURE_PREFIX = "f"
TEXT_BATCH = 32
"""Texts per forward pass of the text baselines (sentence-transformers' own default)."""


def _features(path: str) -> tuple[object, object]:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = [n for n in table.column_names if n.startswith(FEATURE_PREFIX)]
    matrix = np.column_stack([table.column(n).to_numpy() for n in names])
    return table.column("id"), matrix


def _write(out: str, columns: dict[str, object]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), out)


def tabular(path: str, model: str, out: str) -> None:
    import joblib

    estimator = joblib.load(model)
    ids, x = _features(path)
    _write(out, {"id": ids, "score": estimator.predict_proba(x)[:, 1]})


def onnx(path: str, model: str, out: str) -> None:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ids, x = _features(path)
    name = session.get_inputs()[0].name
    (probabilities,) = session.run(["probabilities"], {name: np.ascontiguousarray(x, dtype=np.float32)})
    _write(out, {"id": ids, "score": probabilities[:, 1]})


def torch_module(path: str, model: str, out: str) -> None:
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _models import mlp

    module = mlp()
    module.load_state_dict(load_file(model))
    module.eval()
    ids, x = _features(path)
    with torch.inference_mode():
        scores = module(torch.from_numpy(x).to(torch.float32)).numpy()
    _write(out, {"id": ids, "score": scores[:, 0]})


def _texts(path: str) -> tuple[object, list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.column("id"), table.column("text").to_pylist()


def embeddings(path: str, model: str, out: str) -> None:
    import pyarrow as pa
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device="cpu")
    ids, texts = _texts(path)
    vectors = encoder.encode(texts, batch_size=TEXT_BATCH)  # sorts by length itself
    flat = pa.array(vectors.reshape(-1))
    _write(out, {"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def text_classification(path: str, model: str, out: str) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model)
    classifier.eval()
    ids, texts = _texts(path)
    # Length-sorted micro-batches pad least; results go back in input order.
    order = np.argsort([len(t) for t in texts], kind="stable")
    best = np.empty(len(texts), dtype=np.int64)
    scores = np.empty(len(texts), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), TEXT_BATCH):
            rows = order[start:start + TEXT_BATCH]
            encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
            probabilities = classifier(**encoded).logits.softmax(-1)
            top = probabilities.max(-1)
            best[rows], scores[rows] = top.indices.numpy(), top.values.numpy()
    labels = classifier.config.id2label
    _write(out, {"id": ids, "label": [labels[int(i)] for i in best], "score": scores})


SCRIPTS = {"tabular": tabular, "onnx": onnx, "torch": torch_module, "embeddings": embeddings,
           "text-classification": text_classification}

if __name__ == "__main__":
    workload, input_path, model_path, output_path = sys.argv[1:5]
    SCRIPTS[workload](input_path, model_path, output_path)
