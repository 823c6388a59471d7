"""What the onnx adapter needs to know about an ONNX file, read before onnxruntime opens it.

An ONNX file is a protobuf ``ModelProto``. This module parses it with a *subset* of ``onnx.proto``
(built at runtime, so it needs only ``protobuf``, which onnxruntime already requires, not the ``onnx``
package) to collect the main graph's inputs and outputs, a classifier's class labels, and every
external-data ``location``, including those in subgraphs, functions and training graphs. The adapter
uses it to

* refuse external data outside the model's folder *before* onnxruntime reads any file, and
* name its output columns without creating a session.

Fields outside the subset (weights, docs) are skipped by the protobuf parser. Field numbers are those of
``onnx.proto``, stable since IR version 3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from ..errors import ModelLoadError

__all__ = ["ELEM_TYPES", "GraphInfo", "ValueInfo", "check_external_data", "read_graph"]

# TensorProto.DataType -> numpy dtype name ("object" for strings).
ELEM_TYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "object",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}

ValueKind = Literal["tensor", "seq_map", "other"]


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output."""

    name: str
    kind: ValueKind
    """A tensor, a sequence of maps (skl2onnx's ZipMap output) or anything else."""
    elem_type: int = 0
    """Tensor element type (for seq_map: the map values' type), a TensorProto.DataType number."""
    shape: tuple[int | None, ...] | None = None
    """Dimensions (None for a symbolic one); None when the rank is unknown."""

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def dtype(self) -> str:
        """numpy dtype name of the elements (float32 when unknown)."""
        return ELEM_TYPES.get(self.elem_type, "float32")


@dataclass
class GraphInfo:
    """The parts of a model the adapter plans with."""

    inputs: list[ValueInfo] = field(default_factory=list)
    """Graph inputs that are not initializers (what a caller must feed)."""
    outputs: list[ValueInfo] = field(default_factory=list)
    class_labels: list[Any] | None = None
    """A classifier's labels in probability-column order (ZipMap's keys, or the classifier node's)."""
    external_locations: list[str] = field(default_factory=list)
    """Every external-data ``location`` in the file."""


def read_graph(path: str) -> GraphInfo:
    """Parse ``path``; raise ModelLoadError when it is not an ONNX model."""
    model_cls = _model_class()
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        model = model_cls.FromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError differs between backends
        raise _not_onnx(path, f"cannot parse it: {exc}") from exc
    if not model.HasField("graph"):
        raise _not_onnx(path, "it has no graph")
    info = GraphInfo()
    _Walker(info).model(model)
    return info


def check_external_data(path: str, info: GraphInfo) -> None:
    """Refuse external data that lives outside the model's folder (absolute paths, '..', symlinks)."""
    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for location in info.external_locations:
        target = os.path.realpath(os.path.join(base, location))
        inside = not os.path.isabs(location) and os.path.commonpath([base, target]) == base
        if not inside or target == base:
            raise ModelLoadError(
                f"{path}: external data location '{location}' is outside the model's folder {base}",
                hint="keep external data files beside the model (a relative path without '..'); "
                "infermill refuses to let a model file read other files",
            )


def _not_onnx(path: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is not a valid ONNX model ({why})",
        hint="check the file; export models with torch.onnx, skl2onnx or tf2onnx",
    )


class _Walker:
    def __init__(self, info: GraphInfo) -> None:
        self.info = info
        self.labels: list[tuple[str, list[Any]]] = []

    def model(self, model: Any) -> None:
        self.graph(model.graph, main=True)
        for training in model.training_info:
            self.graph(training.initialization, main=False)
            self.graph(training.algorithm, main=False)
        for function in model.functions:
            for node in function.node:
                self.node(node, main=False)
            for attribute in function.attribute_proto:
                self.attribute(attribute)
        zipmap = [labels for op, labels in self.labels if op == "ZipMap"]
        if zipmap:
            self.info.class_labels = zipmap[0]
        elif len(self.labels) == 1:
            self.info.class_labels = self.labels[0][1]

    def graph(self, graph: Any, *, main: bool) -> None:
        for node in graph.node:
            self.node(node, main=main)
        for tensor in graph.initializer:
            self.tensor(tensor)
        for sparse in graph.sparse_initializer:
            self.tensor(sparse.values)
            self.tensor(sparse.indices)
        if main:
            # IR < 4 lists initializers among the inputs too; callers need not feed those.
            initializers = {t.name for t in graph.initializer}
            self.info.inputs = [_value_info(v) for v in graph.input if v.name not in initializers]
            self.info.outputs = [_value_info(v) for v in graph.output]

    def node(self, node: Any, *, main: bool) -> None:
        for attribute in node.attribute:
            self.attribute(attribute)
            if main and attribute.name.startswith("classlabels_"):
                if attribute.name == "classlabels_strings":
                    labels: list[Any] = [s.decode("utf-8", "replace") for s in attribute.strings]
                else:
                    labels = list(attribute.ints)
                if labels:
                    self.labels.append((node.op_type, labels))

    def attribute(self, attribute: Any) -> None:
        if attribute.HasField("t"):
            self.tensor(attribute.t)
        if attribute.HasField("g"):
            self.graph(attribute.g, main=False)
        if attribute.HasField("sparse_tensor"):
            self.tensor(attribute.sparse_tensor.values)
            self.tensor(attribute.sparse_tensor.indices)
        for tensor in attribute.tensors:
            self.tensor(tensor)
        for graph in attribute.graphs:
            self.graph(graph, main=False)
        for sparse in attribute.sparse_tensors:
            self.tensor(sparse.values)
            self.tensor(sparse.indices)

    def tensor(self, tensor: Any) -> None:
        for entry in tensor.external_data:
            if entry.key == "location":
                self.info.external_locations.append(entry.value)


