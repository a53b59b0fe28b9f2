"""/api/v1/accounts and /api/v1/groups: admin-only management of accounts and groups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from keyrelay.admin.auth import Manager, require_manager, runtime_of
from keyrelay.admin.openapi import COMMON_ERRORS, errors
from keyrelay.admin.schemas import AccountOut, GroupOut, account_out, group_out
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import Count, RowId
from keyrelay.runtime import Runtime
from keyrelay.services.inputs import AccountCreate, AccountUpdate, GroupCreate, GroupUpdate
from keyrelay.store.records import AccountRecord, GroupRecord


async def require_admin(manager: Annotated[Manager, Depends(require_manager)]) -> Manager:
    """FastAPI dependency: an admin management key."""
    manager.require_admin()
    return manager


AdminDep = Annotated[Manager, Depends(require_admin)]
AccountId = Annotated[RowId, Path()]
GroupId = Annotated[RowId, Path()]
router = APIRouter(prefix="/api/v1", tags=["accounts and groups"], responses=errors(*COMMON_ERRORS))
MAX_OFFSET = 1_000_000


class AccountEnvelope(BaseModel):
    """``{"data": account}``."""

    data: AccountOut


class AccountList(BaseModel):
    """A page of accounts."""

    data: list[AccountOut]


class GroupEnvelope(BaseModel):
    """``{"data": group}``."""

    data: GroupOut


class GroupList(BaseModel):
    """All groups."""

    data: list[GroupOut]


class GroupDeletedOut(BaseModel):
    """What was deleted."""

    id: int
    deleted: bool


class GroupDeleted(BaseModel):
    """Answer to DELETE: ``{"data": {"id": ..., "deleted": true}}``."""

    data: GroupDeletedOut


async def _account_view(runtime: Runtime, account: AccountRecord) -> AccountOut:
    group = await runtime.groups.get(group_id=account.group_id) if account.group_id is not None else None
    return account_out(account, group.name if group else None)


async def _account(runtime: Runtime, account_id: int) -> AccountRecord:
    account = await runtime.accounts.get(account_id=account_id)
    if account is None:
        raise GatewayError(ErrorType.NOT_FOUND, "No such account.")
    return account


async def _group(runtime: Runtime, group_id: int) -> GroupRecord:
    group = await runtime.groups.get(group_id=group_id)
    if group is None:
        raise GatewayError(ErrorType.NOT_FOUND, "No such group.")
    return group


@router.post(
    "/accounts",
    status_code=201,
    response_model=AccountEnvelope,
    summary="Create an account",
    responses=errors(400, 409),
)
async def create_account(body: AccountCreate, request: Request, manager: AdminDep) -> AccountEnvelope:
    """Create an account (balance null = unlimited)."""
    runtime = runtime_of(request)
    account = await runtime.account_service.create_account(body, actor=manager.actor)
    return AccountEnvelope(data=await _account_view(runtime, account))


@router.get("/accounts", response_model=AccountList, summary="List accounts", responses=errors(400))
async def list_accounts(
    request: Request,
    _: AdminDep,
    page_size: Annotated[Count, Query(ge=1, le=500)] = 100,
    offset: Annotated[Count, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AccountList:
    """Accounts in creation order."""
    runtime = runtime_of(request)
    rows = await runtime.accounts.list_all(limit=page_size, offset=offset)
    return AccountList(data=[await _account_view(runtime, a) for a in rows])


@router.get(
    "/accounts/{account_id}", response_model=AccountEnvelope, summary="Get an account", responses=errors(400, 404)
)
async def get_account(account_id: AccountId, request: Request, _: AdminDep) -> AccountEnvelope:
    """One account."""
    runtime = runtime_of(request)
    return AccountEnvelope(data=await _account_view(runtime, await _account(runtime, account_id)))


@router.patch(
    "/accounts/{account_id}", response_model=AccountEnvelope, summary="Update an account", responses=errors(400, 404)
)
async def update_account(
    account_id: AccountId, body: AccountUpdate, request: Request, manager: AdminDep
) -> AccountEnvelope:
    """Change status, balance or group; takes effect on the account's keys at their next request."""
    runtime = runtime_of(request)
    account = await runtime.account_service.update_account(
        await _account(runtime, account_id), body, actor=manager.actor
    )
    return AccountEnvelope(data=await _account_view(runtime, account))


@router.post(
    "/groups", status_code=201, response_model=GroupEnvelope, summary="Create a group", responses=errors(400, 409)
)
async def create_group(body: GroupCreate, request: Request, manager: AdminDep) -> GroupEnvelope:
    """Create a group with default key limits."""
    runtime = runtime_of(request)
    group = await runtime.account_service.create_group(body, actor=manager.actor)
    return GroupEnvelope(data=group_out(group, runtime.clock.now_utc()))


@router.get("/groups", response_model=GroupList, summary="List groups")
async def list_groups(request: Request, _: AdminDep) -> GroupList:
    """All groups."""
    runtime = runtime_of(request)
    now = runtime.clock.now_utc()
    return GroupList(data=[group_out(g, now) for g in await runtime.groups.list_all()])


@router.get("/groups/{group_id}", response_model=GroupEnvelope, summary="Get a group", responses=errors(400, 404))
async def get_group(group_id: GroupId, request: Request, _: AdminDep) -> GroupEnvelope:
    """One group."""
    runtime = runtime_of(request)
    return GroupEnvelope(data=group_out(await _group(runtime, group_id), runtime.clock.now_utc()))


@router.patch(
    "/groups/{group_id}", response_model=GroupEnvelope, summary="Update a group", responses=errors(400, 404, 409)
)
async def update_group(group_id: GroupId, body: GroupUpdate, request: Request, manager: AdminDep) -> GroupEnvelope:
    """Change a group's defaults; its accounts' keys see them at their next request."""
    runtime = runtime_of(request)
    group = await runtime.account_service.update_group(await _group(runtime, group_id), body, actor=manager.actor)
    return GroupEnvelope(data=group_out(group, runtime_of(request).clock.now_utc()))


@router.delete(
    "/groups/{group_id}", response_model=GroupDeleted, summary="Delete a group", responses=errors(400, 404, 409)
)
async def delete_group(group_id: GroupId, request: Request, manager: AdminDep) -> GroupDeleted:
    """Delete a group no account belongs to (409 otherwise)."""
    runtime = runtime_of(request)
    group = await _group(runtime, group_id)
    await runtime.account_service.delete_group(group, actor=manager.actor)
    return GroupDeleted(data=GroupDeletedOut(id=group.id, deleted=True))
