"""Finding and importing a python model's ``entrypoint`` (``pkg.module:Name`` or ``file.py:Name``).

A file is imported under a private, unique module name (``_infermill_model_<stem>_<hash>``), so two
models both called ``model.py`` never collide and nothing shadows an installed package. While the file is
imported and its model constructed and set up, the file's folder sits at the front of ``sys.path`` so it
can import its sibling modules; it is removed afterwards. Module entrypoints are looked up on
``sys.path`` first, then in the job file's folder.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import ModelLoadError

__all__ = ["EntryPoint", "import_target", "parse_entrypoint", "source_file", "temporary_path"]

_HINT_FORMAT = "use 'pkg.module:Name' or 'path/to/file.py:Name' (relative to the job file)"


@dataclass(frozen=True)
class EntryPoint:
    """A parsed entrypoint."""

    text: str
    """As written in the spec."""
    attr: str
    """The object's name inside the module (may be dotted: ``Outer.Inner``)."""
    module: str | None = None
    """Importable module name, for ``pkg.module:Name``."""
    file: str | None = None
    """Absolute path, for ``file.py:Name``."""
    search_dir: str = ""
    """Folder put on ``sys.path`` while importing (the file's folder, or the job file's folder)."""


def parse_entrypoint(text: str | None, base_dir: str, resolve: Any) -> EntryPoint:
    """Split and check ``text``; ``resolve`` turns a relative file path into an absolute one."""
    if not text:
        raise ModelLoadError("model kind 'python' needs 'model.entrypoint'", hint=_HINT_FORMAT)
    where, sep, attr = text.rpartition(":")
    if not sep or not where or not attr or os.sep in attr or "/" in attr:
        raise ModelLoadError(f"invalid entrypoint '{text}' (from 'model.entrypoint')", hint=_HINT_FORMAT)
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ModelLoadError(f"invalid entrypoint '{text}': '{attr}' is not a Python name", hint=_HINT_FORMAT)
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = resolve(where)
        if not os.path.isfile(path):
            hint = "check the path; it is resolved against the job file's folder"
            if not where.endswith(".py"):
                hint = _HINT_FORMAT
            raise ModelLoadError(
                f"model file not found: {path} (from 'model.entrypoint' = '{text}')", hint=hint
            )
        return EntryPoint(text, attr, file=path, search_dir=os.path.dirname(path))
    if not all(part.isidentifier() for part in where.split(".")):
        raise ModelLoadError(
            f"invalid entrypoint '{text}': '{where}' is not a module name", hint=_HINT_FORMAT
        )
    return EntryPoint(text, attr, module=where, search_dir=base_dir)


@contextlib.contextmanager
def temporary_path(folder: str, *, front: bool) -> Iterator[None]:
    """Put ``folder`` on ``sys.path`` for the duration of the block."""
    if not folder or folder in sys.path:
        yield
        return
    if front:
        sys.path.insert(0, folder)
    else:
        sys.path.append(folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def import_target(entry: EntryPoint) -> Any:
    """Import the entrypoint's module and return the named object (call inside ``temporary_path``)."""
    module = _import_file(entry) if entry.file else _import_module(entry)
    obj: Any = module
    for i, part in enumerate(entry.attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = module if i == 0 else obj
            raise _missing_attr(entry, owner, part) from None
    return obj


def source_file(entry: EntryPoint) -> str | None:
    """The entrypoint's source file, found without running the module itself."""
    if entry.file:
        return entry.file
    assert entry.module is not None
    loaded = sys.modules.get(entry.module)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    with temporary_path(entry.search_dir, front=False):
        try:
            spec = importlib.util.find_spec(entry.module)
        except (ImportError, ValueError) as exc:  # a missing parent package
            raise _not_importable(entry, exc) from exc
    if spec is None:
        missing = ModuleNotFoundError(f"No module named '{entry.module}'", name=entry.module)
        raise _not_importable(entry, missing)
    return spec.origin if spec.has_location else None


def _import_file(entry: EntryPoint) -> ModuleType:
    assert entry.file is not None
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(entry.file))[0])
    digest = hashlib.sha256(entry.file.encode()).hexdigest()[:8]
    name = f"_infermill_model_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, entry.file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {entry.file}: not a Python source file", hint=_HINT_FORMAT)
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as dataclasses and pickling look classes up in sys.modules.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _not_importable(entry, exc) from exc
    return module


def _import_module(entry: EntryPoint) -> ModuleType:
    assert entry.module is not None
    try:
        return importlib.import_module(entry.module)
    except Exception as exc:  # noqa: BLE001 - any error while importing user code is reported the same way
        raise _not_importable(entry, exc) from exc


def _not_importable(entry: EntryPoint, exc: BaseException) -> ModelLoadError:
    what = entry.file or f"module '{entry.module}'"
    if (
        isinstance(exc, ModuleNotFoundError)
        and entry.module
        and exc.name
        and (entry.module == exc.name or entry.module.startswith(exc.name + "."))
    ):
        hint = (
            f"is the package that provides '{entry.module}' installed in this environment? "
            "For a file next to the job file, use 'file.py:Name'"
        )
    elif isinstance(exc, ModuleNotFoundError):
        hint = f"install the missing package '{exc.name}' in the environment that runs the job"
    elif isinstance(exc, SyntaxError):
        hint = f"fix the syntax error at {exc.filename}, line {exc.lineno}"
    else:
        hint = "the module raised while being imported; fix the error shown (rerun with --debug for the traceback)"
    return ModelLoadError(f"cannot import {what}: {type(exc).__name__}: {exc}", hint=hint)


def _missing_attr(entry: EntryPoint, owner: Any, name: str) -> ModelLoadError:
    defined = _defined_names(owner)
    close = difflib.get_close_matches(name, defined, n=1)
    if close:
        hint = f"did you mean '{close[0]}'? It defines: {', '.join(defined) or 'nothing public'}"
    else:
        hint = f"it defines: {', '.join(defined) or 'nothing public'}"
    where = entry.file or entry.module
    return ModelLoadError(
        f"'{name}' not found in {where} (from 'model.entrypoint' = '{entry.text}')", hint=hint
    )


def _defined_names(owner: Any) -> list[str]:
    """Public classes and functions defined in ``owner`` itself (not imported into it)."""
    names = []
    owner_name = getattr(owner, "__name__", None)
    for key, value in vars(owner).items():
        if key.startswith("_"):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            if getattr(value, "__module__", None) != owner_name and inspect.ismodule(owner):
                continue
            names.append(key)
    return sorted(names)
