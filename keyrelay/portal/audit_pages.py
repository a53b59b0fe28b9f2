"""The audit log page (``/audit``): who changed what, when and from where.

An admin sees every entry and may filter by actor, target type and target id; anyone else sees the
entries about their own account (its keys and the account itself), whoever made them. Newest first,
50 a page, with an "Older" link that continues below the last entry shown.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from keyrelay.portal.app import page_route, visit_of
from keyrelay.portal.forms import is_digits

router = APIRouter()
page = page_route(router)

PAGE_SIZE = 50
TARGET_TYPES = ("key", "account", "group")


@page("/audit", ["GET"])
async def audit(request: Request) -> Response:
    """``GET /audit``: the audit log; ``actor``, ``target_type``, ``target_id`` (admins) and ``before`` (an id)."""
    got = await visit_of(request)
    if isinstance(got, Response):
        return got
    portal, signed_in, session_id = got
    params = request.query_params
    admin = signed_in.account.is_admin
    actor = params.get("actor", "").strip()[:200] if admin else ""
    target_type = params.get("target_type", "") if admin else ""
    target_type = target_type if target_type in TARGET_TYPES else ""
    target_id = params.get("target_id", "").strip()[:64] if admin else ""
    before_text = params.get("before", "")
    before = int(before_text) if is_digits(before_text) and len(before_text) < 19 else None
    entries = await portal.runtime.audit_log.page(
        limit=PAGE_SIZE + 1,
        before_id=before,
        target_account_id=None if admin else signed_in.account.id,
        actor=actor or None,
        target_type=target_type or None,
        target_id=target_id or None,
    )
    return portal.render(
        request,
        "audit.html",
        seed=session_id,
        signed_in=signed_in,
        active="audit",
        entries=entries[:PAGE_SIZE],
        older=entries[PAGE_SIZE - 1].id if len(entries) > PAGE_SIZE else None,
        admin=admin,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        target_types=TARGET_TYPES,
    )
