"""Which ``[model]`` keys of ``kind = "http"`` each protocol reads. The keys themselves (one docstring each;
docs/models/http.md lists them too) are declared in :mod:`infermill.models.settings`."""

from __future__ import annotations

from dataclasses import fields

from ..settings import HttpProtocol as Protocol
from ..settings import HttpSettings

__all__ = ["PROTOCOL_KEYS", "HttpSettings", "Protocol", "misplaced_keys"]


_OPENAI = {"openai-chat", "openai-embeddings"}
PROTOCOL_KEYS: dict[str, set[str]] = {
    "prompt_column": _OPENAI,
    "prompt_template": _OPENAI,
    "system_prompt": {"openai-chat"},
    "body_column": {"openai-chat"},
    "max_tokens": {"openai-chat"},
    "temperature": {"openai-chat"},
    "keep_response": {"openai-chat"},
    "extra_body": _OPENAI | {"kserve-v2"},
    "batch_size": {"openai-embeddings", "kserve-v2"},
    "embedding_size": {"openai-embeddings"},
    "input_name": {"kserve-v2"},
    "datatype": {"kserve-v2"},
    "input_layout": {"kserve-v2"},
    "request_template": {"json"},
    "response_path": {"json"},
    "output_types": {"kserve-v2", "json"},
}
"""Keys that only some protocols read; setting one for another protocol is an error."""


def misplaced_keys(settings: HttpSettings) -> list[str]:
    """Keys set (to a non-default value) that the chosen protocol does not use."""
    defaults = {f.name: f.default for f in fields(HttpSettings)}
    out = []
    for key, protocols in PROTOCOL_KEYS.items():
        value = getattr(settings, key)
        default = defaults[key]
        unset = value == default or (not isinstance(default, (str, int, float, bool, type(None))) and not value)
        if not unset and settings.protocol not in protocols:
            out.append(key)
    return out

