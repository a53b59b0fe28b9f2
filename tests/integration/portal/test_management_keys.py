"""The account's management keys on /account through real HTTP: created once, usable, revoked, never another's."""

from __future__ import annotations

import re

import httpx

from keyrelay.testing.server import RunningServer
from tests.integration.portal.conftest import Inbox
from tests.integration.portal.test_key_pages import create_key, member
from tests.integration.portal.test_signin_flows import PASSWORD, form_token, post, sign_in

MGMT = re.compile(r"kr_mgmt_[A-Za-z0-9_-]{43}")
REVOKE = re.compile(r'action="(/account/management-keys/[0-9a-f]{64}/revoke)"')


async def api(portal: RunningServer, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=portal.base_url, timeout=10) as client:
        return await client.get("/api/v1/keys", headers={"authorization": f"Bearer {key}"})


async def test_a_management_key_is_shown_once_manages_the_own_keys_and_is_revoked(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "scripter@example.com")
    await create_key(browser_like, name="app-key")
    created = await post(browser_like, "/account", "/account/management-keys", name="ci-pipeline")
    assert created.status_code == 201 and "Management key created: ci-pipeline" in created.text
    found = MGMT.search(created.text)
    assert found and "/api/v1/keys" in created.text
    key = found.group(0)
    listed = await api(portal, key)
    assert listed.status_code == 200 and [k["name"] for k in listed.json()["data"]] == ["app-key"]
    page = (await browser_like.get("/account")).text
    assert "ci-pipeline" in page and key not in page and "this account" in page
    audit = (await browser_like.get("/audit")).text
    assert "management_key.create" in audit and "scripter@example.com" in audit
    revoke = REVOKE.search(page)
    assert revoke
    revoked = await post(browser_like, "/account", revoke.group(1))
    assert revoked.status_code == 303 and revoked.headers["location"] == "/account?done=management-revoked"
    assert (await api(portal, key)).status_code == 401
    assert "ci-pipeline" not in (await browser_like.get("/account")).text


async def test_the_create_form_sent_twice_creates_one_key_and_bad_names_create_none(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "twice@example.com")
    page = (await browser_like.get("/account")).text
    token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    form_id = re.search(r'name="form_id" value="([A-Za-z0-9_-]+)"', page)
    assert token and form_id
    fields = {"csrf_token": token.group(1), "form_id": form_id.group(1), "name": "once"}
    assert (await browser_like.post("/account/management-keys", data=fields)).status_code == 201
    again = await browser_like.post("/account/management-keys", data=fields)
    assert again.status_code == 409 and MGMT.search(again.text) is None
    for name in ("", "   ", "x" * 101):
        bad = await post(browser_like, "/account", "/account/management-keys", name=name)
        assert bad.status_code == 400 and "1 to 100 characters" in bad.text, name
        at = bad.text.index('id="management_name"')
        assert 'aria-invalid="true"' in bad.text[at : at + 300]
    account = await portal.runtime.accounts.get_by_email(email="twice@example.com")
    assert account is not None
    held = await portal.runtime.keys.list_all(account_id=account.id, key_type="management", limit=5)
    assert [k.name for k in held] == ["once"] and not held[0].is_admin


async def test_another_accounts_management_key_and_api_keys_cannot_be_revoked_here(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "keeper@example.com")
    _, api_key_hash, _ = await create_key(browser_like, name="api-key")
    created = await post(browser_like, "/account", "/account/management-keys", name="kept")
    found = MGMT.search(created.text)
    assert found
    revoke = REVOKE.search((await browser_like.get("/account")).text)
    assert revoke
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as other:
        await member(other, inbox, "meddler@example.com")
        token = await form_token(other, "/account")
        for action in (
            revoke.group(1),
            f"/account/management-keys/{api_key_hash}/revoke",
            "/account/management-keys/zz/revoke",
        ):
            answer = await other.post(action, data={"csrf_token": token})
            assert answer.status_code == 404, action
    # Nor can its owner revoke an API key through this form: that is the key page's Revoke.
    token = await form_token(browser_like, "/account")
    assert (
        await browser_like.post(f"/account/management-keys/{api_key_hash}/revoke", data={"csrf_token": token})
    ).status_code == 404
    assert (await api(portal, found.group(0))).status_code == 200


async def test_an_unverified_account_cannot_create_a_management_key(
    portal: RunningServer, browser_like: httpx.AsyncClient
) -> None:
    answer = await post(browser_like, "/signup", "/signup", email="early@example.com", password=PASSWORD)
    assert answer.status_code == 200
    assert (await sign_in(browser_like, "early@example.com")).status_code == 303
    refused = await post(browser_like, "/account", "/account/management-keys", name="too-soon")
    assert refused.status_code == 403 and "Verify your email" in refused.text
    account = await portal.runtime.accounts.get_by_email(email="early@example.com")
    assert account is not None
    assert await portal.runtime.keys.list_all(account_id=account.id, key_type="management", limit=5) == []
