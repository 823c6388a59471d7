"""The docs say what the code does: first-contact commands, lists of choices, fingerprints, errors."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import infermill
from infermill import errors
from infermill.errors import LedgerError
from infermill.spec import BatchSpec, load_spec
from tests.conftest import write_job

ROOT = Path(__file__).resolve().parents[1]

FIRST_CONTACT = [ROOT / "README.md", ROOT / "docs" / "demo.md", *sorted((ROOT / "examples").glob("*/README.md"))]
"""What a newcomer pastes into a shell first."""
SHELL_BLOCKS = ("sh", "bash", "console", "shell")
NEEDS_ENVIRONMENT = ("infermill", "python", "python3", "pip", "pip3")


def _shell_blocks(path: Path) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    language = ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                language, current = line[3:].strip(), []
            else:
                if language in SHELL_BLOCKS:
                    blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _words(line: str) -> list[str]:
    """The command's words, without a ``$`` prompt and leading ``NAME=value`` assignments."""
    words = line.split("#", 1)[0].split()
    if words[:1] == ["$"]:
        words = words[1:]
    while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
        words = words[1:]
    return words


@pytest.mark.parametrize("path", FIRST_CONTACT, ids=lambda p: str(p.relative_to(ROOT)))
def test_first_contact_commands_name_the_environment(path: Path) -> None:
    """`make demo` installs into .venv/ and leaves the shell as it was: a bare `infermill` or `python`
    pasted into a fresh shell is not found, or is another installation."""
    blocks = _shell_blocks(path)
    for block in blocks:
        activated = False
        for line in block:
            words = _words(line)
            if not words:
                continue
            if words[0] in ("source", ".") and words[1:2] == [".venv/bin/activate"]:
                activated = True
            elif words[0] in NEEDS_ENVIRONMENT:
                assert activated, (
                    f"{path.relative_to(ROOT)}: `{line.strip()}` runs a bare {words[0]!r}; activate the environment "
                    "first in the same block (`source .venv/bin/activate`) or call `.venv/bin/...`"
                )


