"""The portal in a real browser (headless Debian Chromium): sign-up, sign-in, password reset, CSRF, screenshots.

Each test is a user's journey: elements are found by their accessible names (what a screen reader announces),
mail arrives through the real SMTP server of ``inbox``, and the pages are the ones a person would see.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, Response, ViewportSize, expect

from keyrelay.portal.security import csrf_token
from keyrelay.services.inputs import AccountCreate
from keyrelay.testing.server import RunningServer
from tests.conftest import TEST_ACTOR
from tests.integration.portal.conftest import Inbox, link_path

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new password"
WRONG = "The email or password is wrong."


async def make_account(portal: RunningServer, email: str, password: str = PASSWORD) -> None:
    """A verified account with this password, made as the CLI does (the sign-up test makes one in the browser)."""
    runtime = portal.runtime
    account = await runtime.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
    await runtime.signin.set_password(account_id=account.id, password=password, verified=True, actor=TEST_ACTOR)


async def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    """Fill and send the sign-in form of ``/login``."""
    await page.goto("/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def expect_signed_in(page: Page, email: str) -> None:
    """The browser landed on the API Keys page after signing in, and its account page is ``email``'s."""
    await expect(page).to_have_url(re.compile(r"/keys$"))
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
    await page.goto("/account")
    await expect_account_page(page, email)


async def expect_account_page(page: Page, email: str) -> None:
    """The page is the account page of ``email``."""
    await expect(page).to_have_url(re.compile(r"/account$"))
    await expect(page.get_by_role("heading", name="Account", exact=True)).to_be_visible()
    await expect(page.get_by_role("region", name="Profile")).to_contain_text(email)


async def expect_signed_out(page: Page) -> None:
    """``/account`` sends this browser to the sign-in page."""
    await page.goto("/account")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


# --- journeys ---------------------------------------------------------------------------------


async def test_sign_up_verify_the_email_by_its_link_and_sign_in(page: Page, inbox: Inbox) -> None:
    email = "new@example.com"
    await page.goto("/signup")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()

    await page.goto(link_path(await inbox.wait_for(email, "Verify")))
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Verify email").click()
    await expect(page.get_by_role("heading", name="Email verified")).to_be_visible()

    await sign_in(page, email)
    await expect_signed_in(page, email)
    await expect(page.get_by_role("button", name="Send the link again")).to_have_count(0)  # verified


async def test_a_wrong_password_is_refused_and_the_right_one_then_works(portal: RunningServer, page: Page) -> None:
    email = "typo@example.com"
    await make_account(portal, email)
    await sign_in(page, email, "not the password")
    await expect(page.get_by_role("alert")).to_have_text(WRONG)
    await expect(page.get_by_label("Email")).to_have_value(email)  # kept, so only the password is typed again
    await expect_signed_out(page)

    await sign_in(page, email)
    await expect_signed_in(page, email)


async def test_reset_the_password_by_the_emailed_link(portal: RunningServer, page: Page, inbox: Inbox) -> None:
    email = "forgetful@example.com"
    await make_account(portal, email)
    await page.goto("/login")
    await page.get_by_role("link", name="Forgot password?").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_role("button", name="Send reset link").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()

    link = link_path(await inbox.wait_for(email, "Reset"))
    await page.goto(link)
    await page.get_by_label("New password").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Set password").click()
    await expect(page).to_have_url(re.compile(r"/login\?done=reset$"))
    await expect(page.get_by_role("status")).to_contain_text("Your password was changed")

    await sign_in(page, email, NEW_PASSWORD)
    await expect_signed_in(page, email)

    await page.goto(link)
    await expect(page.get_by_role("heading", name="Link not valid")).to_be_visible()


# --- CSRF from other origins ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def attacker_site(html: str) -> AsyncIterator[int]:
    """Serve ``html`` at ``/`` on another port of 127.0.0.1 (reached as 127.0.0.1 or localhost); yields the port."""

    async def attacker_page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", attacker_page)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        await runner.cleanup()


def attack_form(action: str, **fields: str) -> str:
    """An attacker's page: a tempting button that POSTs a form with ``fields`` to ``action``."""
    hidden = "".join(f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items())
    return (
        "<!doctype html><title>You won</title>"
        f'<form method="post" action="{action}">{hidden}<button type="submit">Claim your prize</button></form>'
    )


async def signed_in_victim(portal: RunningServer, context: BrowserContext, page: Page) -> str:
    """Sign in as victim@example.com in the browser; returns the session id."""
    await make_account(portal, "victim@example.com")
    await sign_in(page, "victim@example.com")
    await expect_signed_in(page, "victim@example.com")
    return next(c["value"] for c in await context.cookies() if c["name"] == "kr_session")