def _value_info(value: Any) -> ValueInfo:
    kind, elem, shape = _type(value.type)
    return ValueInfo(value.name, kind, elem, shape)


def _type(tp: Any) -> tuple[ValueKind, int, tuple[int | None, ...] | None]:
    if tp.HasField("tensor_type"):
        tensor = tp.tensor_type
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        return "tensor", tensor.elem_type, shape
    if tp.HasField("sequence_type") and tp.sequence_type.elem_type.HasField("map_type"):
        kind, elem, _ = _type(tp.sequence_type.elem_type.map_type.value_type)
        if kind == "tensor":
            return "seq_map", elem, None
    return "other", 0, None


# (message, [(field name, number, type, repeated, message type)]) - a subset of onnx.proto.
_SCHEMA: list[tuple[str, list[tuple[str, int, str, bool, str]]]] = [
    (
        "Model",
        [
            ("graph", 7, "msg", False, "Graph"),
            ("training_info", 20, "msg", True, "TrainingInfo"),
            ("functions", 25, "msg", True, "Function"),
        ],
    ),
    ("TrainingInfo", [("initialization", 1, "msg", False, "Graph"), ("algorithm", 2, "msg", False, "Graph")]),
    ("Function", [("node", 7, "msg", True, "Node"), ("attribute_proto", 11, "msg", True, "Attribute")]),
    (
        "Graph",
        [
            ("node", 1, "msg", True, "Node"),
            ("initializer", 5, "msg", True, "Tensor"),
            ("sparse_initializer", 15, "msg", True, "Sparse"),
            ("input", 11, "msg", True, "ValueInfo"),
            ("output", 12, "msg", True, "ValueInfo"),
        ],
    ),
    ("Node", [("op_type", 4, "string", False, ""), ("attribute", 5, "msg", True, "Attribute")]),
    (
        "Attribute",
        [
            ("name", 1, "string", False, ""),
            ("t", 5, "msg", False, "Tensor"),
            ("g", 6, "msg", False, "Graph"),
            ("ints", 8, "int64", True, ""),
            ("strings", 9, "bytes", True, ""),
            ("tensors", 10, "msg", True, "Tensor"),
            ("graphs", 11, "msg", True, "Graph"),
            ("sparse_tensor", 22, "msg", False, "Sparse"),
            ("sparse_tensors", 23, "msg", True, "Sparse"),
        ],
    ),
    ("Tensor", [("name", 8, "string", False, ""), ("external_data", 13, "msg", True, "Entry")]),
    ("Entry", [("key", 1, "string", False, ""), ("value", 2, "string", False, "")]),
    ("Sparse", [("values", 1, "msg", False, "Tensor"), ("indices", 2, "msg", False, "Tensor")]),
    ("ValueInfo", [("name", 1, "string", False, ""), ("type", 2, "msg", False, "Type")]),
    (
        "Type",
        [
            ("tensor_type", 1, "msg", False, "TensorType"),
            ("sequence_type", 4, "msg", False, "SequenceType"),
            ("map_type", 5, "msg", False, "MapType"),
        ],
    ),
    ("TensorType", [("elem_type", 1, "int32", False, ""), ("shape", 2, "msg", False, "Shape")]),
    ("Shape", [("dim", 1, "msg", True, "Dim")]),
    ("Dim", [("dim_value", 1, "int64", False, ""), ("dim_param", 2, "string", False, "")]),
    ("SequenceType", [("elem_type", 1, "msg", False, "Type")]),
    ("MapType", [("key_type", 1, "int32", False, ""), ("value_type", 2, "msg", False, "Type")]),
]


@cache
def _model_class() -> Any:
    try:
        from google.protobuf import (  # type: ignore[import-untyped, unused-ignore]
            descriptor_pb2,
            descriptor_pool,
            message_factory,
        )
    except ImportError as exc:
        from . import missing_extra

        raise missing_extra("onnx", "protobuf") from exc
    fdp = descriptor_pb2.FileDescriptorProto(
        name="infermill_onnx_subset.proto", package="infermill_onnx_subset", syntax="proto2"
    )
    fd = descriptor_pb2.FieldDescriptorProto
    types = {
        "msg": fd.TYPE_MESSAGE,
        "string": fd.TYPE_STRING,
        "bytes": fd.TYPE_BYTES,
        "int64": fd.TYPE_INT64,
        "int32": fd.TYPE_INT32,
    }
    for name, fields in _SCHEMA:
        message = fdp.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            entry = message.field.add(
                name=field_name,
                number=number,
                type=types[kind],
                label=fd.LABEL_REPEATED if repeated else fd.LABEL_OPTIONAL,
            )
            if type_name:
                entry.type_name = f".infermill_onnx_subset.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("infermill_onnx_subset.Model")
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:
        return get_class(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf < 4.21