def _choices(path: Path) -> dict[tuple[str, str], set[str]]:
    """``(section, key) -> the choices`` of each ``key = ... # a | b | c`` line of the TOML blocks."""
    found: dict[tuple[str, str], set[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
        elif "=" in line and "#" in line and " | " in line:
            key = line.split("=", 1)[0].strip()
            comment = line.split("#", 1)[1].split(";")[0]
            found[(section, key)] = {word.strip() for word in comment.split("|")}
    return found


def test_readme_lists_every_model_kind_and_format() -> None:
    from infermill.models import MODEL_KINDS
    from infermill.sinks.formats import SINK_FORMATS
    from infermill.sources import SOURCE_FORMATS

    choices = _choices(ROOT / "README.md")
    assert set(SOURCE_FORMATS) <= choices[("input", "format")]
    assert set(MODEL_KINDS) <= choices[("model", "kind")]
    assert set(SINK_FORMATS) <= choices[("output", "format")]


# -- fingerprints ---------------------------------------------------------------------------------------

SPEC = """
name = "fp"
[input]
path = "data.parquet"
id_column = "id"
{input}
[model]
{model}
[output]
path = "out"
{rest}
"""
PYTHON = 'kind = "python"\nentrypoint = "m.py:predict"'
SKLEARN = 'kind = "sklearn"\npath = "m.joblib"\ntrusted = true'
HTTP = 'kind = "http"\nprotocol = "openai-chat"\nurl = "http://127.0.0.1:9"\nprompt_column = "text"'


def _fingerprint(tmp_path: Path, model: str, input: str = "", rest: str = "") -> str:
    job = tmp_path / "job.toml"
    job.write_text(SPEC.format(input=input, model=model, rest=rest))
    return load_spec(job).fingerprint()


def _section(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return " ".join(text[start : end if end >= 0 else None].split())  # lines joined: phrases may wrap


# (the job's [model], the same with a change, [input] keys added, sections added, how reliability.md says it)
LEFT_OUT = [
    (PYTHON, PYTHON, "", "[runtime]\nworkers = 3", "`[runtime]`"),
    (PYTHON, PYTHON, "", "[retry]\nmax_attempts = 7", "`[retry]`"),
    (PYTHON, PYTHON, "", "[errors]\nmax_failed_rows = 5", "`[errors] max_failed_rows`"),
    (PYTHON, PYTHON, "", "[errors]\nmax_failed_fraction = 0.5", "`max_failed_fraction`"),
    (PYTHON, PYTHON, "storage_options = {anon = true}", "", "`storage_options`"),
    (SKLEARN, SKLEARN + '\nparallel = "library"', "", "", "`parallel` (sklearn"),
    (HTTP, HTTP + "\nconcurrency = 2", "", "", "`concurrency`"),
    (HTTP, HTTP + "\nrequests_per_minute = 60", "", "", "rate limits"),
    (SKLEARN, SKLEARN + '\naccelerate = "off"', "", "", '`accelerate = "off"`, written or not'),
]
COVERED = [
    (PYTHON, PYTHON, "", "[batch]\nsize = 7", "`[batch]`"),
    (PYTHON, PYTHON, "", "[errors]\ninclude_input = false", "`[errors] include_input`"),
    (PYTHON, PYTHON + '\noutputs = ["p"]', "", "", "`[model]`"),
    (HTTP, HTTP + "\ntemperature = 0.5", "", "", "`[model]`"),
    (SKLEARN, SKLEARN + '\naccelerate = "compile"', "", "", "`[model] accelerate` is covered"),
]


@pytest.mark.parametrize(("base", "model", "input", "rest", "named"), LEFT_OUT, ids=[c[-1] for c in LEFT_OUT])
def test_reliability_md_names_what_the_spec_fingerprint_leaves_out(
    tmp_path: Path, base: str, model: str, input: str, rest: str, named: str
) -> None:
    assert _fingerprint(tmp_path, model, input, rest) == _fingerprint(tmp_path, base)
    assert named in _section(ROOT / "docs" / "reliability.md", "When something changed")


@pytest.mark.parametrize(("base", "model", "input", "rest", "named"), COVERED, ids=[c[-1] for c in COVERED])
def test_reliability_md_names_what_the_spec_fingerprint_covers(
    tmp_path: Path, base: str, model: str, input: str, rest: str, named: str
) -> None:
    assert _fingerprint(tmp_path, model, input, rest) != _fingerprint(tmp_path, base)
    assert named in _section(ROOT / "docs" / "reliability.md", "When something changed")


def test_http_md_says_which_keys_are_not_fingerprinted(tmp_path: Path) -> None:
    from infermill.models.http import HttpModel

    section = _section(ROOT / "docs" / "models" / "http.md", "Fingerprint")
    for key in sorted(HttpModel.result_neutral_settings):
        assert f"`{key}`" in section, key
        assert _fingerprint(tmp_path, HTTP + f"\n{key} = {_value(key)}") == _fingerprint(tmp_path, HTTP)
    assert "counts as a spec change" not in section


def _value(key: str) -> str:
    return '"/health"' if key == "health_path" else "3"


def test_llm_md_says_the_vllm_engine_never_ran_in_tests() -> None:
    # tests/models/test_llm.py swaps VllmEngine for a stand-in; the real one needs vLLM and a GPU.
    here = Path(__file__).resolve()
    runs_real_vllm = any(
        re.search(r"\bVllmEngine\(", p.read_text()) for p in (ROOT / "tests").rglob("*.py") if p != here
    )
    if not runs_real_vllm:
        assert "vLLM is untested" in (ROOT / "docs" / "models" / "llm.md").read_text()


# -- docstrings ------------------------------------------------------------------------------------------


def _attribute_docs(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings (the string literal under each field)."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))  # type: ignore[arg-type]
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body
    docs: dict[str, str] = {}
    for field, doc in zip(body, body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = doc.value.value
    return docs


def test_format_docstrings_name_every_format() -> None:
    from infermill.sinks.formats import SINK_FORMATS
    from infermill.sources import SOURCE_FORMATS
    from infermill.spec import InputSpec, OutputSpec

    for cls, formats in ((InputSpec, SOURCE_FORMATS), (OutputSpec, SINK_FORMATS)):
        doc = _attribute_docs(cls)["format"]
        assert [f for f in formats if f not in doc] == [], f"{cls.__name__}.format: {doc}"


def test_sort_window_is_documented_longest_first() -> None:
    # The order itself is pinned by tests/engine/test_bucketing.py and tests/models/test_hf.py.
    doc = _attribute_docs(BatchSpec)["sort_window"]
    assert "longest first" in doc and "shortest first" not in doc
    assert "longest first" in (ROOT / "docs" / "job-file.md").read_text()


def test_the_error_tree_says_what_a_broken_or_foreign_ledger_raises(parquet_job, job_dir: Path) -> None:
    job, _ = parquet_job(rows=1_000, files=1)
    assert infermill.run(job, progress="off").state == "complete"
    # Another job pointed at this ledger: a ledger holds many jobs, each under its own name.
    other = write_job(job_dir / "other.toml", job.read_text().replace('name = "scores"', 'name = "other"')
                      .replace('path = "out"', 'path = "out2"') + '\nledger = ".infermill/scores.sqlite"\n')
    assert infermill.run(other, progress="off").state == "complete"
    assert infermill.run(job, progress="off").message.startswith("nothing to do")
    # A file that is not a ledger: LedgerError.
    (job_dir / ".infermill" / "scores.sqlite").write_bytes(b"not a database, " * 256)
    for leftover in (job_dir / ".infermill").glob("scores.sqlite-*"):
        leftover.unlink()
    with pytest.raises(LedgerError):
        infermill.status(job)
    assert errors.__doc__ is not None
    line = next(line for line in errors.__doc__.splitlines() if "LedgerError" in line)
    assert "cannot be opened" in line and "another job" not in line
    doc = " ".join((LedgerError.__doc__ or "").split())
    assert "belongs to another job" not in doc and "Several jobs may share one ledger" in doc
