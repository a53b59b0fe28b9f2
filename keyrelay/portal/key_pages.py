"""The API Keys pages (``/keys``): the list with its Create key dialog, and each key's detail panel.

A signed-in account sees and changes only its own keys; another account's key is a 404, as if it did not
exist. An admin account may do what an admin management key may: ``/keys?account={id}`` lists, and creates
keys for, that account, and every account's key opens at ``/keys/{hash}``. Creating keys needs a verified
email. The plaintext of a key is rendered once, in the answer to the POST that created or rotated it, and
never stored or shown again. Every change goes through ``services/keys.py``, so it takes effect on the next
request, as through the API.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import is_key_hash
from keyrelay.keys.format import KeyType
from keyrelay.keys.policy import effective_policy
from keyrelay.keys.spec import KeyUpdate
from keyrelay.limits.backend import RequestWindow
from keyrelay.limits.periods import stored_usage
from keyrelay.limits.windows import WINDOW_SECONDS
from keyrelay.portal.app import Portal, field_of, page_route, post_of, row_id, visit_of
from keyrelay.portal.forms import is_digits
from keyrelay.portal.key_form import FIELDS, form_values, group_placeholders, key_create, key_update, record_values
from keyrelay.runtime import public_url
from keyrelay.services.signin import SignedIn
from keyrelay.store.records import AccountRecord, GroupRecord, KeyRecord

router = APIRouter()
page = page_route(router)

PAGE_SIZE = 50
STATUSES = ("active", "disabled", "expired")
MAX_GRACE_MINUTES = 30 * 24 * 60  # the API's bound on grace_seconds (30 days)


def key_status(record: KeyRecord, now: datetime) -> str:
    """``disabled``, ``expired`` or ``active``."""
    if record.disabled:
        return "disabled"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def key_row(record: KeyRecord, now: datetime) -> dict[str, Any]:
    """What the list and the detail panel show of a key."""
    spent = stored_usage(record, record.limit_reset, now)
    limit = record.limit_micros
    grace = record.prev_secret_expires_at
    return {
        "record": record,
        "status": key_status(record, now),
        "spent_micros": spent,
        "limit_micros": limit,
        "left_micros": None if not limit else max(0, limit - spent),
        "percent": None if not limit else min(100, round(100 * spent / limit)),
        "grace_until": grace if grace is not None and grace > now else None,
    }


async def _group(portal: Portal, account_id: int) -> GroupRecord | None:
    runtime = portal.runtime
    account = await runtime.accounts.get(account_id=account_id)
    if account is None or account.group_id is None:
        return None
    return await runtime.groups.get(group_id=account.group_id)


async def _visible_key(portal: Portal, signed_in: SignedIn, key_hash: str) -> KeyRecord | None:
    """The live API key with this hash if the session may see it: its own account's, or any for an admin.

    None for anything else (another account's key included, as if it did not exist).
    """
    if not is_key_hash(key_hash):
        return None
    record = await portal.runtime.keys.get(key_hash=key_hash)
    if record is None or record.key_type != KeyType.REGULAR.value:
        return None
    if record.account_id != signed_in.account.id and not signed_in.account.is_admin:
        return None
    return record


async def _owner(portal: Portal, signed_in: SignedIn, account: object) -> AccountRecord | None:
    """The account whose keys a list or a Create key form is about (``account``: its id; None for one's own).

    Only an admin may name another account; None when the account does not exist or may not be named
    (anything but None or an id, a file or an empty field included).
    """
    own = signed_in.account.id
    if account is None or account == str(own):
        return await portal.runtime.accounts.get(account_id=own)
    account_id = row_id(account) if isinstance(account, str) else None
    if not signed_in.account.is_admin or account_id is None:
        return None
    return await portal.runtime.accounts.get(account_id=account_id)


def keys_url(signed_in: SignedIn, account_id: int, **params: str) -> str:
    """The ``/keys`` list of ``account_id`` as the session reaches it (``?account=`` for another's), with ``params``."""
    if account_id != signed_in.account.id:
        params = {"account": str(account_id), **params}
    return f"/keys?{urlencode(params)}" if params else "/keys"


async def _list_page(
    request: Request,
    portal: Portal,
    signed_in: SignedIn,
    session_id: str,
    owner: AccountRecord,
    *,
    status: int = 200,
    **context: Any,
) -> Response:
    runtime = portal.runtime
    now = runtime.clock.now_utc()
    query = request.query_params.get("q", "").strip()[:100]
    state = request.query_params.get("status", "")
    state = state if state in STATUSES else ""
    records = await runtime.keys.list_all(
        account_id=owner.id,
        key_type=KeyType.REGULAR.value,
        limit=PAGE_SIZE + 1,
        offset=_offset(request),
        name_contains=query or None,
        status=state or None,
        now=now,
    )
    group = await runtime.groups.get(group_id=owner.group_id) if owner.group_id is not None else None
    context.setdefault("values", {})
    context.setdefault("form_id", secrets.token_urlsafe(24))
    return portal.render(
        request,
        "keys.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="keys",
        rows=[key_row(r, now) for r in records[:PAGE_SIZE]],
        more=len(records) > PAGE_SIZE,
        more_url=keys_url(signed_in, owner.id, q=query, status=state, offset=str(_offset(request) + PAGE_SIZE)),
        owner=owner,
        query=query,
        state=state,
        statuses=STATUSES,
        fields=FIELDS,
        placeholders=group_placeholders(group),
        group=group,
        **context,
    )


def _offset(request: Request) -> int:
    text = request.query_params.get("offset", "0")
    return min(int(text), 1_000_000) if is_digits(text) and len(text) < 8 else 0


@page("/keys", ["GET"])
async def keys_list(request: Request) -> Response:
    """``GET /keys``: the account's keys, filtered by ``q`` (name) and ``status``, 50 a page."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    owner = await _owner(portal, signed_in, request.query_params.get("account"))
    if owner is None:
        return _no_account(request, portal, signed_in, session_id)
    notice = None
    if request.query_params.get("done") == "revoked":
        notice = f"The key {request.query_params.get('name', '')[:100]!r} was revoked."
    return await _list_page(request, portal, signed_in, session_id, owner, notice=notice)


@page("/keys", ["POST"])
async def keys_create(request: Request) -> Response:
    """``POST /keys``: create a key from the dialog; the answer shows its plaintext once (400: the form again)."""
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    runtime = portal.runtime
    owner = await _owner(portal, signed_in, form.get("account"))
    if owner is None:
        return _no_account(request, portal, signed_in, session_id)
    try:
        if signed_in.account.email_verified_at is None:
            raise GatewayError(
                ErrorType.FORBIDDEN, "Verify your email before creating keys: the link is in your inbox.", field="name"
            )
        spec = key_create(form)
        # Each rendering of the dialog carries a random form id, claimed once: the same form sent again (a
        # reload of the answer below) creates nothing more.
        form_id = field_of(form, "form_id")
        if not 20 <= len(form_id) <= 64 or not await runtime.signin.claim_form(signed_in.account.id, form_id):
            return await _list_page(
                request,
                portal,
                signed_in,
                session_id,
                owner,
                status=409,
                notice="This form was sent already (a reload?), so no other key was created. "
                "The key it created is in the list; its secret was shown once.",
            )
        issued = await runtime.key_service.create(account=owner, spec=spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _list_page(
            request,
            portal,
            signed_in,
            session_id,
            owner,
            status=err.status if err.status < 500 else 400,
            error=err.message,
            error_field=err.field,
            values=form_values(form),
            open_dialog=True,
        )
    return _shown_once(request, portal, signed_in, session_id, issued.record, issued.plaintext, issued.warnings)


def _shown_once(
    request: Request,
    portal: Portal,
    signed_in: SignedIn,
    session_id: str,
    record: KeyRecord,
    plaintext: str,
    warnings: tuple[str, ...] = (),
    *,
    rotated: bool = False,
) -> Response:
    """The page that shows a key's plaintext, this once (``Cache-Control: no-store`` like every page)."""
    return portal.render(
        request,
        "key_created.html",
        status=201 if not rotated else 200,
        seed=session_id,
        signed_in=signed_in,
        active="keys",
        record=record,
        plaintext=plaintext,
        warnings=warnings,
        rotated=rotated,
        base_url=public_url(portal.settings),
        list_url=keys_url(signed_in, record.account_id),
    )


async def _detail_page(
    request: Request,
    portal: Portal,
    signed_in: SignedIn,
    session_id: str,
    record: KeyRecord,
    *,
    status: int = 200,
    **context: Any,
) -> Response:
    runtime = portal.runtime
    now = runtime.clock.now_utc()
    group = await _group(portal, record.account_id)
    if record.account_id != signed_in.account.id:  # an admin at another account's key: say whose it is
        context["owner"] = await runtime.accounts.get(account_id=record.account_id)
    context.setdefault("values", record_values(record))
    # The key's history explains a key that "suddenly stopped working" (who disabled it, changed a rule...).
    entries = await runtime.audit_log.page(limit=20, target_type="key", target_id=record.hash)
    rotations = await runtime.audit_log.page(limit=1, target_type="key", target_id=record.hash, action="key.rotate")
    windows = await _windows(portal, record, group, now)
    return portal.render(
        request,
        "key_detail.html",
        status=status,
        seed=session_id,
        signed_in=signed_in,
        active="keys",
        row=key_row(record, now),
        entries=entries,
        rotated_at=rotations[0].created_at if rotations else None,
        windows=windows,
        fields=FIELDS,
        placeholders=group_placeholders(group),
        group=group,
        list_url=keys_url(signed_in, record.account_id),
        **context,
    )


_WINDOW_LABELS = {
    "rpm": "Requests this minute",
    "per_5h": "Requests in 5 hours",
    "per_1d": "Requests today (24 h)",
    "per_7d": "Requests in 7 days",
}


async def _windows(
    portal: Portal, record: KeyRecord, group: GroupRecord | None, now: datetime
) -> list[tuple[str, str, str]] | None:
    """(label, used, limit) of each limit of the key's policy, as admission counts them now; None if unknown.

    The counts come from the limits backend (this process's, or Redis shared by every instance).
    """
    if portal.limits is None:
        return None
    policy = effective_policy(record, group)
    specs = tuple(
        RequestWindow(name, WINDOW_SECONDS[name], limit) for name in _WINDOW_LABELS if (limit := getattr(policy, name))
    )
    if not specs and policy.tpm is None and policy.max_concurrent is None:
        return []
    try:
        usage = await portal.limits.window_usage(record.hash, specs, tpm=policy.tpm is not None, now=now.timestamp())
    except GatewayError:
        return None  # the shared limits are unreachable: the panel says so
    rows = [(_WINDOW_LABELS[w.name], str(usage.counts.get(w.name, 0)), str(w.limit)) for w in specs]
    if policy.tpm is not None:
        rows.append(("Tokens this minute", str(usage.tokens_per_minute or 0), str(policy.tpm)))
    if policy.max_concurrent is not None:
        rows.append(("Requests in flight", str(usage.in_flight), str(policy.max_concurrent)))
    return rows


def _not_found(request: Request, portal: Portal, signed_in: SignedIn, session_id: str) -> Response:
    return portal.not_found(
        request,
        signed_in,
        session_id,
        title="No such key",
        message="This key does not exist, was revoked, or belongs to another account.",
    )


def _no_account(request: Request, portal: Portal, signed_in: SignedIn, session_id: str) -> Response:
    return portal.not_found(
        request, signed_in, session_id, title="No such account", message="There is no account with this id."
    )


@page("/keys/{key_hash}", ["GET"])
async def key_detail(request: Request) -> Response:
    """``GET /keys/{hash}``: the detail panel of one of the account's keys (any account's for an admin; else 404)."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    record = await _visible_key(portal, signed_in, str(request.path_params["key_hash"]))
    if record is None:
        return _not_found(request, portal, signed_in, session_id)
    notice = _NOTICES.get(request.query_params.get("done", ""))
    return await _detail_page(request, portal, signed_in, session_id, record, notice=notice)


async def _posted_key(request: Request) -> tuple[Portal, SignedIn, str, FormData, KeyRecord] | Response:
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    record = await _visible_key(portal, signed_in, str(request.path_params["key_hash"]))
    if record is None:
        return _not_found(request, portal, signed_in, session_id)
    return portal, signed_in, session_id, form, record


@page("/keys/{key_hash}/edit", ["POST"])
async def key_edit(request: Request) -> Response:
    """``POST /keys/{hash}/edit``: set every field of the key from the edit form (empty: inherit)."""
    got = await _posted_key(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form, record = got
    try:
        spec = key_update(form)
        await portal.runtime.key_service.update(record=record, spec=spec, actor=portal.actor(request, signed_in))
    except GatewayError as err:
        return await _detail_page(
            request,
            portal,
            signed_in,
            session_id,
            record,
            status=err.status if err.status < 500 else 400,
            error=err.message,
            error_field=err.field,
            values=form_values(form),
        )
    return portal.redirect(f"/keys/{record.hash}?done=saved")


@page("/keys/{key_hash}/state", ["POST"])
async def key_state(request: Request) -> Response:
    """``POST /keys/{hash}/state``: ``disabled=1`` disables the key, ``disabled=0`` enables it."""
    got = await _posted_key(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form, record = got
    wanted = field_of(form, "disabled")
    if wanted not in ("0", "1"):
        return await _detail_page(
            request, portal, signed_in, session_id, record, status=400, error="Choose Disable or Enable."
        )
    spec = KeyUpdate.model_validate({"disabled": wanted == "1"})
    await portal.runtime.key_service.update(record=record, spec=spec, actor=portal.actor(request, signed_in))
    return portal.redirect(f"/keys/{record.hash}?done={'disabled' if wanted == '1' else 'enabled'}")


@page("/keys/{key_hash}/rotate", ["POST"])
async def key_rotate(request: Request) -> Response:
    """``POST /keys/{hash}/rotate``: a new secret, shown once; the old one works for the grace period."""
    got = await _posted_key(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form, record = got
    if field_of(form, "version") != str(record.version):
        # A form from before the key's last change (a reloaded rotation, above all): rotating again would
        # void the secret that was just shown.
        return await _detail_page(
            request,
            portal,
            signed_in,
            session_id,
            record,
            status=409,
            error="This key changed since the page was loaded, so it was not rotated. Check it, then rotate again.",
        )
    text = field_of(form, "grace_minutes").strip() or "0"
    if not is_digits(text) or int(text) > MAX_GRACE_MINUTES:
        return await _detail_page(
            request,
            portal,
            signed_in,
            session_id,
            record,
            status=400,
            error=f"Enter the grace period in whole minutes, 0 to {MAX_GRACE_MINUTES} (30 days).",
            error_field="grace_minutes",
        )
    issued = await portal.runtime.key_service.rotate(
        record=record, grace_seconds=int(text) * 60, actor=portal.actor(request, signed_in)
    )
    return _shown_once(request, portal, signed_in, session_id, issued.record, issued.plaintext, rotated=True)


@page("/keys/{key_hash}/revoke", ["POST"])
async def key_revoke(request: Request) -> Response:
    """``POST /keys/{hash}/revoke``: revoke the key (confirmed in a dialog); its next request is a 401."""
    got = await _posted_key(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, _, _, record = got
    await portal.runtime.key_service.revoke(record=record, actor=portal.actor(request, signed_in))
    return portal.redirect(keys_url(signed_in, record.account_id, done="revoked", name=record.name[:100]))


_NOTICES = {
    "saved": "Saved. The key's next request follows the new settings.",
    "disabled": "The key is disabled: its requests are refused until you enable it.",
    "enabled": "The key is enabled.",
}
