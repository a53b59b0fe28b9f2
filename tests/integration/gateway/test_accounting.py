"""Usage records, charging of keys and accounts, what a key sees about itself, metrics, and no secrets in logs."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import socket
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from sqlalchemy import select

from keyrelay.config import Settings
from keyrelay.keys.format import KeyType
from keyrelay.keys.hashing import key_hash
from keyrelay.keys.spec import KeyCreate
from keyrelay.protocols.openai_stream import estimate_tokens
from keyrelay.runtime import open_runtime
from keyrelay.services.inputs import AccountCreate, GroupCreate
from keyrelay.store.schema import keys
from keyrelay.testing.mock_upstream import MockUpstream, count_embedding_tokens, count_prompt_tokens
from keyrelay.testing.poll import poll_until
from keyrelay.testing.server import RunningServer, running_server
from keyrelay.usage.records import UsageRecord
from tests.conftest import TEST_ACTOR, make_api_key, make_management_key
from tests.integration.gateway.conftest import provider_for
from tests.integration.gateway.helpers import (
    CHAT,
    MESSAGES,
    all_usage_rows,
    assert_error,
    auth,
    chat,
    chat_body,
    make_account,
    usage_rows,
)
from tests.serving import wait_until_serving

IN_MICROS, OUT_MICROS = 150_000, 600_000  # gpt-4o-mini: $0.15 / $0.60 per million tokens
SECRET = re.compile(r"kr_(?:live|mgmt)_[A-Za-z0-9_-]{43}")


def price(prompt: int, completion: int, multiplier: Decimal = Decimal(1)) -> int:
    """Expected cost in micro-dollars, rounded up."""
    return math.ceil((prompt * IN_MICROS + completion * OUT_MICROS) * multiplier / 1_000_000)


def sse_events(text: str) -> list[str]:
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.strip()]


async def test_usage_record_and_charging(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    account = await make_account(server, "payer@example.com", balance=Decimal("1"))
    key = await make_api_key(server, "payer@example.com", name="billing-key", limit=Decimal("5"))
    admin = await make_management_key(server, "root@example.com", admin=True)
    small = await chat(client, key)  # max_tokens 3
    assert small.status_code == 200, small.text
    long_prompt = [{"role": "user", "content": "é" * 2000}]  # 4000 UTF-8 bytes
    big = await chat(client, key, messages=long_prompt, max_tokens=None)
    assert big.status_code == 200, big.text
    assert big.json()["usage"]["prompt_tokens"] == count_prompt_tokens(long_prompt) == 1003
    assert big.json()["usage"]["completion_tokens"] == 9

    rows = await usage_rows(server, small.headers["x-request-id"], big.headers["x-request-id"])
    expected = [(4, 3, price(4, 3)), (1003, 9, price(1003, 9))]
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cost_micros"]) for r in rows] == expected
    assert expected[1][2] == 156  # ceil(1003 × 0.15 + 9 × 0.60)
    for row in rows:
        assert row["key_hash"] == key_hash(key)
        assert row["key_name"] == "billing-key"
        assert row["account_id"] == account.id
        assert (row["model"], row["provider"], row["streamed"]) == ("gpt-4o-mini", "mock", False)
        assert (row["status"], row["error_type"], row["usage_estimated"]) == (200, None, False)
        assert row["client_ip"] == "127.0.0.1"
        assert row["latency_ms"] is not None and row["latency_ms"] >= 0
        assert row["ttft_ms"] is None
    total = sum(cost for _, _, cost in expected)

    # The key's usage and the account's balance are charged in the store ...
    r = await client.get(f"/api/v1/keys/{key_hash(key)}", headers=auth(admin))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["usage"] == pytest.approx(total / 1e6)
    assert data["limit_remaining"] == pytest.approx(5 - total / 1e6)
    assert data["last_used_ip"] == "127.0.0.1" and data["last_used_at"] is not None
    r = await client.get(f"/api/v1/accounts/{account.id}", headers=auth(admin))
    assert r.json()["data"]["balance"] == pytest.approx(1 - total / 1e6)
    # ... and the key sees the same numbers about itself, after the flush as before it.
    info = (await client.get("/v1/key", headers=auth(key))).json()["data"]
    assert info["usage"] == pytest.approx(total / 1e6)
    assert info["limit_remaining"] == pytest.approx(5 - total / 1e6)
    await chat(client, key)
    info = (await client.get("/v1/key", headers=auth(key))).json()["data"]
    assert info["usage"] == pytest.approx((total + expected[0][2]) / 1e6)
    await usage_rows(server, small.headers["x-request-id"])  # flush again
    info = (await client.get("/v1/key", headers=auth(key))).json()["data"]
    assert info["usage"] == pytest.approx((total + expected[0][2]) / 1e6)


async def test_group_price_multiplier(server: RunningServer, client: httpx.AsyncClient) -> None:
    rt = server.runtime
    await rt.account_service.create_group(
        GroupCreate(name="resellers", price_multiplier=Decimal("1.5")), actor=TEST_ACTOR
    )
    await rt.account_service.create_account(AccountCreate(email="r@example.com", group="resellers"), actor=TEST_ACTOR)
    key = await make_api_key(server, "r@example.com")
    r = await chat(client, key, messages=[{"role": "user", "content": "x" * 400}], max_tokens=None)
    assert r.status_code == 200
    [row] = await usage_rows(server, r.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (103, 9)
    assert row["cost_micros"] == price(103, 9, Decimal("1.5")) == 32  # ceil(1.5 × (15.45 + 5.4))


async def test_streams(server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream) -> None:
    key = await make_api_key(server, "a@example.com", name="streamer")
    # Without stream_options the gateway asks the upstream for usage anyway, and hides it from the client.
    plain = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key))
    assert plain.status_code == 200
    events = sse_events(plain.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "This is a"
    assert mock.requests[-1].body["stream_options"] == {"include_usage": True}
    # With include_usage the client gets the usage chunk, exactly as the upstream sent it.
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    wanted = await client.post("/v1/chat/completions", json=body, headers=auth(key))
    chunks = [orjson.loads(e) for e in sse_events(wanted.text)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 4 and chunks[-1]["usage"]["completion_tokens"] == 3
    assert mock.requests[-1].raw_body == orjson.dumps(body)  # forwarded byte for byte

    rows = await usage_rows(server, plain.headers["x-request-id"], wanted.headers["x-request-id"])
    for row in rows:
        assert (row["streamed"], row["status"], row["error_type"], row["usage_estimated"]) == (True, 200, None, False)
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost_micros"]) == (4, 3, price(4, 3))
        assert row["key_name"] == "streamer"
        assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


async def test_missing_usage_is_estimated(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com")
    unary = await chat(client, key, model="gpt-4o-mini-no-usage")
    assert unary.status_code == 200 and "usage" not in unary.json()
    body = chat_body(model="gpt-4o-mini-no-usage", stream=True)
    streamed = await client.post(
        "/v1/chat/completions", content=body, headers={**auth(key), "content-type": "application/json"}
    )
    assert streamed.status_code == 200 and sse_events(streamed.text)[-1] == "[DONE]"
    rows = await usage_rows(server, unary.headers["x-request-id"], streamed.headers["x-request-id"])
    # Prompt: a quarter of the request body's bytes; completion: a quarter of the reply text's bytes.
    prompt = estimate_tokens(len(chat_body(model="gpt-4o-mini-no-usage")))
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (prompt, estimate_tokens(len("This is a")))
    assert (rows[1]["prompt_tokens"], rows[1]["completion_tokens"]) == (estimate_tokens(len(body)), 3)
    for row in rows:
        assert row["usage_estimated"] is True
        assert row["cost_micros"] == price(row["prompt_tokens"], row["completion_tokens"]) > 0
        assert (row["status"], row["error_type"]) == (200, None)


async def test_cut_stream_bills_partial_usage(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com")
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini-cut-stream", "messages": MESSAGES, "stream": True},
        headers=auth(key),
    )
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    error = orjson.loads(events[-1])["error"]
    assert error["type"] == "UPSTREAM_ERROR" and error["code"] == "upstream_error"
    content = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert content == "This is a "
    [row] = await usage_rows(server, r.headers["x-request-id"])
    # The client saw 200 then an error event; the record says what happened (so the usage API counts an error).
    assert (row["status"], row["error_type"], row["streamed"], row["usage_estimated"]) == (
        502,
        "UPSTREAM_ERROR",
        True,
        True,
    )
    assert row["completion_tokens"] == estimate_tokens(len(content)) == 3
    assert row["cost_micros"] == price(row["prompt_tokens"], 3) > 0


async def test_embeddings_and_failures_are_recorded(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com")
    inputs = ["hello world", "a somewhat longer input text"]
    emb = await client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": inputs}, headers=auth(key)
    )
    assert emb.status_code == 200
    failed = await chat(client, key, model="gpt-4o-mini-fail-500")
    limited = await chat(client, key, model="gpt-4o-mini-fail-429")
    refused = await chat(client, key, model="gpt-4o-mini-fail-400")
    ids = [r.headers["x-request-id"] for r in (emb, failed, limited, refused)]
    e, f, lim, ref = await usage_rows(server, *ids)
    tokens = count_embedding_tokens(inputs)
    assert (e["prompt_tokens"], e["completion_tokens"], e["streamed"]) == (tokens, 0, False)
    assert e["cost_micros"] == math.ceil(tokens * 20_000 / 1_000_000) == 1
    assert (e["model"], e["status"]) == ("text-embedding-3-small", 200)
    for row, status, error in (
        (f, 502, "UPSTREAM_ERROR"),
        (lim, 429, "UPSTREAM_RATE_LIMITED"),
        (ref, 400, "INVALID_REQUEST"),
    ):
        assert (row["status"], row["error_type"], row["provider"]) == (status, error, "mock")
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost_micros"]) == (0, 0, 0)
    # Requests refused before admission (bad key, bad body) leave no record.
    await chat(client, "kr_live_" + "x" * 43)
    await client.post("/v1/chat/completions", content=b"{", headers=auth(key))
    assert len(await all_usage_rows(server)) == 4


async def test_what_a_key_sees(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(
        server,
        "a@example.com",
        name="scoped",
        limit=Decimal("2.5"),
        limit_reset="weekly",
        rate_limits={"rpm": 30, "per_1d": 1000},
        allowed_models=["gpt-4o", "mock/text-embedding-3-small"],
        expires_in_days=7,
    )
    info = (await client.get("/v1/key", headers=auth(key))).json()["data"]
    assert info["name"] == "scoped"
    assert info["label"] == key[:8] + "..." + key[-4:]
    assert (info["limit"], info["limit_remaining"], info["limit_reset"], info["usage"]) == (2.5, 2.5, "weekly", 0)
    assert info["rate_limits"] == {
        "rpm": 30,
        "per_5h": None,
        "per_1d": 1000,
        "per_7d": None,
        "tpm": None,
        "max_concurrent": None,
    }
    # The models this key can actually call (bare ids), whichever way its list names them.
    assert info["allowed_models"] == ["gpt-4o", "text-embedding-3-small"]
    assert info["allowed_providers"] is None and info["expires_at"] is not None
    assert key not in str(info)

    models = (await client.get("/v1/models", headers=auth(key))).json()
    assert models["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in models["data"]] == [
        ("gpt-4o", "mock"),
        ("text-embedding-3-small", "mock"),
    ]
    r = await client.get("/v1/models/gpt-4o", headers=auth(key))
    assert r.json() == {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "mock"}
    assert_error(await client.get("/v1/models/gpt-4o-mini", headers=auth(key)), 404, "MODEL_NOT_FOUND")
    # A key without rules sees every configured model once.
    everything = (await client.get("/v1/models", headers=auth(await make_api_key(server, "b@example.com")))).json()
    ids = [m["id"] for m in everything["data"]]
    assert len(ids) == len(set(ids)) == 11 and "gpt-4o-mini-hang" in ids


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"
    }


async def test_metrics(server: RunningServer, client: httpx.AsyncClient) -> None:
    key = await make_api_key(server, "a@example.com", name="metered")
    responses = [
        await chat(client, key),
        await chat(client, key, model="gpt-4o-mini-fail-500"),
        await chat(client, "kr_live_" + "y" * 43),
        await chat(client, key, model="nope"),
    ]
    assert [r.status_code for r in responses] == [200, 502, 401, 404]
    samples = _samples((await client.get("/metrics")).text)
    ok = 'keyrelay_requests_total{error_type="",group="-",model="gpt-4o-mini",provider="mock",status="200"}'
    bad = (
        'keyrelay_requests_total{error_type="UPSTREAM_ERROR",group="-",'
        'model="gpt-4o-mini-fail-500",provider="mock",status="502"}'
    )
    unknown = 'keyrelay_requests_total{error_type="INVALID_API_KEY",group="-",model="-",provider="-",status="401"}'
    not_found = 'keyrelay_requests_total{error_type="MODEL_NOT_FOUND",group="-",model="-",provider="-",status="404"}'
    assert (samples[ok], samples[bad], samples[unknown], samples[not_found]) == (1.0, 1.0, 1.0, 1.0)
    # Each request is counted exactly once.
    assert sum(v for k, v in samples.items() if k.startswith("keyrelay_requests_total")) == 4.0
    labels = 'group="-",model="gpt-4o-mini",provider="mock"'
    assert samples[f'keyrelay_tokens_total{{direction="prompt",{labels}}}'] == 4.0
    assert samples[f'keyrelay_tokens_total{{direction="completion",{labels}}}'] == 3.0
    assert samples[f"keyrelay_spend_usd_total{{{labels}}}"] == pytest.approx(3e-6)
    # The overhead histogram observes, for every request, the value its x-keyrelay-overhead-ms header showed.
    assert samples["keyrelay_overhead_seconds_count"] == 4.0
    shown = sum(float(r.headers["x-keyrelay-overhead-ms"]) for r in responses) / 1000
    assert samples["keyrelay_overhead_seconds_sum"] == pytest.approx(shown, abs=4 * 0.5e-6)


async def test_metric_series_do_not_grow_with_the_number_of_keys(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """Prometheus' cardinality rule: 40 keys used once make as many series as one key used 40 times."""
    group = await server.runtime.account_service.create_group(GroupCreate(name="team"), actor=TEST_ACTOR)
    account = await server.runtime.account_service.create_account(
        AccountCreate(email="many@example.com", group=group.name), actor=TEST_ACTOR
    )
    for i in range(40):
        issued = await server.runtime.key_service.create(
            account=account, spec=KeyCreate(name=f"k{i}"), actor=TEST_ACTOR
        )
        assert (await chat(client, issued.plaintext)).status_code == 200
    samples = _samples((await client.get("/metrics")).text)
    requests = {k: v for k, v in samples.items() if k.startswith("keyrelay_requests_total")}
    assert requests == {
        'keyrelay_requests_total{error_type="",group="team",model="gpt-4o-mini",provider="mock",status="200"}': 40.0
    }
    assert not [k for k in samples if "key_name" in k]


