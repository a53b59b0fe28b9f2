import httpx


async def test_create_and_get_key(client: httpx.AsyncClient, mgmt_key: str) -> None:
    h = {"Authorization": f"Bearer {mgmt_key}"}
    r = await client.post("/api/v1/keys", json={"name": "prod", "limit": 150, "limit_reset": "monthly"}, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith("kr_live_")
    r2 = await client.get(f"/api/v1/keys/{body['data']['hash']}", headers=h)
    assert r2.status_code == 200, r2.text
    assert r2.json()["data"]["limit_remaining"] == 150
