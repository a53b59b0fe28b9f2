"""``GET /api/v1/usage`` grouped by ``protocol`` and ``provider`` over traffic from the three wires (on SQLite and
PostgreSQL: the grouping is SQL)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keyrelay.testing.mock_upstream import MockUpstream
from keyrelay.testing.server import RunningServer
from tests.conftest import make_api_key, make_management_key
from tests.integration.gateway.helpers import usage_rows
from tests.integration.protocols.session_helpers import body
from tests.integration.protocols.test_usage_by_wire import post


async def test_usage_api_groups_by_protocol_and_provider(
    server: RunningServer, client: httpx.AsyncClient, mock: MockUpstream
) -> None:
    key = await make_api_key(server, "wires@example.com", name="wires")
    mgmt = await make_management_key(server, "wires@example.com")
    calls = [("openai", "an-model-cache-hit"), ("anthropic", "ge-model"), ("anthropic", "an-model-cache-write")]
    calls += [("gemini", "oa-model"), ("gemini", "ge-model-cache-hit"), ("openai", "oa-model")]
    ids = []
    for wire, model in calls:
        r = await post(client, wire, key, model, body(wire, model))
        ids.append(r.headers["x-request-id"])
    rows = await usage_rows(server, *ids)
    h = {"authorization": f"Bearer {mgmt}"}

    def sums(selected: list[dict[str, Any]]) -> dict[str, Any]:
        names = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
        out: dict[str, Any] = {name: sum(row[name] for row in selected) for name in names}
        out["requests"] = len(selected)
        out["cost"] = sum(row["cost_micros"] for row in selected) / 1_000_000
        return out

    for group_by, column in (("protocol", "protocol"), ("provider", "provider")):
        r = await client.get("/api/v1/usage", params={"group_by": group_by}, headers=h)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        groups = {g["group"]: g for g in data["groups"]}
        assert list(groups) == sorted({row[column] for row in rows})
        for name, group in groups.items():
            want = sums([row for row in rows if row[column] == name])
            assert {k: group[k] for k in want} == pytest.approx(want), (name, group)
            assert group["errors"] == 0
        assert {k: data["total"][k] for k in sums(rows)} == pytest.approx(sums(rows))
    assert sums(rows)["cache_read_tokens"] > 0 and sums(rows)["cache_write_tokens"] > 0