async def submit_attack(page: Page, attacker_url: str, target: str) -> tuple[Response, dict[str, str]]:
    """Open the attacker's page, click its button: the portal's answer to the form and the headers sent.

    Returns once the browser has loaded the page it ends on (after any redirects).
    """
    await page.goto(attacker_url)
    async with (
        page.expect_navigation(),
        page.expect_response(lambda r: r.url == target and r.request.method == "POST") as answer,
    ):
        await page.get_by_role("button", name="Claim your prize").click()
    response = await answer.value
    return response, await response.request.all_headers()


@pytest.mark.parametrize("action", ["/account/sessions/end-all", "/logout"])
async def test_a_form_on_another_origin_of_the_site_cannot_sign_the_victim_out(
    portal: RunningServer, context: BrowserContext, page: Page, action: str
) -> None:
    session_id = await signed_in_victim(portal, context, page)
    target = portal.base_url + action
    # Same site, so the SameSite=Lax session cookie goes along; the attacker even has the form's token (the
    # worst case): the browser's Origin header alone must get the form refused.
    async with attacker_site(attack_form(target, csrf_token=csrf_token(session_id))) as port:
        response, sent = await submit_attack(page, f"http://127.0.0.1:{port}/", target)
    assert (sent["origin"], sent["sec-fetch-site"]) == (f"http://127.0.0.1:{port}", "same-site")
    assert "kr_session=" in sent["cookie"]
    assert response.status == 403
    await expect(page.get_by_role("heading", name="Request refused")).to_be_visible()
    await page.goto("/account")
    await expect_account_page(page, "victim@example.com")


async def test_a_form_on_another_site_can_neither_sign_in_nor_sign_out(
    portal: RunningServer, context: BrowserContext, page: Page
) -> None:
    await signed_in_victim(portal, context, page)
    await make_account(portal, "attacker@example.com")
    # localhost is another site than 127.0.0.1: the browser sends Sec-Fetch-Site: cross-site and no Lax cookie.
    login = attack_form(portal.base_url + "/login", email="attacker@example.com", password=PASSWORD)
    async with attacker_site(login) as port:
        response, sent = await submit_attack(page, f"http://localhost:{port}/", portal.base_url + "/login")
    assert (sent["origin"], sent["sec-fetch-site"]) == (f"http://localhost:{port}", "cross-site")
    assert response.status == 403  # login CSRF: the victim is not signed in to the attacker's account
    await expect(page.get_by_role("heading", name="Request refused")).to_be_visible()

    end_all = portal.base_url + "/account/sessions/end-all"
    async with attacker_site(attack_form(end_all)) as port:
        response, sent = await submit_attack(page, f"http://localhost:{port}/", end_all)
    assert sent["sec-fetch-site"] == "cross-site" and "kr_session=" not in sent.get("cookie", "")
    assert response.status in (303, 403)  # without the cookie it is no one's request; nothing changed
    await page.goto("/account")
    await expect_account_page(page, "victim@example.com")


# --- screenshots ------------------------------------------------------------------------------

VIEWPORTS: dict[str, ViewportSize] = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.mark.parametrize("device", list(VIEWPORTS))
@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshots_of_every_page(
    portal: RunningServer, browser: Browser, inbox: Inbox, screenshot_dir: Path, scheme: str, device: str
) -> None:
    """Full-page PNGs of each page, ``<page>-<scheme>-<device>.png``; no page scrolls sideways."""
    email = "screenshots@example.com"
    account = await portal.runtime.account_service.create_account(AccountCreate(email=email), actor=TEST_ACTOR)
    await portal.runtime.signin.set_password(account_id=account.id, password=PASSWORD, verified=False, actor=TEST_ACTOR)
    await portal.runtime.signin.sign_in(  # a second session, from a phone, for the sessions table
        email=email,
        password=PASSWORD,
        ip="2001:db8:85a3::8a2e:370:7334",
        user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    )
    await portal.runtime.signin.request_reset(email)
    reset = link_path(await inbox.wait_for(email, "Reset"))

    context = await browser.new_context(
        base_url=portal.base_url,
        color_scheme="dark" if scheme == "dark" else "light",
        viewport=VIEWPORTS[device],
        is_mobile=device == "phone",
        has_touch=device == "phone",
    )
    page = await context.new_page()

    async def shoot(name: str) -> None:
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        await page.screenshot(path=screenshot_dir / f"{name}-{scheme}-{device}.png", full_page=True)
        overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px on a {device}"

    try:
        await page.goto("/signup")
        await shoot("signup")
        await page.goto("/forgot-password")
        await shoot("forgot-password")
        await page.goto(reset)
        await shoot("reset")
        await page.goto("/reset/not-a-link-we-sent")
        await shoot("message")
        await sign_in(page, email, "not the password")
        await expect(page.get_by_role("alert")).to_have_text(WRONG)
        await shoot("login-error")
        await page.goto("/login")
        await shoot("login")
        await sign_in(page, email)
        await expect_signed_in(page, email)
        await shoot("account")
    finally:
        await context.close()
