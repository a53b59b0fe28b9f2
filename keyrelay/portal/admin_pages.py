"""The admin pages (``/admin/...``, admin accounts only): accounts, their credit, status, group and invitations.

Everyone else gets a 404 here, as for a page that does not exist. Every change goes through
``services/accounts.py`` and ``services/signin.py`` with the signed-in admin as the actor, so it reaches
the gateway on the account's next request and is in the audit log.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import usd_to_micros
from keyrelay.portal.app import Portal, admin_post_of, admin_visit_of, field_of, page_route, row_id_of
from keyrelay.portal.forms import is_digits
from keyrelay.portal.key_pages import key_row
from keyrelay.services.inputs import AccountCreate, AccountUpdate
from keyrelay.services.signin import SignedIn
from keyrelay.store.records import AccountRecord

router = APIRouter()
page = page_route(router)

PAGE_SIZE = 50
KEYS_SHOWN = 10  # the newest keys on an account's page; the rest are on /keys?account={id}
MAX_TOP_UP = Decimal(1_000_000)  # USD; the API's bound on a balance is 1e9, a single top-up is kept smaller


def _usd(text: str, field: str) -> Decimal:
    try:
        value = Decimal(text.strip().replace(",", "").removeprefix("$"))
    except InvalidOperation:
        raise GatewayError(
            ErrorType.INVALID_REQUEST, "Enter an amount in USD, e.g. 25 or 12.50.", field=field
        ) from None
    try:
        whole_micros = value.is_finite() and value == value.quantize(Decimal("0.000001"))
    except InvalidOperation:  # too many digits to quantize (1e30)
        whole_micros = False
    if not whole_micros or abs(value) > MAX_TOP_UP:
        raise GatewayError(
            ErrorType.INVALID_REQUEST, "Enter an amount up to $1,000,000 with at most 6 decimals.", field=field
        )
    return value


async def _accounts_page(
    request: Request, portal: Portal, signed_in: SignedIn, session_id: str, *, status: int = 200, **context: Any
) -> Response:
    runtime = portal.runtime
    query = request.query_params.get("q", "").strip()[:320]
    offset_text = request.query_params.get("offset", "0")
    offset = int(offset_text) if is_digits(offset_text) and len(offset_text) < 8 else 0
    rows = await runtime.accounts.list_all(limit=PAGE_SIZE + 1, offset=offset, email_contains=query or None)
    groups = {g.id: g for g in await runtime.groups.list_all()}
    context.setdefault("values", {})
    return portal.render(
        request,
        "admin_accounts.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="admin",
        accounts=rows[:PAGE_SIZE],
        more=len(rows) > PAGE_SIZE,
        next_offset=offset + PAGE_SIZE,
        query=query,
        groups=groups,
        **context,
    )


@page("/admin/accounts", ["GET"])
async def accounts_list(request: Request) -> Response:
    """``GET /admin/accounts``: every account, searchable by email (``q``), 50 a page."""
    got = await admin_visit_of(request)
    if isinstance(got, Response):
        return got
    return await _accounts_page(request, *got)


@page("/admin/accounts", ["POST"])
async def accounts_create(request: Request) -> Response:
    """``POST /admin/accounts``: create an account (email, credit, group) and optionally invite it by email."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    runtime = portal.runtime
    values = {name: field_of(form, name) for name in ("email", "balance", "group")}
    try:
        body: dict[str, Any] = {"email": values["email"]}
        if values["balance"].strip():
            body["balance"] = _usd(values["balance"], "balance")
        if values["group"].strip():
            body["group"] = values["group"].strip()
        try:
            spec = AccountCreate.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = str(first["loc"][0]) if first.get("loc") else "email"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise GatewayError(ErrorType.INVALID_REQUEST, message, field=where) from None
        account = await runtime.account_service.create_account(spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _accounts_page(
            request,
            portal,
            signed_in,
            session_id,
            status=err.status if err.status < 500 else 400,
            error=err.message,
            error_field=err.field,
            values=values,
        )
    if form.get("invite") == "on":
        await runtime.signin.invite(account.id)
        return portal.redirect(f"/admin/accounts/{account.id}?done=invited")
    return portal.redirect(f"/admin/accounts/{account.id}?done=created")


async def _account(request: Request, portal: Portal) -> AccountRecord | None:
    account_id = row_id_of(request, "account_id")
    return None if account_id is None else await portal.runtime.accounts.get(account_id=account_id)


async def _account_page(
    request: Request,
    portal: Portal,
    signed_in: SignedIn,
    session_id: str,
    account: AccountRecord,
    *,
    status: int = 200,
    **context: Any,
) -> Response:
    runtime = portal.runtime
    groups = await runtime.groups.list_all()
    login = await runtime.signin.login(account.id)
    entries = await runtime.audit_log.page(limit=20, target_account_id=account.id)
    now = runtime.clock.now_utc()
    keys = await runtime.keys.list_all(account_id=account.id, key_type=KeyType.REGULAR.value, limit=KEYS_SHOWN + 1)
    return portal.render(
        request,
        "admin_account.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="admin",
        account=account,
        login=login,
        groups=groups,
        group=next((g for g in groups if g.id == account.group_id), None),
        entries=entries,
        keys=[key_row(k, now) for k in keys[:KEYS_SHOWN]],
        more_keys=len(keys) > KEYS_SHOWN,
        **context,
    )


@page("/admin/accounts/{account_id}", ["GET"])
async def account_detail(request: Request) -> Response:
    """``GET /admin/accounts/{id}``: credit, spend, status, group, sign-in state, newest keys, recent history."""
    got = await admin_visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    account = await _account(request, portal)
    if account is None:
        return portal.not_found(request, signed_in, session_id)
    notice = _NOTICES.get(request.query_params.get("done", ""))
    return await _account_page(request, portal, signed_in, session_id, account, notice=notice)


@page("/admin/accounts/{account_id}/top-up", ["POST"])
async def account_top_up(request: Request) -> Response:
    """``POST /admin/accounts/{id}/top-up``: add ``amount`` USD to the account's credit."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    account = await _account(request, portal)
    if account is None:
        return portal.not_found(request, signed_in, session_id)
    try:
        amount = _usd(field_of(form, "amount"), "amount")
        if amount > MAX_TOP_UP:
            raise GatewayError(ErrorType.INVALID_REQUEST, "At most $1,000,000 at a time.", field="amount")
        await portal.runtime.account_service.top_up(
            account, usd_to_micros(amount), actor=portal.actor(request, signed_in)
        )
    except GatewayError as err:
        return await _account_page(
            request, portal, signed_in, session_id, account, status=400, error=err.message, error_field=err.field
        )
    return portal.redirect(f"/admin/accounts/{account.id}?done=topped-up")


@page("/admin/accounts/{account_id}/edit", ["POST"])
async def account_edit(request: Request) -> Response:
    """``POST /admin/accounts/{id}/edit``: set the account's ``status`` and ``group`` (empty: none)."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    account = await _account(request, portal)
    if account is None:
        return portal.not_found(request, signed_in, session_id)
    group = field_of(form, "group").strip()
    try:
        try:
            spec = AccountUpdate.model_validate({"status": field_of(form, "status"), "group": group or None})
        except ValidationError as exc:
            where = str(exc.errors()[0]["loc"][0])
            raise GatewayError(
                ErrorType.INVALID_REQUEST, "Choose a status and a group from the lists.", field=where
            ) from None
        await portal.runtime.account_service.update_account(account, spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _account_page(
            request, portal, signed_in, session_id, account, status=400, error=err.message, error_field=err.field
        )
    return portal.redirect(f"/admin/accounts/{account.id}?done=saved")


@page("/admin/accounts/{account_id}/invite", ["POST"])
async def account_invite(request: Request) -> Response:
    """``POST /admin/accounts/{id}/invite``: email the account a link to choose its password (7 days, once)."""
    got = await admin_post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, _ = got
    account = await _account(request, portal)
    if account is None:
        return portal.not_found(request, signed_in, session_id)
    await portal.runtime.signin.invite(account.id)
    return portal.redirect(f"/admin/accounts/{account.id}?done=invited")


_NOTICES = {
    "created": "The account was created.",
    "invited": "An invitation to choose a password was emailed (valid for 7 days).",
    "topped-up": "The credit was added. The account's keys can use it on their next request.",
    "saved": "Saved. The account's keys follow it on their next request.",
}
