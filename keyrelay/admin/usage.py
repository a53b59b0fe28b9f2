"""/api/v1/usage: spend and token totals for the caller's keys (or every key, for admins), and the request log.

``GET /api/v1/usage/records`` is the same log the portal's ``/logs`` page shows, newest first and
keyset-paginated by ``(created_at, id)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from keyrelay.admin.auth import Manager, require_manager, runtime_of
from keyrelay.admin.openapi import COMMON_ERRORS, errors
from keyrelay.admin.pagination import decode_record_token, encode_record_token
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.fields import Count, RowId, Storable, Timestamp, is_key_hash
from keyrelay.keys.spec import micros_to_usd
from keyrelay.store.usage import StatusFilter, UsageEntry, UsageRepository, UsageTotals

router = APIRouter(prefix="/api/v1", tags=["usage"], responses=errors(*COMMON_ERRORS))

KeyParam = Annotated[str, StringConstraints(max_length=64), Storable]
ModelParam = Annotated[str, StringConstraints(max_length=200), Storable]
# "ok" (below 400), "error" (400 and above) or one status code.
StatusParam = Annotated[str, StringConstraints(pattern=r"^(ok|error|[1-5][0-9][0-9])$")]
PageToken = Annotated[str, StringConstraints(max_length=512), Storable]


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
    key: Annotated[KeyParam | None, Query(description="A key's hash.")] = None,
    model: Annotated[ModelParam | None, Query()] = None,
    start: Annotated[Timestamp | None, Query(description="Inclusive, ISO 8601 (UTC if no offset).")] = None,
    end: Annotated[Timestamp | None, Query(description="Exclusive, ISO 8601 (UTC if no offset).")] = None,
    group_by: Annotated[Literal["day", "model", "key", "protocol", "provider"] | None, Query()] = None,
) -> UsageEnvelope:
    """Requests, tokens and cost, filtered by key, model and time range; optionally grouped."""
    runtime = runtime_of(request)
    _check_range(start, end)
    await _check_key(request, manager, key)
    repo = UsageRepository(runtime.engine)
    scope = None if manager.is_admin else manager.account_id

    async def totals(by: Literal["day", "model", "key", "protocol", "provider"] | None) -> list[UsageTotals]:
        return await repo.totals(account_id=scope, key_hash=key, model=model, start=start, end=end, group_by=by)

    total = (await totals(None))[0]
    groups = [_row(g) for g in await totals(group_by)] if group_by else None
    return UsageEnvelope(data=UsageAnswer(total=_row(total), groups=groups))


def _check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise GatewayError(ErrorType.INVALID_REQUEST, "end must be after start", field="end")


async def _check_key(request: Request, manager: Manager, key: str | None) -> None:
    """A key filter must name a key the caller may see (a revoked one included): else 404 naming ``key``."""
    if key is None:
        return
    runtime = runtime_of(request)
    record = await runtime.keys.get(key_hash=key, include_deleted=True) if is_key_hash(key) else None
    if record is None or not manager.can_see(record):
        raise GatewayError(ErrorType.NOT_FOUND, "No such key.", field="key")


class AttemptOut(BaseModel):
    """One upstream attempt of a request (docs/routing.md)."""

    provider: str
    credential: str | None = Field(description="The name of the variable holding the provider key it used.")
    status: int = Field(description="The upstream's HTTP status; 0 for a transport failure.")
    failure_class: str | None = Field(
        description="transient, rate_limit, credential, model_access or caller_fault; null: it served the request."
    )
    latency_ms: int | None


class UsageRecordOut(BaseModel):
    """One request as the usage log holds it; ``cost`` in USD, ``cost_micros`` the exact integer."""

    id: int = Field(description="Increases with each record written; with created_at, the log's order.")
    request_id: str = Field(description="The x-request-id the gateway answered the request with.")
    created_at: datetime = Field(description="When the request was admitted (UTC).")
    key_hash: str
    key_name: str = Field(description="The key's name when the request was made.")
    account_id: int
    model: str | None
    provider: str | None
    protocol: str = Field(description="The wire the client spoke: openai, anthropic or gemini.")
    upstream_kind: str | None = Field(description="The kind of upstream that served it.")
    streamed: bool
    status: int = Field(description="The HTTP status the client got.")
    error_type: str | None = Field(description="keyrelay's error type when the request failed.")
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = Field(description="Part of prompt_tokens read from a prompt cache.")
    cache_write_tokens: int = Field(description="Part of prompt_tokens written to a prompt cache.")
    reasoning_tokens: int = Field(description="Part of completion_tokens spent reasoning.")
    usage_estimated: bool = Field(description="The upstream reported no usage; the tokens are estimated.")
    cost: float
    cost_micros: int
    latency_ms: int | None
    ttft_ms: int | None = Field(description="Time to the first byte of a streamed answer.")
    client_ip: str | None
    attempts: list[AttemptOut] = Field(
        description="The upstream attempts in order; one entry when the first attempt served it, none when none ran."
    )


class UsageRecordPage(BaseModel):
    """One page of usage records, newest first; ``next_page_token`` is null on the last page."""

    data: list[UsageRecordOut]
    next_page_token: str | None


def _record_out(entry: UsageEntry) -> UsageRecordOut:
    return UsageRecordOut(
        id=entry.id,
        request_id=entry.request_id,
        created_at=entry.created_at,
        key_hash=entry.key_hash,
        key_name=entry.key_name,
        account_id=entry.account_id,
        model=entry.model,
        provider=entry.provider,
        protocol=entry.protocol,
        upstream_kind=entry.upstream_kind,
        streamed=entry.streamed,
        status=entry.status,
        error_type=entry.error_type,
        prompt_tokens=entry.prompt_tokens,
        completion_tokens=entry.completion_tokens,
        cache_read_tokens=entry.cache_read_tokens,
        cache_write_tokens=entry.cache_write_tokens,
        reasoning_tokens=entry.reasoning_tokens,
        usage_estimated=entry.usage_estimated,
        cost=micros_to_usd(entry.cost_micros),
        cost_micros=entry.cost_micros,
        latency_ms=entry.latency_ms,
        ttft_ms=entry.ttft_ms,
        client_ip=entry.client_ip,
        attempts=_attempts_of(entry),
    )


def _attempts_of(entry: UsageEntry) -> list[AttemptOut]:
    """The stored attempt list; a record without one had one attempt that served it (or none at all)."""
    if entry.attempts:
        try:
            listed = orjson.loads(entry.attempts)
            return [AttemptOut.model_validate(item) for item in listed]
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return []
    if entry.provider is None:
        return []  # refused before any upstream was tried
    # Without a stored list, the one attempt made was accepted (2xx): a failure before that is always stored.
    status = entry.status if entry.error_type is None else 200
    return [AttemptOut(provider=entry.provider, credential=None, status=status, failure_class=None, latency_ms=None)]


def _status_filter(status: str | None) -> StatusFilter | None:
    if status is None or status in ("ok", "error"):
        return status  # type: ignore[return-value]  # the pattern allows only these two words
    return int(status)


@router.get(
    "/usage/records", response_model=UsageRecordPage, summary="Read the request log", responses=errors(400, 404)
)
async def usage_records(
    request: Request,
    manager: Annotated[Manager, Depends(require_manager)],
    account_id: Annotated[RowId | None, Query(description="Admin only: one account's records.")] = None,
    key: Annotated[KeyParam | None, Query(description="A key's hash.")] = None,
    model: Annotated[ModelParam | None, Query()] = None,
    status: Annotated[StatusParam | None, Query(description="ok (< 400), error (>= 400) or one status code.")] = None,
    start: Annotated[Timestamp | None, Query(description="Inclusive, ISO 8601 (UTC if no offset).")] = None,
    end: Annotated[Timestamp | None, Query(description="Exclusive, ISO 8601 (UTC if no offset).")] = None,
    limit: Annotated[Count, Query(ge=1, le=500)] = 100,
    page_token: Annotated[PageToken | None, Query()] = None,
) -> UsageRecordPage:
    """One record per request, newest first. Follow ``next_page_token`` until it is null.

    An admin management key sees every account's records (or one account's, with ``account_id``); any
    other sees its own account's only.
    """
    if account_id is not None and not manager.is_admin and account_id != manager.account_id:
        raise GatewayError(ErrorType.FORBIDDEN, "Only admin management keys may read other accounts' usage.")
    _check_range(start, end)
    before = decode_record_token(page_token) if page_token else None
    await _check_key(request, manager, key)
    scope = account_id if account_id is not None else (None if manager.is_admin else manager.account_id)
    rows = await UsageRepository(runtime_of(request).engine).records(
        account_id=scope,
        limit=limit + 1,
        before=before,
        key_hash=key,
        model=model,
        status=_status_filter(status),
        start=start,
        end=end,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    token = encode_record_token(rows[-1].created_at, rows[-1].id) if more and rows else None
    return UsageRecordPage(data=[_record_out(r) for r in rows], next_page_token=token)
