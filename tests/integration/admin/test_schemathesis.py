"""A bounded schemathesis run over the management API's own /openapi.json, on SQLite and PostgreSQL.

Every operation gets a few dozen schema-valid and schema-violating requests (fixed seed, so a run is
reproducible) through real HTTP against a running gateway. Asserted: no 5xx, and every answer is one the
document declares (status, content type, body schema, headers); schema-violating input is refused.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyrelay.config import ModelConfig, ProviderConfig, Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.spec import KeyCreate
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.testing.server import running_server
from tests.conftest import TEST_ACTOR

EXAMPLES = 15  # per operation and per mode (schema-valid, schema-violating): 30 requests per operation
SEED = 20261130
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    allow_header_conformance,
    ignored_auth,
]
# The admin's account gets an id no generator aims at (they like 0, 1 and the bounds), so that a generated
# PATCH cannot deactivate the caller and turn the rest of the run into 403s.
ADMIN_ACCOUNT_ID = 1_234_567_890


@contextmanager
def gateway_in_thread(settings_: Settings) -> Iterator[tuple[str, str]]:
    """A running gateway on its own thread and event loop (schemathesis calls it synchronously).

    Yields the base URL and an admin management key; the store also holds a group, an account in it
    and an API key, so that the success paths are reachable too.
    """
    ready: queue.Queue[tuple[str, str] | BaseException] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        try:
            async with running_server(settings_) as server:
                rt = server.runtime
                admin = await rt.accounts.insert(
                    values={
                        "id": ADMIN_ACCOUNT_ID,
                        "email": "admin@example.com",
                        "status": "active",
                        "created_at": rt.clock.now_utc(),
                        "updated_at": rt.clock.now_utc(),
                    }
                )
                await rt.account_service.create_group(GroupCreate(name="team"), actor=TEST_ACTOR)
                user = await rt.account_service.create_account(
                    AccountCreate(email="user@example.com", group="team"), actor=TEST_ACTOR
                )
                await rt.key_service.create(account=user, spec=KeyCreate(name="user-key"), actor=TEST_ACTOR)
                issued = await rt.key_service.create(
                    account=admin,
                    spec=KeyCreate(name="fuzz"),
                    key_type=KeyType.MANAGEMENT,
                    is_admin=True,
                    actor=TEST_ACTOR,
                )
                ready.put((server.base_url, issued.plaintext))
                await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        except BaseException as exc:
            ready.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="gateway", daemon=True)
    thread.start()
    try:
        started = ready.get(timeout=60)
        if isinstance(started, BaseException):
            raise started
        yield started
    finally:
        stop.set()
        thread.join(timeout=60)


def test_management_api_against_its_openapi_document(database_url: str) -> None:
    provider = ProviderConfig(
        name="openai", base_url="http://127.0.0.1:9", region="us", models=(ModelConfig(id="gpt-4o"),)
    )
    config = Settings(database_url=database_url, cache_poll_interval_s=3600, log_level="error", providers=(provider,))
    with gateway_in_thread(config) as (base_url, admin_key):
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        auth = {"Authorization": f"Bearer {admin_key}"}
        failures: list[str] = []
        session = requests.Session()
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 19
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @seed(SEED)
                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
                def run(case: schemathesis.Case) -> None:
                    case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)

                try:
                    run()
                except Unsatisfiable:
                    pass  # nothing in this operation can violate its schema (e.g. no parameters at all)
                except (Exception, FailureGroup) as exc:  # collect every operation's findings, then fail once
                    failures.append(f"{operation.label} [{mode.value}]: {exc}")
        assert failures == [], "\n\n".join(failures)


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # schemathesis calls through `requests`, which honours HTTP(S)_PROXY: the gateway is on loopback.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
