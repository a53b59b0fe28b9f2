"""/api/v1/providers: every channel of the route table with its breaker state, recent error rate and latency."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from keyrelay.admin.accounts import require_admin
from keyrelay.admin.auth import Manager
from keyrelay.admin.openapi import COMMON_ERRORS, errors
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.gateway.pipeline import Gateway

router = APIRouter(prefix="/api/v1", tags=["providers"], responses=errors(*COMMON_ERRORS))


class CredentialOut(BaseModel):
    """One credential of a provider's pool (by its variable's name; never the secret)."""

    name: str = Field(description="The environment variable holding it.")
    state: str = Field(description="ready, or resting (after a 429 or a refusal).")
    rest_s: float = Field(description="Seconds until it is used again; 0 when ready.")


class ChannelOut(BaseModel):
    """One channel: a provider serving a model, as this process sees it (docs/routing.md)."""

    provider: str
    model: str = Field(description="The model id clients send.")
    upstream_model: str = Field(description="The id sent upstream.")
    kind: str
    priority: int
    weight: float
    state: str = Field(description="The circuit breaker: closed, open or half_open.")
    cooldown_s: float = Field(description="Seconds until an open breaker lets a probe through; 0 otherwise.")
    attempts_60s: int = Field(description="Attempts this process made in the last 60 seconds.")
    error_rate_60s: float | None = Field(description="Share of those that failed (null: none made).")
    latency_ms_p50: float | None = Field(description="Median time to the answer (a stream: its first content).")
    credentials: list[CredentialOut]


class ChannelList(BaseModel):
    """Every channel, in the route table's order."""

    data: list[ChannelOut]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise GatewayError(ErrorType.SERVICE_UNAVAILABLE, "The gateway is not started.")
    return gateway


@router.get("/providers", response_model=ChannelList)
async def list_providers(request: Request, manager: Annotated[Manager, Depends(require_admin)]) -> ChannelList:
    """Every channel with its health in this process (admin key). With Redis, breaker states are shared."""
    return ChannelList(data=[ChannelOut.model_validate(c) for c in _gateway(request).channel_report()])
