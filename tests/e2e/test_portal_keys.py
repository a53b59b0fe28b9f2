"""The API Keys and admin pages in a real browser (headless Debian Chromium): a user's journeys, then screenshots.

Create a key (shown once, copied, never shown again), see its last-used IP, edit a limit, rotate with a grace
period, revoke it, other accounts' keys stay invisible, an admin's top-up, the audit log, the 80 % mail.
Controls are found by their accessible names; the gateway is called over HTTP like an application would.
"""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.testing.server import RunningServer, running_server
from tests.e2e.test_portal_signin import PASSWORD, VIEWPORTS, sign_in
from tests.integration.portal.conftest import Inbox
from tests.integration.portal.test_admin_pages import make_admin
from tests.integration.portal.test_notifications import spend_to_80_percent

OPS = Actor.cli()
KEY = re.compile(r"kr_live_[A-Za-z0-9_-]{43}")
SPEND_MAIL = "used 80% of its spend limit"


async def make_holder(portal: RunningServer, email: str, balance: Decimal | None = None) -> int:
    """A verified account with ``PASSWORD`` (and a credit balance when given); returns its id."""
    runtime = portal.runtime
    fields: dict[str, object] = {"email": email} if balance is None else {"email": email, "balance": balance}
    account = await runtime.account_service.create_account(AccountCreate.model_validate(fields), actor=OPS)
    await runtime.signin.set_password(account_id=account.id, password=PASSWORD, verified=True, actor=OPS)
    return account.id


async def signed_in(portal: RunningServer, page: Page, email: str, balance: Decimal | None = None) -> int:
    """Make the account, sign in with the browser and land on API Keys; returns the account id."""
    account_id = await make_holder(portal, email, balance)
    await sign_in(page, email)
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
    return account_id


async def chat(server: RunningServer, key: str, model: str = "gpt-4o-mini") -> int:
    """The gateway's status for one chat request with ``key``."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as api:
        answer = await api.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        return answer.status_code


async def shown_key(page: Page) -> str:
    """The plaintext on the page that shows a key once (every copy of it on the page is the same key)."""
    found: set[str] = set(KEY.findall(await page.get_by_role("main").inner_text()))
    assert len(found) == 1, found
    return found.pop()


async def create_key(page: Page, name: str, **fields: str) -> tuple[str, str]:
    """Create a key with the Create key dialog of /keys (``fields``: label → value); (plaintext, detail path)."""
    await page.goto("/keys")
    await page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create key")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Name", exact=True).fill(name)
    for label, value in fields.items():
        await dialog.get_by_label(label, exact=True).fill(value)
    await dialog.get_by_role("button", name="Create", exact=True).click()
    await expect(page.get_by_role("heading", name=f"Key created: {name}")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("shown this once and never again")
    detail = await page.get_by_role("link", name="Key details").get_attribute("href")
    assert detail is not None and re.fullmatch(r"/keys/[0-9a-f]{64}", detail), detail
    return await shown_key(page), detail


async def open_detail(page: Page, detail: str, name: str) -> None:
    await page.goto(detail)
    await expect(page.get_by_role("heading", level=1)).to_contain_text(name)


def actions(page: Page) -> Locator:
    """The Actions section of a key's detail panel (Disable, Rotate, Revoke)."""
    return page.get_by_role("region", name="Actions")


async def rotate(page: Page, name: str, grace_minutes: str) -> str:
    """Rotate the key of the open detail panel through its dialog; returns the new plaintext, shown once."""
    await actions(page).get_by_role("button", name="Rotate").click()
    dialog = page.get_by_role("dialog", name=f"Rotate {name}")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Grace period (minutes)").fill(grace_minutes)
    await dialog.get_by_role("button", name="Rotate").click()
    await expect(page.get_by_role("heading", name=f"New secret for {name}")).to_be_visible()
    return await shown_key(page)


