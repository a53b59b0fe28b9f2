"""The API Keys pages through real HTTP: create (shown once), detail panel, edit, rotate, disable, revoke, isolation."""

from __future__ import annotations

import asyncio
import re

import httpx

from keyrelay.testing.server import RunningServer
from tests.integration.portal.conftest import Inbox
from tests.integration.portal.test_signin_flows import PASSWORD, form_token, post, sign_in, sign_up

KEY = re.compile(r"kr_live_[A-Za-z0-9_-]{43}")
DETAIL = re.compile(r'href="/keys/([0-9a-f]{64})"')
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def member(client: httpx.AsyncClient, inbox: Inbox, email: str) -> None:
    await sign_up(client, inbox, email)
    assert (await sign_in(client, email)).status_code == 303


async def create_key(client: httpx.AsyncClient, **fields: str) -> tuple[str, str, httpx.Response]:
    """Create a key through the dialog's form: (plaintext, hash, the answer)."""
    answer = await post(client, "/keys", "/keys", **fields)
    assert answer.status_code == 201, answer.text
    plaintext = KEY.search(answer.text)
    key_hash = DETAIL.search(answer.text)
    assert plaintext and key_hash
    return plaintext.group(0), key_hash.group(1), answer


async def chat(portal: RunningServer, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=portal.base_url, timeout=10) as api:
        return await api.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})


async def test_a_created_key_is_shown_once_and_works(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "maker@example.com")
    key, key_hash, created = await create_key(browser_like, name="ci-bot", limit="5", limit_reset="daily", rpm="60")
    assert "shown this once and never again" in created.text
    assert f"curl {portal.base_url.replace('127.0.0.1', 'localhost')}" in created.text or "curl http" in created.text
    assert created.headers["cache-control"] == "no-store"
    assert (await chat(portal, key)).status_code == 200
    for path in ("/keys", f"/keys/{key_hash}", "/account", "/keys?q=ci"):
        page = await browser_like.get(path)
        assert page.status_code == 200 and "ci-bot" in page.text or path == "/account"
        assert key not in page.text  # the plaintext never appears again
    record = await portal.runtime.keys.get(key_hash=key_hash)
    assert record is not None and record.limit_micros == 5_000_000 and record.rpm == 60
    assert record.limit_reset == "daily" and record.account_id is not None


async def test_sending_the_create_form_again_creates_no_second_key(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "reloader@example.com")
    page = (await browser_like.get("/keys")).text
    token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    form_id = re.search(r'name="form_id" value="([A-Za-z0-9_-]+)"', page)
    assert token and form_id
    fields = {"csrf_token": token.group(1), "form_id": form_id.group(1), "name": "once"}
    assert (await browser_like.post("/keys", data=fields)).status_code == 201
    again = await browser_like.post("/keys", data=fields)  # what a reload of the answer sends
    assert again.status_code == 409 and "no other key was created" in again.text
    assert KEY.search(again.text) is None
    missing = await browser_like.post("/keys", data={**fields, "form_id": ""})
    assert missing.status_code == 409
    account = await portal.runtime.accounts.get_by_email(email="reloader@example.com")
    assert account is not None
    assert len(await portal.runtime.keys.list_all(account_id=account.id, key_type="regular", limit=5)) == 1


async def test_the_detail_panel_shows_the_last_used_ip(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "watcher@example.com")
    key, key_hash, _ = await create_key(browser_like, name="watched")
    assert (await chat(portal, key)).status_code == 200
    shown = "Last-used IP</dt><dd>127.0.0.1"
    for _ in range(200):  # the usage writer flushes last-used every 0.1 s here
        page = await browser_like.get(f"/keys/{key_hash}")
        if shown in page.text:
            break
        await asyncio.sleep(0.02)
    assert shown in page.text


