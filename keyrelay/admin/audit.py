"""/api/v1/audit: the audit log, newest first; every entry for admins, the caller's own account's otherwise."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import StringConstraints

from keyrelay.admin.auth import Manager, require_manager, runtime_of
from keyrelay.admin.openapi import COMMON_ERRORS, errors
from keyrelay.admin.pagination import decode_id_token, encode_id_token
from keyrelay.admin.schemas import AuditPage, audit_out
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import Count, Storable, Timestamp
from keyrelay.services.audit import TargetType

router = APIRouter(prefix="/api/v1", tags=["audit"], responses=errors(*COMMON_ERRORS))

ActorLabel = Annotated[str, StringConstraints(min_length=1, max_length=400), Storable]
TargetId = Annotated[str, StringConstraints(min_length=1, max_length=64), Storable]
PageToken = Annotated[str, StringConstraints(max_length=512), Storable]


@router.get("/audit", response_model=AuditPage, summary="Read the audit log", responses=errors(400))
async def audit(
    request: Request,
    manager: Annotated[Manager, Depends(require_manager)],
    actor: Annotated[ActorLabel | None, Query(description="Exactly this actor label.")] = None,
    target_type: Annotated[TargetType | None, Query()] = None,
    target_id: Annotated[
        TargetId | None, Query(description="A key's hash, or an account's or group's id (as text).")
    ] = None,
    since: Annotated[Timestamp | None, Query(description="Inclusive, ISO 8601 (UTC if no offset).")] = None,
    until: Annotated[Timestamp | None, Query(description="Exclusive, ISO 8601 (UTC if no offset).")] = None,
    limit: Annotated[Count, Query(ge=1, le=500)] = 100,
    page_token: Annotated[PageToken | None, Query()] = None,
) -> AuditPage:
    """Changes to keys, accounts and groups, newest first. Follow ``next_page_token`` until it is null.

    An admin management key sees every entry; any other sees the entries about its own account and its
    account's keys.
    """
    if since is not None and until is not None and until <= since:
        raise GatewayError(ErrorType.INVALID_REQUEST, "until must be after since", field="until")
    before_id = decode_id_token(page_token) if page_token else None
    rows = await runtime_of(request).audit_log.page(
        limit=limit + 1,
        before_id=before_id,
        target_account_id=None if manager.is_admin else manager.account_id,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        since=since,
        until=until,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    token = encode_id_token(rows[-1].id) if more and rows else None
    return AuditPage(data=[audit_out(r) for r in rows], next_page_token=token)
