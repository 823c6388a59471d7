"""One masker for every URL and driver message (infermill.redact), and the places that show URLs use it."""

from __future__ import annotations

import pytest

from infermill.ledger import display_location
from infermill.redact import mask_url, scrub, without_password
from infermill.spec import InputSpec, JobSpec, ModelSpec, OutputSpec

SECRET = "p@ss:w0rd"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://app:{SECRET}@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        (f"s3://key:{SECRET}@bucket/ledger.sqlite", "s3://key:***@bucket/ledger.sqlite"),
        ("postgresql://app@db/shop", "postgresql://app@db/shop"),
        (f"postgresql://db/shop?user=app&password={SECRET}", "postgresql://db/shop?user=app&password=***"),
        ("sqlite:///data.db", "sqlite:///data.db"),
        ("not a url", "not a url"),
    ],
)
def test_a_url_is_shown_with_its_password_masked_whole(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_hint_names_the_url_without_its_password_so_the_command_asks_for_it() -> None:
    assert without_password(f"postgresql://app:{SECRET}@db/shop") == "postgresql://app@db/shop"
    assert without_password(f"postgresql://db/shop?password={SECRET}&sslmode=require") == (
        "postgresql://db/shop?sslmode=require"
    )
    assert without_password("postgresql://db/shop?password=x") == "postgresql://db/shop"


def test_a_driver_message_is_scrubbed_of_every_url_password_and_password_parameter() -> None:
    text = (
        f'connection to "postgresql://app:{SECRET}@db/shop" failed; retried postgresql://b:{SECRET}@c/d '
        f"with password={SECRET}"
    )
    shown = scrub(text)
    assert SECRET not in shown and "p@ss" not in shown and "w0rd" not in shown
    assert "postgresql://app:***@db/shop" in shown and "password=***" in shown


def test_the_ledger_location_and_the_redacted_spec_never_show_a_password_holding_an_at_sign() -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:5432/ledger"
    assert "w0rd" not in display_location(url) and "app:***@127.0.0.1" in display_location(url)
    spec = JobSpec(
        name="j",
        input=InputSpec(format="sql", settings={"url": f"postgresql://app:{SECRET}@db/shop", "table": "t"}),
        model=ModelSpec(kind="python", entrypoint="m:M"),
        output=OutputSpec(path="out"),
    )
    shown = spec.to_dict(redact=True)["input"]["url"]
    assert shown == "postgresql://app:***@db/shop"
