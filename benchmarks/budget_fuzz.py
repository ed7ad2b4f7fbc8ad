"""Randomized runs of caps and budgets through `Router.stream()`; prints the violation counts.

    python -m benchmarks.budget_fuzz [--runs 2000] [--seed 1] [--redis redis://127.0.0.1:6379/0]

Each run builds a router with two deployments at random prices, served by a provider that
streams random chunks (1-40 characters, a yield to the event loop between chunks, usage as
the router estimates it — for half the providers the input usage comes first, as Anthropic
sends it, a continuation's partial answer included — `max_tokens` honoured; asked to
continue, it repeats the end of the partial answer half the time) and cuts some streams
mid-way (failover with continuation to the other deployment). 40% of runs have a budget
(`global` or `user`, a random small limit); then 5-40 concurrent requests run, each with a
random cap or none, a random `max_tokens` or none (the task's expected output, used for
estimates, is random too), and some cancelled by the caller mid-stream.

Counted violations (all must be 0):
  cap overrun     a request's cost passed its limit (its cap, or the budget headroom it was
                  given) by more than its largest chunk
  overspend       a budget's spend passed its limit by more than what requests spent beyond
                  their own reservations (a stream is limited to what it holds, so at most
                  one chunk each)
  leaked hold     a reservation still held after every request ended
  open upstream   a provider stream left open
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from providers.base import Delta, FinishDelta, ProviderError, ProviderRequest, TextDelta, UsageDelta
from router.budgets.gate import BudgetNotice, Refusal, Reservation
from router.budgets.manager import BudgetManager, BudgetReservation
from router.config import BudgetConfig, parse_config
from router.core import Router
from router.events import BudgetEvent, DoneEvent, ErrorEvent, TextEvent
from router.request import PreparedRequest
from router.state.redis import RedisState
from router.state.store import MemoryState, StateBackend, to_usd

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()
EPS = 1e-9
# Spend is booked in nano-dollars rounded up, per deployment: a few nanos per request.
BOOKING_EPS = 1e-7
_LETTERS = "abcdefghijklmnopqrstuvwxyz "


class FuzzProvider:
    """Random chunks; some streams cut mid-way."""

    def __init__(self, rng: random.Random, cut_rate: float, usage_first: bool) -> None:
        self.rng = rng
        self.cut_rate = cut_rate
        self.usage_first = usage_first  # input usage before the text, as Anthropic sends it
        self.open = 0
        self.settings: Any = None

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        return self._gen(request)

    async def _gen(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        rng = self.rng
        self.open += 1
        try:
            sizes = [rng.randint(1, 40) for _ in range(rng.randint(1, 150))]
            # Asked to continue, a model may first repeat the end of the partial answer:
            # billed, but dropped by the router's splice.
            partial = next((str(m.get("content") or "") for m in reversed(request.messages)
                            if m.get("role") == "assistant"), "")
            repeat = partial[-rng.randint(1, 200):] if partial and rng.random() < 0.5 else ""
            cut = rng.randint(1, len(sizes)) if rng.random() < self.cut_rate else None
            budget = request.max_tokens or 10**9
            # Input as billed: every message (a continuation carries the partial answer).
            input_tokens = sum((len(str(m.get("content") or "")) + 3) // 4 + 4
                               for m in request.messages)
            if self.usage_first:
                yield UsageDelta(input_tokens=input_tokens, output_tokens=0)
            tokens = 0
            finish: Any = "stop"
            for i, size in enumerate(sizes):
                t = (size + 3) // 4
                if tokens + t > budget:
                    finish = "length"
                    break
                if cut is not None and i == cut:
                    raise ProviderError("provider_error", "fuzz: stream cut")
                tokens += t
                text, repeat = repeat[:size], repeat[size:]
                yield TextDelta(text + "".join(rng.choices(_LETTERS, k=size - len(text))))
                await asyncio.sleep(0)
            yield UsageDelta(input_tokens=input_tokens, output_tokens=tokens)
            yield FinishDelta(finish)
        finally:
            self.open -= 1

    async def aclose(self) -> None:
        return None


class RecordingManager(BudgetManager):
    """Records, for each settled request, what it reserved, its limit and its cost."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settled: list[tuple[BudgetReservation, float]] = []
        self.keys: dict[int, str] = {}  # id(reservation) -> the request's prompt

    async def reserve(self, request: PreparedRequest, estimate_usd: float,
                      cap_usd: float | None) -> Reservation | Refusal:
        res = await super().reserve(request, estimate_usd, cap_usd)
        if isinstance(res, BudgetReservation):
            self.keys[id(res)] = str(request.messages[0]["content"])
        return res

    async def settle(self, res: BudgetReservation, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None) -> list[BudgetNotice]:
        self.settled.append((res, cost_usd))
        return await super().settle(res, cost_usd, stopped, by_deployment)


