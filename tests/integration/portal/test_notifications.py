"""Email notifications: 80 % and 100 % of a key's spend limit, a low balance, an expiring key; each once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx

from keyrelay.config import Settings
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate, AccountUpdate
from keyrelay.testing.server import RunningServer, running_server
from tests.integration.portal.conftest import Inbox

ACTOR = Actor.system("test")
# The mock answers this with 4 prompt tokens and 1 completion token: about 601 micro-dollars at "pricey"'s
# prices. Admission reserves about 614 (the prompt bounded by its bytes), so a limit of $0.003 lets the
# requests through until 80 % is spent (after four).
CHAT = {"model": "pricey", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
LIMIT = Decimal("0.003")


async def spend_to_80_percent(server: RunningServer, key: str, key_hash: str) -> None:
    """Send requests until the store shows at least 80 % of the $0.003 limit spent."""
    rt = server.runtime
    for _ in range(10):
        assert await chat(server, key) == 200
        await server.app.flush_usage()
        record = await rt.keys.get(key_hash=key_hash)
        assert record is not None
        if record.usage_micros * 100 >= 3000 * 80:
            return
    raise AssertionError("the key never reached 80 % of its limit")


async def chat(server: RunningServer, key: str) -> int:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as api:
        answer = await api.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
        return answer.status_code


async def test_the_80_percent_spend_notification_arrives_once(portal_settings: Settings, inbox: Inbox) -> None:
    settings = portal_settings.model_copy(update={"notify_interval_s": 0.05})
    async with running_server(settings) as srv:
        rt = srv.runtime
        account = await rt.account_service.create_account(AccountCreate(email="spender@example.com"), actor=ACTOR)
        issued = await rt.key_service.create(
            account=account, spec=KeyCreate.model_validate({"name": "meter", "limit": LIMIT}), actor=ACTOR
        )
        await spend_to_80_percent(srv, issued.plaintext, issued.record.hash)
        mail = await inbox.wait_for("spender@example.com", "used 80% of its spend limit")
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "'meter'" in text and f"/keys/{issued.record.hash}" in text
        assert issued.plaintext not in text
        # Many more checks run; the mail is not sent again in this period.
        sent_before = len(inbox.sent_to("spender@example.com"))
        for _ in range(5):
            await rt.notifier.check_once()
        assert len(inbox.sent_to("spender@example.com")) == sent_before


async def test_spend_notifications_follow_the_period_and_the_switch(portal_settings: Settings, inbox: Inbox) -> None:
    async with running_server(portal_settings) as srv:  # checks driven by hand here (interval 60 s)
        rt = srv.runtime
        account = await rt.account_service.create_account(AccountCreate(email="daily@example.com"), actor=ACTOR)
        spec = KeyCreate.model_validate({"name": "d", "limit": LIMIT, "limit_reset": "daily"})
        issued = await rt.key_service.create(account=account, spec=spec, actor=ACTOR)
        await rt.notifications.set_preferences(account_id=account.id, spend=False, balance=True, expiry=True)
        await spend_to_80_percent(srv, issued.plaintext, issued.record.hash)
        assert await rt.notifier.check_once() == 0  # switched off
        await rt.notifications.set_preferences(account_id=account.id, spend=True, balance=True, expiry=True)
        assert await rt.notifier.check_once() == 1
        assert await rt.notifier.check_once() == 0
        assert len(inbox.sent_to("daily@example.com")) == 1


async def test_low_balance_is_told_once_per_top_up(portal_settings: Settings, inbox: Inbox) -> None:
    settings = portal_settings.model_copy(update={"low_balance_usd": Decimal(5)})
    async with running_server(settings) as srv:
        rt = srv.runtime
        account = await rt.account_service.create_account(
            AccountCreate.model_validate({"email": "low@example.com", "balance": Decimal(3)}), actor=ACTOR
        )
        assert await rt.notifier.check_once() == 1
        assert await rt.notifier.check_once() == 0
        mail = await inbox.wait_for("low@example.com", "balance is low")
        assert "$3.00 of credit left" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        await rt.account_service.update_account(
            account, AccountUpdate.model_validate({"balance": Decimal(20)}), actor=ACTOR
        )
        assert await rt.notifier.check_once() == 0  # above the threshold now
        fresh = await rt.accounts.get(account_id=account.id)
        assert fresh is not None
        await rt.account_service.update_account(
            fresh, AccountUpdate.model_validate({"balance": Decimal(1)}), actor=ACTOR
        )
        assert await rt.notifier.check_once() == 1  # a new credit: told again
        assert len(inbox.sent_to("low@example.com")) == 2


async def test_a_key_expiring_within_7_days_is_told_once(portal_settings: Settings, inbox: Inbox) -> None:
    async with running_server(portal_settings) as srv:
        rt = srv.runtime
        account = await rt.account_service.create_account(AccountCreate(email="soon@example.com"), actor=ACTOR)
        now = rt.clock.now_utc()
        for name, days in (("soon", 3), ("later", 30)):
            expires = (now + timedelta(days=days)).isoformat()
            spec = KeyCreate.model_validate({"name": name, "expires_at": expires})
            await rt.key_service.create(account=account, spec=spec, actor=ACTOR)
        assert await rt.notifier.check_once() == 1
        assert await rt.notifier.check_once() == 0
        mail = await inbox.wait_for("soon@example.com", "expires on")
        assert "'soon'" in str(mail["Subject"])
