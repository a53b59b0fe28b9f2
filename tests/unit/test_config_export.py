"""``export_env``: what ``serve --workers N`` hands its workers reads back as the same settings, secrets included.

``str()`` of a pydantic ``SecretStr`` is ``**********``: exported as such, a worker would read that back as
its SMTP URL and fail to start.
"""

from __future__ import annotations

import os
from decimal import Decimal
from unittest import mock

import pytest

from keyrelay.config import ConfigError, Settings, export_env, load_settings
from keyrelay.mail import SmtpMailer, mailer_from_settings


def _settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def test_every_setting_reads_back_the_same_in_a_worker() -> None:
    given = _settings(
        database_url="postgresql+asyncpg://kr@db/keyrelay",
        port=9000,
        workers=3,
        trusted_proxies="10.0.0.0/8, 192.0.2.7",
        limits_fail_open=True,
        signup="open",
        signup_credit_usd=Decimal("2.50"),
        public_url="https://kr.example.com",
        smtp_url="smtps://mail.example.com:2465",
        smtp_user="postmaster@example.com",
        smtp_password="p@ss:w/rd%20",
        low_balance_usd=Decimal("0.75"),
        notify_interval_s=12.5,
    )
    with mock.patch.dict(os.environ, {}, clear=True):
        export_env(given)
        assert "**" not in os.environ["KEYRELAY_SMTP_URL"] and "**" not in os.environ["KEYRELAY_SMTP_PASSWORD"]
        read_back = Settings()
    assert read_back.model_dump(exclude={"smtp_url", "smtp_password"}) == given.model_dump(
        exclude={"smtp_url", "smtp_password"}
    )
    assert read_back.smtp_url is not None and read_back.smtp_url.get_secret_value() == "smtps://mail.example.com:2465"
    assert read_back.smtp_password is not None and read_back.smtp_password.get_secret_value() == "p@ss:w/rd%20"


def test_smtp_credentials_come_from_the_url_or_from_their_own_settings() -> None:
    in_url = mailer_from_settings(_settings(smtp_url="smtp://ann%40example.com:s%3Acret@mail.example.com"))
    apart = mailer_from_settings(
        _settings(smtp_url="smtp://mail.example.com", smtp_user="ann@example.com", smtp_password="s:cret")
    )
    for mailer in (in_url, apart):
        assert isinstance(mailer, SmtpMailer)
        assert (mailer._user, mailer._password) == ("ann@example.com", "s:cret")


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"smtp_url": "smtp://ann@mail.example.com", "smtp_user": "bob"}, "user is in both"),
        ({"smtp_url": "smtp://ann:pw@mail.example.com", "smtp_password": "pw2"}, "password is in both"),
        ({"smtp_url": "smtp://mail.example.com", "smtp_password": "pw"}, "without an SMTP user"),
        ({"smtp_user": "ann", "smtp_password": "pw"}, "without smtp_url"),
    ],
)
def test_smtp_credentials_given_twice_or_half_are_refused(values: dict[str, str], says: str) -> None:
    env = {f"KEYRELAY_{name.upper()}": value for name, value in values.items()}
    with mock.patch.dict(os.environ, env, clear=True), pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("invalid settings: ") and says in str(caught.value)
    assert "pw" not in str(caught.value).replace("password", "")  # the secret itself is never echoed


@pytest.mark.parametrize(
    ("url", "user", "start_tls"),
    [
        ("smtp://mail.example.com", "ann", True),  # a password over the network: STARTTLS required
        ("smtp://192.0.2.25", "ann", True),
        ("smtp://mail.example.com", None, None),  # no password to protect: STARTTLS when offered
        ("smtp://127.0.0.1:2525", "ann", None),  # a local relay: the password stays on this machine
        ("smtp://localhost", "ann", None),
        ("smtp://[::1]:25", "ann", None),
        ("smtps://mail.example.com", "ann", False),  # TLS from the first byte
    ],
)
def test_a_password_is_sent_only_encrypted_unless_to_a_local_relay(
    url: str, user: str | None, start_tls: bool | None
) -> None:
    mailer = SmtpMailer(url, "keyrelay <k@example.com>", user=user, password="pw" if user else None)
    assert mailer._start_tls is start_tls
