"""kind = "llm": a tiny random GPT-2 with a character-level tokenizer, built offline (no downloads).

Greedy decoding is checked against ``model.generate`` itself; left padding and per-row seeds against
the same prompts in other batches; over-long prompts end to end through ``infermill.run``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from infermill.errors import ItemError, ModelLoadError, SpecError
from infermill.models import llm as llm_module
from infermill.models import load_adapter
from infermill.models._llm_engines import Generation, choose_engine
from infermill.models.llm import LlmModel, PromptTooLongError
from infermill.spec import JobSpec, ModelSpec
from infermill.testing.llm import tiny_vocab
from infermill.testing.models import ModelAdapterConformance, conformance_batch, model_spec_for
from tests.models.llm_helpers import tiny_lm

pytest.importorskip("transformers")

ALL = ["text", "prompt_tokens", "completion_tokens", "finish_reason"]
PROMPTS = [
    "hello",
    "what is two plus two?",
    "x",
    "Classify: a fine movie, a winding plot",
    "ok",
    "The quick brown fox",
    "1 2 3",
    "tabs\tand\nnewlines",
]


def llm_spec(tmp_path: Path, outputs: list[str] | None = None, **settings: Any) -> JobSpec:
    if not (tmp_path / "lm").exists():
        tiny_lm(tmp_path)
    settings.setdefault("max_new_tokens", 8)
    return model_spec_for(tmp_path, ModelSpec(kind="llm", path="lm", outputs=outputs, settings=settings))


def ready(tmp_path: Path, outputs: list[str] | None = None, **settings: Any) -> LlmModel:
    adapter = load_adapter(llm_spec(tmp_path, outputs=outputs or ALL, **settings))
    assert isinstance(adapter, LlmModel)
    adapter.setup()
    return adapter


def prompts(values: list[str] = PROMPTS, name: str = "prompt") -> pa.RecordBatch:
    return pa.record_batch({name: pa.array(values, pa.string())})


def generate(adapter: LlmModel, batch: pa.RecordBatch) -> dict[str, list[Any]]:
    out = adapter.postprocess(adapter.predict(adapter.preprocess(batch)), batch.num_rows)
    return {name: column.to_pylist() for name, column in out.items()}


# -- the conformance suite ----------------------------------------------------------------------
class TestLlmGreedyConformance(ModelAdapterConformance):
    outputs = ALL
    settings: dict[str, Any] = {"use_chat_template": False}

    def make_spec(self, tmp_path: Path) -> JobSpec:
        return llm_spec(tmp_path, outputs=self.outputs, **self.settings)

    def make_batch(self) -> pa.RecordBatch:
        return prompts()

    def change_model(self, spec: JobSpec) -> None:
        tiny_lm(Path(spec.base_dir), seed=1)


class TestLlmSamplingConformance(TestLlmGreedyConformance):
    settings = {"temperature": 0.9, "top_p": 0.9, "seed": 7}


class TestLlmTemplateChatConformance(TestLlmGreedyConformance):
    """Float feature columns through a template, rendered with the tokenizer's chat template."""

    outputs = ["text"]
    settings = {"prompt_template": "f0 is {f0:.3f}, f1 is {f1:.2f}", "system_prompt": "Be brief."}

    def make_batch(self) -> pa.RecordBatch:
        return conformance_batch(rows=8)


