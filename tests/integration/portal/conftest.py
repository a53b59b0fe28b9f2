"""Fixtures of the portal tests: a real SMTP server (aiosmtpd) and a gateway whose mail goes to it."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer, running_server

LINK = re.compile(r"https?://[^\s/]+(/(?:verify|reset)/[A-Za-z0-9_-]+)")


@dataclass
class Inbox:
    """The messages the test SMTP server accepted, in arrival order."""

    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd calls it by this name
        """aiosmtpd handler hook: keep the message."""
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 Message accepted for delivery"

    async def wait_for(self, to: str, subject_part: str, *, count: int = 1, timeout: float = 10.0) -> EmailMessage:
        """The ``count``-th message to ``to`` whose subject holds ``subject_part`` (polled, with a deadline)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [m for m in self.messages if m["To"] == to and subject_part in str(m["Subject"])]
            if len(found) >= count:
                return found[count - 1]
            if asyncio.get_running_loop().time() > deadline:
                subjects = [(m["To"], m["Subject"]) for m in self.messages]
                raise AssertionError(f"no message #{count} to {to} about {subject_part!r}; got {subjects}")
            await asyncio.sleep(0.02)

    def sent_to(self, to: str) -> list[EmailMessage]:
        """Every message to ``to`` so far."""
        return [m for m in self.messages if m["To"] == to]


def link_path(message: EmailMessage) -> str:
    """The path of the verify or reset link in a message (``/verify/<token>``)."""
    body = message.get_body(("plain",))
    assert body is not None
    match = LINK.search(body.get_content())
    assert match, body.get_content()
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    """A real SMTP server on 127.0.0.1 (aiosmtpd, in its own thread) and what it received."""
    box = Inbox(port=_free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def portal_settings(database_url: str, inbox: Inbox, mock: MockUpstream) -> Settings:
    """Settings with open sign-up, mail to the test SMTP server and the mock OpenAI upstream."""
    models = (
        ModelConfig(id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="0.60"),  # type: ignore[arg-type]
        # $600 per million output tokens: one answer of the mock costs about $0.0006 (spend-limit tests).
        ModelConfig(id="pricey", upstream_id="gpt-4o-mini", input_per_mtok="0.15", output_per_mtok="600"),  # type: ignore[arg-type]
    )
    return Settings(
        database_url=database_url,
        cache_poll_interval_s=0.2,
        usage_flush_interval_s=0.1,
        log_level="warning",
        providers=(ProviderConfig(name="mock", kind="openai", base_url=mock.base_url, models=models),),
        signup="open",
        signup_credit_usd=Decimal(100),  # sign-ups start with no credit unless the operator grants some
        smtp_url=f"smtp://127.0.0.1:{inbox.port}",  # type: ignore[arg-type]
    )


@pytest.fixture
async def portal(portal_settings: Settings) -> AsyncIterator[RunningServer]:
    """A running keyrelay whose portal sends mail to ``inbox``."""
    async with running_server(portal_settings) as srv:
        yield srv


@pytest.fixture
async def browser_like(portal: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that keeps cookies and sends the Origin a browser would."""
    async with httpx.AsyncClient(base_url=portal.base_url, timeout=10, headers={"origin": portal.base_url}) as c:
        yield c
