"""Portal sign-in: sign-up, email verification, sign-in with throttling, sessions, password reset and change.

The one write path for sign-in state (``store/logins.py``), as ``services/keys.py`` is for keys. Secrets it
makes (session ids, emailed tokens) are 256-bit random values (``secrets.token_urlsafe(32)``); the store
holds only their SHA-256, and they reach only the cookie or the email. Rules (OWASP Authentication and
Forgot Password cheat sheets):

- An unknown email and a wrong password get the same answer, after the same argon2 work.
- A reset request and a sign-up get the same answer whether or not the account exists.
- Sign-in is throttled per email (5 failures in 15 minutes) and per client IP (30), counted in the store,
  so the limits hold across instances.
- A reset link is valid for 30 minutes, once; using it ends every session of the account. A verification
  link is valid for 2 days, once.

Changes to an account are recorded in the audit log (``services/audit.py``), in the change's transaction:
sign-up (``account.create``), email verification, password changes, resets and sets (never the password or
its hash), and the admin flag (``account.update``). A portal user's own changes name them as the actor.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from keyrelay.clock import Clock
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.mail import Mailer, MailError
from keyrelay.services.accounts import AccountService
from keyrelay.services.audit import Actor, Audited, AuditTrail
from keyrelay.services.inputs import AccountCreate
from keyrelay.services.passwords import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, Passwords
from keyrelay.store.audit import AuditHook
from keyrelay.store.logins import Login, LoginRepository, SessionRecord

__all__ = ["FAILURE_WINDOW", "SignedIn", "SigninService", "token_hash"]

log = logging.getLogger("keyrelay.signin")

FAILURE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_EMAIL = 5
MAX_FAILURES_PER_IP = 30
RESET_LIFETIME = timedelta(minutes=30)
INVITE_LIFETIME = timedelta(days=7)  # an invitation is a reset link that lives longer
VERIFY_LIFETIME = timedelta(days=2)
RESET_RESEND_AFTER = timedelta(minutes=1)  # at most one reset (or verification) mail a minute per account
NOTICE_EVERY = timedelta(hours=1)
FORM_LIFETIME = timedelta(
    days=1
)  # how long a sent form's id is remembered  # "someone tried to sign up with your email": at most hourly
TOUCH_AFTER = timedelta(minutes=1)  # a session's last_seen_at is written at most once a minute

_WRONG = "The email or password is wrong."
_THROTTLED = "Too many failed sign-ins. Wait 15 minutes, or reset your password."


def token_hash(token: str) -> str:
    """SHA-256 hex of a session id or emailed token: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A live session: its account and the hash of its id (never the id itself)."""

    account: Login
    session: SessionRecord


class SigninService:
    """Accounts' passwords, sessions and emailed links."""

    def __init__(
        self,
        *,
        logins: LoginRepository,
        account_service: AccountService,
        passwords: Passwords,
        mailer: Mailer,
        clock: Clock,
        audit: AuditTrail,
        public_url: str,
        signup: str,
        signup_credit: Decimal = Decimal(0),
        signup_group: str | None = None,
        background: Callable[[Coroutine[Any, Any, None]], object] | None = None,
        idle: timedelta,
        absolute: timedelta,
    ) -> None:
        self._logins = logins
        self._accounts = account_service
        self._passwords = passwords
        self._mailer = mailer
        self._clock = clock
        self._audit = audit
        self._public_url = public_url.rstrip("/")
        self.signup_mode = signup
        self._background = background
        self._signup_credit = signup_credit
        self._signup_group = signup_group
        self._idle = idle
        self._absolute = absolute

    @staticmethod
    def check_password(password: str, *, field: str = "password") -> None:
        """Raise INVALID_REQUEST (naming ``field``) unless the password has 10 to 256 characters."""
        if len(password) < MIN_PASSWORD_CHARS:
            raise GatewayError(ErrorType.INVALID_REQUEST, f"Use at least {MIN_PASSWORD_CHARS} characters.", field=field)
        if len(password) > MAX_PASSWORD_CHARS:
            raise GatewayError(ErrorType.INVALID_REQUEST, f"Use at most {MAX_PASSWORD_CHARS} characters.", field=field)

    async def sign_up(self, *, email: str, password: str, ip: str | None = None) -> None:
        """Create an account with this password and email it a verification link (``signup: open`` only).

        If the email already has an account, that account is told by mail instead; the caller's answer is
        the same. Raises FORBIDDEN when sign-up is not open, INVALID_REQUEST for a bad email or password.
        The audit entry names the new account's email as the actor, and ``ip`` (the client's) as its address.
        """
        if self.signup_mode != "open":
            raise GatewayError(ErrorType.FORBIDDEN, "Sign-up is closed: ask an administrator for an account.")
        self.check_password(password)
        try:
            spec = AccountCreate.model_validate(
                {"email": email, "balance": self._signup_credit, "group": self._signup_group}
            )
        except ValueError:
            raise GatewayError(ErrorType.INVALID_REQUEST, "Enter a valid email address.", field="email") from None
        existing = await self._logins.login_by_email(email=spec.email)
        if existing is not None:
            await self._passwords.hash(password)  # the same work as for a new account: timing tells nothing
            now = self._clock.now_utc()
            if await self._logins.token_recent(account_id=existing.id, purpose="notice", since=now - NOTICE_EVERY):
                return  # told within the hour: a form resubmitted in a loop cannot flood the inbox
            await self._issue(existing.id, "notice", NOTICE_EVERY)  # records when it was told; never used
            await self._mail(
                existing.email,
                "Your keyrelay account",
                "Someone, perhaps you, tried to sign up with this email, which already has an account.\n"
                f"Sign in at {self._public_url}/login, or reset your password at "
                f"{self._public_url}/forgot-password.\n",
            )
            return
        try:
            actor = Actor.account(email=spec.email, account_id=None, ip=ip)
            record = await self._accounts.create_account(spec, actor=actor)
        except GatewayError as exc:
            if exc.error_type is ErrorType.CONFLICT:  # created meanwhile by another request: same answer
                return
            raise
        await self._logins.set_login(
            account_id=record.id, values={"password_hash": await self._passwords.hash(password)}
        )
        await self.send_verification(record.id)

    async def send_verification(self, account_id: int) -> None:
        """Email a fresh single-use verification link (older unused links stop working)."""
        login = await self._logins.login_by_id(account_id=account_id)
        if login is None or login.email_verified_at is not None:
            return
        since = self._clock.now_utc() - RESET_RESEND_AFTER
        if await self._logins.token_recent(account_id=account_id, purpose="verify", since=since):
            return  # one verification mail a minute
        token = await self._issue(account_id, "verify", VERIFY_LIFETIME)
        await self._mail(
            login.email,
            "Verify your email for keyrelay",
            f"Open this link to verify your email (valid for 2 days, once):\n\n{self._public_url}/verify/{token}\n",
        )

    async def verify_email(self, token: str, *, password: str, ip: str | None = None) -> bool:
        """Use a verification link with the account's password; whether the link was valid.

        The password is asked so that only whoever chose it can verify: someone who signed up with another
        person's address cannot have that person verify it for them by clicking the link. Raises
        INVALID_REQUEST (field ``password``) for a wrong password, leaving the link usable.
        """
        now = self._clock.now_utc()
        digest = token_hash(token)
        owner = await self._logins.token_account(token_hash=digest, purpose="verify", now=now)
        if owner is None:
            return False
        login = await self._logins.login_by_id(account_id=owner)
        if login is None or not await self._passwords.verify(login.password_hash, password[:MAX_PASSWORD_CHARS]):
            raise GatewayError(ErrorType.INVALID_REQUEST, "The password is wrong.", field="password")
        account_id = await self._logins.use_token(token_hash=digest, purpose="verify", now=now)
        if account_id is None:
            return False
        audit = self._own(await self._logins.login_by_id(account_id=account_id), account_id, ip, "verify_email")
        await self._logins.set_login(account_id=account_id, values={"email_verified_at": now}, audit=audit)
        return True

    async def sign_in(self, *, email: str, password: str, ip: str, user_agent: str | None) -> tuple[str, Login]:
        """Check the password and open a session: (session id for the cookie, account).

        Raises RATE_LIMIT_EXCEEDED when this email or IP failed too often in the last 15 minutes (checked
        first, so a throttled guess costs no argon2 work), INVALID_REQUEST for a wrong email or password
        (one message for both), USER_INACTIVE for a suspended account with the right password. The session
        carries the account's ``session_epoch`` as read with the password it checked.
        """
        typed = email.strip()[:320]
        email = typed.lower()  # the throttle's key: one per address, whatever its letter case
        now = self._clock.now_utc()
        # The attempt is recorded as a failure before the password is checked, and taken back if it was right:
        # concurrent guesses all count, so a burst cannot get past the limits while argon2 runs.
        attempt = await self._logins.add_failure(email=email, ip=ip, at=now)
        by_email, by_ip = await self._logins.failures_since(email=email, ip=ip, since=now - FAILURE_WINDOW)
        if by_email > MAX_FAILURES_PER_EMAIL or by_ip > MAX_FAILURES_PER_IP:
            raise GatewayError(ErrorType.RATE_LIMIT_EXCEEDED, _THROTTLED, retry_after=FAILURE_WINDOW.total_seconds())
        # Looked up as typed: the store folds both sides with the database's lower() (store/text_match.py).
        login = await self._logins.login_by_email(email=typed) if typed else None
        matches = await self._passwords.verify(login.password_hash if login else None, password[:MAX_PASSWORD_CHARS])
        if login is None or not matches:
            raise GatewayError(ErrorType.INVALID_REQUEST, _WRONG, field="password")
        await self._logins.remove_failure(failure_id=attempt)
        if login.status != "active":
            raise GatewayError(ErrorType.USER_INACTIVE, "This account is suspended.")
        assert login.password_hash is not None  # verify() is False without one
        if self._passwords.needs_rehash(login.password_hash):
            new_hash = await self._passwords.hash(password)
            values = {"password_hash": new_hash}
            await self._logins.set_login(account_id=login.id, values=values, keep_sessions=True)
        return await self.open_session(login, ip=ip, user_agent=user_agent), login

    async def open_session(self, login: Login, *, ip: str | None, user_agent: str | None) -> str:
        """A new session for ``login``: its id, for the cookie (stored only hashed)."""
        now = self._clock.now_utc()
        session_id = _new_token()
        await self._logins.add_session(
            values={
                "id_hash": token_hash(session_id),
                "account_id": login.id,
                "created_at": now,
                "last_seen_at": now,
                "expires_at": now + self._absolute,
                "ip": ip,
                "user_agent": (user_agent or "")[:300] or None,
                "session_epoch": login.session_epoch,  # of the read whose password was checked
            }
        )
        return session_id

    async def session(self, session_id: str) -> SignedIn | None:
        """The live session with this id and its active account, or None (unknown, idle too long, expired)."""
        if not session_id or len(session_id) > 100:
            return None
        now = self._clock.now_utc()
        record = await self._logins.get_session(id_hash=token_hash(session_id))
        if record is None or record.expires_at <= now or record.last_seen_at + self._idle <= now:
            return None
        login = await self._logins.login_by_id(account_id=record.account_id)
        if login is None or login.status != "active" or login.session_epoch != record.session_epoch:
            return None  # a password changed or the account was deactivated since this session began
        if now - record.last_seen_at >= TOUCH_AFTER:
            await self._logins.touch_session(id_hash=record.id_hash, last_seen_at=now)
        return SignedIn(account=login, session=record)

    async def sessions(self, account_id: int) -> list[SessionRecord]:
        """The account's live sessions, newest first."""
        now = self._clock.now_utc()
        login = await self._logins.login_by_id(account_id=account_id)
        epoch = login.session_epoch if login is not None else -1
        return [
            s
            for s in await self._logins.sessions_of(account_id=account_id)
            if s.expires_at > now and s.last_seen_at + self._idle > now and s.session_epoch == epoch
        ]

    async def sign_out(self, session_id: str) -> None:
        """End this session."""
        await self._logins.delete_session(id_hash=token_hash(session_id))

    async def end_session(self, *, account_id: int, id_hash: str) -> bool:
        """End one of the account's sessions by its hash (from the sessions list); whether it existed."""
        return await self._logins.delete_session(id_hash=id_hash, account_id=account_id)

    async def sign_out_everywhere(self, *, account_id: int, keep: str | None = None) -> int:
        """End every session of the account (but the one with hash ``keep``); the number ended."""
        return await self._logins.delete_sessions(account_id=account_id, except_hash=keep)

    async def claim_form(self, account_id: int, form_id: str) -> bool:
        """Claim a portal form's random id once (kept for a day, as a used token); False if claimed before."""
        now = self._clock.now_utc()
        return await self._logins.claim_token(
            values={
                "token_hash": token_hash(f"form:{form_id}"),
                "purpose": "form",
                "account_id": account_id,
                "created_at": now,
                "expires_at": now + FORM_LIFETIME,
                "used_at": now,
            }
        )

    async def login(self, account_id: int) -> Login | None:
        """The sign-in view of an account (password set, email verified, admin), for the admin pages."""
        return await self._logins.login_by_id(account_id=account_id)

    async def invite(self, account_id: int) -> bool:
        """Email the account a link to choose its password (valid 7 days, once); False for no such account.

        The link is a password-reset link: using it sets the password and marks the email verified.
        """
        login = await self._logins.login_by_id(account_id=account_id)
        if login is None:
            return False
        token = await self._issue(login.id, "reset", INVITE_LIFETIME)
        await self._mail(
            login.email,
            "You are invited to keyrelay",
            "An administrator created a keyrelay account for this email. Open this link to choose your password "
            f"(valid for 7 days, once):\n\n{self._public_url}/reset/{token}\n\n"
            f"Then sign in at {self._public_url}/login and create your API keys.\n",
        )
        return True

    async def request_reset(self, email: str) -> None:
        """Email a reset link if an active account has this email; the same (silent) result if not."""
        login = await self._logins.login_by_email(email=email.strip()[:320]) if email.strip() else None
        if login is None or login.status != "active":
            return
        now = self._clock.now_utc()
        if await self._logins.token_recent(account_id=login.id, purpose="reset", since=now - RESET_RESEND_AFTER):
            return  # one mail a minute: a form resubmitted in a loop cannot flood the inbox
        token = await self._issue(login.id, "reset", RESET_LIFETIME)
        await self._mail(
            login.email,
            "Reset your keyrelay password",
            "Open this link to choose a new password (valid for 30 minutes, once):\n\n"
            f"{self._public_url}/reset/{token}\n\n"
            "If you did not ask for this, ignore this email: your password stays as it is.\n",
        )

    async def reset_usable(self, token: str) -> bool:
        """Whether a reset link can still be used (to show its form)."""
        return await self._logins.token_usable(token_hash=token_hash(token), purpose="reset", now=self._clock.now_utc())

    async def reset_password(self, *, token: str, password: str, ip: str | None = None) -> bool:
        """Set a new password with a reset link, once; every session of the account ends. Whether it worked.

        Raises INVALID_REQUEST (field ``password``) for a password that is too short or long, before the
        link is used up.
        """
        self.check_password(password)
        now = self._clock.now_utc()
        account_id = await self._logins.use_token(token_hash=token_hash(token), purpose="reset", now=now)
        if account_id is None:
            return False
        values: dict[str, object] = {"password_hash": await self._passwords.hash(password)}
        login = await self._logins.login_by_id(account_id=account_id)
        if login is None or login.status != "active":
            return False  # a deactivated account's links do not work
        if login.email_verified_at is None:
            values["email_verified_at"] = now  # the link reached the inbox: that verifies the email too
        audit = self._own(login, account_id, ip, "reset_password")
        await self._logins.set_login(account_id=account_id, values=values, audit=audit)
        await self._logins.delete_sessions(account_id=account_id)
        return True

    async def change_password(self, *, signed_in: SignedIn, current: str, new: str, ip: str | None = None) -> None:
        """Change the password after checking the current one; every other session ends.

        Raises INVALID_REQUEST naming ``password`` (wrong current password) or ``new_password``.
        """
        if not await self._passwords.verify(signed_in.account.password_hash, current[:MAX_PASSWORD_CHARS]):
            raise GatewayError(ErrorType.INVALID_REQUEST, "The current password is wrong.", field="password")
        self.check_password(new, field="new_password")
        account_id = signed_in.account.id
        audit = self._own(signed_in.account, account_id, ip, "change_password")
        new_hash = await self._passwords.hash(new)
        await self._logins.set_login(account_id=account_id, values={"password_hash": new_hash}, audit=audit)
        # The new password voided every session (its epoch moved on); this one is carried over to it.
        changed = await self._logins.login_by_id(account_id=account_id)
        if changed is not None:
            await self._logins.renew_session(id_hash=signed_in.session.id_hash, session_epoch=changed.session_epoch)
        await self._logins.delete_sessions(account_id=account_id, except_hash=signed_in.session.id_hash)
        await self._logins.retire_tokens(account_id=account_id, purpose="reset", now=self._clock.now_utc())

    async def set_password(self, *, account_id: int, password: str, verified: bool, actor: Actor) -> None:
        """Set a password as an operator (the CLI), optionally marking the email verified; sessions end."""
        self.check_password(password)
        values: dict[str, object] = {"password_hash": await self._passwords.hash(password)}
        if verified:
            login = await self._logins.login_by_id(account_id=account_id)
            if login is not None and login.email_verified_at is None:
                values["email_verified_at"] = self._clock.now_utc()
        audit = self._audit.hook(actor=actor, action="account.set_password")
        await self._logins.set_login(account_id=account_id, values=values, audit=audit)
        await self._logins.delete_sessions(account_id=account_id)
        await self._logins.retire_tokens(account_id=account_id, purpose="reset", now=self._clock.now_utc())

    async def set_admin(self, *, account_id: int, admin: bool, actor: Actor) -> None:
        """Make the account's sessions act as an admin (or not)."""
        audit = self._audit.hook(actor=actor, action="account.update")
        await self._logins.set_login(account_id=account_id, values={"is_admin": admin}, audit=audit)

    async def prune(self) -> None:
        """Delete expired sessions and tokens, and failures older than the throttling window."""
        now = self._clock.now_utc()
        await self._logins.prune(now=now, failures_before=now - FAILURE_WINDOW)

    def _own(self, login: Login | None, account_id: int, ip: str | None, verb: str) -> AuditHook[Audited]:
        """The audit hook of a change a portal user makes to their own account."""
        email = login.email if login is not None else f"account {account_id}"
        actor = Actor.account(email=email, account_id=account_id, ip=ip)
        return self._audit.hook(actor=actor, action=f"account.{verb}")

    async def _issue(self, account_id: int, purpose: str, lifetime: timedelta) -> str:
        now = self._clock.now_utc()
        await self._logins.retire_tokens(account_id=account_id, purpose=purpose, now=now)
        token = _new_token()
        values = {
            "token_hash": token_hash(token),
            "purpose": purpose,
            "account_id": account_id,
            "created_at": now,
            "expires_at": now + lifetime,
        }
        await self._logins.add_token(values=values)
        return token

    async def _mail(self, to: str, subject: str, body: str) -> None:
        """Send a message: in the background when a spawner was given, else before returning.

        In the background, the answer's timing does not depend on the SMTP server (it would tell whether
        an account exists).
        """
        if self._background is not None:
            self._background(self._send(to, subject, body))
            return
        await self._send(to, subject, body)

    async def _send(self, to: str, subject: str, body: str) -> None:
        try:
            await self._mailer.send(to=to, subject=subject, body=body)
        except MailError as exc:
            # The answer to the user stays the same (it must not tell whether the account exists).
            log.error("could not send %r: %s", subject, exc)
