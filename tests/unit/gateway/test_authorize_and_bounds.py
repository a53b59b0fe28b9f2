"""Pure checks: whitelist semantics (group ceilings), the prompt bound, and requests that never fit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keyrelay.cache.keycache import Principal
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.authorize import allowed_channels, channel_allowed
from keyrelay.keys.policy import effective_policy
from keyrelay.limits.backend import AdmissionRequest, precheck
from keyrelay.protocols.openai import IMAGE_TOKEN_BOUND, Operation, decode_request
from keyrelay.routing.table import Channel
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def channel(provider: str, model: str) -> Channel:
    return Channel(provider, "openai", "http://x/v1", None, model, model, 1, 1, None, 1.0, 1.0)


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


def test_group_list_is_a_ceiling_matched_by_meaning_not_spelling() -> None:
    mini, big, other = channel("mock", "gpt-4o-mini"), channel("mock", "gpt-4o"), channel("alt", "gpt-4o-mini")
    # The key names the qualified form, the group the bare id: the same model, so it is allowed.
    p = principal(("mock/gpt-4o-mini",), ("gpt-4o-mini",))
    assert channel_allowed(p, mini) and not channel_allowed(p, other) and not channel_allowed(p, big)
    # A key cannot widen its group's list.
    wide = principal(("gpt-4o",), ("gpt-4o-mini",))
    assert not channel_allowed(wide, big)
    with pytest.raises(GatewayError) as info:
        allowed_channels(wide, "gpt-4o", (big,))
    assert info.value.error_type is ErrorType.ACCESS_DENIED and "gpt-4o" in info.value.message
    # No list on the key: the group's applies; no list anywhere: everything.
    assert channel_allowed(principal(None, ("gpt-4o",)), big) and not channel_allowed(
        principal(None, ("gpt-4o",)), mini
    )
    assert channel_allowed(principal(None, None), mini)


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
