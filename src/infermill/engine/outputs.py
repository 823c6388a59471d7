"""The job's output as a whole: where it may live, what of it the job owns, and whether it is intact.

Every committed part is recorded in the ledger (and, once the job is complete, in the manifest) with its
size and SHA-256. A run, ``status`` and ``verify`` compare what is on disk with that record:

- a run and ``status`` take the quick look: a missing part or one whose size changed is damaged; a part
  whose size is right but whose modification time moved is hashed to decide;
- ``verify`` hashes every part.

A shard whose result is a set of files (``[output] target_file_mb``, ``partition_by``; see
:mod:`infermill.sinks.layout`) is recorded as its index; the index lists each file with its size and
SHA-256, and each file is checked as a part is (the quick look hashes a file whose modification time is
later than its index's: files are renamed, never written, once the index exists).

A run sends the shards of damaged parts back to pending (with a warning) and recomputes only those.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import OutputConflictError, OutputError, SpecError
from ..ledger import CommittedPart, Ledger, ledger_exists, open_ledger
from ..sinks import MANIFEST_NAME, Sink, open_sink
from ..spec import JobSpec, is_url, load_spec

__all__ = ["PartProblem", "VerifyReport", "check_output_location", "damaged_parts", "manifest_entries", "verify"]

_MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class PartProblem:
    """A committed part that is not as the ledger recorded it."""

    name: str
    shard_id: str
    problem: str
    """``missing``, ``size`` (size differs), or ``checksum`` (same size, other content)."""

    def describe(self) -> str:
        what = {"missing": "is missing", "size": "changed size", "checksum": "changed content"}[self.problem]
        return f"{self.name} (shard {self.shard_id}) {what}"


def _input_location(spec: JobSpec) -> str:
    """The input's fixed root: the file, the folder, or a glob's folder before its first wildcard."""
    path = spec.resolve(spec.input.path)
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _MAGIC.search(part):
            return "/".join(parts[:i]) or "/"
    return path


def _same_or_inside(inner: str, outer: str) -> bool:
    inner, outer = inner.rstrip("/"), outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def check_output_location(spec: JobSpec) -> None:
    """Refuse an output folder that is the input location or lies inside it: the job would read its own
    results as input on the next run. An input or output without a path (a table) cannot clash."""
    if not spec.input.path or not spec.output.path:
        return
    output = spec.resolve(spec.output.path)
    source = _input_location(spec)
    if is_url(output) or is_url(source):
        clash = is_url(output) and is_url(source) and _same_or_inside(output, source)
    else:
        clash = _same_or_inside(os.path.realpath(output), os.path.realpath(source))
    if clash:
        where = "the input location" if output.rstrip("/") == source.rstrip("/") else "inside the input location"
        raise OutputConflictError(
            f"the output {spec.output.path!r} is {where} {spec.input.path!r}: a later run would read the job's "
            "own results as input",
            hint=f"set '[output] path' in {spec.source_file or 'the job file'} to a folder outside the input",
            job=spec.name,
        )


def damaged_parts(ledger: Ledger, sink: Sink, *, full: bool = False) -> list[PartProblem]:
    """The committed parts that are missing or changed (``full``: hash every part, as ``verify`` does)."""
    problems: list[PartProblem] = []
    for part in ledger.committed_parts():
        problem = _part_problem(part, sink, full)
        if problem is not None:
            problems.append(PartProblem(part.name, part.shard_id, problem))
            continue
        problems += _member_problems(part, sink, full)
    return problems


def _member_problems(part: CommittedPart, sink: Sink, full: bool) -> list[PartProblem]:
    """The damaged files of a set result whose index is intact."""
    try:
        members = sink.members(part.name)
    except OutputError:
        return [PartProblem(part.name, part.shard_id, "checksum")]
    if not members:
        return []
    # The files were renamed into place before the index, and renaming keeps a file's mtime: one modified
    # later than the index was at its commit has been written to since, and is hashed.
    since = part.check.mtime_ns if part.check is not None else None
    problems: list[PartProblem] = []
    for member in members:
        found = sink.stat(member.name)
        problem: str | None = None
        if found is None:
            problem = "missing"
        elif found[0] != member.bytes:
            problem = "size"
        elif (full or since is None or found[1] is None or found[1] > since) and (
            sink.checksum(member.name) != member.sha256
        ):
            problem = "checksum"
        if problem is not None:
            problems.append(PartProblem(member.name, part.shard_id, problem))
    return problems


def manifest_entries(sink: Sink, part: CommittedPart) -> list[dict[str, Any]]:
    """The manifest's entries for a committed part: the part, or each file of a set result (the index
    is the ledger's record; readers of the manifest want the data files)."""
    members = sink.members(part.name)
    if members:
        return [{"path": m.name, "rows": m.rows, "bytes": m.bytes, "sha256": m.sha256} for m in members]
    check = part.check
    return [{"path": part.name, "rows": part.rows, "bytes": check.bytes if check else None,
             "sha256": check.sha256 if check else None}]


