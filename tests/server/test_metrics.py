"""`GET /metrics`: Prometheus text from `prometheus-client`, parsed back with its parser."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import eventually, frames

KEY = "sk-metrics-0123456789"


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_latency_tokens_cost_and_outcomes_per_deployment(serve) -> None:
    srv = await serve(keys={"a": KEY})
    async with srv.client(KEY) as c:
        for _ in range(2):
            r = await c.post("/v1/stream", json={"input": "count me", "model": "mid"})
            assert r.status_code == 200
        text = (await c.get("/metrics")).text
    m = _samples(text)
    assert _value(m, "llm_router_ttft_seconds_count", deployment="mid") == 2
    assert _value(m, "llm_router_latency_seconds_count", deployment="mid") == 2
    assert _value(m, "llm_router_tokens_total", deployment="mid", kind="output") > 0
    assert _value(m, "llm_router_tokens_total", deployment="mid", kind="input") > 0
    assert _value(m, "llm_router_cost_usd_total", deployment="mid") > 0
    assert _value(m, "llm_router_requests_total", deployment="mid", outcome="stop") == 2
    assert _value(m, "llm_router_breaker_state", deployment="mid") == 0
    assert _value(m, "llm_router_live_ttft_seconds", deployment="mid") > 0
    assert _value(m, "llm_router_active_streams") == 0


async def test_errors_by_code_retries_and_fallbacks(serve) -> None:
    srv = await serve(options={"mid": {"error_rate": 1.0, "error_code": "overloaded"},
                               "fast": {"error_rate": 1.0, "error_code": "overloaded"},
                               "strong": {"error_rate": 1.0, "error_code": "overloaded"}})
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "fail"})
        assert "event: error" in r.text
        m = _samples((await c.get("/metrics")).text)
    assert sum(v for (name, labels), v in m.items()
               if name == "llm_router_errors_total" and ("code", "overloaded") in labels) == 1
    assert sum(v for (name, _), v in m.items() if name == "llm_router_fallbacks_total") == 2


async def test_active_streams_gauge(serve) -> None:
    srv = await serve(options={"mid": {"ttft_ms": 1, "tokens_per_s": 20}})
    async with srv.client() as c:
        async with c.stream("POST", "/v1/stream", json={"input": "x", "model": "mid"}) as resp:
            async for f in frames(resp):
                if f.event == "text":
                    break
            m = _samples((await c.get("/metrics")).text)
            assert _value(m, "llm_router_active_streams") == 1
        await eventually(lambda: not srv.app.state.streams.active())
        m = _samples((await c.get("/metrics")).text)
    assert _value(m, "llm_router_active_streams") == 0
    assert _value(m, "llm_router_errors_total", code="cancelled", deployment="mid") == 1


async def test_instrumented_compat_stream_counts_and_publishes_to_run(serve) -> None:
    srv = await serve()
    hub = srv.app.state.hub
    events = [ev async for ev in hub.instrument(srv.router.stream("x", model="fast"),
                                                run_id="compat-run", owner="anonymous")]
    assert events[-1].type == "done"
    run = srv.app.state.runs.log.get("compat-run")
    assert [t for t, _ in run.entries] == [ev.type for ev in events]
    m = _samples(srv.app.state.metrics.render().decode())
    assert _value(m, "llm_router_requests_total", deployment="fast", outcome="stop") == 1


async def test_open_breaker_shows_in_deployments_and_metrics(serve, fleet) -> None:
    cfg = fleet.config(options={"mid": {"error_rate": 1.0, "error_code": "overloaded"}})
    cfg["resilience"]["breaker"] = {"fail_max": 1, "reset_timeout_s": 60}
    srv = await serve(config=cfg)
    async with srv.client() as c:
        r = await c.post("/v1/stream", json={"input": "x", "model": "mid"})
        assert "event: error" in r.text
        rows = {d["id"]: d for d in (await c.get("/v1/deployments")).json()["deployments"]}
        m = _samples((await c.get("/metrics")).text)
    assert rows["mid"]["breaker"] == "open" and rows["fast"]["breaker"] == "closed"
    assert rows["mid"]["breaker_detail"]["fail_counter"] >= 1
    assert _value(m, "llm_router_breaker_state", deployment="mid") == 2
    assert _value(m, "llm_router_breaker_state", deployment="fast") == 0


async def test_a_blocked_event_loop_shows_in_the_lag_metrics(serve) -> None:
    srv = await serve(keys={"a": KEY})
    async with srv.client(KEY) as c:
        for _ in range(500):  # until the first sample (bounded)
            m = _samples((await c.get("/metrics")).text)
            if _value(m, "llm_router_event_loop_lag_seconds_count") > 0:
                break
        # The server shares this test's loop: block it, as synchronous I/O would.
        time.sleep(0.3)  # noqa: ASYNC251
        await c.get("/healthz")  # the ticker wakes late and records the stretch
        m = _samples((await c.get("/metrics")).text)
    assert _value(m, "llm_router_event_loop_lag_max_seconds") > 0.25  # less the tick run
    slow = _value(m, "llm_router_event_loop_lag_seconds_count") - _value(
        m, "llm_router_event_loop_lag_seconds_bucket", le="0.2")
    assert slow >= 1  # the blocked stretch is one late tick above 200 ms
