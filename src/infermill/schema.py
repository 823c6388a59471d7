"""The JSON Schema of a job file, built from the definitions the job file is checked with.

Each section is a dataclass of ``spec.py`` (its fields, types, defaults and the docstring under each
field); the names of model kinds, input and output formats and executors come from the registry, and each
plugin's own keys (a model kind's, an input or output format's) from its settings dataclass. Editors that
read JSON Schema for TOML (Taplo, Even Better TOML, the JetBrains TOML plugin) then complete and check job files::

    infermill schema > infermill.schema.json
    #:schema ./infermill.schema.json           (first line of a job file, for Taplo)

``docs/job-file.schema.json`` is the published copy; a test keeps it equal to what this module builds.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from . import registry
from .errors import SpecError
from .spec import _SECTIONS

__all__ = ["SCHEMA_ID", "job_schema", "schema_text"]

SCHEMA_ID = "https://infermill.dev/schemas/job-file.json"


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of the dataclasses it extends)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for field, doc in zip(body, body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def _type_schema(tp: Any) -> dict[str, Any]:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]  # TOML has no null: an optional key is omitted
        if len(options) == 1:
            return _type_schema(options[0])
        return {"anyOf": [_type_schema(a) for a in options]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0]) if args else {}}
    if origin is dict or tp is dict:
        return {"type": "object"}
    return {str: {"type": "string"}, bool: {"type": "boolean"}, int: {"type": "integer"},
            float: {"type": "number"}}.get(tp, {})


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return dataclasses.MISSING
    try:
        json.dumps(value)
    except TypeError:
        return dataclasses.MISSING
    return value


def _object(cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    hints = get_type_hints(cls)
    docs = _field_docs(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        prop = _type_schema(hints[field.name])
        if field.name in docs:
            prop["description"] = docs[field.name]
        default = _default(field)
        if default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
        elif default is not None and default is not dataclasses.MISSING:
            prop["default"] = default
        properties[field.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    if required:
        schema["required"] = required
    return schema


def _plugin_section(section: str, group: registry.Group) -> dict[str, Any]:
    """``[model]``, ``[input]`` or ``[output]``: the common keys, and each plugin's own keys when its
    ``kind`` or ``format`` names it."""
    key = "kind" if section == "model" else "format"
    schema = _object(_SECTIONS[section], skip=("settings",))
    schema["properties"][key]["enum"] = registry.names(group)
    schema["additionalProperties"] = True  # a plugin's own keys, listed per plugin below
    branches: list[dict[str, Any]] = []
    every = set(schema["properties"])
    complete = True
    for name in registry.names(group):
        try:
            settings = _settings_class(group, name)
        except (ImportError, SpecError):
            complete = False  # its library is not installed here: its own keys cannot be listed
            continue
        own = _object(settings)["properties"] if settings is not None else {}
        allowed = {**schema["properties"], **own}
        every |= set(own)
        branches.append({
            "if": {"properties": {key: {"const": name}}, "required": [key]},
            "then": {"properties": own, "propertyNames": {"enum": sorted(allowed)}},
        })
    if complete and section != "model":
        # No format named (inferred from the file extension): any format's key may be meant.
        branches.append({"if": {"not": {"required": [key]}}, "then": {"propertyNames": {"enum": sorted(every)}}})
    schema["allOf"] = branches
    return schema


def _settings_class(group: registry.Group, name: str) -> Any:
    cls = registry.settings_class(group, name)
    if cls is registry.DEFERRED:  # a plugin that declares its keys only on its class: imported to read them
        cls = getattr(registry.load(group, name), "settings_cls", None)
    return cls


def job_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a job file."""
    sections = {name: _object(cls) for name, cls in _SECTIONS.items()}
    sections["model"] = _plugin_section("model", "models")
    sections["input"] = _plugin_section("input", "sources")
    sections["output"] = _plugin_section("output", "sinks")
    sections["runtime"]["properties"]["executor"]["enum"] = ["auto", *registry.names("executors")]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "infermill job file",
        "description": "One batch-inference job: where the input is, which model runs, where results go.",
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "The job's name; defaults to the job file's stem."},
            **sections,
        },
        "required": ["input", "model", "output"],
        "additionalProperties": False,
    }


def schema_text() -> str:
    return json.dumps(job_schema(), indent=2, sort_keys=True) + "\n"
