"""The job file's JSON Schema: built from the spec's own definitions, published in docs/, and every
example job file (and the demo's) validates against it; what the spec refuses, the schema refuses too."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from infermill.cli import main
from infermill.schema import job_schema, schema_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.toml") if p.name != "pyproject.toml")


def test_the_published_schema_is_current() -> None:
    assert (ROOT / "docs" / "job-file.schema.json").read_text() == schema_text(), (
        "regenerate it: infermill schema -o docs/job-file.schema.json"
    )


def test_the_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(job_schema())


@pytest.mark.parametrize("job", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_job_file_validates(job: Path) -> None:
    jsonschema.validate(tomllib.loads(job.read_text()), job_schema())


def test_the_demo_job_validates(tmp_path: Path) -> None:
    from infermill.demo import make_demo

    job = make_demo(tmp_path, rows=2_000, files=2)
    jsonschema.validate(tomllib.loads(Path(job).read_text()), job_schema())


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[input]\npath = "x"\n[model]\nkind = "sklearn"\n[output]\npath = "o"\nformat = "parqet"\n', "format"),
        ('[input]\npath = "x"\nshard_rowz = 5\n[model]\nkind = "sklearn"\n[output]\npath = "o"\n', "unknown key"),
        ('[input]\npath = "x"\n[model]\nkind = "python"\nmax_depth = 3\n[output]\npath = "o"\n', "kind's keys"),
        ('[input]\npath = "x"\n[model]\nkind = "sklearn"\n[batch]\nsize = "big"\n[output]\npath = "o"\n', "type"),
        ('[model]\nkind = "sklearn"\n[output]\npath = "o"\n', "required"),
    ],
)
def test_what_the_spec_refuses_the_schema_refuses(text: str, why: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(text), job_schema())


def test_each_kind_s_own_keys_are_described() -> None:
    model = job_schema()["properties"]["model"]
    sklearn = next(b for b in model["allOf"] if b["if"]["properties"]["kind"]["const"] == "sklearn")
    assert "parallel" in sklearn["then"]["properties"]
    assert sklearn["then"]["properties"]["parallel"].get("description")


def test_the_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "infermill job file"