async def test_an_unverified_account_cannot_create_keys(portal: RunningServer, browser_like: httpx.AsyncClient) -> None:
    answer = await post(browser_like, "/signup", "/signup", email="fresh@example.com", password=PASSWORD)
    assert answer.status_code == 200
    assert (await sign_in(browser_like, "fresh@example.com")).status_code == 303
    refused = await post(browser_like, "/keys", "/keys", name="too-soon")
    assert refused.status_code == 403 and "Verify your email" in refused.text
    account = await portal.runtime.accounts.get_by_email(email="fresh@example.com")
    assert account is not None
    assert await portal.runtime.keys.list_all(account_id=account.id, key_type="regular", limit=5) == []


async def test_bad_input_names_the_field_and_creates_nothing(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "typo@example.com")
    cases = [
        ({"name": "k", "limit": "five"}, "Enter an amount in USD", 'id="new-limit"'),
        ({"name": "k", "rpm": "-1"}, "Enter a whole number", 'id="new-rpm"'),
        ({"name": "k", "ip_allowlist": "not-an-ip"}, "not a valid IPv4/IPv6 address", 'id="new-ip_allowlist"'),
        ({"name": ""}, "", 'id="new-name"'),
        ({"name": "k", "expires_at": "2001-01-01T00:00"}, "future", 'id="new-expires_at"'),
    ]
    for fields, message, field_id in cases:
        answer = await post(browser_like, "/keys", "/keys", **fields)
        assert answer.status_code == 400, (fields, answer.text)
        assert message in answer.text, (fields, answer.text)
        at = answer.text.index(field_id)
        assert 'aria-invalid="true"' in answer.text[at : at + 400], fields
        assert "data-open-on-load" in answer.text  # the dialog opens again with what was typed
    account = await portal.runtime.accounts.get_by_email(email="typo@example.com")
    assert account is not None
    assert await portal.runtime.keys.list_all(account_id=account.id, key_type="regular", limit=5) == []


async def test_editing_a_limit_is_enforced_on_the_next_request(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "editor@example.com")
    key, key_hash, _ = await create_key(browser_like, name="limited")
    saved = await post(browser_like, f"/keys/{key_hash}", f"/keys/{key_hash}/edit", name="limited", rpm="1")
    assert saved.status_code == 303 and saved.headers["location"].endswith("?done=saved")
    assert (await chat(portal, key)).status_code == 200
    refused = await chat(portal, key)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "RATE_LIMIT_EXCEEDED"
    # The detail panel shows the window's count as admission sees it (the refused request is not counted).
    panel = (await browser_like.get(f"/keys/{key_hash}")).text
    assert "Requests this minute</dt><dd>1 of 1</dd>" in panel
    # Emptying the field inherits again (no group: no limit).
    await post(browser_like, f"/keys/{key_hash}", f"/keys/{key_hash}/edit", name="limited", rpm="")
    record = await portal.runtime.keys.get(key_hash=key_hash)
    assert record is not None and record.rpm is None


async def test_rotation_with_grace_and_disable_enable(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "rotator@example.com")
    old, key_hash, _ = await create_key(browser_like, name="rotated")
    version = re.search(r'name="version" value="([0-9]+)"', (await browser_like.get(f"/keys/{key_hash}")).text)
    assert version
    rotate = f"/keys/{key_hash}/rotate"
    rotated = await post(browser_like, f"/keys/{key_hash}", rotate, grace_minutes="10", version=version.group(1))
    assert rotated.status_code == 200 and "New secret for rotated" in rotated.text
    new = KEY.search(rotated.text)
    assert new and new.group(0) != old
    assert "The old secret keeps working until" in rotated.text
    assert (await chat(portal, old)).status_code == 200
    assert (await chat(portal, new.group(0))).status_code == 200
    assert new.group(0) not in (await browser_like.get(f"/keys/{key_hash}")).text
    off = await post(browser_like, f"/keys/{key_hash}", f"/keys/{key_hash}/state", disabled="1")
    assert off.status_code == 303
    assert (await chat(portal, new.group(0))).status_code == 401
    await post(browser_like, f"/keys/{key_hash}", f"/keys/{key_hash}/state", disabled="0")
    assert (await chat(portal, new.group(0))).status_code == 200
    # The same form again (a reload of the rotation's answer) rotates nothing: the secret just shown stays valid.
    again = await post(browser_like, f"/keys/{key_hash}", rotate, grace_minutes="0", version=version.group(1))
    assert again.status_code == 409 and "was not rotated" in again.text
    assert (await chat(portal, new.group(0))).status_code == 200
    fresh = re.search(r'name="version" value="([0-9]+)"', (await browser_like.get(f"/keys/{key_hash}")).text)
    assert fresh
    bad = await post(browser_like, f"/keys/{key_hash}", rotate, grace_minutes="ten", version=fresh.group(1))
    assert bad.status_code == 400 and "whole minutes" in bad.text