def _part_problem(part: CommittedPart, sink: Sink, full: bool) -> str | None:
    found = sink.stat(part.name)
    if found is None:
        return "missing"
    check = part.check
    if check is None:  # committed by a release that kept no checks: presence is all we can tell
        return None
    size, mtime_ns = found
    if size != check.bytes:
        return "size"
    unchanged = mtime_ns is not None and mtime_ns == check.mtime_ns
    if (full or not unchanged) and sink.checksum(part.name) != check.sha256:
        return "checksum"
    return None


@dataclass(frozen=True)
class VerifyReport:
    """What ``infermill verify`` found."""

    job: str
    output: str
    intact: bool
    """Every committed part present with the recorded checksum, and the manifest (if any) agreeing."""
    parts_checked: int
    parts_unverifiable: int
    """Parts committed by a release that recorded no checksum: only their presence was checked."""
    problems: list[PartProblem]
    manifest: str
    """``ok``, ``absent`` (job not complete) or what disagrees."""
    extra_files: list[str]
    """Result-like files that no committed shard owns (debris of a stopped run, or someone else's)."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [asdict(p) for p in self.problems]
        return data

    def lines(self) -> list[str]:
        out = [f"job:      {self.job}", f"output:   {self.output}"]
        out.append(
            f"parts:    {self.parts_checked} checked, {len(self.problems)} damaged"
            + (f", {self.parts_unverifiable} without a recorded checksum" if self.parts_unverifiable else "")
        )
        out.extend(f"damaged:  {p.describe()}" for p in self.problems)
        out.append(f"manifest: {self.manifest}")
        out.extend(f"extra:    {name} (not part of the job's committed output)" for name in self.extra_files)
        return out


def verify(job: JobSpec | str | os.PathLike[str]) -> VerifyReport:
    """Check every committed part of ``job`` against the checksums in its ledger, and the manifest."""
    spec = job if isinstance(job, JobSpec) else load_spec(job)
    job_file = spec.source_file or spec.name
    if not ledger_exists(spec.ledger_path(), spec.name):
        raise SpecError(
            f"job '{spec.name}' has not run yet: nothing to verify", hint=f"run it first: infermill run {job_file}"
        )
    sink = open_sink(spec)
    ledger = open_ledger(spec.ledger_path(), job=spec.name)
    try:
        parts = ledger.committed_parts()
        problems = damaged_parts(ledger, sink, full=True)
        record = ledger.job()
        complete = record is not None and record.completed_at is not None
    finally:
        ledger.close()
    owned = {p.name for p in parts}
    extra = [name for name in sink.list_parts() if name not in owned]
    manifest = _check_manifest(sink, parts) if complete else "absent (the job is not complete)"
    return VerifyReport(
        job=spec.name,
        output=sink.display(),
        intact=not problems and manifest in ("ok", "absent (the job is not complete)"),
        parts_checked=len(parts),
        parts_unverifiable=sum(p.check is None for p in parts),
        problems=problems,
        manifest=manifest,
        extra_files=extra,
    )


def _check_manifest(sink: Sink, parts: list[CommittedPart]) -> str:
    manifest = sink.read_manifest()
    if manifest is None:
        return f"missing: the job is complete but {MANIFEST_NAME} is gone (rerun the job to write it again)"
    entries = [*manifest.get("files", []), *manifest.get("error_files", [])]
    listed = {(f["path"], f["rows"], f.get("sha256")) for f in entries}
    try:
        expected = {(f["path"], f["rows"], f["sha256"]) for p in parts for f in manifest_entries(sink, p)}
    except OutputError:
        return "disagrees with the ledger: a set index is damaged (rerun the job to write it again)"
    if listed != expected:
        return "disagrees with the ledger (rerun the job to write it again)"
    return "ok"
