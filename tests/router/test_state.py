"""The state interface: both backends (memory, and a real `redis-server` on loopback) pass
the same tests: atomic reserve (all or nothing), exact settlement, once-only flags, scans;
concurrent reservations never pass a limit; spend survives a router restart on Redis."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.budgets.manager import BudgetManager
from router.config import StateConfig, parse_config
from router.core import Router
from router.state.backends import create_state
from router.state.redis import RedisState
from router.state.store import (
    NANO,
    TOTAL,
    Booking,
    LimitCheck,
    MemoryState,
    StateBackend,
    Watch,
    to_nano,
    to_usd,
)


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[StateBackend]:
    backend: StateBackend
    if request.param == "memory":
        backend = MemoryState()
    else:
        backend = RedisState(request.getfixturevalue("redis_url"))
    yield backend
    await backend.aclose()


def _k(name: str) -> str:
    return f"t{uuid.uuid4().hex[:8]}|{name}"


def test_nano_rounds_spend_up_never_down() -> None:
    assert to_nano(1.0) == NANO
    assert to_nano(0.1 + 0.2) == 300_000_000  # float noise does not add a nano
    assert to_nano(1e-10) == 1  # a fraction of a nano-dollar still counts
    assert to_nano(0.0) == 0 and to_nano(-1.0) == 0
    assert to_usd(to_nano(12.345678901)) == pytest.approx(12.345678901, abs=1e-9)


async def test_reserve_admits_within_the_limit_and_refuses_past_it(state: StateBackend) -> None:
    held, spent = _k("held"), _k("spent")
    await state.settle([], 0, [Booking(spent, "dep", 600, 60)], [])
    check = LimitCheck(held, (spent,), 1000)
    ok = await state.reserve([check], 300, 60)
    assert (ok.failed, ok.spent, ok.held) == (None, (600,), (0,))
    refused = await state.reserve([check], 101, 60)
    assert (refused.failed, refused.spent, refused.held) == (0, (600,), (300,))
    assert await state.held([held]) == [300]  # a refusal holds nothing
    exact = await state.reserve([check], 100, 60)
    assert exact.failed is None and await state.held([held]) == [400]


async def test_reserve_is_all_or_nothing_across_checks(state: StateBackend) -> None:
    ha, hb, sa, sb = _k("ha"), _k("hb"), _k("sa"), _k("sb")
    await state.settle([], 0, [Booking(sb, "d", 90, 60)], [])
    checks = [LimitCheck(ha, (sa,), 1000), LimitCheck(hb, (sb,), 100)]
    adm = await state.reserve(checks, 20, 60)
    assert adm.failed == 1 and adm.spent == (0, 90)
    assert await state.held([ha, hb]) == [0, 0]


async def test_checks_sharing_a_scope_hold_the_amount_once(state: StateBackend) -> None:
    held, hour, day = _k("held"), _k("hour"), _k("day")
    checks = [LimitCheck(held, (hour,), 500), LimitCheck(held, (day,), 5000)]
    adm = await state.reserve(checks, 200, 60)
    assert adm.failed is None
    assert await state.held([held]) == [200]
    await state.settle([held, held], 200, [], [], lease=adm.lease)
    assert await state.held([held]) == [0]


async def test_settle_releases_the_hold_and_books_exactly(state: StateBackend) -> None:
    held, spent = _k("held"), _k("spent")
    check = LimitCheck(held, (spent,), 10_000)
    first = await state.reserve([check], 1000, 60)
    await state.reserve([check], 1000, 60)
    await state.settle([held], 1000, [Booking(spent, "a", 123, 60), Booking(spent, "b", 7, 60)],
                       [], lease=first.lease)
    assert await state.held([held]) == [1000]
    assert await state.totals([spent]) == [130]
    rows = await state.scan(spent.split("|")[0], "|spent")
    assert rows == {spent: {TOTAL: 130, "a": 123, "b": 7}}


async def test_watch_reports_a_crossing_once(state: StateBackend) -> None:
    spent, flag = _k("spent"), _k("flag")
    watch = Watch((spent,), 100, flag, 60)
    r1 = await state.settle([], 0, [Booking(spent, "d", 60, 60)], [watch])
    r2 = await state.settle([], 0, [Booking(spent, "d", 60, 60)], [watch])
    r3 = await state.settle([], 0, [Booking(spent, "d", 60, 60)], [watch])
    assert [(r[0].spent, r[0].crossed) for r in (r1, r2, r3)] == [
        (60, False), (120, True), (180, False)]
    no_threshold = await state.settle([], 0, [], [Watch((spent,), None, _k("f"), 60)])
    assert (no_threshold[0].spent, no_threshold[0].crossed) == (180, False)


async def test_scan_matches_prefix_and_suffix_literally(state: StateBackend) -> None:
    base = _k("")
    keys = [f"{base}spend|user:a*b|d1", f"{base}spend|user:c|d1", f"{base}spend|user:c|d2"]
    await state.settle([], 0, [Booking(k, "x", 5, 60) for k in keys], [])
    found = await state.scan(f"{base}spend|", "|d1")
    assert sorted(found) == keys[:2]
    assert await state.scan(f"{base}spend|user:a?b", "") == {}


async def test_concurrent_reservations_never_pass_the_limit(state: StateBackend) -> None:
    held, spent = _k("held"), _k("spent")
    check = LimitCheck(held, (spent,), 10_000)
    rng = random.Random(7)
    peak = 0

    async def request() -> bool:
        nonlocal peak
        amount = rng.randint(50, 400)
        adm = await state.reserve([check], amount, 60)
        if adm.failed is not None:
            return False
        now = sum(await state.totals([spent])) + sum(await state.held([held]))
        peak = max(peak, now)
        await asyncio.sleep(0)
        actual = rng.randint(0, amount)  # a request never costs more than it reserved
        await state.settle([held], amount, [Booking(spent, "d", actual, 60)], [],
                           lease=adm.lease)
        return True

    admitted = await asyncio.gather(*(request() for _ in range(200)))
    assert any(admitted) and not all(admitted)
    assert peak <= 10_000
    assert await state.held([held]) == [0]
    assert (await state.totals([spent]))[0] <= 10_000


async def test_memory_keys_expire_on_the_injected_clock() -> None:
    now = [1000.0]
    st = MemoryState(clock=lambda: now[0])
    await st.settle([], 0, [Booking("s", "d", 5, 10)], [])
    await st.reserve([LimitCheck("h", ("s",), 100)], 7, 30)
    now[0] += 9.9
    assert await st.totals(["s"]) == [5]
    now[0] += 0.2
    assert await st.totals(["s"]) == [0] and await st.scan("", "") == {}
    assert await st.held(["h"]) == [7]
    now[0] += 30
    assert await st.held(["h"]) == [0]


async def test_redis_keys_carry_their_ttl(redis_url: str) -> None:
    st = RedisState(redis_url)
    key = _k("spent")
    await st.settle([], 0, [Booking(key, "d", 5, 120)], [])
    ttl = await st._redis.ttl(key)
    await st.aclose()
    assert 0 < ttl <= 120


def test_create_state_picks_the_configured_backend(redis_url: str) -> None:
    assert isinstance(create_state(StateConfig()), MemoryState)
    assert isinstance(create_state(StateConfig(backend="redis", url=redis_url)), RedisState)


def _config(redis_url: str, prefix: str) -> dict[str, Any]:
    return {
        "providers": {"sim": {"kind": "simulated", "options": {"output_tokens": 30}}},
        "deployments": [{"id": "sim-a", "provider": "sim", "model": "m",
                         "price": {"input_per_mtok": 100, "output_per_mtok": 1000}}],
        "budgets": [{"scope": "user", "limit_usd": 1.0, "window": "day"}],
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix},
    }


async def test_spend_survives_a_router_restart_on_redis(redis_url: str) -> None:
    data = _config(redis_url, f"t{uuid.uuid4().hex[:8]}:")
    first = Router(parse_config(data, "test.yaml", env={}))
    done = [ev async for ev in first.stream("hello", metadata={"user": "ann"})][-1]
    assert done.type == "done"
    await first.aclose()

    second = Router(parse_config(data, "test.yaml", env={}))
    assert isinstance(second.budgets, BudgetManager)
    report = await second.spend(scope="user:ann")
    await second.aclose()
    assert [s.spent_usd for s in report.scopes] == [pytest.approx(done.cost_usd, abs=1e-9)]
    assert report.budgets[0].spent_usd == pytest.approx(done.cost_usd, abs=1e-9)


async def test_cli_spend_reads_the_shared_state(redis_url: str, tmp_path: Any) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from router.cli import app

    data = _config(redis_url, f"t{uuid.uuid4().hex[:8]}:")
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    r = Router(parse_config(data, str(path), env={}))
    done = [ev async for ev in r.stream("hello", metadata={"user": "cli"})][-1]
    await r.aclose()
    assert done.type == "done"

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, ["spend", "-c", str(path), *args])

    result = await asyncio.to_thread(run, "--scope", "user", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(s["scope"], s["by_deployment"]) for s in report["scopes"]] == [
        ("user:cli", {"sim-a": pytest.approx(done.cost_usd, abs=1e-9)})]
    table = await asyncio.to_thread(run, "--window", "month")
    assert table.exit_code == 0 and "user:cli" in table.stdout and "sim-a" in table.stdout
    bad = await asyncio.to_thread(run, "--window", "week")
    assert bad.exit_code == 2 and "expected hour, day or month" in bad.output


def test_state_config_errors_name_the_path() -> None:
    from router.errors import ConfigError

    data = _config("redis://127.0.0.1:1/0", "p:")
    data["state"] = {"backend": "disk"}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "router.yaml", env={})
    assert str(exc.value).startswith("router.yaml: state.backend: Input should be 'memory' or "
                                     "'redis'")
    data["state"] = {"backend": "redis", "host": "x"}
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "router.yaml", env={})
    assert "state.host: unknown key 'host'" in str(exc.value)