# -- generation -----------------------------------------------------------------------------------
def test_greedy_is_model_generate(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = ready(tmp_path, use_chat_template=False, max_new_tokens=10)
    got = generate(adapter, prompts())
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lm")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    for prompt, text in zip(PROMPTS, got["text"], strict=True):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                 do_sample=False, pad_token_id=2)
        assert text == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(set(got["text"])) > 4, "the tiny model should give varied text"


def test_left_padding_gives_each_prompt_its_own_text(tmp_path: Path) -> None:
    adapter = ready(tmp_path, use_chat_template=False, max_new_tokens=12)
    alone = {p: generate(adapter, prompts([p]))["text"][0] for p in PROMPTS}
    # The same prompt beside much longer and shorter ones, in another order.
    mixed = ["x", PROMPTS[3] * 2, "hello", "ok", PROMPTS[1]]
    got = generate(adapter, prompts(mixed))["text"]
    assert got == [alone.get(p) or generate(adapter, prompts([p]))["text"][0] for p in mixed]
    assert adapter.tokenizer.padding_side == "left" and adapter.tokenizer.pad_token == "</s>"


@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_a_seed_reproduces_the_text(tmp_path: Path, top_p: float) -> None:
    first = generate(ready(tmp_path, temperature=1.0, top_p=top_p, seed=3, max_new_tokens=12), prompts())
    again = generate(ready(tmp_path, temperature=1.0, top_p=top_p, seed=3, max_new_tokens=12), prompts())
    other = generate(ready(tmp_path, temperature=1.0, top_p=top_p, seed=4, max_new_tokens=12), prompts())
    greedy = generate(ready(tmp_path, max_new_tokens=12), prompts())
    assert first == again
    assert first["text"] != other["text"]
    assert first["text"] != greedy["text"]


def test_sampled_rows_do_not_depend_on_their_batch(tmp_path: Path) -> None:
    adapter = ready(tmp_path, temperature=1.2, seed=11, max_new_tokens=10)
    whole = generate(adapter, prompts())["text"]
    pieces = [generate(adapter, prompts(PROMPTS[i : i + 3]))["text"] for i in range(0, len(PROMPTS), 3)]
    assert [t for piece in pieces for t in piece] == whole


def test_low_top_p_is_close_to_greedy(tmp_path: Path) -> None:
    greedy = generate(ready(tmp_path, max_new_tokens=10), prompts())
    nucleus = generate(ready(tmp_path, temperature=1.0, top_p=1e-6, seed=5, max_new_tokens=10), prompts())
    assert nucleus["text"] == greedy["text"]  # only the top token survives


def test_stop_at_end_of_sequence(tmp_path: Path) -> None:
    lm = tiny_lm(tmp_path)
    greedy = generate(ready(tmp_path, use_chat_template=False, max_new_tokens=12), prompts())["text"]
    # Make a character the model produces an end-of-sequence token: generation stops there.
    stop_char = greedy[1][3]
    config = json.loads((lm / "generation_config.json").read_text())
    config["eos_token_id"] = [2, tiny_vocab()[stop_char]]
    (lm / "generation_config.json").write_text(json.dumps(config))
    adapter = ready(tmp_path, use_chat_template=False, max_new_tokens=12)
    assert adapter.fingerprint() != load_adapter(llm_spec(tmp_path / "other")).fingerprint()
    got = generate(adapter, prompts())
    for full, text, count, reason in zip(greedy, got["text"], got["completion_tokens"], got["finish_reason"],
                                         strict=True):
        if stop_char in full:
            cut = full.index(stop_char)
            assert (text, count, reason) == (full[:cut], cut + 1, "stop")
        else:
            assert (text, count, reason) == (full, 12, "length")
    assert got["finish_reason"][1] == "stop"


def test_token_counts(tmp_path: Path) -> None:
    got = generate(ready(tmp_path, use_chat_template=False, max_new_tokens=5), prompts())
    assert got["prompt_tokens"] == [len(p) + 1 for p in PROMPTS]  # one token per character, plus <s>
    assert got["completion_tokens"] == [5] * len(PROMPTS) and set(got["finish_reason"]) == {"length"}


def test_only_the_configured_outputs_in_order(tmp_path: Path) -> None:
    adapter = load_adapter(llm_spec(tmp_path, outputs=["finish_reason", "text"]))
    adapter.setup()
    out = adapter.postprocess(adapter.predict(adapter.preprocess(prompts())), len(PROMPTS))
    assert list(out) == ["finish_reason", "text"]
    assert load_adapter(llm_spec(tmp_path)).outputs == ["text"]
    with pytest.raises(ModelLoadError, match="no output 'score'"):
        load_adapter(llm_spec(tmp_path, outputs=["text", "score"]))


# -- prompts --------------------------------------------------------------------------------------
def _rendered(adapter: LlmModel, batch: pa.RecordBatch) -> list[str]:
    return [adapter.tokenizer.decode(ids) for ids in adapter.preprocess(batch).token_ids]


def test_prompt_template_over_several_columns(tmp_path: Path) -> None:
    adapter = ready(tmp_path, prompt_template="Classify: {title}\n{body} ({stars}/5)", use_chat_template=False)
    batch = pa.record_batch({
        "title": ["Great", None],
        "body": ["loved it", "meh {not a field}"],
        "stars": pa.array([5, 2], pa.int64()),
        "unused": [1.0, 2.0],
    })
    assert _rendered(adapter, batch) == [
        "<s>Classify: Great\nloved it (5/5)",
        "<s>Classify: \nmeh {not a field} (2/5)",  # null renders empty; values are not formatted again
    ]


def test_template_column_missing_is_a_spec_error(tmp_path: Path) -> None:
    tiny_lm(tmp_path)
    model = ModelSpec(kind="llm", path="lm", features=["title"], settings={"prompt_template": "{title}: {body}"})
    with pytest.raises(SpecError, match="'body'.*model.prompt_template") as info:
        load_adapter(model_spec_for(tmp_path, model))
    assert "features" in str(info.value)
    adapter = ready(tmp_path, prompt_template="{title}: {body}")
    with pytest.raises(SpecError, match="'body'"):
        adapter.preprocess(pa.record_batch({"title": ["a"]}))


@pytest.mark.parametrize(
    ("template", "message"),
    [("{title", "not a valid format string"), ("{0} and {}", "positional field")],
)
def test_bad_templates(tmp_path: Path, template: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_adapter(llm_spec(tmp_path, prompt_template=template))


def test_default_prompt_column(tmp_path: Path) -> None:
    adapter = ready(tmp_path, use_chat_template=False)
    assert adapter.columns == ["prompt"]
    spec = model_spec_for(tmp_path, ModelSpec(kind="llm", path="lm", features=["question"]))
    assert load_adapter(spec).columns == ["question"]
    with pytest.raises(ModelLoadError, match="one of prompt_column, prompt_template"):
        load_adapter(llm_spec(tmp_path, prompt_column="a", prompt_template="{b}"))


def test_chat_template_and_system_prompt(tmp_path: Path) -> None:
    chat = ready(tmp_path, system_prompt="Be brief.")
    assert chat.chat
    assert _rendered(chat, prompts(["hi"])) == ["system: Be brief.\nuser: hi\nassistant: "]
    plain = ready(tmp_path, system_prompt="Be brief.", use_chat_template=False)
    assert _rendered(plain, prompts(["hi"])) == ["<s>Be brief.\n\nhi"]


def test_messages_column(tmp_path: Path) -> None:
    messages = [
        json.dumps([{"role": "user", "content": "hi"}]),
        json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "yo"}]}]),
    ]
    adapter = ready(tmp_path, messages_column="messages", system_prompt="Default.")
    batch = pa.record_batch({"messages": messages})
    assert _rendered(adapter, batch) == [
        "system: Default.\nuser: hi\nassistant: ",
        "system: S\nuser: yo\nassistant: ",
    ]
    assert len(generate(adapter, batch)["text"]) == 2
    with pytest.raises(ItemError, match="not valid JSON"):
        adapter.preprocess(pa.record_batch({"messages": ["[{"]}))