async def revoke(page: Page, name: str) -> None:
    """Revoke the key of the open detail panel, confirming in the dialog."""
    await actions(page).get_by_role("button", name="Revoke").click()
    dialog = page.get_by_role("dialog", name=f"Revoke {name}?")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading", name=f"Revoke {name}?")).to_be_visible()
    await dialog.get_by_role("button", name="Revoke").click()
    await expect(page).to_have_url(re.compile(r"/keys\?done=revoked"))
    await expect(page.get_by_role("status")).to_have_text(f"The key '{name}' was revoked.")


async def save_settings(page: Page, **fields: str) -> None:
    """Fill the Settings form of the open detail panel (label → value) and save it."""
    settings = page.get_by_role("region", name="Settings")
    for label, value in fields.items():
        await settings.get_by_label(label, exact=True).fill(value)
    await settings.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("status")).to_have_text("Saved. The key's next request follows the new settings.")


async def admin_top_up(page: Page, email: str, amount: str) -> None:
    """As a signed-in admin: Admin, find the account by email, open it, add ``amount`` USD of credit."""
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    await expect(page.get_by_role("heading", name="Accounts", exact=True)).to_be_visible()
    await page.get_by_label("Search by email").fill(email)
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("link", name=email, exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text(email)
    await page.get_by_label("Add credit (USD)").fill(amount)
    await page.get_by_role("button", name="Top up").click()
    await expect(page.get_by_role("status")).to_contain_text("The credit was added.")


async def reload_until(page: Page, locator: Locator, text: re.Pattern[str], timeout_s: float = 10.0) -> None:
    """Reload the page until ``locator`` shows ``text`` (a value written in the background), with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            await expect(locator).to_contain_text(text, timeout=250)
            return
        except AssertionError:
            if loop.time() > deadline:
                raise
        await page.reload()


def audit_row(page: Page, action: str) -> Locator:
    """The audit table's row(s) of ``action`` (``key.create``...)."""
    return page.get_by_role("row").filter(has=page.get_by_text(action, exact=True))


# --- journeys ---------------------------------------------------------------------------------


async def test_the_create_key_dialog_shows_the_key_once_and_never_again(
    portal: RunningServer, context: BrowserContext, page: Page
) -> None:
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    await signed_in(portal, page, "maker@example.com")
    key, detail = await create_key(page, "ci-bot", **{"Spend limit (USD)": "5", "Requests per minute": "60"})
    await expect(page.get_by_text(key, exact=True)).to_be_visible()

    await page.get_by_role("button", name="Copy").click()
    await expect(page.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == key
    assert await chat(portal, key) == 200

    for path in ("/keys", detail, "/account", "/usage", "/logs", "/audit"):
        response = await page.goto(path)
        assert response is not None and response.status == 200, path
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert key not in await page.content(), f"the plaintext is shown again on {path}"
        assert key[8:] not in await page.content(), f"the secret part is shown again on {path}"
    await page.goto("/keys")
    await expect(page.get_by_role("link", name="ci-bot")).to_be_visible()  # listed, by its name only


async def test_a_request_with_the_key_shows_its_last_used_ip_in_the_detail_panel(
    portal: RunningServer, page: Page
) -> None:
    await signed_in(portal, page, "watcher@example.com")
    key, detail = await create_key(page, "watched")
    await open_detail(page, detail, "watched")
    use = page.get_by_role("region", name="Use")
    await expect(use).to_contain_text(re.compile(r"Last-used IP\s*none"))
    assert await chat(portal, key) == 200
    await reload_until(page, use, re.compile(r"Last-used IP\s*127\.0\.0\.1"))


async def test_a_limit_edited_in_the_detail_panel_is_enforced(portal: RunningServer, page: Page) -> None:
    await signed_in(portal, page, "editor@example.com")
    key, detail = await create_key(page, "limited")
    await open_detail(page, detail, "limited")
    await save_settings(page, **{"Requests per minute": "1"})
    await expect(page.get_by_role("region", name="Rules")).to_contain_text("1 per minute")
    limits_now = page.get_by_role("region", name="Limits now")
    await expect(limits_now).to_contain_text(re.compile(r"Requests this minute\s*0 of 1"))
    assert await chat(portal, key) == 200
    assert await chat(portal, key) == 429
    await page.reload()  # the panel counts as admission does: the refused request is not counted
    await expect(limits_now).to_contain_text(re.compile(r"Requests this minute\s*1 of 1"))


async def test_rotation_with_a_grace_period_keeps_both_secrets_working(portal: RunningServer, page: Page) -> None:
    await signed_in(portal, page, "rotator@example.com")
    old, detail = await create_key(page, "rotated")
    await open_detail(page, detail, "rotated")
    new = await rotate(page, "rotated", "10")
    assert new != old
    await expect(page.get_by_text("The old secret keeps working until")).to_be_visible()
    assert await chat(portal, old) == 200
    assert await chat(portal, new) == 200
    await open_detail(page, detail, "rotated")
    await expect(page.get_by_role("region", name="Use")).to_contain_text("Old secret works until")
    assert new not in await page.content()


async def test_revoke_asks_for_confirmation_then_the_key_gets_a_401(portal: RunningServer, page: Page) -> None:
    await signed_in(portal, page, "revoker@example.com")
    key, detail = await create_key(page, "doomed")
    assert await chat(portal, key) == 200
    await open_detail(page, detail, "doomed")
    await actions(page).get_by_role("button", name="Revoke").click()  # Cancel first: nothing happens
    dialog = page.get_by_role("dialog", name="Revoke doomed?")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    assert await chat(portal, key) == 200

    await revoke(page, "doomed")
    await expect(page.get_by_role("link", name="doomed")).to_have_count(0)
    assert await chat(portal, key) == 401
    response = await page.goto(detail)
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", name="No such key")).to_be_visible()


async def test_another_accounts_browser_never_sees_the_key(portal: RunningServer, browser: Browser, page: Page) -> None:
    await signed_in(portal, page, "owner@example.com")
    key, detail = await create_key(page, "owners-key")
    intruder = await browser.new_context(base_url=portal.base_url)
    try:
        other = await intruder.new_page()
        await signed_in(portal, other, "intruder@example.com")
        await expect(other.get_by_text("No keys yet.")).to_be_visible()
        await expect(other.get_by_role("link", name="owners-key")).to_have_count(0)
        await other.get_by_label("Search by name").fill("owners")
        await other.get_by_role("button", name="Filter").click()
        await expect(other.get_by_text("No key matches this filter.")).to_be_visible()
        response = await other.goto(detail)
        assert response is not None and response.status == 404
        await expect(other.get_by_role("heading", name="No such key")).to_be_visible()
        assert "owners-key" not in await other.content()
    finally:
        await intruder.close()
    await open_detail(page, detail, "owners-key")  # the owner still has it, untouched
    assert await chat(portal, key) == 200


async def test_the_key_list_filters_in_place_as_you_type(portal: RunningServer, page: Page) -> None:
    account_id = await signed_in(portal, page, "typist@example.com")
    account = await portal.runtime.accounts.get(account_id=account_id)
    assert account is not None
    for name in ("prod-server", "staging-box"):
        await portal.runtime.key_service.create(account=account, spec=KeyCreate(name=name), actor=OPS)
    await page.goto("/keys")
    await page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
    await page.get_by_label("Search by name").fill("prod")  # no button pressed: htmx asks as you type
    await expect(page.get_by_role("link", name="staging-box")).to_have_count(0)
    await expect(page.get_by_role("link", name="prod-server")).to_be_visible()
    await expect(page).to_have_url(re.compile(r"/keys\?q=prod&status=$"))
    await page.get_by_label("Status").select_option("disabled")
    await expect(page.get_by_text("No key matches this filter.")).to_be_visible()
    assert await page.evaluate("window.sameDocument === true")
    # Back to the list as it was: the browser loads it again (no page is kept in localStorage).
    await page.go_back()
    await expect(page.get_by_role("link", name="prod-server")).to_be_visible()
    assert await page.evaluate("localStorage.length") == 0


async def test_an_admin_top_up_turns_a_402_into_a_200(portal: RunningServer, page: Page) -> None:
    runtime = portal.runtime
    broke = await runtime.account_service.create_account(
        AccountCreate.model_validate({"email": "broke@example.com", "balance": Decimal(0)}), actor=OPS
    )
    key = (await runtime.key_service.create(account=broke, spec=KeyCreate(name="k"), actor=OPS)).plaintext
    assert await chat(portal, key) == 402
    await make_admin(portal)
    await sign_in(page, "root@example.com")
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
    await admin_top_up(page, "broke@example.com", "5")
    await expect(page.get_by_role("region", name="Credit")).to_contain_text("$5.00")
    assert await chat(portal, key) == 200


async def test_the_audit_log_shows_each_change_with_its_actor(
    portal: RunningServer, browser: Browser, page: Page
) -> None:
    holder, admin = "holder@example.com", "root@example.com"
    account_id = await signed_in(portal, page, holder, balance=Decimal(1))
    _, detail = await create_key(page, "audited")
    await open_detail(page, detail, "audited")
    await save_settings(page, **{"Requests per minute": "30"})
    await rotate(page, "audited", "0")
    await open_detail(page, detail, "audited")
    await revoke(page, "audited")

    await make_admin(portal, admin)
    admin_context = await browser.new_context(base_url=portal.base_url)
    try:
        admin_page = await admin_context.new_page()
        await sign_in(admin_page, admin)
        await expect(admin_page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
        await admin_top_up(admin_page, holder, "2")
        await expect(admin_page).to_have_url(re.compile(rf"/admin/accounts/{account_id}\?done=topped-up$"))
        history = admin_page.get_by_role("region", name="History")
        top_up = history.get_by_role("row").filter(has=admin_page.get_by_text("account.top_up", exact=True))
        await expect(top_up).to_have_count(1)
        await expect(top_up).to_contain_text(admin)
    finally:
        await admin_context.close()

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    await expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    for action in ("key.create", "key.update", "key.rotate", "key.revoke"):
        row = audit_row(page, action)
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(holder)
        await expect(row).to_contain_text("127.0.0.1")
    await expect(audit_row(page, "key.update")).to_contain_text("rpm")
    await expect(audit_row(page, "account.top_up")).to_contain_text(admin)  # about the holder's account


async def test_the_80_percent_spend_mail_arrives_once(
    portal_settings: Settings, browser: Browser, inbox: Inbox
) -> None:
    email = "spender@example.com"
    settings = portal_settings.model_copy(update={"notify_interval_s": 0.05})
    async with running_server(settings) as srv:
        context = await browser.new_context(base_url=srv.base_url)
        try:
            page = await context.new_page()
            await signed_in(srv, page, email)
            key, detail = await create_key(page, "meter", **{"Spend limit (USD)": "0.003"})
            await spend_to_80_percent(srv, key, detail.removeprefix("/keys/"))
            mail = await inbox.wait_for(email, SPEND_MAIL)
            text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            assert "'meter'" in text and detail in text and key not in text
            for _ in range(3):
                await srv.runtime.notifier.check_once()
            assert len([m for m in inbox.sent_to(email) if SPEND_MAIL in str(m["Subject"])]) == 1
            await open_detail(page, detail, "meter")  # the mail's link leads to the key's panel
            await expect(page.get_by_role("region", name="Spend")).to_contain_text("$0.003")
        finally:
            await context.close()


# --- screenshots ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", list(VIEWPORTS))
@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshots_of_the_key_and_admin_pages(
    portal: RunningServer, browser: Browser, screenshot_dir: Path, scheme: str, device: str
) -> None:
    """Full-page PNGs, ``<page>-<scheme>-<device>.png``, of pages with data in them; no page scrolls sideways."""
    runtime = portal.runtime
    await make_admin(portal)  # an admin has keys of their own, and sees the admin pages
    root = await runtime.accounts.get_by_email(email="root@example.com")
    assert root is not None
    await runtime.account_service.create_group(
        GroupCreate.model_validate({"name": "team", "default_limit": Decimal(20), "default_rate_limits": {"rpm": 60}}),
        actor=OPS,
    )
    customer = await runtime.account_service.create_account(
        AccountCreate.model_validate({"email": "customer@example.com", "balance": Decimal(10), "group": "team"}),
        actor=OPS,
    )
    await runtime.account_service.top_up(customer, 5_000_000, actor=OPS)
    spec = {"name": "production-server-with-a-rather-long-name", "limit": Decimal(5), "limit_reset": "daily"}
    busy = await runtime.key_service.create(account=root, spec=KeyCreate.model_validate(spec), actor=OPS)
    spare = await runtime.key_service.create(account=root, spec=KeyCreate(name="staging"), actor=OPS)
    theirs = await runtime.key_service.create(account=customer, spec=KeyCreate(name="customer-key"), actor=OPS)
    await runtime.key_service.create(
        account=root, spec=KeyCreate(name="deploy-script"), key_type=KeyType.MANAGEMENT, actor=OPS
    )
    for key in (busy.plaintext, busy.plaintext, spare.plaintext):
        assert await chat(portal, key) == 200
    assert await chat(portal, busy.plaintext, model="no-such-model") >= 400  # a failed request in the logs
    await portal.app.flush_usage()

    context = await browser.new_context(
        base_url=portal.base_url,
        color_scheme="dark" if scheme == "dark" else "light",
        viewport=VIEWPORTS[device],
        is_mobile=device == "phone",
        has_touch=device == "phone",
    )
    page = await context.new_page()

    async def shoot(name: str, dialog: Locator | None = None) -> None:
        # A modal dialog's backdrop covers the viewport only: its picture is of the viewport, as a person sees it.
        await expect(dialog or page.get_by_role("heading", level=1)).to_be_visible()
        await page.screenshot(path=screenshot_dir / f"{name}-{scheme}-{device}.png", full_page=dialog is None)
        overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px on a {device}"

    try:
        await sign_in(page, "root@example.com")
        await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
        await shoot("keys")
        await page.get_by_role("button", name="Create key").click()
        create = page.get_by_role("dialog", name="Create key")
        await shoot("keys-create-dialog", create)
        await create.get_by_label("Name", exact=True).fill("laptop")
        await create.get_by_role("button", name="Create", exact=True).click()
        await expect(page.get_by_role("heading", name="Key created: laptop")).to_be_visible()
        await shoot("key-created")
        await page.goto(f"/keys/{busy.record.hash}")
        await shoot("key-detail")
        await actions(page).get_by_role("button", name="Rotate").click()
        rotate_dialog = page.get_by_role("dialog", name=re.compile(r"^Rotate "))
        await shoot("key-rotate-dialog", rotate_dialog)
        await rotate_dialog.get_by_role("button", name="Cancel").click()
        await expect(rotate_dialog).to_be_hidden()
        await actions(page).get_by_role("button", name="Revoke").click()
        await shoot("key-revoke-dialog", page.get_by_role("dialog", name=re.compile(r"^Revoke ")))
        await page.goto("/admin/accounts")
        await shoot("admin-accounts")
        await page.goto(f"/admin/accounts/{customer.id}")
        await shoot("admin-account")
        await page.goto(f"/keys?account={customer.id}")
        await shoot("admin-account-keys")
        await page.goto(f"/keys/{theirs.record.hash}")
        await shoot("admin-key-detail")
        await page.goto("/account")
        await shoot("account-management-keys")
        await page.goto("/admin/groups")
        await shoot("admin-groups")
        await page.goto("/admin/providers")
        await shoot("admin-providers")
        for path in ("/audit", "/usage", "/logs"):
            await page.goto(path)
            await shoot(path.strip("/"))
    finally:
        await context.close()