async def test_per_key_metrics_are_an_opt_in(tmp_path: Path, mock: MockUpstream) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}",
        metrics_per_key=True,
        log_level="warning",
        providers=(provider_for(mock),),
    )
    async with running_server(settings) as srv, httpx.AsyncClient(base_url=srv.base_url) as http:
        key = await make_api_key(srv, "a@example.com", name="metered")
        assert (await chat(http, key)).status_code == 200
        samples = _samples((await http.get("/metrics")).text)
    labels = 'group="-",key_name="metered",model="gpt-4o-mini",provider="mock"'
    assert samples[f'keyrelay_requests_total{{error_type="",{labels},status="200"}}'] == 1.0
    assert samples[f"keyrelay_spend_usd_total{{{labels}}}"] == pytest.approx(3e-6)


# --- no key material in logs ----------------------------------------------------------------------------------------


def _near_miss(key: str) -> str:
    """The key with its last character changed: well-formed, but unknown."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


async def _exercise(base_url: str, api_key: str, mgmt_key: str, admin_key: str) -> list[str]:
    """Good and bad calls on both APIs; returns every secret the calls revealed to the client."""
    seen = [api_key, mgmt_key, admin_key]
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        assert (await chat(c, api_key)).status_code == 200
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(api_key))
        assert r.status_code == 200
        assert (await chat(c, api_key, model="gpt-4o-mini-fail-500")).status_code == 502
        assert (await chat(c, _near_miss(api_key))).status_code == 401
        assert (await chat(c, mgmt_key)).status_code == 401
        assert (await chat(c, api_key + "x")).status_code == 401
        assert (await c.get("/v1/key", headers=auth(api_key))).status_code == 200
        r = await c.post("/api/v1/keys", json={"name": "made-by-api"}, headers=auth(mgmt_key))
        assert r.status_code == 201, r.text
        created = r.json()["key"]
        seen.append(created)
        r = await c.post(f"/api/v1/keys/{key_hash(created)}/rotate", json={"grace_seconds": 60}, headers=auth(mgmt_key))
        seen.append(r.json()["key"])
        assert (await c.get("/api/v1/keys", headers=auth(admin_key))).status_code == 200
        assert (await c.get("/api/v1/keys", headers=auth(api_key))).status_code == 401
        assert (await c.get("/api/v1/keys", headers=auth(_near_miss(mgmt_key)))).status_code == 401
        assert (await c.post("/api/v1/keys", content=b"{", headers=auth(mgmt_key))).status_code == 400
        assert (await c.delete(f"/api/v1/keys/{key_hash(created)}", headers=auth(mgmt_key))).status_code == 200
    return seen


def _assert_no_secret(text: str, secrets_: list[str]) -> None:
    for secret in secrets_:
        assert secret not in text
        assert secret[8:] not in text  # not even without its prefix
    assert SECRET.search(text) is None, SECRET.search(text)


async def test_the_gateway_s_records_carry_their_key_s_number(
    server: RunningServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key cache knows each key's number (keys.id): the record carries it, and the writer stores and charges the
    # key by it rather than looking it up by hash.
    await make_account(server, "numbered@example.com", balance=Decimal("1"))
    key = await make_api_key(server, "numbered@example.com", name="numbered")
    writer = server.app.writer
    assert writer is not None
    queued: list[UsageRecord] = []
    enqueue = writer.enqueue

    def spy(record: UsageRecord) -> None:
        queued.append(record)
        enqueue(record)

    monkeypatch.setattr(writer, "enqueue", spy)
    response = await chat(client, key)
    assert response.status_code == 200, response.text
    (row,) = await usage_rows(server, response.headers["x-request-id"])
    async with server.runtime.engine.connect() as conn:
        number = await conn.scalar(select(keys.c.id).where(keys.c.hash == key_hash(key)))
    assert number is not None
    assert [r.key_id for r in queued] == [number]
    assert row["key_id"] == number


async def test_no_key_plaintext_in_logs(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("", "keyrelay", "uvicorn", "uvicorn.error", "sqlalchemy.engine", "aiohttp", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    api_key = await make_api_key(server, "a@example.com")
    mgmt_key = await make_management_key(server, "a@example.com")
    admin_key = await make_management_key(server, "root@example.com", admin=True)
    seen = await _exercise(server.base_url, api_key, mgmt_key, admin_key)
    assert server.app.writer is not None
    await server.app.flush_usage()
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    # The capture works: the key lookups were logged (by their hash, which is all the store ever sees).
    assert key_hash(api_key) in text
    _assert_no_secret(text, seen)


async def test_no_key_plaintext_in_server_stderr(database_url: str, mock: MockUpstream, tmp_path: Path) -> None:
    """The real `keyrelay serve` process at debug level, its stderr captured whole."""
    settings = Settings(database_url=database_url)
    setup = await open_runtime(settings)
    try:
        account = await setup.account_service.create_account(AccountCreate(email="a@example.com"), actor=TEST_ACTOR)
        api_key = (
            await setup.key_service.create(account=account, spec=KeyCreate(name="k"), actor=TEST_ACTOR)
        ).plaintext
        mgmt_key = (
            await setup.key_service.create(
                account=account, spec=KeyCreate(name="m"), key_type=KeyType.MANAGEMENT, actor=TEST_ACTOR
            )
        ).plaintext
        admin_key = (
            await setup.key_service.create(
                account=account,
                spec=KeyCreate(name="adm"),
                key_type=KeyType.MANAGEMENT,
                is_admin=True,
                actor=TEST_ACTOR,
            )
        ).plaintext
    finally:
        await setup.close()
    config = tmp_path / "keyrelay.yaml"
    models = [{"id": "gpt-4o-mini", "input_per_mtok": "0.15", "output_per_mtok": "0.60"}]
    models.append({"id": "gpt-4o-mini-fail-500"})
    config.write_text(yaml.safe_dump({"providers": [{"name": "mock", "base_url": mock.base_url, "models": models}]}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYRELAY_")}
    env.update(KEYRELAY_DATABASE_URL=database_url, KEYRELAY_LOG_LEVEL="debug", KEYRELAY_USAGE_FLUSH_INTERVAL_S="0.1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyrelay", "serve", "--config", str(config), "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(f"{base}/healthz", exited=lambda: proc.returncode is not None)
        seen = await _exercise(base, api_key, mgmt_key, admin_key)
        # The periodic usage flush runs (and logs) in the server: wait until its records are in the store.
        async with httpx.AsyncClient(base_url=base, headers=auth(admin_key)) as c:
            await poll_until(
                lambda: c.get("/api/v1/usage"),
                lambda r: r.status_code == 200 and r.json()["data"]["total"]["requests"] >= 3,
                what="the server's usage flush",
            )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    log = stdout.decode() + stderr.decode()
    assert proc.returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal after a clean shutdown
    assert "Application shutdown complete" in log
    assert f"Uvicorn running on http://127.0.0.1:{port}" in log  # the server's log lines really were captured
    _assert_no_secret(log, seen)


async def test_account_balance_is_charged_once_per_flush(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Flushing twice (or concurrently with new requests) never charges a record twice."""
    account = await make_account(server, "p@example.com", balance=Decimal("10"))
    key = await make_api_key(server, "p@example.com")
    responses = await asyncio.gather(*(chat(client, key) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert server.app.writer is not None
    await asyncio.gather(server.app.flush_usage(), server.app.flush_usage())
    await usage_rows(server, *(r.headers["x-request-id"] for r in responses))
    rows = await all_usage_rows(server)
    assert len(rows) == 8
    fresh = await server.runtime.accounts.get(account_id=account.id)
    assert fresh is not None
    # The credit granted is never rewritten by usage; what was spent is counted beside it.
    assert (fresh.balance_micros, fresh.spent_micros) == (10_000_000, 8 * price(4, 3))
    assert fresh.remaining_micros == 10_000_000 - 8 * price(4, 3)
    stored = await server.runtime.keys.get(key_hash=key_hash(key))
    assert stored is not None and stored.usage_micros == 8 * price(4, 3)


# --- account balance and spend, group quota use, as the management API shows them -------------------------------


async def _admin_get(client: httpx.AsyncClient, admin: str, url: str) -> dict[str, Any]:
    r = await client.get(url, headers=auth(admin))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def _admin_send(client: httpx.AsyncClient, admin: str, method: str, url: str, body: dict[str, Any]) -> Any:
    r = await client.request(method, url, json=body, headers=auth(admin))
    assert r.status_code in (200, 201), r.text
    return r.json()


async def _costs(server: RunningServer, responses: list[httpx.Response]) -> int:
    """Total charged for these (successful) requests, after flushing them to the store."""
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses]
    rows = await usage_rows(server, *(r.headers["x-request-id"] for r in responses))
    assert [row["cost_micros"] for row in rows] == [price(4, 3)] * len(rows)
    return sum(row["cost_micros"] for row in rows)


async def test_account_balance_and_spent_through_the_api(server: RunningServer, client: httpx.AsyncClient) -> None:
    admin = await make_management_key(server, "root@example.com", admin=True)
    created = (await _admin_send(client, admin, "POST", "/api/v1/accounts", {"email": "u@example.com", "balance": 1}))[
        "data"
    ]
    assert (created["balance"], created["spent"]) == (1, 0)
    url = f"/api/v1/accounts/{created['id']}"
    key = (await _admin_send(client, admin, "POST", "/api/v1/keys", {"name": "k", "account": "u@example.com"}))["key"]

    spent = await _costs(server, [await chat(client, key) for _ in range(3)])
    assert spent == 3 * price(4, 3) > 0
    after_traffic = await _admin_get(client, admin, url)
    assert (after_traffic["balance"], after_traffic["spent"]) == ((1_000_000 - spent) / 1e6, spent / 1e6)
    listed = (await client.get("/api/v1/accounts", headers=auth(admin))).json()["data"]
    assert [a for a in listed if a["id"] == created["id"]] == [after_traffic]

    # A top-up: PATCH sets what is left, so "left + 5" raises the balance by exactly 5 and leaves spent alone.
    left = 1_000_000 - spent
    topped = (await _admin_send(client, admin, "PATCH", url, {"balance": (left + 5_000_000) / 1e6}))["data"]
    assert (topped["balance"], topped["spent"]) == ((left + 5_000_000) / 1e6, spent / 1e6)
    assert await _admin_get(client, admin, url) == topped
    record = await server.runtime.accounts.get(account_id=created["id"])
    assert record is not None and (record.balance_micros, record.spent_micros) == (6_000_000, spent)

    # Further traffic lowers the topped-up balance by exactly what it costs.
    more = await _costs(server, [await chat(client, key) for _ in range(2)])
    now = await _admin_get(client, admin, url)
    assert (now["balance"], now["spent"]) == ((left + 5_000_000 - more) / 1e6, (spent + more) / 1e6)

    # An unlimited account still counts what it spends; a balance set later is what is left from then on.
    unlimited = (await _admin_send(client, admin, "PATCH", url, {"balance": None}))["data"]
    assert (unlimited["balance"], unlimited["spent"]) == (None, (spent + more) / 1e6)
    extra = await _costs(server, [await chat(client, key)])
    total = spent + more + extra
    assert (await _admin_get(client, admin, url))["spent"] == total / 1e6
    assert (await _admin_get(client, admin, url))["balance"] is None
    limited = (await _admin_send(client, admin, "PATCH", url, {"balance": 2}))["data"]
    assert (limited["balance"], limited["spent"]) == (2, total / 1e6)

    # Exhausted, then topped up: refused at 0, served again after the PATCH, at once.
    empty = (await _admin_send(client, admin, "PATCH", url, {"balance": 0}))["data"]
    assert (empty["balance"], empty["spent"]) == (0, total / 1e6)
    assert_error(await chat(client, key), 402, "INSUFFICIENT_BALANCE", source="account")
    refilled = (await _admin_send(client, admin, "PATCH", url, {"balance": 0.5}))["data"]
    assert (refilled["balance"], refilled["spent"]) == (0.5, total / 1e6)
    last = await _costs(server, [await chat(client, key)])
    final = await _admin_get(client, admin, url)
    assert (final["balance"], final["spent"]) == ((500_000 - last) / 1e6, (total + last) / 1e6)


async def test_group_quota_used_follows_traffic(server: RunningServer, client: httpx.AsyncClient) -> None:
    admin = await make_management_key(server, "root@example.com", admin=True)
    body = {"name": "team", "quota": 10, "quota_reset": "monthly"}
    team = (await _admin_send(client, admin, "POST", "/api/v1/groups", body))["data"]
    assert (team["quota"], team["quota_reset"], team["quota_used"]) == (10, "monthly", 0)
    other = (await _admin_send(client, admin, "POST", "/api/v1/groups", {"name": "other"}))["data"]
    team_url, other_url = f"/api/v1/groups/{team['id']}", f"/api/v1/groups/{other['id']}"
    keys: dict[str, str] = {}
    for email, group in (("a@example.com", "team"), ("b@example.com", "team"), ("c@example.com", "other")):
        await _admin_send(client, admin, "POST", "/api/v1/accounts", {"email": email, "group": group})
        keys[email] = (await _admin_send(client, admin, "POST", "/api/v1/keys", {"name": "k", "account": email}))["key"]

    # Every key of every account of the group adds to one figure; other groups are not touched.
    used = await _costs(server, [await chat(client, keys["a@example.com"]), await chat(client, keys["b@example.com"])])
    after = await _admin_get(client, admin, team_url)
    assert after == {**team, "quota_used": used / 1e6, "updated_at": after["updated_at"]}
    assert (await _admin_get(client, admin, other_url))["quota_used"] == 0

    # A group without a quota still counts (lifetime, as it has no reset).
    other_used = await _costs(server, [await chat(client, keys["c@example.com"]) for _ in range(3)])
    assert (await _admin_get(client, admin, other_url))["quota_used"] == other_used / 1e6
    assert (await _admin_get(client, admin, team_url))["quota_used"] == used / 1e6

    # Changing the quota does not reset what was used; an account that leaves the group stops adding to it.
    changed = (await _admin_send(client, admin, "PATCH", team_url, {"quota": 20}))["data"]
    assert (changed["quota"], changed["quota_reset"], changed["quota_used"]) == (20, "monthly", used / 1e6)
    account = await server.runtime.accounts.get_by_email(email="b@example.com")
    assert account is not None
    await _admin_send(client, admin, "PATCH", f"/api/v1/accounts/{account.id}", {"group": None})
    await _costs(server, [await chat(client, keys["b@example.com"])])
    assert (await _admin_get(client, admin, team_url))["quota_used"] == used / 1e6
    more = await _costs(server, [await chat(client, keys["a@example.com"])])
    assert (await _admin_get(client, admin, team_url))["quota_used"] == (used + more) / 1e6


async def test_key_sees_its_effective_tpm_and_max_concurrent(server: RunningServer, client: httpx.AsyncClient) -> None:
    admin = await make_management_key(server, "root@example.com", admin=True)
    defaults = {"rpm": 100, "tpm": 50_000, "max_concurrent": 5}
    group = (
        await _admin_send(client, admin, "POST", "/api/v1/groups", {"name": "g", "default_rate_limits": defaults})
    )["data"]
    await _admin_send(client, admin, "POST", "/api/v1/accounts", {"email": "g@example.com", "group": "g"})

    async def new_key(**fields: Any) -> str:
        body = {"name": "k", "account": "g@example.com", **fields}
        key: str = (await _admin_send(client, admin, "POST", "/api/v1/keys", body))["key"]
        return key

    async def seen(key: str) -> dict[str, Any]:
        r = await client.get("/v1/key", headers=auth(key))
        assert r.status_code == 200, r.text
        rates: dict[str, Any] = r.json()["data"]["rate_limits"]
        return rates

    inherits = await new_key()
    assert await seen(inherits) == {
        "rpm": 100,
        "per_5h": None,
        "per_1d": None,
        "per_7d": None,
        "tpm": 50_000,
        "max_concurrent": 5,
    }
    own = await new_key(rate_limits={"tpm": 1234, "max_concurrent": 0, "per_7d": 70})
    assert await seen(own) == {
        "rpm": 100,
        "per_5h": None,
        "per_1d": None,
        "per_7d": 70,
        "tpm": 1234,
        "max_concurrent": None,
    }
    # A change to the group's defaults shows at the key's next request.
    await _admin_send(client, admin, "PATCH", f"/api/v1/groups/{group['id']}", {"default_rate_limits": {"tpm": 9}})
    assert (await seen(inherits))["tpm"] == 9 and (await seen(inherits))["max_concurrent"] == 5
    assert (await seen(own))["tpm"] == 1234
