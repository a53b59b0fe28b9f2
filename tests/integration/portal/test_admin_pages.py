"""Admin pages and the audit log page through real HTTP: top-up (402 → 200), invitations, status, history."""

from __future__ import annotations

from decimal import Decimal

import httpx

from keyrelay.keys.spec import KeyCreate
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.testing.server import RunningServer
from tests.integration.portal.conftest import Inbox, link_path
from tests.integration.portal.test_key_pages import chat, create_key, member
from tests.integration.portal.test_signin_flows import PASSWORD, post, sign_in

OPS = Actor.cli()


async def make_admin(portal: RunningServer, email: str = "root@example.com") -> None:
    rt = portal.runtime
    account = await rt.account_service.create_account(AccountCreate(email=email), actor=OPS)
    await rt.signin.set_password(account_id=account.id, password=PASSWORD, verified=True, actor=OPS)
    await rt.signin.set_admin(account_id=account.id, admin=True, actor=OPS)


async def test_an_admin_top_up_turns_a_402_into_a_200(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    rt = portal.runtime
    broke = await rt.account_service.create_account(
        AccountCreate.model_validate({"email": "broke@example.com", "balance": Decimal(0)}), actor=OPS
    )
    key = (await rt.key_service.create(account=broke, spec=KeyCreate(name="k"), actor=OPS)).plaintext
    assert (await chat(portal, key)).status_code == 402
    await make_admin(portal)
    assert (await sign_in(browser_like, "root@example.com")).status_code == 303
    listing = await browser_like.get("/admin/accounts", params={"q": "broke"})
    assert listing.status_code == 200 and "broke@example.com" in listing.text
    page = f"/admin/accounts/{broke.id}"
    bad = await post(browser_like, page, f"{page}/top-up", amount="-3")
    assert bad.status_code == 400 and 'id="amount"' in bad.text
    done = await post(browser_like, page, f"{page}/top-up", amount="5")
    assert done.status_code == 303 and done.headers["location"].endswith("done=topped-up")
    assert (await chat(portal, key)).status_code == 200
    account = await rt.accounts.get(account_id=broke.id)
    assert account is not None and account.balance_micros == 5_000_000
    detail = (await browser_like.get(page)).text
    assert "account.top_up" in detail and "root@example.com" in detail  # the history names the admin


async def test_admin_pages_are_a_404_for_members(browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await member(browser_like, inbox, "plain@example.com")
    for path in ("/admin/accounts", "/admin/accounts/1"):
        answer = await browser_like.get(path)
        assert answer.status_code == 404, path
    nav = (await browser_like.get("/keys")).text
    assert 'href="/admin/accounts"' not in nav


async def test_an_invited_account_chooses_its_password_by_the_emailed_link(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await make_admin(portal)
    assert (await sign_in(browser_like, "root@example.com")).status_code == 303
    created = await post(
        browser_like, "/admin/accounts", "/admin/accounts", email="newbie@example.com", balance="10", invite="on"
    )
    assert created.status_code == 303 and created.headers["location"].endswith("done=invited")
    path = link_path(await inbox.wait_for("newbie@example.com", "invited"))
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as newbie:
        assert (await post(newbie, path, path, new_password="my own password")).status_code == 303
        assert (await sign_in(newbie, "newbie@example.com", "my own password")).status_code == 303
        assert (await newbie.get("/keys")).status_code == 200
    duplicate = await post(browser_like, "/admin/accounts", "/admin/accounts", email="newbie@example.com")
    assert duplicate.status_code == 409 and "exists" in duplicate.text


async def test_deactivating_an_account_stops_its_keys(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await make_admin(portal)
    rt = portal.runtime
    user = await rt.account_service.create_account(AccountCreate(email="paused@example.com"), actor=OPS)
    key = (await rt.key_service.create(account=user, spec=KeyCreate(name="k"), actor=OPS)).plaintext
    assert (await chat(portal, key)).status_code == 200
    assert (await sign_in(browser_like, "root@example.com")).status_code == 303
    page = f"/admin/accounts/{user.id}"
    saved = await post(browser_like, page, f"{page}/edit", status="inactive", group="")
    assert saved.status_code == 303
    assert (await chat(portal, key)).status_code == 403
    bad = await post(browser_like, page, f"{page}/edit", status="deleted", group="")
    assert bad.status_code == 400


async def test_the_audit_page_shows_each_change_with_its_actor_to_the_right_people(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "actor@example.com")
    _, key_hash, _ = await create_key(browser_like, name="audited")
    await post(browser_like, f"/keys/{key_hash}", f"/keys/{key_hash}/state", disabled="1")
    log = (await browser_like.get("/audit")).text
    assert "key.create" in log and "key.update" in log and "actor@example.com" in log
    assert "127.0.0.1" in log
    detail = (await browser_like.get(f"/keys/{key_hash}")).text
    assert "History" in detail and "key.update" in detail and "disabled" in detail
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as other:
        await member(other, inbox, "stranger@example.com")
        assert "audited" not in (await other.get("/audit")).text
        assert key_hash[:12] not in (await other.get("/audit")).text
    await make_admin(portal)
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as admin:
        assert (await sign_in(admin, "root@example.com")).status_code == 303
        everything = (await admin.get("/audit")).text
        assert key_hash[:12] in everything and "stranger@example.com" in everything
        by_actor = (await admin.get("/audit", params={"actor": "stranger@example.com"})).text
        assert key_hash[:12] not in by_actor and "stranger@example.com" in by_actor


async def test_groups_are_created_edited_and_deleted_and_their_defaults_apply(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await make_admin(portal)
    rt = portal.runtime
    assert (await sign_in(browser_like, "root@example.com")).status_code == 303
    bad = await post(browser_like, "/admin/groups", "/admin/groups", name="team", rpm="many")
    assert bad.status_code == 400 and 'id="new-rpm"' in bad.text and "whole number" in bad.text
    created = await post(browser_like, "/admin/groups", "/admin/groups", name="team", rpm="1", price_multiplier="2")
    assert created.status_code == 303
    group = await rt.groups.get_by_name(name="team")
    assert group is not None and group.default_rpm == 1 and group.price_multiplier_ppm == 2_000_000
    user = await rt.account_service.create_account(AccountCreate(email="teamer@example.com", group="team"), actor=OPS)
    key = (await rt.key_service.create(account=user, spec=KeyCreate(name="k"), actor=OPS)).plaintext
    assert (await chat(portal, key)).status_code == 200
    assert (await chat(portal, key)).status_code == 429  # the group's default window
    page = f"/admin/groups/{group.id}"
    edited = await post(browser_like, page, f"{page}/edit", name="team", rpm="", price_multiplier="1")
    assert edited.status_code == 303
    group = await rt.groups.get(group_id=group.id)
    assert group is not None and group.default_rpm is None
    in_use = await post(browser_like, page, f"{page}/delete")
    assert in_use.status_code == 409 and "still has 1 account" in in_use.text
    providers = (await browser_like.get("/admin/providers")).text
    assert "gpt-4o-mini" in providers and "$600" in providers
    history = (await browser_like.get(page)).text
    assert "group.create" in history and "group.update" in history


async def test_an_admin_session_manages_another_accounts_keys_like_an_admin_management_key(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    rt = portal.runtime
    holder = await rt.account_service.create_account(AccountCreate(email="holder@example.com"), actor=OPS)
    issued = await rt.key_service.create(account=holder, spec=KeyCreate(name="holders-key"), actor=OPS)
    key, key_hash = issued.plaintext, issued.record.hash
    await make_admin(portal)
    assert (await sign_in(browser_like, "root@example.com")).status_code == 303
    account_page = (await browser_like.get(f"/admin/accounts/{holder.id}")).text
    assert f'href="/keys/{key_hash}"' in account_page and f'href="/keys?account={holder.id}"' in account_page
    assert "holders-key" not in (await browser_like.get("/keys")).text  # the admin's own list stays its own
    listing = f"/keys?account={holder.id}"
    shown = (await browser_like.get(listing)).text
    assert "holders-key" in shown and "API Keys of holder@example.com" in shown
    assert f'name="account" value="{holder.id}"' in shown  # in the filter and in the Create key form
    # Create key for the account: the key is the account's and spends its credit.
    created = await post(browser_like, listing, "/keys", name="made-by-admin", account=str(holder.id))
    assert created.status_code == 201 and f'href="{listing}"' in created.text
    made = await rt.keys.list_all(account_id=holder.id, key_type="regular", limit=5)
    assert sorted(k.name for k in made) == ["holders-key", "made-by-admin"]
    # The detail panel says whose key it is; every action works and the history names the admin.
    detail = f"/keys/{key_hash}"
    panel = (await browser_like.get(detail)).text
    assert "This key belongs to holder@example.com" in panel and "Rotated</dt><dd>never" in panel
    assert (await post(browser_like, detail, f"{detail}/edit", name="holders-key", rpm="1")).status_code == 303
    record = await rt.keys.get(key_hash=key_hash)
    assert record is not None and record.rpm == 1
    version = str(record.version)
    rotated = await post(browser_like, detail, f"{detail}/rotate", grace_minutes="0", version=version)
    assert rotated.status_code == 200 and "New secret for holders-key" in rotated.text
    assert (await chat(portal, key)).status_code == 401  # the old secret, without grace
    panel = (await browser_like.get(detail)).text
    assert "Rotated</dt><dd>never" not in panel and "Rotated</dt><dd>20" in panel
    assert "key.rotate" in panel and "root@example.com" in panel
    revoked = await post(browser_like, detail, f"{detail}/revoke")
    assert revoked.status_code == 303 and revoked.headers["location"].startswith(f"/keys?account={holder.id}&")
    assert "was revoked" in (await browser_like.get(revoked.headers["location"])).text
    assert await rt.keys.get(key_hash=key_hash) is None
    # An account that does not exist, or an id that is not one, is a 404 and creates nothing.
    for bad in ("999999", "abc", "-1", "0", "", "4294967296", "1" * 11):
        assert (await browser_like.get("/keys", params={"account": bad})).status_code == 404, bad
        answer = await post(browser_like, "/keys", "/keys", name="nowhere", account=bad)
        assert answer.status_code == 404, bad
    assert len(await rt.keys.list_all(account_id=holder.id, key_type="regular", limit=5)) == 1


async def test_a_member_sees_its_groups_limits_on_the_account_page(
    portal: RunningServer, browser_like: httpx.AsyncClient
) -> None:
    rt = portal.runtime
    spec = GroupCreate.model_validate(
        {
            "name": "team",
            "price_multiplier": Decimal("1.5"),
            "default_rate_limits": {"rpm": 30},
            "allowed_models": ["gpt-4o-mini"],
            "quota": Decimal(100),
            "quota_reset": "monthly",
        }
    )
    await rt.account_service.create_group(spec, actor=OPS)
    member = await rt.account_service.create_account(AccountCreate(email="teamed@example.com", group="team"), actor=OPS)
    await rt.signin.set_password(account_id=member.id, password=PASSWORD, verified=True, actor=OPS)
    assert (await sign_in(browser_like, "teamed@example.com")).status_code == 303
    page = (await browser_like.get("/account")).text
    assert "<dt>Group</dt><dd>team</dd>" in page and "<dt>Price multiplier</dt><dd>×1.5</dd>" in page
    assert "<dt>Group quota</dt><dd>$100.00 monthly, shared by the group's keys</dd>" in page
    assert "<dt>Requests per minute</dt><dd>30 " in page and "<dt>Allowed models</dt><dd>gpt-4o-mini " in page
    assert "<dt>Tokens per minute</dt>" not in page  # no default: nothing inherited to show