def test_no_chat_template(tmp_path: Path) -> None:
    lm = tiny_lm(tmp_path)
    (lm / "chat_template.jinja").unlink()
    adapter = ready(tmp_path, messages_column="messages")
    assert not adapter.chat
    batch = pa.record_batch({"messages": [json.dumps([{"role": "user", "content": "hi"}])]})
    assert _rendered(adapter, batch) == ["<s>user: hi\nassistant:"]
    with pytest.raises(ModelLoadError, match="no chat template"):
        ready(tmp_path, use_chat_template=True)


def test_null_and_empty_prompts_are_item_errors(tmp_path: Path) -> None:
    adapter = ready(tmp_path)
    with pytest.raises(ItemError, match="null"):
        adapter.preprocess(prompts(["a", None]))  # type: ignore[list-item]
    lm = tiny_lm(tmp_path / "nobos")
    tokenizer = json.loads((lm / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None  # no <s>: an empty prompt has no tokens at all
    (lm / "tokenizer.json").write_text(json.dumps(tokenizer))
    bare = ready(tmp_path / "nobos", use_chat_template=False)
    with pytest.raises(ItemError, match="empty prompt"):
        bare.preprocess(prompts(["a", ""]))


# -- prompt length --------------------------------------------------------------------------------
def test_prompt_limit_defaults_to_model_length_minus_new_tokens(tmp_path: Path) -> None:
    adapter = ready(tmp_path, max_new_tokens=10, use_chat_template=False)
    assert adapter.prompt_limit == 128 - 10
    adapter.preprocess(prompts(["a" * 117]))  # 118 tokens with <s>
    with pytest.raises(PromptTooLongError, match="119 tokens, more than max_prompt_tokens = 118"):
        adapter.preprocess(prompts(["fine", "a" * 118]))
    assert ready(tmp_path, max_prompt_tokens=5).prompt_limit == 5
    with pytest.raises(ModelLoadError, match="leaves no room"):
        ready(tmp_path, max_new_tokens=128)


def test_over_long_prompt_is_dead_lettered_end_to_end(tmp_path: Path) -> None:
    import infermill
    from tests.conftest import read_output

    tiny_lm(tmp_path)
    rows = [{"qid": f"q{i}", "topic": t, "text": x} for i, (t, x) in enumerate([
        ("greeting", "hello there"), ("math", "two plus two"), ("essay", "a" * 150), ("short", "ok"),
        ("fox", "the quick brown fox"),
    ])]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent("""
        [input]
        path = "questions.jsonl"
        id_column = "qid"
        [model]
        kind = "llm"
        path = "lm"
        prompt_template = "Topic: {topic}\\nQuestion: {text}\\nAnswer:"
        use_chat_template = false
        max_new_tokens = 6
        outputs = ["text", "completion_tokens", "finish_reason"]
        [batch]
        size = 4
        [output]
        path = "out"
        format = "jsonl"
        [errors]
        max_failed_rows = 1
    """))
    result = infermill.run(job, progress="off")
    assert (result.state, result.rows_succeeded, result.rows_failed) == ("complete", 4, 1)
    out = read_output(tmp_path / "out", "jsonl").to_pylist()
    assert [r["qid"] for r in out] == ["q0", "q1", "q3", "q4"]
    assert all(r["completion_tokens"] == 6 and r["finish_reason"] == "length" for r in out)
    errors = [json.loads(line) for p in sorted((tmp_path / "out" / "_errors").glob("*.jsonl"))
              for line in p.read_text().splitlines()]
    assert [(e["qid"], e["_error_class"], e["_error_kind"]) for e in errors] == [
        ("q2", "PromptTooLongError", "item")
    ]
    assert "more than max_prompt_tokens = 122" in errors[0]["_error_message"]
    # The same text as the adapter gives for those rows directly.
    adapter = ready(tmp_path, prompt_template="Topic: {topic}\nQuestion: {text}\nAnswer:",
                    use_chat_template=False, max_new_tokens=6)
    kept = [r for r in rows if r["qid"] != "q2"]
    direct = generate(adapter, pa.RecordBatch.from_pylist([{"topic": r["topic"], "text": r["text"]} for r in kept]))
    assert [r["text"] for r in out] == direct["text"]


# -- loading, trust and engines -------------------------------------------------------------------
def test_pickled_weights_and_custom_code_need_trust(tmp_path: Path) -> None:
    lm = tiny_lm(tmp_path)
    config = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.Model"}}))
    with pytest.raises(ModelLoadError, match="custom code") as info:
        load_adapter(llm_spec(tmp_path))
    assert "trusted = true" in str(info.value)
    (lm / "config.json").write_text(json.dumps(config))
    (lm / "model.safetensors").rename(lm / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickled"):
        load_adapter(llm_spec(tmp_path))
    (lm / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_adapter(llm_spec(tmp_path))


def test_path_must_be_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_adapter(llm_spec(tmp_path))
    (tmp_path / "file.bin").write_bytes(b"x")
    spec = model_spec_for(tmp_path, ModelSpec(kind="llm", path="file.bin"))
    with pytest.raises(ModelLoadError, match="takes a model folder"):
        load_adapter(spec)


def test_unknown_key_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown key 'model.max_tokens'") as info:
        llm_spec(tmp_path, max_tokens=5)
    assert "max_new_tokens" in str(info.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens")],
)
def test_bad_settings(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_adapter(llm_spec(tmp_path, **settings))


def test_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = load_adapter(llm_spec(tmp_path))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'infermill\[llm\]'"):
        adapter.setup()


@pytest.mark.parametrize(
    ("requested", "device", "vllm_ok", "gpu_ok", "expected"),
    [
        ("auto", "auto", True, True, "vllm"),
        ("auto", "auto", True, False, "transformers"),
        ("auto", "auto", False, True, "transformers"),
        ("auto", "cpu", True, True, "transformers"),
        ("transformers", "auto", True, True, "transformers"),
        ("vllm", "auto", True, True, "vllm"),
        ("vllm", "cuda:1", True, True, "vllm"),
    ],
)
def test_engine_selection(requested: str, device: str, vllm_ok: bool, gpu_ok: bool, expected: str) -> None:
    assert choose_engine(requested, device=device, vllm_ok=vllm_ok, gpu_ok=gpu_ok) == expected


@pytest.mark.parametrize(
    ("vllm_ok", "gpu_ok", "device", "message"),
    [(False, True, "auto", "pip install vllm"), (True, False, "auto", "none is visible"),
     (True, True, "cpu", 'device = "cpu"')],
)
def test_vllm_asked_for_but_unusable(vllm_ok: bool, gpu_ok: bool, device: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        choose_engine("vllm", device=device, vllm_ok=vllm_ok, gpu_ok=gpu_ok)


def test_vllm_not_installed_here(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="needs the 'vllm' package"):
        ready(tmp_path, engine="vllm")


class FakeVllm:
    """Stands in for vLLM (which needs a GPU): records how it was built and called."""

    made: list[dict[str, Any]] = []

    def __init__(self, path: str, **kwargs: Any) -> None:
        self.made.append({"path": path, **kwargs})
        self.calls: list[tuple[list[list[int]], list[int], dict[str, Any]]] = []

    def max_model_len(self) -> int:
        return 40

    def generate(self, token_ids: list[list[int]], seeds: list[int], **kwargs: Any) -> Generation:
        self.calls.append((list(token_ids), list(seeds), kwargs))
        return Generation([f"len {len(t)}" for t in token_ids], [1] * len(token_ids), ["stop"] * len(token_ids))


def test_auto_takes_vllm_with_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infermill.models import _llm_engines

    monkeypatch.setattr(llm_module, "vllm_installed", lambda: True)
    monkeypatch.setattr(llm_module, "gpu_available", lambda: True)
    monkeypatch.setattr(_llm_engines, "VllmEngine", FakeVllm)
    FakeVllm.made.clear()
    adapter = ready(tmp_path, temperature=0.5, seed=9, max_new_tokens=4, use_chat_template=False,
                    vllm_options={"gpu_memory_utilization": 0.5})
    assert adapter.engine_name == "vllm" and isinstance(adapter.engine, FakeVllm)
    assert FakeVllm.made == [{"path": str(tmp_path / "lm"), "trusted": False, "seed": 9, "dtype": "auto",
                              "options": {"gpu_memory_utilization": 0.5}}]
    assert adapter.prompt_limit == 40 - 4  # vLLM's max_model_len
    got = generate(adapter, prompts(["ab", "abcd"]))
    assert got["text"] == ["len 3", "len 5"]
    (ids, seeds, kwargs), = adapter.engine.calls
    assert ids == [[1, *[tiny_vocab()[c] for c in "ab"]], [1, *[tiny_vocab()[c] for c in "abcd"]]]
    assert len(set(seeds)) == 2 and kwargs["temperature"] == 0.5 and kwargs["max_new_tokens"] == 4
    monkeypatch.setattr(llm_module, "gpu_available", lambda: False)
    assert ready(tmp_path).engine_name == "transformers"