async def test_revoke_then_the_next_request_is_a_401(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "revoker@example.com")
    key, key_hash, _ = await create_key(browser_like, name="doomed")
    assert (await chat(portal, key)).status_code == 200
    revoked = await post(browser_like, f"/keys/{key_hash}", f"/keys/{key_hash}/revoke")
    assert revoked.status_code == 303 and "done=revoked" in revoked.headers["location"]
    assert (await chat(portal, key)).status_code == 401
    assert (await browser_like.get(f"/keys/{key_hash}")).status_code == 404
    listing = await browser_like.get(revoked.headers["location"])
    assert "was revoked" in listing.text and f'href="/keys/{key_hash}"' not in listing.text


async def test_another_accounts_keys_are_never_visible_or_changeable(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "owner@example.com")
    key, key_hash, _ = await create_key(browser_like, name="owners-key")
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as intruder:
        await member(intruder, inbox, "intruder@example.com")
        assert "owners-key" not in (await intruder.get("/keys")).text
        assert (await intruder.get(f"/keys/{key_hash}")).status_code == 404
        # Naming the owner's account (what an admin may do) gets a member nothing either.
        owner = await portal.runtime.accounts.get_by_email(email="owner@example.com")
        assert owner is not None
        assert (await intruder.get("/keys", params={"account": str(owner.id)})).status_code == 404
        planted = await post(intruder, "/keys", "/keys", name="planted", account=str(owner.id))
        assert planted.status_code == 404
        assert len(await portal.runtime.keys.list_all(account_id=owner.id, key_type="regular", limit=5)) == 1
        token = await form_token(intruder, "/keys")
        for action, fields in (("revoke", {}), ("state", {"disabled": "1"}), ("rotate", {}), ("edit", {"name": "x"})):
            answer = await intruder.post(f"/keys/{key_hash}/{action}", data={"csrf_token": token, **fields})
            assert answer.status_code == 404, action
    assert (await chat(portal, key)).status_code == 200
    record = await portal.runtime.keys.get(key_hash=key_hash)
    assert record is not None and record.name == "owners-key" and not record.disabled


async def test_filter_by_name_and_status(browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await member(browser_like, inbox, "filters@example.com")
    _, prod_hash, _ = await create_key(browser_like, name="prod-server")
    await create_key(browser_like, name="staging_box")
    await post(browser_like, f"/keys/{prod_hash}", f"/keys/{prod_hash}/state", disabled="1")
    by_name = (await browser_like.get("/keys", params={"q": "PROD"})).text
    assert "prod-server" in by_name and "staging_box" not in by_name
    disabled = (await browser_like.get("/keys", params={"status": "disabled"})).text
    assert "prod-server" in disabled and "staging_box" not in disabled
    active = (await browser_like.get("/keys", params={"status": "active"})).text
    assert "prod-server" not in active and "staging_box" in active
    wildcard = (await browser_like.get("/keys", params={"q": "_"})).text  # "_" is literal, not a LIKE wildcard
    assert "staging_box" in wildcard and "prod-server" not in wildcard


async def test_a_list_filtered_in_place_without_a_session_loads_the_sign_in_page_whole(portal: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=portal.base_url) as visitor:
        for path in ("/keys", "/admin/accounts"):
            in_place = await visitor.get(path, params={"q": "x"}, headers={"hx-request": "true"})
            assert in_place.status_code == 200 and in_place.headers["hx-redirect"] == "/login", path
            assert in_place.text == "" and in_place.headers["cache-control"] == "no-store"
            whole = await visitor.get(path, params={"q": "x"})
            assert whole.status_code == 303 and whole.headers["location"] == "/login", path
