"""The account's management keys on ``/account``: create one (its plaintext shown once) and revoke one.

A management key (``kr_mgmt_``) made here is scoped to the signed-in account: through the management API it
does what the API Keys pages do for that account, nothing more. Admin management keys, which manage every
account, are made with the CLI (``keyrelay admin create-management-key --admin``), never from a session.
Creating one needs a verified email; each Create form carries a random id claimed once, so a reload of the
page that shows the new key creates nothing more. Every change goes through ``services/keys.py`` with the
signed-in account as the actor, so it reaches the gateway on the next request and is in the audit log.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import is_key_hash
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.portal.account_pages import account_page
from keyrelay.portal.app import field_of, page_route, post_of
from keyrelay.runtime import public_url

router = APIRouter()
page = page_route(router)

MAX_MANAGEMENT_KEYS = 20  # per account: more is a leak waiting to happen, not a workflow


@page("/account/management-keys", ["POST"])
async def create_management_key(request: Request) -> Response:
    """``POST /account/management-keys``: a management key named ``name`` for the account, shown once (201).

    400 (the account page again, the message at **Name**) for a bad name or when the account holds
    ``MAX_MANAGEMENT_KEYS``; 403 before the email is verified; 409 for a form sent twice.
    """
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, form = got
    runtime = portal.runtime
    name = field_of(form, "name").strip()
    try:
        if signed_in.account.email_verified_at is None:
            raise GatewayError(
                ErrorType.FORBIDDEN, "Verify your email before creating keys: the link is in your inbox.", field="name"
            )
        try:
            spec = KeyCreate.model_validate({"name": name})
        except ValidationError:
            raise GatewayError(
                ErrorType.INVALID_REQUEST, "Give the key a name of 1 to 100 characters.", field="name"
            ) from None
        held = await runtime.keys.list_all(
            account_id=signed_in.account.id, key_type=KeyType.MANAGEMENT.value, limit=MAX_MANAGEMENT_KEYS
        )
        if len(held) >= MAX_MANAGEMENT_KEYS:
            raise GatewayError(
                ErrorType.INVALID_REQUEST,
                f"An account holds at most {MAX_MANAGEMENT_KEYS} management keys: revoke one first.",
                field="name",
            )
        account = await runtime.accounts.get(account_id=signed_in.account.id)
        if account is None:
            return portal.redirect("/login")
        form_id = field_of(form, "form_id")
        if not 20 <= len(form_id) <= 64 or not await runtime.signin.claim_form(signed_in.account.id, form_id):
            return await account_page(
                request,
                signed_in,
                session_id,
                status=409,
                notice="This form was sent already (a reload?), so no other management key was created. "
                "The key it created is in the list; its secret was shown once.",
            )
        issued = await runtime.key_service.create(
            account=account, spec=spec, key_type=KeyType.MANAGEMENT, actor=portal.actor(request, signed_in)
        )
    except GatewayError as err:
        return await account_page(
            request,
            signed_in,
            session_id,
            status=err.status if err.status < 500 else 400,
            error=err.message,
            error_field="management_name" if err.field == "name" else err.field,
            management_name=name,
        )
    return portal.render(
        request,
        "key_created.html",
        status=201,
        seed=session_id,
        signed_in=signed_in,
        active="account",
        record=issued.record,
        plaintext=issued.plaintext,
        warnings=issued.warnings,
        rotated=False,
        management=True,
        base_url=public_url(portal.settings),
    )


@page("/account/management-keys/{key_hash}/revoke", ["POST"])
async def revoke_management_key(request: Request) -> Response:
    """``POST /account/management-keys/{hash}/revoke``: revoke one of the account's management keys.

    Another account's key, an API key or an unknown hash is a 404, as if it did not exist.
    """
    got = await post_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id, _ = got
    key_hash = str(request.path_params["key_hash"])
    record = await portal.runtime.keys.get(key_hash=key_hash) if is_key_hash(key_hash) else None
    if record is None or record.key_type != KeyType.MANAGEMENT.value or record.account_id != signed_in.account.id:
        return portal.not_found(
            request,
            signed_in,
            session_id,
            title="No such key",
            message="This management key does not exist, was revoked, or belongs to another account.",
        )
    await portal.runtime.key_service.revoke(record=record, actor=portal.actor(request, signed_in))
    return portal.redirect("/account?done=management-revoked")
