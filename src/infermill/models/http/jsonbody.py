"""``protocol = "json"``: any JSON-over-HTTP model server, one request per row.

``request_template`` is the request body. Its strings are rendered per row:

* ``"$row"``: an object of every feature column, ``{"f0": 1.5, "city": "Oslo"}``;
* ``"{column}"`` (nothing else in the string): the column's value with its JSON type (number, string,
  list, null);
* any other string: text with ``{column}`` placeholders filled in (``{{``/``}}`` for braces).

Tables, arrays, numbers and booleans are kept. The default template is ``"$row"``.

``response_path`` picks the prediction out of the answer: a dotted path where numbers index arrays
(``"predictions.0.score"``), or a table of output name to path; the default is the whole answer.
Values are typed by ``output_types``, else numbers become float64, booleans bool, strings string, arrays
of numbers list<float64>, anything else JSON text.
"""

from __future__ import annotations

import re
import string
from typing import Any

import pyarrow as pa

from ...errors import ItemError, ModelLoadError
from .protocol import JSON_TYPE, Atom, HttpProtocol, arrow_type, digest, dumps, response_excerpt, typed_column
from .settings import HttpSettings

__all__ = ["JsonProtocol", "render"]

ROW = "$row"
_WHOLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: Any) -> set[str]:
    """Column names a template refers to ("$row" counts as none: it takes whatever the features are)."""
    if isinstance(template, str):
        if template == ROW:
            return set()
        try:
            return {f for _, f, _, _ in string.Formatter().parse(template) if f}
        except ValueError as exc:
            raise ModelLoadError(
                f"invalid request_template string {template!r}: {exc}", hint="use {{ and }} for literal braces"
            ) from None
    if isinstance(template, dict):
        return set().union(*(placeholders(v) for v in template.values())) if template else set()
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template)) if template else set()
    return set()


def render(template: Any, row: dict[str, Any]) -> Any:
    """The request body for one row (see the module docstring)."""
    if isinstance(template, str):
        if template == ROW:
            return dict(row)
        whole = _WHOLE.fullmatch(template)
        if whole:
            return row[whole.group(1)]
        return template.format_map(row)
    if isinstance(template, dict):
        return {k: render(v, row) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, row) for v in template]
    return template


def pick(data: Any, path: str) -> Any:
    """The value at a dotted ``path``; KeyError when it is not there."""
    value = data
    for part in path.split(".") if path else []:
        if isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                raise KeyError(path) from None
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value


class JsonProtocol(HttpProtocol):
    name = "json"

    def __init__(self, settings: HttpSettings, outputs: list[str] | None) -> None:
        super().__init__(settings, outputs)
        self.template = ROW if settings.request_template is None else settings.request_template
        self.needed = placeholders(self.template)
        path = settings.response_path
        if isinstance(path, dict):
            bad = {k: v for k, v in path.items() if not isinstance(v, str)}
            if bad or not path:
                raise ModelLoadError("response_path must be a dotted path, or a table of output name to path")
            if outputs and set(outputs) - set(path):
                raise ModelLoadError(
                    f"model.outputs {sorted(set(outputs) - set(path))} have no response_path entry",
                    hint="add them to the response_path table",
                )
            self.paths = {n: path[n] for n in (outputs or list(path))}
        else:
            names = outputs or ["prediction"]
            if len(names) != 1:
                raise ModelLoadError(
                    f"one response_path gives one output, but model.outputs has {len(names)} names",
                    hint='make response_path a table: response_path = {score = "predictions.0.score", ...}',
                )
            self.paths = {names[0]: path or ""}
        self.types = {n: arrow_type(t, f"model.output_types.{n}") for n, t in settings.output_types.items()}
        unknown = sorted(set(self.types) - set(self.paths))
        if unknown:
            raise ModelLoadError(f"output_types names {unknown}, which are not outputs {list(self.paths)}")

    @property
    def endpoint(self) -> str:
        return self.settings.url

    @property
    def outputs(self) -> list[str]:
        return list(self.paths)

    def check_columns(self, names: list[str]) -> None:
        missing = sorted(self.needed - set(names))
        if missing:
            raise ModelLoadError(
                f"request_template refers to {missing}, which are not among the features {names}",
                hint="add them to [model] features, or fix request_template",
            )

    def atoms(self, batch: pa.RecordBatch) -> list[Atom | ItemError]:
        names = batch.schema.names
        values = [c.to_pylist() for c in batch.columns]
        out: list[Atom | ItemError] = []
        for i in range(batch.num_rows):
            row = {n: v[i] for n, v in zip(names, values, strict=True)}
            try:
                body = render(self.template, row)
                text = dumps(body)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                out.append(ItemError(f"request_template cannot be rendered for this row: {type(exc).__name__}: {exc}"))
                continue
            out.append(Atom(digest(text), body, len(text) / 4))
        return out

    def body(self, atoms: list[Atom]) -> Any:
        return atoms[0].payload

    def parse(self, data: Any, text: str, count: int) -> list[Any]:
        row: dict[str, Any] = {}
        for name, path in self.paths.items():
            try:
                row[name] = pick(data, path)
            except KeyError:
                raise ItemError(
                    f"the answer has nothing at response_path '{path}': {response_excerpt(text)}"
                ) from None
        return [row]

    def columns(self, rows: list[Any]) -> dict[str, pa.Array]:
        return {n: typed_column([r[n] for r in rows], self._type(n, [r[n] for r in rows]), n) for n in self.paths}

    def _type(self, name: str, values: list[Any]) -> pa.DataType | str:
        declared = self.types.get(name)
        if declared is not None:
            return declared
        kinds = {_kind(v) for v in values if v is not None}
        if len(kinds) == 1:
            (kind,) = kinds
            return kind
        return pa.float64() if not kinds else JSON_TYPE


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> pa.DataType | str:
    if isinstance(value, bool):
        return pa.bool_()
    if _number(value):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, list) and value and all(_number(v) for v in value):
        return pa.list_(pa.float64())
    return JSON_TYPE