@dataclass
class Counts:
    runs: int = 0
    budget_runs: int = 0
    requests: int = 0
    capped: int = 0
    stopped_cap: int = 0
    stopped_budget: int = 0
    refused: int = 0
    no_route: int = 0
    cancelled: int = 0
    failed_over: int = 0
    cap_overruns: int = 0
    overspends: int = 0
    above_limit: int = 0  # budgets that ended above their limit (by uncapped excess)
    leaked_holds: int = 0
    open_upstreams: int = 0
    max_overrun_chunks: float = 0.0
    # per request prompt: the largest content event the caller got, in tokens
    event_chunks: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _config(rng: random.Random) -> dict[str, Any]:
    def price() -> dict[str, float]:
        return {"input_per_mtok": rng.uniform(0.5, 50), "output_per_mtok": rng.uniform(1, 100)}

    return {
        "providers": {"p1": {"kind": "simulated"}, "p2": {"kind": "simulated"}},
        "deployments": [{"id": "d1", "provider": "p1", "model": "m1", "price": price()},
                        {"id": "d2", "provider": "p2", "model": "m2", "price": price()}],
        # A small expected output makes small estimates: caps that admit the request and
        # then stop it mid-stream.
        "tasks": {"general": {"candidates": ["d1", "d2"], "prefer": "cost",
                              "expected_output_tokens": rng.choice([10, 50, 200, 500])}},
        "defaults": {"task": "general", "max_tokens": 400},
        "resilience": {"retry": {"attempts": 1, "initial_backoff_ms": 0, "max_backoff_ms": 0}},
    }


async def _request(r: Router, rng: random.Random, key: str, c: Counts,
                   out_price: float, providers: Sequence[FuzzProvider]) -> None:
    cap = None if rng.random() < 0.4 else rng.uniform(0.0005, 0.03)
    max_tokens = None if rng.random() < 0.5 else rng.randint(5, 300)
    cancel_after = rng.randint(1, 40) if rng.random() < 0.15 else None
    user = rng.choice(["u1", "u2"])
    c.requests += 1
    c.capped += cap is not None
    seen = 0
    last: Any = None
    async with r.stream(key, max_cost_usd=cap, max_tokens=max_tokens,
                        metadata={"user": user}) as events:
        async for ev in events:
            seen += 1
            last = ev
            if isinstance(ev, TextEvent):
                t = (len(ev.delta) + 3) // 4
                if t > c.event_chunks.get(key, 0):
                    c.event_chunks[key] = t
            if isinstance(ev, BudgetEvent) and ev.level == "exceeded":
                c.stopped_budget += 1
            if ev.type == "fallback":
                c.failed_over += 1
            if cancel_after is not None and seen >= cancel_after:
                c.cancelled += 1
                break
    if isinstance(last, DoneEvent) and last.finish_reason == "budget":
        c.stopped_cap += 1
    if isinstance(last, ErrorEvent) and last.code == "budget_exceeded":
        c.refused += 1
    if isinstance(last, ErrorEvent) and last.code == "no_route":
        c.no_route += 1


