"""Redis down with `state.on_unavailable: fail_closed`: the server answers a JSON 503
`state_unavailable` naming the store (issue 13: was a plain-text 500); with `fail_open`
it serves, and the stream ends `done`."""

from __future__ import annotations

from typing import Any

from router.testing.redis_server import RedisServer
from tests.server.conftest import read_until_terminal


def _config(fleet: Any, url: str, on_unavailable: str) -> dict[str, Any]:
    return fleet.config(budgets=[{"scope": "user", "limit_usd": 5.0}],
                        state={"backend": "redis", "url": url,
                               "on_unavailable": on_unavailable})


async def test_fail_closed_answers_a_json_503_naming_the_store(
        fleet: Any, serve: Any, redis_server: RedisServer) -> None:
    srv = await serve(config=_config(fleet, redis_server.url, "fail_closed"))
    redis_server.kill()
    async with srv.client() as client:
        r = await client.post("/v1/stream", json={"input": "hi", "metadata": {"user": "a"}})
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"]["code"] == "state_unavailable"
    assert f"redis 127.0.0.1:{redis_server.port}/0" in body["error"]["message"]


async def test_fail_open_serves_while_redis_is_down(
        fleet: Any, serve: Any, redis_server: RedisServer) -> None:
    srv = await serve(config=_config(fleet, redis_server.url, "fail_open"))
    redis_server.kill()
    async with srv.client() as client, client.stream(
            "POST", "/v1/stream", json={"input": "hi", "metadata": {"user": "a"}}) as r:
        assert r.status_code == 200
        frames = await read_until_terminal(r)
    assert frames[-1].event == "done"
