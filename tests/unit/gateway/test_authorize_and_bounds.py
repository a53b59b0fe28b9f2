"""Pure checks: whitelist semantics (group ceilings), the prompt bound, and requests that never fit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keyrelay.cache.keycache import Principal
from keyrelay.config import ModelConfig, ProviderConfig
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.authorize import allowed_channels, channel_allowed
from keyrelay.keys.policy import effective_policy
from keyrelay.limits.backend import AdmissionRequest, precheck
from keyrelay.protocols.openai import IMAGE_TOKEN_BOUND, Operation, decode_request
from keyrelay.routing.table import Channel, RouteTable
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def principal(key_models: tuple[str, ...] | None, group_models: tuple[str, ...] | None) -> Principal:
    key = KeyRecord(
        "h",
        "h",
        None,
        None,
        "kr_live_...abcd",
        "regular",
        False,
        "k",
        1,
        False,
        NOW,
        NOW,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        key_models,
        None,
        None,
        None,
        None,
        0,
        {},
        None,
        None,
    )
    group = GroupRecord(
        1,
        "g",
        None,
        1_000_000,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        group_models,
        None,
        None,
        None,
        0,
        {},
        NOW,
        NOW,
    )
    account = AccountRecord(1, "a@example.com", "active", None, 0, 1, NOW, NOW)
    return Principal(key, account, group, effective_policy(key, group), via_previous_secret=False)


def table(**providers: tuple[str, ...]) -> RouteTable:
    return RouteTable(
        tuple(
            ProviderConfig(name=name, base_url="http://x/v1", models=tuple(ModelConfig(id=m) for m in models))
            for name, models in providers.items()
        )
    )


def test_group_list_is_a_ceiling_matched_by_meaning_not_spelling() -> None:
    routes = table(mock=("gpt-4o-mini", "gpt-4o"), alt=("gpt-4o-mini",))
    [mini] = routes.resolve("mock/gpt-4o-mini")
    [big] = routes.resolve("mock/gpt-4o")
    [other] = routes.resolve("alt/gpt-4o-mini")

    def allowed(p: Principal, c: Channel) -> bool:
        return channel_allowed(p, c, routes)

    # The key names the qualified form, the group the bare id: the same model, so it is allowed.
    p = principal(("mock/gpt-4o-mini",), ("gpt-4o-mini",))
    assert allowed(p, mini) and not allowed(p, other) and not allowed(p, big)
    # A key cannot widen its group's list.
    wide = principal(("gpt-4o",), ("gpt-4o-mini",))
    assert not allowed(wide, big)
    with pytest.raises(GatewayError) as info:
        allowed_channels(wide, "gpt-4o", (big,), routes)
    assert info.value.error_type is ErrorType.ACCESS_DENIED and "gpt-4o" in info.value.message
    # No list on the key: the group's applies; no list anywhere: everything.
    assert allowed(principal(None, ("gpt-4o",)), big) and not allowed(principal(None, ("gpt-4o",)), mini)
    assert allowed(principal(None, None), mini)


def test_one_resolution_rule_for_routing_and_whitelists() -> None:
    # groq offers the id "openai/gpt-oss-20b"; provider "openai" offers "gpt-oss-20b". The exact id wins.
    routes = table(groq=("openai/gpt-oss-20b",), openai=("gpt-oss-20b",), together=("meta-llama/Llama-3.3-70B",))
    [served] = routes.resolve("openai/gpt-oss-20b")
    assert served.provider == "groq" and served.upstream_model == "openai/gpt-oss-20b"
    [bare] = routes.resolve("gpt-oss-20b")
    assert bare.provider == "openai"
    assert [c.provider for c in routes.resolve("meta-llama/Llama-3.3-70B")] == ["together"]
    assert [c.provider for c in routes.resolve("together/meta-llama/Llama-3.3-70B")] == ["together"]
    assert routes.resolve("groq/openai/gpt-oss-20b") == (served,)
    # The hidden qualified name is reported, naming both providers and the name.
    [warning] = routes.shadow_warnings()
    assert "openai/gpt-oss-20b" in warning and "'groq'" in warning and "'openai'" in warning
    # A key allowed only "openai/gpt-oss-20b" may call groq's model, not openai's bare gpt-oss-20b.
    key = principal(("openai/gpt-oss-20b",), None)
    assert channel_allowed(key, served, routes)
    assert not channel_allowed(key, bare, routes)
    with pytest.raises(GatewayError) as info:
        allowed_channels(key, "gpt-oss-20b", routes.resolve("gpt-oss-20b"), routes)
    assert info.value.error_type is ErrorType.ACCESS_DENIED


def test_prompt_bound_counts_images_and_n() -> None:
    text = decode_request(
        Operation.CHAT, b'{"model":"m","messages":[{"role":"user","content":"hi"}],"n":3,"max_tokens":7}'
    )
    assert text.prompt_token_bound == len(text.raw) and text.choices == 3 and text.max_output_tokens == 7
    image = (
        b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is it"},'
        b'{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}'
    )
    req = decode_request(Operation.CHAT, image)
    # "image_url" appears twice in the part (type and key): each occurrence adds the bound, an over-estimate.
    assert req.prompt_token_bound >= len(image) + IMAGE_TOKEN_BOUND
    with pytest.raises(GatewayError) as info:
        decode_request(Operation.CHAT, b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}')
    assert info.value.field == "n"


def test_request_larger_than_tpm_says_so() -> None:
    request = AdmissionRequest("k", "r", 0.0, 0, (), (), tpm=1000, max_tokens=5000, max_concurrent=None)
    with pytest.raises(GatewayError) as info:
        precheck(request)
    assert info.value.status == 429 and "lower max_tokens" in info.value.message


def test_bounds_read_escaped_names_and_the_larger_token_limit() -> None:
    escaped = (
        rb'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"},'
        rb'{"type":"image_url","image_\u0075rl":{"url":"https://x/a.png"}}]}]}'
    )
    assert decode_request(Operation.CHAT, escaped).prompt_token_bound >= len(escaped) + IMAGE_TOKEN_BOUND
    # Hex digits in upper case spell the same name; text written as ASCII JSON (CJK escapes) beside a plain part.
    for raw in (
        rb'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"image_URL"},'
        rb'{"type":"x","i\u006Dage_url":{"url":"https://x/a.png"}}]}]}',
        rb'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"\u4f60\u597d"},'
        rb'{"type":"x","image_url":{"url":"https://x/a.png"}}]}]}',
    ):
        assert decode_request(Operation.CHAT, raw).images == 1
    both = b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":1,"max_tokens":900}'
    assert decode_request(Operation.CHAT, both).max_output_tokens == 900