async def one_run(seed: int, c: Counts, redis_url: str | None = None) -> None:
    rng = random.Random(seed)
    data = _config(rng)
    budgets: list[BudgetConfig] = []
    if rng.random() < 0.4:
        c.budget_runs += 1
        budgets.append(BudgetConfig(scope=rng.choice(["global", "user"]),
                                    limit_usd=rng.uniform(0.005, 0.2), window="day"))
    clock = lambda: T0  # noqa: E731 - one fixed instant: no window rolls over mid-run
    state: StateBackend = RedisState(redis_url) if redis_url else MemoryState(clock)
    prefix = f"fuzz{uuid.uuid4().hex[:12]}:"  # a fresh namespace per run on a shared Redis
    loaded = parse_config(data, "fuzz.yaml", env={})
    gate = RecordingManager(budgets, state, prefix=prefix, clock=clock,
                            deployments=loaded.deployments)
    r = Router(loaded, budgets=gate)
    providers = [FuzzProvider(random.Random(rng.random()), rng.choice([0.0, 0.1, 0.3]),
                              rng.random() < 0.5) for _ in range(2)]
    r.set_provider("p1", providers[0])  # type: ignore[arg-type]
    r.set_provider("p2", providers[1])  # type: ignore[arg-type]
    out_price = max(d["price"]["output_per_mtok"] for d in data["deployments"]) * 1e-6
    keys = [f"run {seed} request {i}: qualify this lead" for i in range(rng.randint(5, 40))]
    await asyncio.gather(*(_request(r, rng, k, c, out_price, providers) for k in keys))
    c.runs += 1
    _check(gate, providers, out_price, c)
    report = await r.spend()
    excess: dict[str, float] = {}
    for res, cost in gate.settled:
        for ln in res.lines:
            excess[ln.scope] = excess.get(ln.scope, 0.0) + max(0.0, cost - to_usd(res.amount))
    for b in report.budgets:
        if b.reserved_usd > 0:
            c.leaked_holds += 1
        if b.spent_usd > b.limit_usd + BOOKING_EPS:
            c.above_limit += 1
        if b.spent_usd > b.limit_usd + excess.get(b.scope, 0.0) + BOOKING_EPS:
            c.overspends += 1
            c.notes.append(f"seed {seed}: {b.scope} spent {b.spent_usd:.6f} > limit "
                           f"{b.limit_usd:.6f} + excess {excess.get(b.scope, 0.0):.6f}")
    await r.aclose()


def _check(gate: RecordingManager, providers: Sequence[FuzzProvider], out_price: float,
           c: Counts) -> None:
    for p in providers:
        c.open_upstreams += p.open
    for res, cost in gate.settled:
        if res.limit_usd is None:
            continue
        over = cost - res.limit_usd
        if over <= EPS:
            continue
        # One chunk: the largest content event the request's caller got (a continuation
        # splice may join provider chunks), at the higher of the two output prices.
        chunk = c.event_chunks.get(gate.keys[id(res)], 0) * out_price
        c.max_overrun_chunks = max(c.max_overrun_chunks, over / chunk if chunk else float("inf"))
        if over > chunk + EPS:
            c.cap_overruns += 1
            c.notes.append(f"cap overrun: cost {cost:.6f} > limit {res.limit_usd:.6f} + "
                           f"chunk {chunk:.6f}")


def _print(c: Counts, seconds: float) -> None:
    rows = [("runs", c.runs), ("runs with a budget", c.budget_runs), ("requests", c.requests),
            ("requests with a cap", c.capped), ("stopped: finish_reason budget", c.stopped_cap),
            ("  of which by a budget (exceeded)", c.stopped_budget),
            ("refused: budget_exceeded", c.refused),
            ("refused: no_route (estimate above the cap)", c.no_route),
            ("cancelled by the caller", c.cancelled),
            ("failovers", c.failed_over),
            ("cap overruns beyond one chunk", c.cap_overruns),
            ("budgets ended above their limit", c.above_limit),
            ("budget overspends beyond reservations", c.overspends),
            ("leaked reservations", c.leaked_holds), ("upstreams left open", c.open_upstreams)]
    width = max(len(name) for name, _ in rows)
    print(f"budget fuzz: {c.runs} runs in {seconds:.1f} s")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>8}")
    print(f"  {'largest overrun (in chunks)':<{width}}  {c.max_overrun_chunks:>8.2f}")
    for note in c.notes[:10]:
        print("  !", note)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis", metavar="URL", help="keep spend in this Redis (e.g. "
                        "redis://127.0.0.1:6379/0) instead of in memory")
    args = parser.parse_args(argv)
    c = Counts()
    t0 = time.perf_counter()

    async def all_runs() -> None:
        for i in range(args.runs):
            await one_run(args.seed * 1_000_003 + i, c, args.redis)

    asyncio.run(all_runs())
    _print(c, time.perf_counter() - t0)
    return 1 if c.cap_overruns or c.overspends or c.leaked_holds or c.open_upstreams else 0


if __name__ == "__main__":
    raise SystemExit(main())
