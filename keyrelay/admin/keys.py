"""/api/v1/keys: create, list, read, update, rotate and delete API keys (thin router over services)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import StringConstraints

from keyrelay.admin.auth import Manager, require_manager, runtime_of
from keyrelay.admin.openapi import COMMON_ERRORS, errors
from keyrelay.admin.pagination import decode_token, encode_token
from keyrelay.admin.schemas import KeyDeleted, KeyEnvelope, KeyIssued, KeyPage, key_out
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import Count, RowId, Storable, is_key_hash
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate, KeyRotate, KeyUpdate
from keyrelay.runtime import Runtime
from keyrelay.store.records import AccountRecord, KeyRecord

router = APIRouter(prefix="/api/v1/keys", tags=["keys"], responses=errors(*COMMON_ERRORS))
ManagerDep = Annotated[Manager, Depends(require_manager)]
# Any other text names no key: 404 like an unknown hash (the document states the shape, the API does not 400).
KeyHash = Annotated[
    str, Path(description="The key's hash (hex SHA-256).", json_schema_extra={"pattern": "^[0-9a-f]{64}$"})
]
MAX_OFFSET = 1_000_000


async def _visible_key(runtime: Runtime, manager: Manager, key_hash: str) -> KeyRecord:
    # Anything but 64 lowercase hex digits cannot name a key: no need to ask the store.
    record = await runtime.keys.get(key_hash=key_hash) if is_key_hash(key_hash) else None
    if record is None or not manager.can_see(record):
        raise GatewayError(ErrorType.NOT_FOUND, "No such key.")
    return record


async def _owner(runtime: Runtime, manager: Manager, email: str | None) -> AccountRecord:
    if email is None:
        return manager.principal.account
    if not manager.is_admin:
        raise GatewayError(ErrorType.FORBIDDEN, "Only admin management keys may create keys for other accounts.")
    account = await runtime.accounts.get_by_email(email=email)
    if account is None:
        raise GatewayError(ErrorType.INVALID_REQUEST, f"no account with email {email!r}", field="account")
    return account


@router.post("", status_code=201, response_model=KeyIssued, summary="Create an API key", responses=errors(400))
async def create_key(body: KeyCreate, request: Request, manager: ManagerDep) -> KeyIssued:
    """Create an API key; the plaintext ``key`` is in this answer only."""
    runtime = runtime_of(request)
    owner = await _owner(runtime, manager, body.account)
    issued = await runtime.key_service.create(account=owner, spec=body, actor=manager.actor)
    now = runtime.clock.now_utc()
    return KeyIssued(data=key_out(issued.record, now), key=issued.plaintext, warnings=list(issued.warnings))


@router.get("", response_model=KeyPage, summary="List API keys", responses=errors(400))
async def list_keys(
    request: Request,
    manager: ManagerDep,
    page_size: Annotated[Count, Query(ge=1, le=100)] = 20,
    page_token: Annotated[Annotated[str, StringConstraints(max_length=512), Storable] | None, Query()] = None,
    offset: Annotated[Count, Query(ge=0, le=MAX_OFFSET)] = 0,
    account_id: Annotated[RowId | None, Query(description="Admin only: one account's keys.")] = None,
) -> KeyPage:
    """Newest first. Follow ``next_page_token`` until it is null; ``offset`` skips keys."""
    runtime = runtime_of(request)
    if account_id is not None and not manager.is_admin and account_id != manager.account_id:
        raise GatewayError(ErrorType.FORBIDDEN, "Only admin management keys may list other accounts' keys.")
    scope = account_id if account_id is not None else (None if manager.is_admin else manager.account_id)
    after = decode_token(page_token) if page_token else None
    rows = await runtime.keys.list_all(
        account_id=scope, key_type=KeyType.REGULAR.value, limit=page_size + 1, after=after, offset=offset
    )
    more = len(rows) > page_size
    rows = rows[:page_size]
    now = runtime.clock.now_utc()
    token = encode_token(rows[-1].created_at, rows[-1].hash) if more and rows else None
    return KeyPage(data=[key_out(r, now) for r in rows], next_page_token=token)


@router.get("/{key_hash}", response_model=KeyEnvelope, summary="Get one API key", responses=errors(404))
async def get_key(key_hash: KeyHash, request: Request, manager: ManagerDep) -> KeyEnvelope:
    """One key by its ``hash``."""
    runtime = runtime_of(request)
    record = await _visible_key(runtime, manager, key_hash)
    return KeyEnvelope(data=key_out(record, runtime.clock.now_utc()))


@router.patch("/{key_hash}", response_model=KeyEnvelope, summary="Update an API key", responses=errors(400, 404))
async def update_key(key_hash: KeyHash, body: KeyUpdate, request: Request, manager: ManagerDep) -> KeyEnvelope:
    """Change the fields present in the body; null resets a limit field to the group default."""
    runtime = runtime_of(request)
    record = await _visible_key(runtime, manager, key_hash)
    updated, warnings = await runtime.key_service.update(record=record, spec=body, actor=manager.actor)
    return KeyEnvelope(data=key_out(updated, runtime.clock.now_utc()), warnings=list(warnings))


@router.post(
    "/{key_hash}/rotate", response_model=KeyIssued, summary="Rotate an API key's secret", responses=errors(400, 404)
)
async def rotate_key(
    key_hash: KeyHash, request: Request, manager: ManagerDep, body: KeyRotate | None = None
) -> KeyIssued:
    """New secret, same record; the old secret keeps working for ``grace_seconds``."""
    runtime = runtime_of(request)
    record = await _visible_key(runtime, manager, key_hash)
    grace_seconds = (body or KeyRotate()).grace_seconds
    issued = await runtime.key_service.rotate(record=record, grace_seconds=grace_seconds, actor=manager.actor)
    return KeyIssued(data=key_out(issued.record, runtime.clock.now_utc()), key=issued.plaintext)


@router.delete("/{key_hash}", response_model=KeyDeleted, summary="Delete an API key", responses=errors(404))
async def delete_key(key_hash: KeyHash, request: Request, manager: ManagerDep) -> KeyDeleted:
    """Immediate and final: the next request with this key fails."""
    runtime = runtime_of(request)
    record = await _visible_key(runtime, manager, key_hash)
    await runtime.key_service.revoke(record=record, actor=manager.actor)
    return KeyDeleted(data={"hash": record.hash, "deleted": True})
