"""Security: every endpoint but /healthz needs a key; keys are hashed and never shown; a
key's budget scope and rate; bounded bodies; CORS off unless configured; ownership."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute

from router.budgets.gate import CapOnly, Refusal
from router.server.auth import KeyRing, RateLimiter, hash_key, presented_key, redact
from router.server.playground import PUBLIC_PATHS as PLAYGROUND_PUBLIC
from tests.server.conftest import key_entry, read_until_terminal

ALICE = "sk-alice-secret-0123456789abcdef"
BOB = "sk-bob-secret-fedcba9876543210"
POOR = "sk-poor-secret-5555555555555555"


class ScopeGate:
    """A budget gate that refuses the scope `poor` and records the scopes it saw."""

    def __init__(self) -> None:
        self.scopes: list[object] = []

    async def reserve(self, request, estimate_usd, cap_usd):
        scope = request.metadata.get("key")
        self.scopes.append(scope)
        if scope == "poor":
            return Refusal("poor", "budget of scope 'poor' is exhausted")
        return CapOnly(cap_usd)


def test_keyring_matches_hashes_only() -> None:
    ring = KeyRing([_key("alice", ALICE), _key("bob", BOB, scope="team-b")])
    assert ring.verify(ALICE).name == "alice" and ring.verify(ALICE).scope == "alice"
    assert ring.verify(BOB).scope == "team-b"
    assert ring.verify(ALICE[:-1]) is None and ring.verify("") is None
    assert ring.verify(None) is None
    assert ALICE not in repr(ring.__dict__) and not ring.open
    assert KeyRing([]).verify(None).name == "anonymous"


def _key(name: str, key: str, **extra):
    from router.config import ApiKeyConfig

    return ApiKeyConfig.model_validate(key_entry(name, key, **extra))


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    p = KeyRing([_key("a", ALICE, rate_per_min=2)]).verify(ALICE)
    assert limiter.allow(p) is None and limiter.allow(p) is None
    wait = limiter.allow(p)
    assert wait is not None and 29 < wait <= 30
    now[0] = 30.0
    assert limiter.allow(p) is None


def test_presented_key_sources_and_redaction() -> None:
    def scope(headers=(), method="GET", qs=b""):
        return {"type": "http", "method": method, "headers": list(headers), "query_string": qs}

    assert presented_key(scope([(b"authorization", b"Bearer k1")])) == "k1"
    assert presented_key(scope([(b"x-api-key", b"k2")])) == "k2"
    assert presented_key(scope(qs=b"after=3&api_key=k3")) == "k3"
    assert presented_key(scope(method="POST", qs=b"api_key=k3")) is None
    assert presented_key(scope(qs=b"api%5Fkey=k4")) == "k4"
    assert redact('"GET /v1/streams/x/events?api_key=sk-1&after=2"') == (
        '"GET /v1/streams/x/events?api_key=[redacted]&after=2"')
    # Once logged in clear: the name URL-encoded, or in another case.
    for name in ("api%5Fkey", "API_KEY", "Api%5fKey", "api%5F%6Bey"):
        assert redact(f"GET /v1/x?after=1&{name}=sk-2 HTTP/1.1") == (
            f"GET /v1/x?after=1&{name}=[redacted] HTTP/1.1")
    assert redact("GET /v1/x?api_keys=1&q=api_key=2") == "GET /v1/x?api_keys=1&q=api_key=2"
    assert hash_key("k") == hash_key("k") and len(hash_key("k")) == 64


def _paths(app) -> list[tuple[str, str]]:
    """Every HTTP endpoint of the app (S2's compatible endpoints and playground included)
    with its path parameters filled in."""
    out = []
    for route in app.routes:
        if isinstance(route, Route):
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    out.append((method, path))
    return out


async def test_every_endpoint_but_healthz_requires_a_key(serve) -> None:
    srv = await serve(keys={"alice": ALICE})
    endpoints = _paths(srv.app)
    assert ("POST", "/v1/stream") in endpoints and ("GET", "/metrics") in endpoints
    assert any(isinstance(r, WebSocketRoute) for r in srv.app.routes)
    checked = 0
    async with srv.client() as anon, srv.client("sk-wrong") as wrong:
        for method, path in endpoints:
            if path in ("/healthz", *PLAYGROUND_PUBLIC):
                continue
            for c in (anon, wrong):
                r = await c.request(method, path, json={"input": "hi"})
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["error"]["type"] == "authentication_error"
                checked += 1
        assert (await anon.get("/healthz")).status_code == 200
    assert checked >= 2 * 9


async def test_both_sdk_headers_and_eventsource_query_key_work(serve) -> None:
    srv = await serve(keys={"alice": ALICE})
    async with httpx.AsyncClient(base_url=srv.base_url) as c:
        assert (await c.get("/v1/deployments", headers={"x-api-key": ALICE})).status_code == 200
        r = await c.get("/v1/deployments", headers={"authorization": f"Bearer {ALICE}"})
        assert r.status_code == 200
        assert (await c.get("/v1/deployments", params={"api_key": ALICE})).status_code == 200
        r = await c.post("/v1/stream", params={"api_key": ALICE}, json={"input": "hi"})
        assert r.status_code == 401  # query keys only for GET (EventSource)


async def test_oversized_body_is_413(serve, fleet) -> None:
    srv = await serve(keys={"alice": ALICE}, server={"max_body_bytes": 2048})
    async with srv.client(ALICE) as c:
        r = await c.post("/v1/stream", json={"input": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        async def chunks():
            for _ in range(10):
                yield b" " * 512  # no Content-Length: a chunked body

        r = await c.post("/v1/stream", content=chunks())
        assert r.status_code == 413
        assert (await c.post("/v1/stream", json={"input": "small"})).status_code == 200
    assert fleet.sim(srv.router).calls == 1


async def test_key_maps_to_budget_scope_and_exhausted_budget_is_429(serve) -> None:
    gate = ScopeGate()
    srv = await serve(keys={"alice": ALICE, "poor": POOR}, budgets=gate,
                      key_options={"alice": {"scope": "team-a"}})
    async with srv.client(POOR) as poor, srv.client(ALICE) as alice:
        r = await poor.post("/v1/stream", json={"input": "hi"})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "budget_exceeded"
        assert r.json()["event"]["type"] == "error"
        # A client cannot pick another key's budget scope.
        r = await alice.post("/v1/stream", json={"input": "hi", "metadata": {"key": "poor"}})
        assert r.status_code == 200
    assert gate.scopes == ["poor", "team-a"]


async def test_key_rate_limit_is_429_with_retry_after(serve) -> None:
    srv = await serve(keys={"alice": ALICE}, key_options={"alice": {"rate_per_min": 2}})
    async with srv.client(ALICE) as c:
        assert (await c.get("/v1/deployments")).status_code == 200
        assert (await c.get("/v1/deployments")).status_code == 200
        r = await c.get("/v1/deployments")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


async def test_another_keys_stream_is_403_and_its_run_invisible(serve) -> None:
    srv = await serve(keys={"alice": ALICE, "bob": BOB})
    async with srv.client(ALICE) as alice, srv.client(BOB) as bob:
        r = await alice.post("/v1/stream", json={"input": "hi", "metadata": {"run_id": "r1"}})
        rid = r.headers["x-request-id"]
        for path in (f"/v1/streams/{rid}", f"/v1/streams/{rid}/events"):
            assert (await bob.get(path)).status_code == 403
            async with alice.stream("GET", path) as ok:
                assert ok.status_code == 200
        assert (await bob.post(f"/v1/streams/{rid}/cancel")).status_code == 403
        # Run ids are per key: bob's `r1` is bob's own (unknown yet), never alice's, and
        # publishing to it does not reach alice's run (once, any key could claim an id).
        assert (await bob.get("/v1/runs/r1/events")).status_code == 404
        r = await bob.post("/v1/runs/r1/events", json={"type": "step"})
        assert r.status_code == 201
        async with alice.stream("GET", "/v1/runs/r1/events") as ok:
            assert ok.status_code == 200
        assert [t for t, _ in srv.app.state.runs.get("r1", "alice").entries].count("step") == 0
        assert [t for t, _ in srv.app.state.runs.get("r1", "bob").entries] == ["step"]


async def test_cors_is_off_unless_configured(serve) -> None:
    closed = await serve(keys={"alice": ALICE})
    opened = await serve(keys={"alice": ALICE},
                         server={"cors_origins": ["https://app.example"]})
    origin = {"origin": "https://app.example"}
    async with closed.client(ALICE) as c:
        r = await c.get("/v1/deployments", headers=origin)
        assert "access-control-allow-origin" not in r.headers
    async with opened.client(ALICE) as c:
        r = await c.get("/v1/deployments", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        pre = await c.options("/v1/stream", headers={
            **origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type"})
        assert pre.status_code == 200
        evil = await c.get("/v1/deployments", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_keys_never_logged_or_returned_and_prompts_only_when_asked(
        serve, caplog, log_prompts) -> None:
    caplog.set_level(logging.DEBUG)
    prompt = "my secret prompt about Zanzibar"
    srv = await serve(keys={"alice": ALICE}, server={"log_prompts": log_prompts},
                      log_level="debug")
    bodies: list[str] = []
    access = logging.getLogger("uvicorn.access")  # uvicorn's loggers do not propagate
    access.addHandler(caplog.handler)
    try:
        await _exercise(srv, prompt, bodies)
    finally:
        access.removeHandler(caplog.handler)
    # What the server side logged (the client library logs its own URLs, not our concern).
    logged = "\n".join(rec.getMessage() for rec in caplog.records
                       if not rec.name.startswith(("httpx", "httpcore")))
    assert "api_key=[redacted]" in logged  # the access log line, with the key removed
    everything = logged + "\n".join(bodies) + repr(srv.app.state.settings)
    assert ALICE not in everything and ALICE[:-2] not in everything
    assert hash_key(ALICE) not in "\n".join(bodies)
    assert any("stream" in rec.getMessage() for rec in caplog.records)
    assert (prompt in logged) is log_prompts


async def _exercise(srv, prompt: str, bodies: list[str]) -> None:
    async with srv.client(ALICE) as c, srv.client(ALICE[:-2] + "xx") as wrong:
        r = await wrong.post("/v1/stream", json={"input": prompt})
        bodies.append(r.text + str(r.headers))
        async with c.stream("POST", "/v1/stream", json={"input": prompt}) as resp:
            frames = await read_until_terminal(resp)
        bodies.append(str([f.data for f in frames]) + str(resp.headers))
        for path in ("/v1/deployments", "/metrics", f"/v1/streams/{frames[0].data['request_id']}"):
            r = await c.get(path)
            bodies.append(r.text + str(r.headers))
        r = await c.get("/v1/deployments", params={"api_key": ALICE})
        bodies.append(r.text)
