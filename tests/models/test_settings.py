"""The kinds' own [model] keys: declared in ``infermill.models.settings``, checked while the spec is built,
and fingerprinted exactly as the release before them (when they were ModelSpec fields) did."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from infermill import registry
from infermill.errors import SpecError
from infermill.models import adapter_class
from infermill.spec import InputSpec, JobSpec, ModelSpec, OutputSpec


def _job(model: dict[str, Any]) -> dict[str, Any]:
    return {"name": "fp", "input": {"path": "in.parquet", "id_column": "id"}, "model": model, "output": {"path": "out"}}


# Computed at commit 825119e (before the kinds' keys moved off ModelSpec) by building these specs and calling
# fingerprint(): a job started by that release must not count as changed after the upgrade.
PINNED: dict[str, tuple[dict[str, Any], str]] = {
    "python with options": (
        {"kind": "python", "entrypoint": "scorer.py:Model", "batch_format": "pandas",
         "options": {"threshold": 0.5, "name": "x"}, "outputs": ["score"]},
        "19899fe168cfbc27",
    ),
    "python plain": ({"kind": "python", "entrypoint": "scorer.py:Model"}, "e6b57d737f59e6c8"),
    "sklearn with method and positive_class": (
        {"kind": "sklearn", "path": "m.joblib", "trusted": True, "method": "predict_proba", "positive_class": "yes",
         "parallel": "library"},
        "dc7e93e637ccdf75",
    ),
    "sklearn with options": (
        {"kind": "sklearn", "path": "m.joblib", "trusted": True, "options": {"input": "pandas"}}, "03651ba9bea53928"
    ),
    "onnx with positive_class": (
        {"kind": "onnx", "path": "m.onnx", "method": "predict_proba", "positive_class": 1}, "496aafba148be232"
    ),
    "torch with options": (
        {"kind": "torch", "factory": "net.py:build", "weights": "w.safetensors", "options": {"hidden": 4},
         "device": "cpu", "inputs": "dict"},
        "ab6aa13c7fd2ebea",
    ),
    "hf with settings": (
        {"kind": "hf", "path": "model_dir", "task": "zero-shot-classification", "candidate_labels": ["a", "b"],
         "micro_batch": 8},
        "3c9533a5931f5f26",
    ),
    "http with neutral keys": (
        {"kind": "http", "protocol": "openai-chat", "url": "http://127.0.0.1:9/v1", "model": "m", "concurrency": 3,
         "timeout_seconds": 5.0, "max_tokens": 10},
        "8a2a2f8237d25ac3",
    ),
    "sentence-transformers": ({"kind": "sentence-transformers", "path": "st", "normalize": True}, "8895094847cb3804"),
    "llm": ({"kind": "llm", "path": "llm", "prompt_column": "q", "max_new_tokens": 4}, "896620ddd9ac658f"),
    "mlflow": ({"kind": "mlflow", "path": "mlm", "input_format": "numpy"}, "ba0807830e363e2c"),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_fingerprint_is_the_previous_releases(case: str) -> None:
    model, expected = PINNED[case]
    assert JobSpec.from_dict(_job(model)).fingerprint() == expected


def test_python_api_takes_the_old_keywords_with_the_old_fingerprint() -> None:
    python = ModelSpec(kind="python", entrypoint="scorer.py:Model", options={"k": 1}, batch_format="arrow")
    assert python.settings == {"entrypoint": "scorer.py:Model", "options": {"k": 1}, "batch_format": "arrow"}
    sklearn = ModelSpec(kind="sklearn", path="m.joblib", trusted=True, method="predict", positive_class=None,
                        settings={"parallel": "rows"})
    assert sklearn.settings == {"method": "predict", "parallel": "rows"}  # an unset legacy key means nothing
    # Pinned at commit 825119e, as above.
    for model, expected in ((python, "2634a575ab4c4641"), (sklearn, "e15720e88a84cfe0")):
        spec = JobSpec(input=InputSpec(path="in.parquet"), model=model, output=OutputSpec(path="out"))
        assert spec.fingerprint() == expected


def test_a_neutral_key_leaves_the_fingerprint_alone_and_a_result_key_changes_it() -> None:
    model, expected = PINNED["http with neutral keys"]
    assert JobSpec.from_dict(_job({**model, "concurrency": 64, "max_retries": 9})).fingerprint() == expected
    assert JobSpec.from_dict(_job({**model, "max_tokens": 11})).fingerprint() != expected
    python, before = PINNED["python with options"]
    assert JobSpec.from_dict(_job({**python, "options": {"threshold": 0.6, "name": "x"}})).fingerprint() != before


@pytest.mark.parametrize(
    ("kind", "key", "value", "close"),
    [
        ("hf", "options", {"a": 1}, None),
        ("hf", "method", "predict", None),
        ("sentence-transformers", "positive_class", 1, None),
        ("torch", "method", "predict", None),
        ("torch", "positive_class", 1, None),
        ("llm", "options", {"a": 1}, "vllm_options"),
        ("http", "entrypoint", "m.py:M", None),
        ("http", "options", {"a": 1}, None),
        ("mlflow", "method", "predict", None),
        ("mlflow", "options", {"a": 1}, None),
        ("onnx", "options", {"a": 1}, None),
        ("sklearn", "batch_format", "pandas", None),
        ("onnx", "outputz", ["score"], "outputs"),
        ("python", "positive_class", 1, None),
    ],
)
def test_a_kind_refuses_another_kinds_key_while_the_spec_is_built(
    kind: str, key: str, value: Any, close: str | None
) -> None:
    with pytest.raises(SpecError, match=f"unknown key 'model.{key}'") as info:
        JobSpec.from_dict(_job({"kind": kind, "path": "m", key: value}))
    hint = str(info.value.hint)
    if close:
        assert hint == f"did you mean '{close}'?"
    else:  # the kind's own keys are listed with the common ones
        own = [f.name for f in dataclasses.fields(registry.settings_class("models", kind))]
        common = ["kind", "path", "features", "outputs", "trusted", "accelerate", "accelerate_tolerance"]
        assert hint == "known keys: " + ", ".join([*common, *own])


def test_a_misspelt_key_gets_did_you_mean() -> None:
    with pytest.raises(SpecError, match="unknown key 'model.entrypont'") as info:
        JobSpec.from_dict(_job({"kind": "python", "entrypont": "m.py:M"}))
    assert info.value.hint == "did you mean 'entrypoint'?"
    with pytest.raises(SpecError, match="'model.batch_format' must be one of 'numpy' | 'pandas' | 'arrow'"):
        JobSpec.from_dict(_job({"kind": "python", "entrypoint": "m.py:M", "batch_format": "polars"}))


def test_legacy_keys_at_their_old_defaults_are_accepted_by_every_kind() -> None:
    # Generic code that passed every ModelSpec field keeps working.
    for kind in registry.builtin("models"):
        model = ModelSpec(kind=kind, path="m", entrypoint=None, method=None, positive_class=None, options={},
                          batch_format="numpy")
        assert model.settings == {}


@pytest.mark.parametrize("kind", sorted(registry.builtin("models")))
def test_registry_names_the_adapters_settings_and_neutral_keys(kind: str) -> None:
    cls = adapter_class(kind)
    assert registry.settings_class("models", kind) is cls.settings_cls
    assert frozenset(registry.find("models", kind).meta.get("neutral", ())) == cls.result_neutral_settings  # type: ignore[union-attr]
    assert cls.result_neutral_settings <= {f.name for f in dataclasses.fields(cls.settings_cls)}  # type: ignore[arg-type]


def test_model_settings_are_parsed_with_defaults() -> None:
    spec = JobSpec.from_dict(_job({"kind": "sklearn", "path": "m.joblib", "method": "predict"}))
    parsed = spec.model_settings()
    assert (parsed.method, parsed.positive_class, parsed.options, parsed.parallel) == ("predict", None, {}, "rows")
    assert spec.to_dict()["model"]["method"] == "predict"  # a job file's shape: the kind's keys in [model]
