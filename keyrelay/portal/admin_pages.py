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
from starlette.datastructures import FormData

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.keys.spec import usd_to_micros
from keyrelay.portal.app import Portal, field_of, page_route, portal_of
from keyrelay.portal.forms import is_digits
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import AccountCreate, AccountUpdate
from keyrelay.services.signin import SignedIn
from keyrelay.store.records import AccountRecord

router = APIRouter()
page = page_route(router)

PAGE_SIZE = 50
MAX_TOP_UP = Decimal(1_000_000)  # USD; the API's bound on a balance is 1e9, a single top-up is kept smaller


def runtime_of(portal: Portal) -> Runtime:
    """The runtime of a started portal."""
    assert portal.runtime is not None
    return portal.runtime


async def admin_of(request: Request) -> tuple[Portal, SignedIn, str] | Response:
    """The signed-in admin, or the answer for anyone else (sign-in page, or 404)."""
    portal = portal_of(request)
    signed_in, session_id = await portal.current(request)
    if signed_in is None or session_id is None:
        return portal.redirect("/login")
    if not signed_in.account.is_admin:
        return not_found(request, portal, signed_in, session_id)
    return portal, signed_in, session_id


def not_found(request: Request, portal: Portal, signed_in: SignedIn, session_id: str) -> Response:
    """The 404 page (what a member sees of an admin page, too)."""
    return portal.render(
        request,
        "message.html",
        status=404,
        seed=session_id,
        signed_in=signed_in,
        title="Page not found",
        message=f"There is no page at {request.url.path} for this request.",
    )


async def admin_form(request: Request) -> tuple[Portal, SignedIn, str, FormData] | Response:
    """An admin's POST with its CSRF-checked form, or the answer to send instead."""
    got = await admin_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    form = await portal.checked_form(request, session_id)
    if form is None:
        return portal.forbidden(request)
    return portal, signed_in, session_id, form


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
    runtime = runtime_of(portal)
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
    got = await admin_of(request)
    if isinstance(got, Response):
        return got
    return await _accounts_page(request, *got)


@page("/admin/accounts", ["POST"])
async def accounts_create(request: Request) -> Response:
    """``POST /admin/accounts``: create an account (email, credit, group) and optionally invite it by email."""
    got = await admin_form(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    runtime = runtime_of(portal)
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
    text = str(request.path_params["account_id"])
    if not is_digits(text) or len(text) > 10:
        return None
    return await runtime_of(portal).accounts.get(account_id=int(text))


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
    runtime = runtime_of(portal)
    groups = await runtime.groups.list_all()
    login = await runtime.signin.login(account.id)
    entries = await runtime.audit_log.page(limit=20, target_account_id=account.id)
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
        **context,
    )


@page("/admin/accounts/{account_id}", ["GET"])
async def account_detail(request: Request) -> Response:
    """``GET /admin/accounts/{id}``: credit, spend, status, group, sign-in state and recent history."""
    got = await admin_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    account = await _account(request, portal)
    if account is None:
        return not_found(request, portal, signed_in, session_id)
    notice = _NOTICES.get(request.query_params.get("done", ""))
    return await _account_page(request, portal, signed_in, session_id, account, notice=notice)


@page("/admin/accounts/{account_id}/top-up", ["POST"])
async def account_top_up(request: Request) -> Response:
    """``POST /admin/accounts/{id}/top-up``: add ``amount`` USD to the account's credit."""
    got = await admin_form(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    account = await _account(request, portal)
    if account is None:
        return not_found(request, portal, signed_in, session_id)
    try:
        amount = _usd(field_of(form, "amount"), "amount")
        if amount > MAX_TOP_UP:
            raise GatewayError(ErrorType.INVALID_REQUEST, "At most $1,000,000 at a time.", field="amount")
        await runtime_of(portal).account_service.top_up(
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
    got = await admin_form(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    account = await _account(request, portal)
    if account is None:
        return not_found(request, portal, signed_in, session_id)
    group = field_of(form, "group").strip()
    try:
        try:
            spec = AccountUpdate.model_validate({"status": field_of(form, "status"), "group": group or None})
        except ValidationError as exc:
            where = str(exc.errors()[0]["loc"][0])
            raise GatewayError(
                ErrorType.INVALID_REQUEST, "Choose a status and a group from the lists.", field=where
            ) from None
        await runtime_of(portal).account_service.update_account(account, spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _account_page(
            request, portal, signed_in, session_id, account, status=400, error=err.message, error_field=err.field
        )
    return portal.redirect(f"/admin/accounts/{account.id}?done=saved")


@page("/admin/accounts/{account_id}/invite", ["POST"])
async def account_invite(request: Request) -> Response:
    """``POST /admin/accounts/{id}/invite``: email the account a link to choose its password (7 days, once)."""
    got = await admin_form(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, _ = got
    account = await _account(request, portal)
    if account is None:
        return not_found(request, portal, signed_in, session_id)
    await runtime_of(portal).signin.invite(account.id)
    return portal.redirect(f"/admin/accounts/{account.id}?done=invited")


_NOTICES = {
    "created": "The account was created.",
    "invited": "An invitation to choose a password was emailed (valid for 7 days).",
    "topped-up": "The credit was added. The account's keys can use it on their next request.",
    "saved": "Saved. The account's keys follow it on their next request.",
}
