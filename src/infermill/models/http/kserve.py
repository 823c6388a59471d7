"""``protocol = "kserve-v2"``: the Open Inference Protocol (KServe v2, Triton, MLServer, OpenVINO), JSON.

Each request carries ``batch_size`` rows: ``{"inputs": [{"name", "shape", "datatype", "data"}]}``, one
``[rows, features]`` tensor (``input_layout = "matrix"``) or one ``[rows]`` tensor per feature column
(``"columns"``), flat row-major data. Answers' ``outputs`` map to columns by name: ``[rows]`` and
``[rows, 1]`` tensors give one value per row, ``[rows, k]`` a fixed-size list of k. Setup reads the
model's metadata (``GET /v2/models/{model}``) for the input name and datatype, the output names and types;
a server without metadata is fine, then the first answer decides. The binary tensor extension is not
supported.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from ...errors import ItemError, ModelLoadError
from .._columns import feature_matrix
from .protocol import Atom, HttpProtocol, arrow_type, digest, response_excerpt, typed_column, with_path
from .settings import HttpSettings

__all__ = ["KServeProtocol"]

DATATYPES: dict[str, tuple[np.dtype[Any], pa.DataType]] = {
    "BOOL": (np.dtype(np.bool_), pa.bool_()),
    "UINT8": (np.dtype(np.uint8), pa.uint8()),
    "UINT16": (np.dtype(np.uint16), pa.uint16()),
    "UINT32": (np.dtype(np.uint32), pa.uint32()),
    "UINT64": (np.dtype(np.uint64), pa.uint64()),
    "INT8": (np.dtype(np.int8), pa.int8()),
    "INT16": (np.dtype(np.int16), pa.int16()),
    "INT32": (np.dtype(np.int32), pa.int32()),
    "INT64": (np.dtype(np.int64), pa.int64()),
    "FP16": (np.dtype(np.float16), pa.float16()),
    "FP32": (np.dtype(np.float32), pa.float32()),
    "FP64": (np.dtype(np.float64), pa.float64()),
    "BYTES": (np.dtype(object), pa.string()),
}


def _datatype_of(t: pa.DataType) -> str:
    for name, (_, arrow) in DATATYPES.items():
        if t == arrow and name != "BYTES":
            return name
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "BYTES"
    raise ModelLoadError(
        f"a feature of type {t} cannot be sent as a KServe tensor",
        hint="use numeric, boolean or string features",
    )


class KServeProtocol(HttpProtocol):
    name = "kserve-v2"

    def __init__(self, settings: HttpSettings, outputs: list[str] | None) -> None:
        super().__init__(settings, outputs)
        if not urlsplit(settings.url).path.strip("/") and not settings.model:
            raise ModelLoadError(
                "protocol kserve-v2 needs 'model.model' (the model's name on the server) or a url with the "
                "full path",
                hint='set model = "my-model"',
            )
        if settings.datatype is not None and settings.datatype not in DATATYPES:
            raise ModelLoadError(
                f"unknown kserve datatype {settings.datatype!r} (from 'model.datatype')",
                hint=f"use one of: {', '.join(DATATYPES)}",
            )
        self.group_size = settings.batch_size
        self.input_name = settings.input_name or "input-0"
        self.datatype = settings.datatype or "FP32"
        self.declared = {
            n: arrow_type(t, f"model.output_types.{n}") for n, t in settings.output_types.items()
        }
        self.metadata_outputs: list[str] | None = None
        self.metadata_inputs: list[str] | None = None
        self.types: dict[str, pa.DataType | str] = dict(self.declared)
        self._columns_types: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        s = self.settings
        if urlsplit(s.url).path.strip("/"):
            return s.url
        return with_path(s.url, f"/v2/models/{s.model}/infer")

    def _metadata_url(self) -> str:
        url = self.endpoint
        return url[: -len("/infer")] if url.endswith("/infer") else url

    def probe_url(self) -> str:
        return super().probe_url() if self.settings.health_path else self._metadata_url()

    def setup(self, get: Any) -> None:
        status, data = get(self._metadata_url())
        if status == 404:
            raise ModelLoadError(
                f"the server has no model at {self._metadata_url()} (HTTP 404)",
                hint="check model (the name the server serves) and url",
            )
        if not (200 <= status < 300) or not isinstance(data, dict):
            return  # no metadata: the first answer decides names and types
        inputs = [i for i in data.get("inputs") or [] if isinstance(i, dict) and "name" in i]
        self.metadata_inputs = [str(i["name"]) for i in inputs]
        if self.settings.input_layout == "matrix" and len(inputs) == 1:
            self.input_name = self.settings.input_name or str(inputs[0]["name"])
            found = inputs[0].get("datatype")
            if self.settings.datatype is None and found in DATATYPES:
                self.datatype = found
        outputs = [o for o in data.get("outputs") or [] if isinstance(o, dict) and "name" in o]
        self.metadata_outputs = [str(o["name"]) for o in outputs]
        for o in outputs:
            name = str(o["name"])
            shape = o.get("shape") or [-1]
            known = len(shape) < 2 or (isinstance(shape[1], int) and shape[1] >= 1)  # [-1, -1]: wait and see
            if name not in self.types and o.get("datatype") in DATATYPES and known:
                self.types[name] = _tensor_type(o["datatype"], shape)

    @property
    def outputs(self) -> list[str]:
        if self.configured_outputs:
            return list(self.configured_outputs)
        if self.metadata_outputs:
            return list(self.metadata_outputs)
        return ["prediction"]

    def check_columns(self, names: list[str]) -> None:
        inputs = self.metadata_inputs
        if self.settings.input_layout != "columns" or not inputs:
            return  # the matrix carries every feature
        unknown = [n for n in names if n not in inputs]
        if unknown:
            raise ModelLoadError(
                f"input_layout = \"columns\" sends each feature as a tensor, but the model has no input(s) "
                f"{unknown}; its inputs are {inputs}",
                hint="set [model] features to the model's input names",
            )

    def atoms(self, batch: pa.RecordBatch) -> list[Atom | ItemError]:
        if self.settings.input_layout == "columns":
            return self._column_atoms(batch)
        dtype = DATATYPES[self.datatype][0]
        if dtype.kind == "O":
            columns = [c.to_pylist() for c in batch.columns]
            rows: list[list[Any]] = [[str(v) for v in r] for r in zip(*columns, strict=True)]
        else:
            rows = feature_matrix(batch, dtype, batch.schema.names).tolist()
        return [self._atom(row) for row in rows]

    def _column_atoms(self, batch: pa.RecordBatch) -> list[Atom | ItemError]:
        names = batch.schema.names
        self._columns_types = {n: _datatype_of(batch.schema.field(n).type) for n in names}
        values = [c.to_pylist() for c in batch.columns]
        out: list[Atom | ItemError] = []
        for i in range(batch.num_rows):
            row = [v[i] for v in values]
            nulls = [n for n, v in zip(names, row, strict=True) if v is None]
            out.append(ItemError(f"feature(s) {nulls} are null") if nulls else self._atom(row))
        return out

    def _atom(self, row: list[Any]) -> Atom | ItemError:
        if any(isinstance(v, float) and not math.isfinite(v) for v in row):
            return ItemError("the row has NaN or infinite values, which JSON cannot carry")
        return Atom(digest(row), row, 0.0)

    def body(self, atoms: list[Atom]) -> Any:
        n = len(atoms)
        if self.settings.input_layout == "columns":
            names = list(self._columns_types)
            inputs = [
                {
                    "name": name,
                    "shape": [n],
                    "datatype": self._columns_types[name],
                    "data": [a.payload[j] for a in atoms],
                }
                for j, name in enumerate(names)
            ]
        else:
            width = len(atoms[0].payload)
            inputs = [
                {
                    "name": self.input_name,
                    "shape": [n, width],
                    "datatype": self.datatype,
                    "data": [v for a in atoms for v in a.payload],
                }
            ]
        return {"inputs": inputs, **self.settings.extra_body}

    def parse(self, data: Any, text: str, count: int) -> list[Any]:
        try:
            tensors = {str(t["name"]): t for t in data["outputs"]}
        except (KeyError, TypeError):
            raise ItemError(f"the answer has no outputs[].name: {response_excerpt(text)}") from None
        wanted = self.outputs
        if not self.configured_outputs and not self.metadata_outputs:
            if len(tensors) != 1:
                raise ModelLoadError(
                    f"the model returns {len(tensors)} output tensors {sorted(tensors)}; which is the prediction?",
                    hint="set [model] outputs to the tensor names you want",
                )
            tensors = {"prediction": next(iter(tensors.values()))}
        missing = [n for n in wanted if n not in tensors]
        if missing:
            raise ModelLoadError(
                f"the answer has no output tensor(s) {missing}; it has {sorted(tensors)}",
                hint="set [model] outputs to names the model returns",
            )
        per_output = {n: self._rows(n, tensors[n], count) for n in wanted}
        return [{n: per_output[n][i] for n in wanted} for i in range(count)]

    def _rows(self, name: str, tensor: dict[str, Any], count: int) -> list[Any]:
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise ItemError(f"output '{name}' has an unknown datatype {datatype!r}")
        try:
            shape = [int(d) for d in tensor["shape"]]
            values = np.asarray(tensor["data"], dtype=DATATYPES[datatype][0]).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ItemError(f"output tensor '{name}' is malformed: {exc}") from None
        if not shape or shape[0] != count:
            raise ItemError(f"output '{name}' has shape {shape} for {count} rows")
        if len(shape) > 2:
            raise ItemError(f"output '{name}' has shape {shape}; infermill takes at most 2 dimensions")
        if len(shape) == 2 and shape[1] == 1:
            values = values[:, 0]
        if name not in self.types:
            self.types[name] = _tensor_type(datatype, list(values.shape))
        return list(values)

    def columns(self, rows: list[Any]) -> dict[str, pa.Array]:
        out: dict[str, pa.Array] = {}
        for name in self.outputs:
            dtype = self.types.get(name)
            if dtype is None:
                raise ItemError(
                    f"the type of output '{name}' is unknown before the first answer",
                    hint="the server has no model metadata; set [model] output_types",
                )
            out[name] = typed_column([r[name] for r in rows], dtype, name)
        return out


def _tensor_type(datatype: str, shape: list[Any]) -> pa.DataType:
    scalar = DATATYPES[datatype][1]
    if len(shape) >= 2 and isinstance(shape[1], int) and shape[1] > 1:
        return pa.list_(scalar, shape[1])
    return scalar
