"""`POST /v1/stream`, status, cancel, disconnect, heartbeats, operations endpoints and
graceful shutdown, over a real loopback socket."""

from __future__ import annotations

import asyncio

import orjson

from router.server.app import create_app
from tests.server.conftest import SLOW, Frame, eventually, frames, read_until_terminal

KEY = "sk-app-test-1234567890"


async def test_stream_frames_carry_request_id_seq_and_type(serve, fleet) -> None:
    srv = await serve(keys={"alice": KEY})
    async with srv.client(KEY) as c, c.stream("POST", "/v1/stream",
                                              json={"input": "Hello there"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        got = await read_until_terminal(resp)
    rid = resp.headers["x-request-id"]
    assert got[0].event == "route" and got[0].data["request_id"] == rid
    assert [f.id for f in got] == list(range(len(got)))
    assert all(f.data["seq"] == f.id and f.data["type"] == f.event for f in got)
    assert all(f.data["request_id"] == rid for f in got)
    assert got[-1].event == "done"
    # Same text as the library produces for the same request on the same fleet.
    direct = await fleet.collect(fleet.router(), "Hello there")
    text = "".join(f.data["delta"] for f in got if f.event == "text")
    assert text == "".join(e.delta for e in direct if e.type == "text")


async def test_response_starts_before_the_provider_answers(serve) -> None:
    srv = await serve(options={"mid": {"ttft_ms": 3000}})
    async with srv.client() as c, c.stream("POST", "/v1/stream",
                                           json={"input": "hi", "model": "mid"}) as resp:
        seen: list[Frame] = []
        async for f in frames(resp):
            seen.append(f)
            if f.event == "start":
                break
        # Route and start came while the provider was still "thinking" (3 s TTFT).
        assert [f.event for f in seen] == ["route", "start"]
        assert srv.app.state.hub.streams.active()


async def test_heartbeats_arrive_while_a_slow_provider_thinks(serve) -> None:
    srv = await serve(server={"heartbeat_s": 0.02}, options={"mid": {"ttft_ms": 300}})
    async with srv.client() as c, c.stream("POST", "/v1/stream",
                                           json={"input": "hi", "model": "mid"}) as resp:
        beats_before_text = 0
        async for f in frames(resp):
            if f.comment is not None:
                beats_before_text += 1
            if f.event == "text":
                break
    assert beats_before_text >= 3


async def test_disconnect_without_detach_closes_the_upstream_stream(serve, fleet) -> None:
    srv = await serve(options={"mid": {"ttft_ms": 1, "tokens_per_s": 50}})
    sim = fleet.sim(srv.router)
    async with srv.client() as c:
        async with c.stream("POST", "/v1/stream", json={"input": "hi", "model": "mid"}) as resp:
            async for f in frames(resp):
                if f.event == "text":
                    break
            rid = resp.headers["x-request-id"]
            assert sim.open_streams == 1
        # The connection is closed here; the provider stream must follow at once.
        await eventually(lambda: sim.open_streams == 0, within_s=2)
        status = (await c.get(f"/v1/streams/{rid}")).json()
    assert status["state"] == "cancelled"
    assert status["error"]["code"] == "cancelled"


async def test_detached_stream_runs_to_the_end_after_disconnect(serve, fleet) -> None:
    srv = await serve(options={"mid": SLOW})
    async with srv.client() as c:
        async with c.stream("POST", "/v1/stream",
                            json={"input": "hi", "model": "mid", "detach": True}) as resp:
            async for f in frames(resp):
                if f.event == "text":
                    break
            rid = resp.headers["x-request-id"]
        await eventually(lambda: srv.app.state.streams.get(rid).closed)
        status = (await c.get(f"/v1/streams/{rid}")).json()
    direct = await fleet.collect(fleet.router(options={"mid": SLOW}), "hi", model="mid")
    assert status["state"] == "done"
    assert status["detached"] is True
    assert status["text"] == "".join(e.delta for e in direct if e.type == "text")
    assert status["usage"]["output_tokens"] == 60
    assert status["cost_usd"] > 0 and status["deployment"] == "mid"


async def test_status_while_running_shows_text_so_far(serve) -> None:
    srv = await serve(options={"mid": {"ttft_ms": 1, "tokens_per_s": 40}})
    body = {"input": "hi", "model": "mid"}
    async with srv.client() as c, c.stream("POST", "/v1/stream", json=body) as resp:
        texts = []
        async for f in frames(resp):
            if f.event == "text":
                texts.append(f.data["delta"])
                if len(texts) == 2:
                    break
        status = (await c.get(f"/v1/streams/{resp.headers['x-request-id']}")).json()
    assert status["state"] == "running" and status["deployment"] == "mid"
    assert status["text"].startswith("".join(texts))
    assert status["usage"] is None


async def test_cancel_endpoint_stops_a_detached_stream(serve, fleet) -> None:
    srv = await serve(options={"mid": {"ttft_ms": 1, "tokens_per_s": 20}})
    sim = fleet.sim(srv.router)
    async with srv.client() as c:
        async with c.stream("POST", "/v1/stream",
                            json={"input": "hi", "model": "mid", "detach": True}) as resp:
            rid = resp.headers["x-request-id"]
        await eventually(lambda: sim.open_streams == 1)
        r = await c.post(f"/v1/streams/{rid}/cancel")
        assert r.status_code == 202 and r.json()["cancelled"] is True
        await eventually(lambda: sim.open_streams == 0)
        assert (await c.get(f"/v1/streams/{rid}")).json()["state"] == "cancelled"
        again = await c.post(f"/v1/streams/{rid}/cancel")
        assert again.json()["cancelled"] is False


async def test_invalid_body_is_422_naming_the_field(serve) -> None:
    srv = await serve()
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "hi", "max_tokens": -3})
        assert r.status_code == 422
        assert r.json()["error"]["param"] == "max_tokens"
        r = await c.post("/v1/stream", json={"input": "hi", "colour": "red"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "colour"
        r = await c.post("/v1/stream", json={"task": "general"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "input"
        r = await c.post("/v1/stream", content=b"{not json")
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"


async def test_refusal_before_start_is_an_http_error_with_the_event(serve) -> None:
    srv = await serve()
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "hi", "task": "no-such-task"})
    assert r.status_code == 422
    body = r.json()
    assert body["event"]["type"] == "error" and body["event"]["code"] in ("bad_request",
                                                                          "no_route")
    assert r.headers["x-request-id"] == body["event"]["request_id"]


async def test_unknown_stream_is_404(serve) -> None:
    srv = await serve()
    async with srv.client() as c:
        for path in ("/v1/streams/nope", "/v1/streams/nope/events"):
            r = await c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_healthz_and_deployments(serve) -> None:
    srv = await serve(keys={"alice": KEY})
    async with srv.client() as anon, srv.client(KEY) as c:
        h = await anon.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok"
        await c.post("/v1/stream", json={"input": "warm up", "model": "mid"})
        rows = {d["id"]: d for d in (await c.get("/v1/deployments")).json()["deployments"]}
    assert set(rows) == {"fast", "mid", "strong"}
    mid = rows["mid"]
    assert mid["breaker"] == "closed" and mid["available"] is True
    assert mid["price"]["output_per_mtok"] == 3.2
    assert mid["requests"] == 1 and mid["observed"] is True
    assert mid["ttft_ms"] is not None and mid["tokens_per_s"] is not None


async def test_graceful_shutdown_lets_open_streams_finish(serve) -> None:
    srv = await serve(options={"mid": SLOW})
    body = {"input": "hi", "model": "mid"}
    async with srv.client() as c, c.stream("POST", "/v1/stream", json=body) as resp:
        async for f in frames(resp):
            if f.event == "text":
                break
        srv.server.should_exit = True
        rest = await read_until_terminal(resp)
    assert rest[-1].event == "done"


async def test_shutdown_cancels_detached_streams_past_the_grace(fleet) -> None:
    router = fleet.router(options={"mid": {"ttft_ms": 1, "tokens_per_s": 10}},
                          server={"shutdown_grace_s": 0.05})
    app = create_app(router)
    params = {"model": "mid", "metadata": {"key": "x"}}
    async with app.router.lifespan_context(app):
        started = await app.state.hub.start("hi", params, owner=None, detach=True)
        await asyncio.sleep(0)
        assert started.log.task is not None and not started.log.closed
    # After the lifespan's shutdown the stream ended, marked cancelled, upstream closed.
    assert started.log.closed
    last_type, last = started.log.entries[-1]
    assert last_type == "error" and orjson.loads(last)["code"] == "cancelled"
    assert fleet.sim(router).open_streams == 0
    await router.aclose()


async def test_disconnect_closes_the_connection_to_a_real_provider(serve) -> None:
    from router.testing import LoopbackProvider, Reply

    words = " ".join(f"w{i}" for i in range(200))
    async with LoopbackProvider(Reply.from_text(words, token_delay_s=0.02)) as upstream:
        cfg = {
            "version": 1,
            "providers": {"lb": {"kind": "openai_compatible",
                                 "base_url": upstream.base_url + "/v1", "api_key": "sk-up"}},
            "deployments": [{"id": "lb", "provider": "lb", "model": "m",
                             "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
                             "context_window": 8000,
                             "latency_prior": {"ttft_ms": 100, "tokens_per_s": 100}}],
            "tasks": {"t": {"candidates": ["lb"]}}, "defaults": {"task": "t"},
        }
        srv = await serve(config=cfg)
        async with srv.client() as c:
            async with c.stream("POST", "/v1/stream", json={"input": "hi"}) as resp:
                async for f in frames(resp):
                    if f.event == "text":
                        break
                assert upstream.active_streams == 1 and upstream.open_connections == 1
            # The client is gone: the provider's response must be abandoned, its socket
            # closed, long before the 4 s the whole answer would take.
            await eventually(lambda: upstream.open_connections == 0, within_s=1.0)
            assert upstream.active_streams == 0
            status = (await c.get(f"/v1/streams/{resp.headers['x-request-id']}")).json()
        assert status["state"] == "cancelled"


async def test_cancel_while_the_client_reads_ends_its_stream_cleanly(serve, fleet) -> None:
    srv = await serve(options={"mid": {"ttft_ms": 1, "tokens_per_s": 20}})
    body = {"input": "hi", "model": "mid"}
    async with (srv.client() as c, srv.client() as other,
                c.stream("POST", "/v1/stream", json=body) as resp):
        seen = []
        async for f in frames(resp):
            seen.append(f)
            if f.event == "text":
                r = await other.post(f"/v1/streams/{resp.headers['x-request-id']}/cancel")
                assert r.json()["cancelled"] is True
                break
        seen += await read_until_terminal(resp)
    assert seen[-1].event == "error" and seen[-1].data["code"] == "cancelled"
    assert [f.id for f in seen] == list(range(len(seen)))
    assert fleet.sim(srv.router).open_streams == 0


def test_serve_refuses_a_public_address_without_api_keys() -> None:
    import pytest

    from router.config import embedded_path
    from router.errors import ConfigError
    from router.server.launch import serve

    # A config problem: the CLI reports it as such (exit 2).
    with pytest.raises(ConfigError, match="without API keys"):
        serve(str(embedded_path("default.yaml")), host="0.0.0.0", port=0)
