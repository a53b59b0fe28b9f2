"""SMTP authentication against a real server (aiosmtpd with AUTH): credentials in the URL or in their own settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from keyrelay.config import Settings
from keyrelay.mail import MailError, mailer_from_settings
from tests.integration.portal.conftest import Inbox, _free_port

USER, PASSWORD = "postmaster@example.com", "p@ss:w/rd %"
# AUTH over plain TCP on loopback: aiosmtpd rightly warns against it on a real network.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def _check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    """aiosmtpd authenticator: only USER with PASSWORD."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def guarded_inbox() -> Iterator[Inbox]:
    """A real SMTP server that requires AUTH (over plain TCP: this is loopback in a test)."""
    box = Inbox(port=_free_port())
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        authenticator=_check,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.mark.parametrize("where", ["url", "settings"])
async def test_mail_is_sent_with_the_credentials_from_either_place(guarded_inbox: Inbox, where: str) -> None:
    base = f"127.0.0.1:{guarded_inbox.port}"
    if where == "url":
        quoted = "postmaster%40example.com:p%40ss%3Aw%2Frd%20%25"
        settings = Settings.model_validate({"smtp_url": f"smtp://{quoted}@{base}"})
    else:
        settings = Settings.model_validate({"smtp_url": f"smtp://{base}", "smtp_user": USER, "smtp_password": PASSWORD})
    await mailer_from_settings(settings).send(to="ann@example.com", subject="Hello", body="hi")
    message = await guarded_inbox.wait_for("ann@example.com", "Hello")
    assert message.get_body(("plain",)) is not None


async def test_a_wrong_password_is_a_mail_error_that_names_no_secret(guarded_inbox: Inbox) -> None:
    settings = Settings.model_validate(
        {"smtp_url": f"smtp://127.0.0.1:{guarded_inbox.port}", "smtp_user": USER, "smtp_password": "wrong-one"}
    )
    with pytest.raises(MailError) as caught:
        await mailer_from_settings(settings).send(to="ann@example.com", subject="Hello", body="hi")
    assert "wrong-one" not in str(caught.value) and USER not in str(caught.value)
    assert guarded_inbox.messages == []
