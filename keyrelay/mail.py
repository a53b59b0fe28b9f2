"""Outgoing mail: messages built with the standard library, sent with aiosmtplib, or logged without SMTP.

``KEYRELAY_SMTP_URL``: ``smtp://[user:password@]host[:port]`` sends with STARTTLS when the server offers
it (port 587 by default), ``smtps://`` over TLS from the start (port 465). The user and password may instead
be given as ``KEYRELAY_SMTP_USER`` and ``KEYRELAY_SMTP_PASSWORD`` (no percent-encoding needed). With
credentials, ``smtp://`` requires STARTTLS (a server that does not offer it gets no password), except to a
loopback address (a local relay), where the password never crosses a network. Without an
SMTP URL, every message is written to the log at WARNING level, links included, so a demo works offline:
such a log holds single-use sign-in links and must be kept like the mail it replaces.
"""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Protocol

import aiosmtplib

from keyrelay.config import Settings

__all__ = ["LogMailer", "Mailer", "SmtpMailer", "mailer_from_settings"]

log = logging.getLogger("keyrelay.mail")


class Mailer(Protocol):
    """Sends one plain-text message."""

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """Send ``body`` to ``to``; raises ``MailError`` when the server refuses it or cannot be reached."""
        ...


class MailError(Exception):
    """The message could not be handed to the SMTP server (the message says why, without credentials)."""


class SmtpMailer:
    """Delivers through an SMTP server with aiosmtplib (a new connection per message: mail is rare)."""

    def __init__(
        self, url: str, sender: str, *, user: str | None = None, password: str | None = None, timeout_s: float = 30.0
    ) -> None:
        """``url`` as ``KEYRELAY_SMTP_URL``; ``user`` and ``password`` count where the URL has none."""
        parts = urllib.parse.urlsplit(url)
        self._tls = parts.scheme == "smtps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (465 if self._tls else 587)
        self._user = urllib.parse.unquote(parts.username) if parts.username else user
        self._password = urllib.parse.unquote(parts.password) if parts.password else password
        # A password crosses the network only encrypted: STARTTLS becomes required (True) rather than used
        # when offered (None), so a man in the middle cannot strip the offer and read AUTH.
        self._start_tls: bool | None = None
        if self._tls:
            self._start_tls = False
        elif self._user is not None and not _is_loopback(self._host):
            self._start_tls = True
        self._sender = sender
        self._sender_address = parseaddr(sender)[1] or sender  # the envelope sender: the address alone
        self._timeout_s = timeout_s

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """See ``Mailer.send``."""
        try:
            message = build_message(sender=self._sender, to=to, subject=subject, body=body)
            await aiosmtplib.send(
                message,
                sender=self._sender_address,
                recipients=[to],  # exactly this one, whatever the To header might parse into
                hostname=self._host,
                port=self._port,
                username=self._user,
                password=self._password,
                use_tls=self._tls,
                start_tls=self._start_tls,  # None: STARTTLS when the server offers it
                timeout=self._timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
            # Also a message the email package cannot build from this address: never a crash of the caller.
            raise MailError(f"mail to {self._host}:{self._port} failed: {type(exc).__name__}") from None


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LogMailer:
    """No SMTP server configured: each message goes to the log at WARNING level."""

    def __init__(self, sender: str) -> None:
        self._sender = sender

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """See ``Mailer.send``."""
        log.warning("mail (KEYRELAY_SMTP_URL is not set) to %s: %s\n%s", to, subject, body)


def build_message(*, sender: str, to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text UTF-8 message (RFC 5322 headers by ``email.message``)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def mailer_from_settings(settings: Settings) -> Mailer:
    """The SMTP mailer when ``smtp_url`` is set, else the logging one."""
    if settings.smtp_url is not None:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password is not None else None
        return SmtpMailer(
            settings.smtp_url.get_secret_value(), settings.mail_from, user=settings.smtp_user, password=password
        )
    return LogMailer(settings.mail_from)
