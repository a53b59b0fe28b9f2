"""The Usage and Logs pages through real HTTP: totals, charts, CSV export, the request log, filters, paging, isolation.

Usage comes from real requests through the gateway with keys created in the portal; records dated days
ago (for the 7/30/90-day windows and the date filters) go through the same usage writer.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.services.audit import Actor
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.usage import UsageRepository
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from keyrelay.usage.records import UsageRecord
from tests.integration.portal.conftest import Inbox
from tests.integration.portal.test_key_pages import create_key, member
from tests.integration.portal.test_signin_flows import PASSWORD, sign_in, sign_up
from tests.records import usage_record

ROW = re.compile(
    r"<tr>\s*<td class=\"name\"><time datetime=\"([^\"]+)\">.*?<code>(req_[0-9a-f]+|[^<]+)</code></td>", re.S
)
OLDER = re.compile(r'<a href="(/logs\?[^"]*)" rel="next">Older</a>')


@pytest.fixture
def portal_settings(database_url: str, inbox: Inbox, mock: MockUpstream) -> Settings:
    """The portal's settings with one more model, ``broken``, whose upstream answers 500."""
    models = (
        ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60"),  # type: ignore[arg-type]
        ModelConfig(id="pricey", upstream_id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="600"),  # type: ignore[arg-type]
        ModelConfig(id="broken", upstream_id="fail-500"),
    )
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(ProviderConfig(name="mock", kind="openai", base_url=mock.base_url, models=models, timeout_s=5),),
        signup="open",
        signup_credit_usd=Decimal(100),
        smtp_url=f"smtp://127.0.0.1:{inbox.port}",  # type: ignore[arg-type]
    )


async def chat(portal: RunningServer, key: str, model: str = "gpt-4o-mini") -> int:
    async with httpx.AsyncClient(base_url=portal.base_url, timeout=10) as api:
        answer = await api.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}"},
        )
    return answer.status_code


async def flush(portal: RunningServer) -> None:
    assert portal.app.writer is not None
    await portal.app.flush_usage()


async def account_id(portal: RunningServer, email: str) -> int:
    account = await portal.runtime.accounts.get_by_email(email=email)
    assert account is not None
    return account.id


def old_record(portal: RunningServer, *, account: int, key_hash: str, name: str, days_ago: int) -> UsageRecord:
    """A usage record admitted ``days_ago`` days before now (at this time of day), as the gateway writes one."""
    return usage_record(
        f"req_old{days_ago:03d}",
        portal.runtime.clock.now_utc() - timedelta(days=days_ago),
        key_hash=key_hash,
        account_id=account,
        key_name=name,
        prompt_tokens=1000,
        completion_tokens=500,
        cost_micros=1_000_000 * days_ago,
        latency_ms=12,
        client_ip="203.0.113.9",
    )


def log_rows(html: str) -> list[tuple[str, str]]:
    """(time, request id) of each row of the log table, top to bottom."""
    return ROW.findall(html)


