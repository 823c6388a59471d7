"""kind = "http": the API key never surfaces. Random keys (some read from the environment with a trailing
newline, as secrets mounted from files are) are echoed back by a real server on loopback in every form a
careless server uses (as is, JSON, JSON with ``\\/``, ``\\uXXXX`` escapes, URL- and form-encoded, base64 of
the header at any offset of an encoded blob), at random offsets of long bodies, with item, transient and
fatal statuses. No 8 characters of the key may appear in the CLI's output (``run``, ``status --json``,
``failures --json``), the log, the ledger's tables, the dead letters or the output."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermill.cli import main
from infermill.errors import InfermillError
from infermill.models import load_adapter
from infermill.models.http.client import BODY_CHARS, Redactor
from infermill.spec import ModelSpec
from infermill.testing.http_server import ECHO_FORMS, FakeModelServer, echo_body
from infermill.testing.models import model_spec_for
from tests.models.http_helpers import http_job

ENV = "IM_H1_SECRET_KEY"
KEY_CHARS = string.ascii_letters + string.digits + "-_./+=~:!*\"\\%<>&'"
# Keys of distinct characters: any 8 of them in a row are distinctive, so finding them is a leak, not chance.
keys = st.lists(st.sampled_from(KEY_CHARS), min_size=20, max_size=48, unique=True).map("".join)
echoes = st.tuples(st.sampled_from([400, 422, 500, 200]), st.integers(0, 1500), st.integers(0, 600))
GOOD = 4


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


def write_job(base: Path, url: str, prompts: list[str]) -> Path:
    return http_job(
        base,
        url,
        prompts,
        model={"api_key_env": ENV, "keep_response": True, "max_retries": 1, "backoff_seconds": 0.001,
               "max_backoff_seconds": 0.01},
        batch={"size": 8},
        retry={"max_attempts": 2, "backoff_seconds": 0.001, "max_backoff_seconds": 0.01},
    )


def everything_written(base: Path, job: Path) -> list[str]:
    """The job's output, dead letters, ledger tables and the CLI's status and failures reports."""
    texts = [cli("status", "--json", str(job))[1], cli("failures", "--json", "--limit", "100", str(job))[1]]
    for path in sorted(base.rglob("*")):
        if path.suffix == ".parquet" and path.parent != base:
            texts.append(str(pq.read_table(path).to_pylist()))
        elif path.suffix == ".sqlite":
            con = sqlite3.connect(path)
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                texts.append(str(con.execute(f"SELECT * FROM {table}").fetchall()))
            con.close()
        elif path.is_file() and path.suffix not in (".parquet", ".sqlite", ".toml") and "sqlite" not in path.name:
            texts.append(path.read_text(errors="replace"))
    return texts


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=keys,
    around=st.tuples(st.sampled_from(["", " ", "\t"]), st.sampled_from(["", "\n", "\r\n", " \n"])),
    forms=st.fixed_dictionaries({form: echoes for form in ECHO_FORMS}),
    fatal=st.tuples(st.sampled_from(ECHO_FORMS), st.sampled_from([401, 403]), st.integers(0, 1500)),
)
def test_no_8_characters_of_the_key_surface_anywhere(
    key: str, around: tuple[str, str], forms: dict[str, tuple[int, int, int]], fatal: tuple[str, int, int]
) -> None:
    schedule = {f"echo {form}": [f"echo:{status}:{form}:{before}:{after}"] for form, (status, before, after) in
                forms.items()}
    schedule["fatal"] = [f"echo:{fatal[1]}:{fatal[0]}:{fatal[2]}:{fatal[2] // 3}"]
    handler = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with FakeModelServer(api_key=key, schedule=schedule, lifetime=60.0) as server, environment(
            ENV, around[0] + key + around[1]
        ), tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            scored = write_job(base / "scored", server.url, [f"echo {f}" for f in ECHO_FORMS] + ["fine"] * GOOD)
            code, run_out = cli("run", str(scored))
            texts = [run_out, *everything_written(base / "scored", scored)]
            stopped = write_job(base / "stopped", server.url, ["fatal", "fine"])
            fatal_code, fatal_out = cli("run", str(stopped))
            texts += [fatal_out, *everything_written(base / "stopped", stopped)]
            records = server.log
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    texts += handler.lines
    blob = "\n".join(texts)
    leaks = sorted({key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8] in blob})
    assert not leaks, leaks
    # The job ran as intended: the key was accepted (no 401 but the scheduled one), every echo came back.
    assert code == 0, run_out
    assert fatal_code == 2 and f"HTTP {fatal[1]}" in fatal_out, fatal_out
    assert all(r.authorization == f"Bearer {key}" for r in records)
    assert {r.tag for r in records if r.action.startswith("echo:")} == {*schedule}
    assert f'"rows_failed": {len(ECHO_FORMS)}' in texts[1] and f'"rows_succeeded": {GOOD}' in texts[1]
    assert "***" in blob


@pytest.mark.parametrize("form", ECHO_FORMS)
def test_the_redactor_finds_every_echo_form_at_every_offset(form: str) -> None:
    key = "sk-Zq8/Xv+Lw3=Rt5Ny7Kp\"&<'%"
    redact = Redactor([key])
    for before in range(6):  # base64 repeats every 3 bytes
        text = redact(echo_body(f"Bearer {key}", form, before, before))
        assert "***" in text
        assert not [key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8] in text]


@pytest.mark.parametrize(
    ("form", "status", "cut"),
    [("raw", 422, BODY_CHARS), ("json-slash", 422, BODY_CHARS), ("url", 500, BODY_CHARS), ("json-body", 200, 200)],
)
def test_an_echo_across_the_excerpt_cut_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str, status: int, cut: int
) -> None:
    # Excerpts (an error body's first 500 characters, a malformed answer's first 200) used to be cut before
    # redaction: a key across the cut kept its first characters.
    key = "sk-Zq8/Xv+Lw3=Rt5Ny7KpHj2"
    before = cut - echo_body(f"Bearer {key}", form, 0, 0).index("Bearer") - 20  # ~12 characters before the cut
    schedule = {"row 0": [f"echo:{status}:{form}:{before}:100"]}
    with FakeModelServer(api_key=key, schedule=schedule) as server:
        monkeypatch.setenv(ENV, key)
        spec = model_spec_for(tmp_path, ModelSpec(kind="http", settings={
            "protocol": "openai-chat", "url": server.url, "api_key_env": ENV, "max_retries": 0,
        }))
        adapter = load_adapter(spec)
        adapter.setup()
        batch = pa.RecordBatch.from_arrays([pa.array(["row 0"])], names=["prompt"])
        with pytest.raises(InfermillError, match="HTTP 422|HTTP 500|no choices") as info:
            adapter.predict(adapter.preprocess(batch))
        adapter.close()
    text = str(info.value)
    assert "***" in text
    assert not [key[i : i + 8] for i in range(len(key) - 7) if key[i : i + 8] in text]


def test_keys_read_with_surrounding_whitespace_are_sent_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Secrets mounted from files end with a newline; sent as is, the header is refused by the HTTP client with
    # a message that quotes it.
    key = "sk-Zq8/Xv+Lw3=Rt5Ny7KpHj2"
    monkeypatch.setenv(ENV, key + "\n")
    monkeypatch.setenv("IM_H1_HEADER", "  tok-9f8e7d6c5b4a\r\n")
    with FakeModelServer(api_key=key) as server:
        spec = model_spec_for(tmp_path, ModelSpec(kind="http", settings={
            "protocol": "openai-chat", "url": server.url, "api_key_env": ENV,
            "headers": {"x-token": "${IM_H1_HEADER}"},
        }))
        adapter = load_adapter(spec)
        adapter.setup()
        batch = pa.RecordBatch.from_arrays([pa.array(["row 0", "row 1"])], names=["prompt"])
        out = adapter.postprocess(adapter.predict(adapter.preprocess(batch)), 2)
        adapter.close()
    assert out["text"].to_pylist() == ["echo: row 0", "echo: row 1"]
    assert {r.authorization for r in server.log} == {f"Bearer {key}"}
    assert "tok-9f8e7d6c5b4a" not in repr(adapter) and adapter._redact("x tok-9f8e7d6c5b4a y") == "x *** y"
