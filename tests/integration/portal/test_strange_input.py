"""Whatever a client sends the portal, the answer is a 4xx page (or a redirect), never a 5xx, and nothing changes."""

from __future__ import annotations

import httpx
import pytest

from keyrelay.testing.server import RunningServer
from tests.integration.portal.conftest import Inbox
from tests.integration.portal.test_key_pages import member
from tests.integration.portal.test_signin_flows import form_token

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [
        ("POST", "/login", b"csrf_token=%ff%fe&email=%00&password=%c3%28", FORM),
        ("POST", "/login", b"&&&===&&", FORM),
        ("POST", "/login", b"a=1&" * 60, FORM),  # more fields than any form has
        ("POST", "/login", b"--x\r\nContent-Disposition: form-data; name=f; filename=a\r\n\r\nx\r\n--x--\r\n",
         {"content-type": "multipart/form-data; boundary=x"}),
        ("POST", "/login", b"--broken", {"content-type": "multipart/form-data; boundary=x"}),
        ("POST", "/login", b"{}", {"content-type": "application/json"}),
        ("POST", "/signup", b"x" * (1024 * 1024 + 10), FORM),  # over KEYRELAY_MAX_BODY_BYTES
        ("GET", "/verify/" + "a" * 5000, b"", {}),
        ("GET", "/reset/%00%ff", b"", {}),
        ("GET", "/keys/" + "f" * 64, b"", {}),
        ("GET", "/admin/accounts/99999999999999999999", b"", {}),
        ("PUT", "/login", b"", {}),
        ("GET", "/static/../../etc/passwd", b"", {}),
        ("GET", "/account/nothing-here", b"", {}),
        ("GET", "/keys?offset=%C2%B2", b"", {}),  # "²": str.isdigit() is true, int() refuses it
        ("GET", "/audit?before=%C2%B2", b"", {}),
        ("GET", "/logs?before=%C2%B2_%C2%B2", b"", {}),
        ("GET", "/usage?days=%C2%B2", b"", {}),
        ("GET", "/admin/accounts/%C2%B2", b"", {}),
    ],
)  # fmt: skip
async def test_strange_requests_get_a_4xx_page(
    portal: RunningServer, method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=portal.base_url, timeout=10) as client:
        answer = await client.request(method, path, content=body, headers={"origin": portal.base_url, **headers})
    assert answer.status_code < 500, (path, answer.status_code, answer.text[:300])
    assert "Traceback" not in answer.text


async def test_strange_form_fields_of_a_signed_in_account_change_nothing(
    portal: RunningServer, browser_like: httpx.AsyncClient, inbox: Inbox
) -> None:
    await member(browser_like, inbox, "odd@example.com")
    token = await form_token(browser_like, "/keys")
    cases = [
        {"name": "\x00", "csrf_token": token},
        {"name": "k", "limit": "1e400", "csrf_token": token},
        {"name": "k", "limit": "NaN", "csrf_token": token},
        {"name": "k", "rpm": "9" * 40, "csrf_token": token},
        {"name": "k", "expires_at": "not a date", "csrf_token": token},
        {"name": "k" * 5000, "csrf_token": token},
        {"name": "k", "limit_reset": "hourly", "csrf_token": token},
        {"name": "k", "allowed_models": "x" * 25_000, "csrf_token": token},
        {"name": "k", "rpm": "²", "csrf_token": token},
        {"name": "k", "limit": "1e30", "csrf_token": token},
    ]
    for fields in cases:
        answer = await browser_like.post("/keys", data=fields)
        assert 400 <= answer.status_code < 500, (fields, answer.status_code, answer.text[:300])
    account = await portal.runtime.accounts.get_by_email(email="odd@example.com")
    assert account is not None
    assert await portal.runtime.keys.list_all(account_id=account.id, key_type="regular", limit=5) == []
    for path, fields in (
        ("/account/notifications", {"spend": "\x00" * 10}),
        ("/account/sessions/end", {"session": "x" * 5000}),
        ("/account/password", {"password": "", "new_password": "x"}),
    ):
        answer = await browser_like.post(path, data={"csrf_token": token, **fields})
        assert answer.status_code < 500, (path, answer.status_code)
    # A lone surrogate, percent-encoded (no client library would encode it itself).
    raw = f"csrf_token={token}&password=%ed%a0%80&new_password=%ed%a0%80%ed%a0%80%ed%a0%80%ed%a0%80".encode()
    answer = await browser_like.post("/account/password", content=raw, headers=FORM)
    assert 400 <= answer.status_code < 500, answer.text[:300]