async def test_usage_page_totals_charts_and_csv(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "spender@example.com")
    alpha, alpha_hash, _ = await create_key(browser_like, name="alpha")
    formula, _, _ = await create_key(browser_like, name="=HYPERLINK(1)")
    assert [await chat(portal, alpha) for _ in range(2)] == [200, 200]
    assert await chat(portal, formula, "pricey") == 200
    assert await chat(portal, alpha, "broken") >= 500
    await flush(portal)
    me = await account_id(portal, "spender@example.com")
    [total] = await UsageRepository(portal.runtime.engine).totals(
        account_id=me, key_hash=None, model=None, start=None, end=None, group_by=None
    )
    assert total.requests == 4 and total.errors == 1 and total.cost_micros > 0

    page = await browser_like.get("/usage")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'aria-current="page">Usage</a>' in html and 'aria-current="page">Last 30 days</a>' in html
    assert "1 failed" in html and f"{total.prompt_tokens:,} in, {total.completion_tokens:,} out" in html
    assert html.count('<svg class="chart') == 3 and html.count('class="bar"') >= 3
    keys_chart = html[html.index('id="chart-keys-t"') : html.index("</svg>", html.index('id="chart-keys-t"'))]
    assert "alpha" in keys_chart and "=HYPERLINK(1)" in keys_chart
    models_chart = html[html.index('id="chart-models-t"') : html.index("</svg>", html.index('id="chart-models-t"'))]
    assert all(m in models_chart for m in ("gpt-4o-mini", "pricey", "broken"))
    table = html[html.index('class="stacked usage-keys"') :]
    alpha_row = table[table.index(">alpha<") : table.index("</tr>", table.index(">alpha<"))]
    assert re.findall(r'data-label="(?:Requests|Failed)">(\d+)<', alpha_row) == ["3", "1"]
    assert " style=" not in html and "<style" not in html and "<script>" not in html  # the CSP allows neither
    for bad in ("days=5", "days=abc", "metric=joules"):
        assert 'aria-current="page">Last 30 days</a>' in (await browser_like.get(f"/usage?{bad}")).text
    by_requests = (await browser_like.get("/usage?days=7&metric=requests")).text
    assert 'aria-current="page">Last 7 days</a>' in by_requests and "Requests per day" in by_requests

    exported = await browser_like.get("/usage.csv?days=7")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"].startswith('attachment; filename="keyrelay-usage-')
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    today = portal.runtime.clock.now_utc().date().isoformat()
    got = {(r["day"], r["key_name"], r["model"]): (r["requests"], r["errors"]) for r in rows}
    assert got == {
        (today, "alpha", "gpt-4o-mini"): ("2", "0"),
        (today, "alpha", "broken"): ("1", "1"),
        (today, "'=HYPERLINK(1)", "pricey"): ("1", "0"),  # a formula is exported as text
    }
    assert {r["key_hash"] for r in rows if r["key_name"] == "alpha"} == {alpha_hash}
    assert sum(round(float(r["cost_usd"]) * 1_000_000) for r in rows) == total.cost_micros


async def test_the_period_is_7_30_or_90_utc_days(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "history@example.com")
    key, key_hash, _ = await create_key(browser_like, name="hist")
    assert await chat(portal, key) == 200
    me = await account_id(portal, "history@example.com")
    assert portal.app.writer is not None
    for days_ago in (10, 40, 100):
        portal.app.writer.enqueue(old_record(portal, account=me, key_hash=key_hash, name="hist", days_ago=days_ago))
    await flush(portal)
    requests_in = {}
    for days in (7, 30, 90):
        exported = await browser_like.get(f"/usage.csv?days={days}")
        requests_in[days] = sum(int(r["requests"]) for r in csv.DictReader(io.StringIO(exported.text)))
    assert requests_in == {7: 1, 30: 2, 90: 3}
    page = (await browser_like.get("/usage?days=90")).text
    assert "$50.00" in page  # the $10 and $40 records, and the real request's fraction of a cent
    day = (portal.runtime.clock.now_utc() - timedelta(days=40)).date().isoformat()
    assert f"<title>{day}: $40.00</title>" in page  # the bar of that day


async def test_the_log_shows_each_request_newest_first_in_pages_of_50(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "logger@example.com")
    bulk, _, _ = await create_key(browser_like, name="bulk")
    other, other_hash, _ = await create_key(browser_like, name="other")
    for _ in range(6):
        assert await asyncio.gather(*(chat(portal, bulk) for _ in range(9))) == [200] * 9
    assert await chat(portal, other, "pricey") == 200
    assert await chat(portal, bulk, "broken") >= 500
    await flush(portal)

    first = await browser_like.get("/logs")
    assert first.status_code == 200 and 'aria-current="page">Logs</a>' in first.text
    rows = log_rows(first.text)
    assert len(rows) == 50
    assert "broken" in first.text[: first.text.index(rows[1][1])]  # the newest request comes first
    assert "Server error" in first.text or "UPSTREAM" in first.text
    older = OLDER.search(first.text)
    assert older is not None
    second = await browser_like.get(older.group(1).replace("&amp;", "&"))
    more = log_rows(second.text)
    assert len(more) == 6 and OLDER.search(second.text) is None and ">Newest</a>" in second.text
    ids = [r[1] for r in rows + more]
    assert len(set(ids)) == 56  # every request once: no gap, no repeat
    times = [datetime.fromisoformat(r[0]) for r in rows + more]
    assert times == sorted(times, reverse=True)
    assert "127.0.0.1" in first.text and "mock" in first.text and " ms<" in first.text

    failed = await browser_like.get("/logs", params={"status": "error"})
    assert len(log_rows(failed.text)) == 1 and "broken" in failed.text
    assert len(log_rows((await browser_like.get("/logs", params={"status": "ok"})).text)) == 50
    by_model = await browser_like.get("/logs", params={"model": "pricey"})
    assert len(log_rows(by_model.text)) == 1 and 'value="pricey"' in by_model.text
    by_key = await browser_like.get("/logs", params={"key": other_hash})
    assert len(log_rows(by_key.text)) == 1 and f'value="{other_hash}" selected' in by_key.text
    today = portal.runtime.clock.now_utc().date()
    same_day = {"from": today.isoformat(), "to": today.isoformat(), "key": other_hash}
    assert len(log_rows((await browser_like.get("/logs", params=same_day)).text)) == 1
    later = {"from": (today + timedelta(days=1)).isoformat()}
    assert "No request matches these filters." in (await browser_like.get("/logs", params=later)).text
    earlier = {"to": (today - timedelta(days=1)).isoformat()}
    assert log_rows((await browser_like.get("/logs", params=earlier)).text) == []
    paged = older.group(1).replace("&amp;", "&") + "&status=ok"  # filters and cursor together
    assert len(log_rows((await browser_like.get(paged)).text)) == 6  # the older page holds no failure


