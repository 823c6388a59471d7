"""Finding the input files: file, folder, glob, fsspec URLs, order, fingerprints and errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infermill.errors import InputError, SpecError
from infermill.sources import input_format, open_source
from infermill.sources._fs import display_path, list_input
from infermill.testing.sources import source_spec


def touch(path: Path, text: str = "a\n1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in [
        "b.csv",
        "a.csv",
        "c.tsv",
        "sub/d.csv",
        "sub/deeper/e.csv",
        "README.md",
        "x.parquet",
        ".hidden.csv",
        "_SUCCESS",
        "_tmp/f.csv",
        ".git/g.csv",
        "sub/_staging/h.csv",
    ]:
        touch(tmp_path / "data" / name)
    return tmp_path / "data"


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"/infermill-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def relpaths(path: str, fmt: str = "csv", **options: object) -> list[str]:
    return [f.relpath for f in list_input(source_spec(path, **options), fmt).files]


def test_a_single_file(tree: Path) -> None:
    listing = list_input(source_spec(str(tree / "sub" / "d.csv")), "csv")
    (file,) = listing.files
    assert file.relpath == "d.csv" and file.path == str(tree / "sub" / "d.csv")
    assert file.size == 4 and file.fingerprint.startswith("4:")


def test_a_folder_lists_known_extensions_recursively_and_skips_hidden_names(tree: Path) -> None:
    assert relpaths(str(tree)) == ["a.csv", "b.csv", "c.tsv", "sub/d.csv", "sub/deeper/e.csv"]
    assert relpaths(str(tree), "parquet") == ["x.parquet"]


def test_globs(tree: Path) -> None:
    assert relpaths(str(tree / "*.csv")) == ["a.csv", "b.csv"]
    assert relpaths(str(tree / "**" / "*.csv")) == ["a.csv", "b.csv", "sub/d.csv", "sub/deeper/e.csv"]
    assert relpaths(str(tree / "sub" / "*" / "*.csv")) == ["deeper/e.csv"]
    # An explicit hidden folder in the fixed part of the glob is what the user asked for.
    assert relpaths(str(tree / "_tmp" / "*.csv")) == ["f.csv"]


def test_relative_paths_resolve_against_the_spec_folder(tree: Path) -> None:
    spec = source_spec("data/*.csv")
    spec = type(spec)(input=spec.input, model=spec.model, output=spec.output, base_dir=str(tree.parent))
    assert [f.relpath for f in list_input(spec, "csv").files] == ["a.csv", "b.csv"]


def test_file_url(tree: Path) -> None:
    listing = list_input(source_spec(f"file://{tree}/*.csv"), "csv")
    assert [f.relpath for f in listing.files] == ["a.csv", "b.csv"]
    assert listing.files[0].path == f"file://{tree}/a.csv"


def test_memory_url(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    for name in ["z.jsonl", "a.jsonl", "sub/m.jsonl", "_x/skip.jsonl", "notes.txt"]:
        fs.pipe(f"{memory_root}/{name}", b'{"a": 1}\n')
    assert relpaths(f"memory://{memory_root}", "jsonl") == ["a.jsonl", "sub/m.jsonl", "z.jsonl"]
    listing = list_input(source_spec(f"memory://{memory_root}/*.jsonl"), "jsonl")
    assert [f.path for f in listing.files] == [
        f"memory://{memory_root}/a.jsonl",
        f"memory://{memory_root}/z.jsonl",
    ]
    assert all(f.fingerprint.startswith("9:") for f in listing.files)


def test_fingerprint_follows_the_content(tree: Path) -> None:
    before = list_input(source_spec(str(tree / "a.csv")), "csv").files[0].fingerprint
    touch(tree / "a.csv", "a\n1\n2\n")
    after = list_input(source_spec(str(tree / "a.csv")), "csv").files[0].fingerprint
    assert before != after


def test_missing_path_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input not found: .*nowhere.csv") as info:
        list_input(source_spec(str(tmp_path / "nowhere.csv")), "csv")
    assert "check [input] path" in str(info.value)


def test_glob_matching_nothing(tree: Path) -> None:
    with pytest.raises(InputError, match=r"matches no files"):
        list_input(source_spec(str(tree / "*.jsonl")), "jsonl")


def test_folder_without_files_of_the_format(tree: Path) -> None:
    with pytest.raises(InputError, match=r"holds no jsonl files \(\.jsonl, \.ndjson, \.json\)"):
        list_input(source_spec(str(tree)), "jsonl")


def test_storage_options_never_appear_in_messages(memory_root: str) -> None:
    spec = source_spec(f"memory://{memory_root}/none.csv", storage_options={"secret": "hunter2"})
    with pytest.raises(InputError) as info:
        list_input(spec, "csv")
    assert "hunter2" not in str(info.value) and memory_root in str(info.value)


def test_display_path_drops_credentials_in_urls() -> None:
    assert display_path("s3://key:secret@bucket/x.csv") == "s3://bucket/x.csv"
    assert display_path("/data/a@b.csv") == "/data/a@b.csv"
    assert display_path("s3://bucket/a@b.csv") == "s3://bucket/a@b.csv"


def test_unknown_protocol_is_an_input_error() -> None:
    with pytest.raises(InputError, match="cannot open the input"):
        list_input(source_spec("nosuchproto://bucket/x.csv"), "csv")


def test_a_folder_input_takes_the_format_of_its_files(tree: Path, tmp_path: Path) -> None:
    touch(tmp_path / "only" / "a.jsonl")
    touch(tmp_path / "only" / "_skip.csv")
    assert input_format(source_spec(str(tmp_path / "only") + "/")) == "jsonl"
    assert type(open_source(source_spec(str(tmp_path / "only")))).__name__ == "JsonlSource"
    with pytest.raises(SpecError, match="cannot infer the input format"):
        input_format(source_spec(str(tree)))  # csv, tsv and parquet files
    with pytest.raises(InputError, match="input not found"):
        input_format(source_spec(str(tmp_path / "missing")))
    assert input_format(source_spec(str(tmp_path / "only" / "*"))) == "jsonl"


def test_bad_storage_options_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    import infermill.sources._fs as fs_module

    def refuse(url: str, **options: object) -> None:
        raise ValueError(f"bad key {options['key']!r}")

    monkeypatch.setattr(fs_module, "url_to_fs", refuse)
    with pytest.raises(InputError, match="storage_options") as info:
        list_input(source_spec("s3://bucket/x.csv", storage_options={"key": "AKIASECRET"}), "csv")
    assert "AKIASECRET" not in str(info.value) and "***" in str(info.value)


# -- symbolic links ---------------------------------------------------------------------------------
def test_a_linked_folder_is_walked_like_a_folder(tree: Path, tmp_path: Path) -> None:
    touch(tmp_path / "elsewhere" / "x.csv")
    touch(tmp_path / "elsewhere" / "deep" / "y.csv")
    (tree / "linked").symlink_to(tmp_path / "elsewhere")
    expected = ["a.csv", "b.csv", "c.tsv", "linked/deep/y.csv", "linked/x.csv", "sub/d.csv", "sub/deeper/e.csv"]
    assert relpaths(str(tree)) == expected
    assert relpaths(str(tree / "**" / "*.csv")) == [p for p in expected if p.endswith(".csv")]
    assert relpaths(str(tree / "*" / "x.csv")) == ["linked/x.csv"]
    linked = list_input(source_spec(str(tree)), "csv").files[3]
    # The fingerprint follows the file the link points to (its size, its mtime), not the link.
    assert linked.path == str(tree / "linked" / "deep" / "y.csv") and linked.size == 4


def test_a_linked_folder_named_like_a_file_is_walked_as_a_folder(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"k": [1, 2]}), tmp_path / "real" / "part-0.parquet")
    pq.write_table(pa.table({"k": [3]}), tmp_path / "data" / "a.parquet")
    (tmp_path / "data" / "x.parquet").symlink_to(tmp_path / "real", target_is_directory=True)
    assert relpaths(str(tmp_path / "data"), "parquet") == ["a.parquet", "x.parquet/part-0.parquet"]
    source = open_source(source_spec(str(tmp_path / "data")))
    keys = [k for shard in source.plan() for batch in source.read(shard, 10) for k in batch.column("k").to_pylist()]
    assert keys == [3, 1, 2]


def test_a_link_loop_is_listed_once_and_ends(tree: Path) -> None:
    (tree / "sub" / "up").symlink_to(tree, target_is_directory=True)
    (tree / "sub" / "deeper" / "self").symlink_to(tree / "sub" / "deeper", target_is_directory=True)
    assert relpaths(str(tree)) == ["a.csv", "b.csv", "c.tsv", "sub/d.csv", "sub/deeper/e.csv"]
    assert relpaths(str(tree / "**" / "*.csv")) == ["a.csv", "b.csv", "sub/d.csv", "sub/deeper/e.csv"]


def test_a_file_reached_twice_is_read_once_by_its_shortest_route(tree: Path) -> None:
    (tree / "0-alias.csv").symlink_to(tree / "b.csv")
    (tree / "again").symlink_to(tree / "sub", target_is_directory=True)
    assert relpaths(str(tree)) == ["a.csv", "b.csv", "c.tsv", "sub/d.csv", "sub/deeper/e.csv"]
    # A file whose own name is not an input file's is read through its link.
    (tree / "z-link.csv").symlink_to(touch(tree / "notes.txt"))
    assert relpaths(str(tree))[-1] == "z-link.csv"


def test_a_dangling_link_is_named_when_planning(tree: Path) -> None:
    (tree / "sub" / "gone.csv").symlink_to(tree / "nowhere.csv")
    (tree / "notes").symlink_to(tree / "nowhere")  # not an input file by its name: not a concern
    for path in (str(tree), str(tree / "**" / "*.csv")):
        with pytest.raises(InputError, match=r"sub/gone\.csv is a symbolic link to .*nowhere\.csv, which cannot be"):
            list_input(source_spec(path), "csv")
    (tree / "sub" / "gone.csv").unlink()
    (tree / "loop-a.csv").symlink_to(tree / "loop-b.csv")
    (tree / "loop-b.csv").symlink_to(tree / "loop-a.csv")
    with pytest.raises(InputError, match=r"loop-a\.csv is a symbolic link to .*loop-b\.csv, which cannot be read"):
        list_input(source_spec(str(tree)), "csv")
    (tree / "single.csv").symlink_to(tree / "nowhere.csv")
    with pytest.raises(InputError, match=r"single\.csv is a symbolic link to .*nowhere\.csv, which does not exist"):
        list_input(source_spec(str(tree / "single.csv")), "csv")
