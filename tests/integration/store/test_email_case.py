"""Emails are one account's whatever their letter case, on SQLite and PostgreSQL alike (migration 0010).

Both sides of a comparison are folded by the database (store/text_match.py): folding the typed email in
Python missed accounts whose email has a non-ASCII capital on SQLite, whose ``lower()`` folds ASCII only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from keyrelay.config import Settings
from keyrelay.errors import ErrorType, GatewayError
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate
from keyrelay.store.logins import LoginRepository
from tests.conftest import TEST_ACTOR

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PASSWORD = "correct horse battery"


async def test_an_email_is_found_as_typed_and_in_any_ascii_case(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        created = await runtime.account_service.create_account(
            AccountCreate(email="Änne@Example.com"), actor=TEST_ACTOR
        )
        for typed in ("Änne@Example.com", "Änne@example.com", "ÄNNE@EXAMPLE.COM"):
            found = await runtime.accounts.get_by_email(email=typed)
            assert found is not None and found.id == created.id, typed
            login = await LoginRepository(runtime.engine).login_by_email(email=typed)
            assert login is not None and login.id == created.id, typed
        await runtime.signin.set_password(account_id=created.id, password=PASSWORD, verified=True, actor=TEST_ACTOR)
        for typed in ("Änne@Example.com", "ÄNNE@EXAMPLE.COM"):
            _, login = await runtime.signin.sign_in(email=typed, password=PASSWORD, ip="192.0.2.1", user_agent=None)
            assert login.id == created.id, typed
        # A non-ASCII letter in another case: PostgreSQL folds it, SQLite does not (docs/portal.md, Known limits).
        listed = await runtime.accounts.list_all(limit=5, offset=0, email_contains="änne@EXAMPLE")
        folds_unicode = runtime.engine.dialect.name == "postgresql"
        assert [a.id for a in listed] == ([created.id] if folds_unicode else [])
        assert [a.id for a in await runtime.accounts.list_all(limit=5, offset=0, email_contains="NNE@ex")] == [
            created.id
        ]
    finally:
        await runtime.close()


async def test_two_accounts_racing_for_one_email_in_two_cases_end_as_one(database_url: str) -> None:
    runtime = await open_runtime(Settings(database_url=database_url))
    try:
        # Straight to the store, as two requests that both passed the service's look-up would arrive.
        values = {"status": "active", "created_at": NOW, "updated_at": NOW}
        await runtime.accounts.insert(values={"email": "race@example.com", **values})
        with pytest.raises(IntegrityError):
            await runtime.accounts.insert(values={"email": "RACE@example.com", **values})
        # Through the service, concurrently: one account, and the other call is a 409 naming the field.
        specs = [AccountCreate(email=e) for e in ("twin@example.com", "Twin@example.com", "TWIN@EXAMPLE.COM")]
        results = await asyncio.gather(
            *(runtime.account_service.create_account(s, actor=TEST_ACTOR) for s in specs), return_exceptions=True
        )
        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, GatewayError)]
        assert len(made) == 1 and len(refused) == 2
        assert all(r.error_type is ErrorType.CONFLICT and r.field == "email" for r in refused)
    finally:
        await runtime.close()