async def test_bad_log_filters_name_the_field(browser_like: httpx.AsyncClient, inbox: Inbox) -> None:
    await member(browser_like, inbox, "typist@example.com")
    for params, field in (({"from": "yesterday"}, "f-from"), ({"from": "2026-12-05", "to": "2026-12-01"}, "f-to")):
        answer = await browser_like.get("/logs", params=params)
        assert answer.status_code == 400, params
        at = answer.text.index(f'id="{field}"')
        assert 'aria-invalid="true"' in answer.text[at : at + 200]
    # Values no one typed are dropped rather than sent to the store.
    for params in ({"model": "x\x00y"}, {"key": "not-a-hash"}, {"status": "teapot"}, {"before": "1_2_3"}):
        assert (await browser_like.get("/logs", params=params)).status_code == 200, params


async def test_another_account_never_sees_the_records(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "owner@example.com")
    key, key_hash, _ = await create_key(browser_like, name="owners-secret-project")
    assert [await chat(portal, key) for _ in range(3)] == [200] * 3
    await flush(portal)
    first = (await browser_like.get("/logs")).text
    newest = log_rows(first)[0]
    stamp = datetime.fromisoformat(newest[0]) + timedelta(seconds=1)
    cursor = f"{(stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)}_999999"
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as intruder:
        await sign_up(intruder, inbox, "intruder@example.com")
        assert (await sign_in(intruder, "intruder@example.com")).status_code == 303
        paths = (
            "/usage",
            "/usage?days=90",
            "/usage?scope=all",
            "/logs",
            f"/logs?key={key_hash}",
            f"/logs?before={cursor}",
        )
        for path in paths:
            page = await intruder.get(path)
            assert page.status_code == 200 and "owners-secret-project" not in page.text, path
            assert log_rows(page.text) == [], path
        for path in ("/usage.csv?days=90", "/usage.csv?scope=all"):
            exported = await intruder.get(path)
            assert exported.text.strip().splitlines() == [exported.text.splitlines()[0]]  # the header only
    # An admin asking for every account sees it; without scope=all, only the admin's own.
    rt = portal.runtime
    root = await rt.account_service.create_account(AccountCreate(email="root@example.com"), actor=Actor.cli())
    await rt.signin.set_password(account_id=root.id, password=PASSWORD, verified=True, actor=Actor.cli())
    await rt.signin.set_admin(account_id=root.id, admin=True, actor=Actor.cli())
    async with httpx.AsyncClient(base_url=portal.base_url, headers={"origin": portal.base_url}) as admin:
        assert (await sign_in(admin, "root@example.com")).status_code == 303
        assert "owners-secret-project" not in (await admin.get("/usage")).text
        everything = await admin.get("/usage?scope=all")
        assert "every account" in everything.text and "owners-secret-project" in everything.text
        assert "owners-secret-project" in (await admin.get("/usage.csv?scope=all")).text


async def test_signed_out_visitors_are_sent_to_sign_in(browser_like: httpx.AsyncClient) -> None:
    for path in ("/usage", "/usage.csv", "/logs"):
        answer = await browser_like.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/login", path
