"""Sign-up, verification, sign-in, sessions and password reset through real HTTP and a real SMTP server."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from decimal import Decimal

import httpx

from keyrelay.config import Settings
from keyrelay.errors import GatewayError
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountUpdate
from keyrelay.testing.server import RunningServer, running_server
from tests.integration.portal.conftest import Inbox, link_path

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


async def form_token(client: httpx.AsyncClient, path: str) -> str:
    """GET a page and return the CSRF token of its form."""
    page = await client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


FORM_ID = re.compile(r'name="form_id" value="([A-Za-z0-9_-]+)"')


async def post(client: httpx.AsyncClient, page: str, action: str, **fields: str) -> httpx.Response:
    """Submit a form of ``page`` to ``action`` with its CSRF token (and its form id, when it has one)."""
    shown = await client.get(page)
    assert shown.status_code == 200, shown.text
    token = CSRF.search(shown.text)
    assert token, shown.text
    form_id = FORM_ID.search(shown.text)
    extra = {"form_id": form_id.group(1)} if form_id else {}
    return await client.post(action, data={"csrf_token": token.group(1), **extra, **fields})


async def sign_up(client: httpx.AsyncClient, inbox: Inbox, email: str) -> None:
    answer = await post(client, "/signup", "/signup", email=email, password=PASSWORD)
    assert answer.status_code == 200 and "Check your email" in answer.text
    path = link_path(await inbox.wait_for(email, "Verify"))
    verified = await post(client, path, path, password=PASSWORD)
    assert verified.status_code == 200 and "Email verified" in verified.text


async def sign_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await post(client, "/login", "/login", email=email, password=password)


async def test_sign_up_verify_and_sign_in(portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await sign_up(browser_like, inbox, "new@example.com")
    login = await portal.runtime.signin._logins.login_by_email(email="new@example.com")
    assert login is not None and login.email_verified_at is not None
    assert login.password_hash is not None and login.password_hash.startswith("$argon2id$")
    answer = await sign_in(browser_like, "new@example.com")
    assert answer.status_code == 303 and answer.headers["location"] == "/keys"
    cookie = answer.headers["set-cookie"]
    assert "kr_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    page = await browser_like.get("/account")
    assert page.status_code == 200 and "new@example.com" in page.text


async def test_a_verification_link_works_once(browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await sign_up(browser_like, inbox, "once@example.com")
    path = link_path(await inbox.wait_for("once@example.com", "Verify"))
    again = await post(browser_like, path, path, password=PASSWORD)
    assert again.status_code == 400 and "Link not valid" in again.text


async def test_only_whoever_chose_the_password_can_verify_the_email(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    # Someone signs up with another person's address; that person clicking the link does not verify it.
    answer = await post(browser_like, "/signup", "/signup", email="victim@example.com", password=PASSWORD)
    assert answer.status_code == 200
    path = link_path(await inbox.wait_for("victim@example.com", "Verify"))
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as victim:
        clicked = await post(victim, path, path, password="whatever the victim types")
        assert clicked.status_code == 400 and "The password is wrong." in clicked.text
    account = await portal.runtime.accounts.get_by_email(email="victim@example.com")
    assert account is not None
    login = await portal.runtime.signin.login(account.id)
    assert login is not None and login.email_verified_at is None
    # The link still works for whoever chose the password.
    assert (await post(browser_like, path, path, password=PASSWORD)).status_code == 200


async def test_a_sign_in_racing_a_password_reset_cannot_outlive_it(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    # An attacker who knows the old password signs in while its owner resets it: the sign-in checked the old
    # password, so its session is void once the reset lands, whatever the order of the writes.
    await sign_up(browser_like, inbox, "raced@example.com")
    rt = portal.runtime
    session_id, _ = await rt.signin.sign_in(
        email="raced@example.com", password=PASSWORD, ip="192.0.2.1", user_agent=None
    )
    account = await rt.accounts.get_by_email(email="raced@example.com")
    assert account is not None
    await rt.signin.set_password(
        account_id=account.id, password="a new password here", verified=True, actor=Actor.cli()
    )
    # The worst order: the attacker's session row is written after the reset deleted the sessions.
    login = await rt.signin.login(account.id)
    assert login is not None
    stale = await rt.signin.open_session(
        replace(login, session_epoch=login.session_epoch - 1), ip="192.0.2.1", user_agent=None
    )
    assert await rt.signin.session(stale) is None
    assert await rt.signin.session(session_id) is None
    fresh, _ = await rt.signin.sign_in(
        email="raced@example.com", password="a new password here", ip="192.0.2.2", user_agent=None
    )
    assert await rt.signin.session(fresh) is not None


async def test_concurrent_wrong_passwords_cannot_pass_the_throttle(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "burst@example.com")

    async def guess() -> int:
        try:
            await portal.runtime.signin.sign_in(
                email="burst@example.com", password="guess guess guess", ip="198.51.100.7", user_agent=None
            )
        except GatewayError as err:
            return err.status
        return 200

    answers = await asyncio.gather(*(guess() for _ in range(12)))
    assert answers.count(400) <= 5 and answers.count(429) >= 7, answers


async def test_a_deactivated_accounts_sessions_do_not_come_back(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "paused@example.com")
    assert (await sign_in(browser_like, "paused@example.com")).status_code == 303
    rt = portal.runtime
    account = await rt.accounts.get_by_email(email="paused@example.com")
    assert account is not None
    off = await rt.account_service.update_account(account, AccountUpdate(status="inactive"), actor=Actor.cli())
    await rt.account_service.update_account(off, AccountUpdate(status="active"), actor=Actor.cli())
    assert (await browser_like.get("/account")).headers.get("location") == "/login"


async def test_an_address_that_would_mail_someone_else_is_refused(
    browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    for email in ("=?utf-8?q?attacker=40evil.example=2C?=victim@corp.example", "a,b@example.com", "a@["):
        answer = await post(browser_like, "/signup", "/signup", email=email, password=PASSWORD)
        assert answer.status_code == 400, email
    assert inbox.messages == []


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "known@example.com")
    wrong = await sign_in(browser_like, "known@example.com", "not the password")
    unknown = await sign_in(browser_like, "nobody@example.com", "not the password")
    assert wrong.status_code == unknown.status_code == 400
    message = "The email or password is wrong."
    assert message in wrong.text and message in unknown.text
    assert "kr_session" not in wrong.headers.get("set-cookie", "")
    assert (await browser_like.get("/account")).headers.get("location") == "/login"


async def test_sign_in_is_throttled_per_email(browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await sign_up(browser_like, inbox, "target@example.com")
    for _ in range(5):
        assert (await sign_in(browser_like, "target@example.com", "guess guess guess")).status_code == 400
    throttled = await sign_in(browser_like, "target@example.com")  # even the right password now waits
    assert throttled.status_code == 429 and "Too many failed sign-ins" in throttled.text
    assert int(throttled.headers["retry-after"]) == 900


async def test_signup_with_a_known_email_says_the_same_and_mails_the_owner(
    browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "taken@example.com")
    again = await post(browser_like, "/signup", "/signup", email="taken@example.com", password="another password")
    assert again.status_code == 200 and "Check your email" in again.text
    notice = await inbox.wait_for("taken@example.com", "Your keyrelay account")
    assert "already has an account" in notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_bad_signup_input_names_the_field_and_creates_nothing(
    portal: RunningServer, browser_like: httpx.AsyncClient
) -> None:
    short = await post(browser_like, "/signup", "/signup", email="short@example.com", password="short")
    assert short.status_code == 400 and "at least 10 characters" in short.text
    assert 'id="password"' in short.text and 'aria-invalid="true"' in short.text
    bad = await post(browser_like, "/signup", "/signup", email="not-an-email", password=PASSWORD)
    assert bad.status_code == 400 and "valid email" in bad.text
    assert await portal.runtime.accounts.get_by_email(email="short@example.com") is None


async def test_password_reset_link_works_once_and_ends_every_session(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "forgetful@example.com")
    assert (await sign_in(browser_like, "forgetful@example.com")).status_code == 303
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as other:
        asked = await post(other, "/forgot-password", "/forgot-password", email="forgetful@example.com")
        assert asked.status_code == 200 and "If an account has this email" in asked.text
        path = link_path(await inbox.wait_for("forgetful@example.com", "Reset"))
        done = await post(other, path, path, new_password="a brand new password")
        assert done.status_code == 303 and done.headers["location"] == "/login?done=reset"
        assert (await sign_in(other, "forgetful@example.com")).status_code == 400  # the old password is gone
        assert (await sign_in(other, "forgetful@example.com", "a brand new password")).status_code == 303
        reused = await other.get(path)
        assert reused.status_code == 400 and "Link not valid" in reused.text
    # The session opened before the reset ended.
    assert (await browser_like.get("/account")).headers.get("location") == "/login"


async def test_a_reset_request_for_an_unknown_email_looks_the_same_and_sends_nothing(
    browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    asked = await post(browser_like, "/forgot-password", "/forgot-password", email="ghost@example.com")
    assert asked.status_code == 200 and "If an account has this email" in asked.text
    assert inbox.sent_to("ghost@example.com") == []


async def test_csrf_refused_without_token_with_a_wrong_one_or_from_another_site(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "csrf@example.com")
    assert (await sign_in(browser_like, "csrf@example.com")).status_code == 303
    no_token = await browser_like.post("/account/sessions/end-all", data={})
    wrong = await browser_like.post("/account/sessions/end-all", data={"csrf_token": "0" * 64})
    token = await form_token(browser_like, "/account")
    cross = await browser_like.post(
        "/account/sessions/end-all", data={"csrf_token": token}, headers={"origin": "https://evil.example"}
    )
    fetch_meta = await browser_like.post(
        "/account/sessions/end-all", data={"csrf_token": token}, headers={"sec-fetch-site": "cross-site"}
    )
    for answer in (no_token, wrong, cross, fetch_meta):
        assert answer.status_code == 403 and "Request refused" in answer.text
    assert (await browser_like.get("/account")).status_code == 200  # still signed in: nothing changed
    # A sign-in form posted from another site is refused too (login CSRF), as is one without the cookie.
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as visitor:
        login_token = await form_token(visitor, "/login")
        fields = {"csrf_token": login_token, "email": "csrf@example.com", "password": PASSWORD}
        forged = await visitor.post("/login", data=fields, headers={"origin": "https://evil.example"})
        assert forged.status_code == 403
        visitor.cookies.clear()
        assert (await visitor.post("/login", data=fields)).status_code == 403


async def test_change_password_keeps_this_session_and_ends_the_others(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await sign_up(browser_like, inbox, "changer@example.com")
    assert (await sign_in(browser_like, "changer@example.com")).status_code == 303
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as other:
        assert (await sign_in(other, "changer@example.com")).status_code == 303
        wrong = await post(
            browser_like, "/account", "/account/password", password="not it at all", new_password="x" * 12
        )
        assert wrong.status_code == 400 and "current password is wrong" in wrong.text
        done = await post(
            browser_like, "/account", "/account/password", password=PASSWORD, new_password="an even newer one"
        )
        assert done.status_code == 303
        assert (await other.get("/account")).headers.get("location") == "/login"
    assert (await browser_like.get("/account")).status_code == 200


async def test_sign_out_ends_the_session(browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await sign_up(browser_like, inbox, "leaver@example.com")
    assert (await sign_in(browser_like, "leaver@example.com")).status_code == 303
    out = await post(browser_like, "/account", "/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await browser_like.get("/account")).headers.get("location") == "/login"


async def test_pages_carry_the_security_headers(browser_like: httpx.AsyncClient) -> None:
    page = await browser_like.get("/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    # Not "no-referrer": browsers then send "Origin: null" with the page's own forms (refused as cross-site).
    assert page.headers["referrer-policy"] == "same-origin"
    assert re.findall(r"<script[^>]*>", page.text) == [
        '<script src="/static/htmx.min.js" defer>',
        '<script src="/static/portal.js" defer>',
    ]
    assert "style=" not in page.text and "onclick" not in page.text and "hx-on" not in page.text
    # htmx may neither evaluate code nor inject its indicator <style> (the CSP would refuse both), nor keep
    # copies of pages (with their CSRF tokens) in localStorage.
    config = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", page.text)
    assert config and json.loads(config.group(1)) == {
        "historyCacheSize": 0,
        "refreshOnHistoryMiss": True,
        "includeIndicatorStyles": False,
        "allowEval": False,
        "allowScriptTags": False,
        "selfRequestsOnly": True,
    }
    css = await browser_like.get("/static/portal.css")
    assert css.status_code == 200 and "prefers-color-scheme: dark" in css.text
    htmx = await browser_like.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and htmx.headers["content-type"].startswith(
        ("text/javascript", "application/javascript")
    )


async def test_a_signed_up_account_has_only_the_credit_the_operator_grants(
    portal_settings: Settings, inbox: Inbox
) -> None:
    settings = portal_settings.model_copy(update={"signup_credit_usd": Decimal(0)})
    async with (
        running_server(settings) as srv,
        httpx.AsyncClient(base_url=srv.base_url, headers={"origin": srv.base_url}) as client,
    ):
        await sign_up(client, inbox, "stranger@example.com")
        account = await srv.runtime.accounts.get_by_email(email="stranger@example.com")
        assert account is not None and account.balance_micros == 0  # not unlimited
        key = (
            await srv.runtime.key_service.create(account=account, spec=KeyCreate(name="k"), actor=Actor.cli())
        ).plaintext
        answer = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}", "origin": ""},
        )
        assert answer.status_code == 402
