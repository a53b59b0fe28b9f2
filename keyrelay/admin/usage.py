"""/api/v1/usage: spend and token totals for the caller's keys (or every key, for admins)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from keyrelay.admin.auth import Manager, require_manager, runtime_of
from keyrelay.admin.openapi import COMMON_ERRORS, errors
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import Storable, Timestamp, is_key_hash
from keyrelay.keys.spec import micros_to_usd
from keyrelay.store.usage import UsageRepository, UsageTotals

router = APIRouter(prefix="/api/v1", tags=["usage"], responses=errors(*COMMON_ERRORS))


class UsageRow(BaseModel):
    """Totals of one group (or of everything when ``group`` is null); ``cost`` in USD."""

    group: str | None
    key_name: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = Field(description="Part of prompt_tokens read from a prompt cache.")
    cache_write_tokens: int = Field(description="Part of prompt_tokens written to a prompt cache.")
    reasoning_tokens: int = Field(description="Part of completion_tokens spent reasoning.")
    cost: float


class UsageAnswer(BaseModel):
    """``total`` over the whole selection and, with ``group_by``, one row per group."""

    total: UsageRow
    groups: list[UsageRow] | None


class UsageEnvelope(BaseModel):
    """``{"data": ...}``."""

    data: UsageAnswer


def _row(t: UsageTotals) -> UsageRow:
    return UsageRow(
        group=t.group,
        key_name=t.key_name,
        requests=t.requests,
        errors=t.errors,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        cache_read_tokens=t.cache_read_tokens,
        cache_write_tokens=t.cache_write_tokens,
        reasoning_tokens=t.reasoning_tokens,
        cost=micros_to_usd(t.cost_micros),
    )


@router.get("/usage", response_model=UsageEnvelope, summary="Usage totals", responses=errors(400, 404))
async def usage(
    request: Request,
    manager: Annotated[Manager, Depends(require_manager)],
    key: Annotated[
        Annotated[str, StringConstraints(max_length=64), Storable] | None, Query(description="A key's hash.")
    ] = None,
    model: Annotated[Annotated[str, StringConstraints(max_length=200), Storable] | None, Query()] = None,
    start: Annotated[Timestamp | None, Query(description="Inclusive, ISO 8601 (UTC if no offset).")] = None,
    end: Annotated[Timestamp | None, Query(description="Exclusive, ISO 8601 (UTC if no offset).")] = None,
    group_by: Annotated[Literal["day", "model", "key", "protocol", "provider"] | None, Query()] = None,
) -> UsageEnvelope:
    """Requests, tokens and cost, filtered by key, model and time range; optionally grouped."""
    runtime = runtime_of(request)
    if start is not None and end is not None and end <= start:
        raise GatewayError(ErrorType.INVALID_REQUEST, "end must be after start", field="end")
    if key is not None:
        record = await runtime.keys.get(key_hash=key, include_deleted=True) if is_key_hash(key) else None
        if record is None or not manager.can_see(record):
            raise GatewayError(ErrorType.NOT_FOUND, "No such key.", field="key")
    repo = UsageRepository(runtime.engine)
    scope = None if manager.is_admin else manager.account_id

    async def totals(by: Literal["day", "model", "key", "protocol", "provider"] | None) -> list[UsageTotals]:
        return await repo.totals(account_id=scope, key_hash=key, model=model, start=start, end=end, group_by=by)

    total = (await totals(None))[0]
    groups = [_row(g) for g in await totals(group_by)] if group_by else None
    return UsageEnvelope(data=UsageAnswer(total=_row(total), groups=groups))
