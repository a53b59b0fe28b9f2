"""The account page (``/account``): profile, balance, password change, notifications, sessions, management keys.

The management keys' own actions (create, revoke) are in ``management_keys.py``.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from keyrelay.errors import GatewayError
from keyrelay.keys.format import KeyType
from keyrelay.portal.app import field_of, page_route, portal_of, post_of, visit_of
from keyrelay.portal.key_form import FIELDS, GROUP_DEFAULT, group_placeholders
from keyrelay.services.signin import SignedIn

router = APIRouter()
page = page_route(router)

_NOTICES = {
    "password": "Your password was changed. Your other sessions were signed out.",
    "sessions": "The other sessions were signed out.",
    "verify": "We sent a new verification link to your email.",
    "notifications": "Your email notifications were saved.",
    "management-revoked": "The management key was revoked: its next request is refused.",
}

# --- the account ------------------------------------------------------------------------------


async def account_page(
    request: Request, signed_in: SignedIn, session_id: str, *, status: int = 200, **context: Any
) -> Response:
    """The account page for a signed-in visitor, with ``context`` (notice, error) added."""
    portal = portal_of(request)
    account = await portal.runtime.accounts.get(account_id=signed_in.account.id)
    group = None
    if account is not None and account.group_id is not None:
        group = await portal.runtime.groups.get(group_id=account.group_id)
    sessions = await portal.signin.sessions(signed_in.account.id)
    spend_on, balance_on, expiry_on = await portal.runtime.notifications.preferences(account_id=signed_in.account.id)
    management_keys = await portal.runtime.keys.list_all(
        account_id=signed_in.account.id, key_type=KeyType.MANAGEMENT.value, limit=100
    )
    context.setdefault("form_id", secrets.token_urlsafe(24))
    inherited = group_placeholders(group)
    group_defaults = [
        (f.label, inherited[f.name].removeprefix(GROUP_DEFAULT))
        for f in FIELDS
        if inherited[f.name].startswith(GROUP_DEFAULT)
    ]
    return portal.render(
        request,
        "account.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        account=account,
        group=group,
        sessions=sessions,
        notify={"spend": spend_on, "balance": balance_on, "expiry": expiry_on},
        current_session=signed_in.session.id_hash,
        management_keys=management_keys,
        group_defaults=group_defaults,
        **context,
    )


@page("/account", ["GET"])
async def account(request: Request) -> Response:
    """``GET /account``: profile, balance, password change and sessions."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    _, signed_in, session_id = got
    notice = _NOTICES.get(request.query_params.get("done", ""))
    return await account_page(request, signed_in, session_id, notice=notice)


@page("/account/password", ["POST"])
async def change_password(request: Request) -> Response:
    """``POST /account/password``: change the password; the other sessions end."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    try:
        await portal.signin.change_password(
            signed_in=signed_in,
            current=field_of(form, "password"),
            new=field_of(form, "new_password"),
            ip=portal.ip(request),
        )
    except GatewayError as err:
        return await account_page(request, signed_in, session_id, status=400, error=err.message, error_field=err.field)
    return portal.redirect("/account?done=password")


@page("/account/sessions/end-others", ["POST"])
async def end_others(request: Request) -> Response:
    """``POST /account/sessions/end-others``: sign out every other session."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _, _ = got
    await portal.signin.sign_out_everywhere(account_id=signed_in.account.id, keep=signed_in.session.id_hash)
    return portal.redirect("/account?done=sessions")


@page("/account/sessions/end-all", ["POST"])
async def end_all(request: Request) -> Response:
    """``POST /account/sessions/end-all``: sign out everywhere, this session included."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _, _ = got
    await portal.signin.sign_out_everywhere(account_id=signed_in.account.id)
    response = portal.redirect("/login")
    portal.clear_session(response)
    return response


@page("/account/sessions/end", ["POST"])
async def end_one(request: Request) -> Response:
    """``POST /account/sessions/end``: sign out one session (form field ``session``: its hash)."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _, form = got
    await portal.signin.end_session(account_id=signed_in.account.id, id_hash=field_of(form, "session")[:64])
    if field_of(form, "session") == signed_in.session.id_hash:
        response = portal.redirect("/login")
        portal.clear_session(response)
        return response
    return portal.redirect("/account?done=sessions")


@page("/account/verify-email", ["POST"])
async def resend_verification(request: Request) -> Response:
    """``POST /account/verify-email``: mail a fresh verification link."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _, _ = got
    await portal.signin.send_verification(signed_in.account.id)
    return portal.redirect("/account?done=verify")


@page("/account/notifications", ["POST"])
async def notifications(request: Request) -> Response:
    """``POST /account/notifications``: the emails wanted (checkboxes ``spend``, ``balance``, ``expiry``)."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _, form = got
    assert portal.runtime is not None
    await portal.runtime.notifications.set_preferences(
        account_id=signed_in.account.id,
        spend=form.get("spend") == "on",
        balance=form.get("balance") == "on",
        expiry=form.get("expiry") == "on",
    )
    return portal.redirect("/account?done=notifications")
