"""Budgets per scope and window: reserve at request start, settle to the actual cost at the end.

A budget is `{scope, limit_usd, window, warn_at}`. Its scope is `key`, `user` or `session`
(read from the request's `metadata`), `task:<name>` or `global`; each distinct value
(`user:alice`, `user:bob`) has its own spend. Windows are calendar-aligned in UTC (`hour`,
`day`, `month`: spend starts again from zero at the top of the hour, at midnight UTC, on the
1st) or rolling (`rolling:24h`: the spend of the last 24 hours, kept in 60 buckets, so a
cent drops out at most 1/60 of the window late — never early).

At start a request reserves its cap (or, without one, its estimated cost) against every
budget it falls under; when one cannot cover it (spend plus in-flight reservations plus
this request would pass the limit) the request is refused with `budget_exceeded`. An
uncapped request holds more than its estimate when there is room: up to twice the worst
case of its candidates (input plus its output limit). The stream may spend what it holds
and no more (stopped within one chunk), so concurrent requests never pass a limit
together; a stream stopped by a budget ends with `finish_reason: budget` and a `budget`
event `exceeded`. At the end the reservation is released and the actual cost booked, per
deployment, in one atomic step; the first settle that takes a budget past `warn_at` gets
the `warning`.

A reservation is a lease (`router.state.store`): its deadline is the request's `total_s`
timeout plus `state.lease_slack_s`, so a router killed mid-request holds a budget for one
lease time at most. A long stream books its spend every `state.book_every_s` (`progress`).
`user` and `session` scopes are namespaced by the caller's key (`user:<key>/ann`) unless
`state.user_scopes: shared`.

When the store is unavailable (`StateUnavailable`): with `state.on_unavailable: fail_closed`
the request is refused with `state_unavailable`; with `fail_open` (the default) it reserves
against this process's own memory (per-process budgets) and its settle goes to the
`Journal`, booked in the store when it returns. A settle never raises for the store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.budgets.gate import BudgetNotice, Refusal, Reservation
from router.budgets.journal import Journal, Settlement
from router.budgets.windows import HOUR, Window
from router.config.schema import StateConfig
from router.state.backends import create_state
from router.state.store import (
    Booking,
    LimitCheck,
    MemoryState,
    StateBackend,
    StateUnavailable,
    Watch,
    WatchResult,
    new_lease,
    to_nano,
    to_usd,
)

METADATA_SCOPES = ("key", "user", "session")
UNATTRIBUTED = "(unattributed)"

if TYPE_CHECKING:
    from router.config.schema import BudgetConfig, Deployment, LoadedConfig
    from router.request import PreparedRequest

@dataclass(frozen=True, slots=True)
class Budget:
    """A configured budget, parsed."""

    scope: str
    limit: int  # nano-USD
    window: Window
    window_text: str
    warn_at: float | None

    @property
    def ident(self) -> str:
        return f"{self.scope}/{self.window_text}/{self.limit}"

    def scope_value(self, scopes: Mapping[str, str]) -> str | None:
        """The value of this budget's scope for a request (`user:alice`), or None when the
        request does not fall under it."""
        if self.scope.startswith("task:"):
            return self.scope if scopes.get("task") == self.scope else None
        return scopes.get(self.scope)


def request_scopes(request: PreparedRequest, per_key: bool = True) -> dict[str, str]:
    """Scope kind -> value for a request: `global`, and `key`/`user`/`session` from its
    metadata, `task` from its task. `per_key`: a `user`/`session` of a request with a `key`
    is the key's own (`user:<key>/ann`), so tenants never share one by name."""
    scopes = {"global": "global"}
    meta = request.metadata
    key = meta.get("key") if meta else None
    for kind in METADATA_SCOPES if meta else ():
        value = meta.get(kind)
        if value is not None and value != "":
            if per_key and kind != "key" and key is not None and key != "":
                value = f"{key}/{value}"
            scopes[kind] = f"{kind}:{value}"
    if request.task:
        scopes["task"] = f"task:{request.task}"
    return scopes


@dataclass(frozen=True, slots=True)
class Line:
    """One budget a request falls under."""

    budget: Budget
    scope: str  # e.g. user:alice

    @property
    def label(self) -> str:
        return f"{self.scope}/{self.budget.window_text}"


class BudgetManager:
    """The budget gate for configured budgets; also books every request's spend for
    reporting (per scope, UTC hour and deployment), budgets or not."""

    def __init__(self, budgets: Sequence[BudgetConfig] = (), state: StateBackend | None = None,
                 *, prefix: str = "llmr:", clock: Callable[[], float] = time.time,
                 hold_ttl_s: float = 3600, settings: StateConfig | None = None,
                 deployments: Mapping[str, Deployment] | None = None) -> None:
        self.budgets = [
            Budget(b.scope, to_nano(b.limit_usd), Window.parse(b.window), b.window, b.warn_at)
            for b in budgets]
        self.state: StateBackend = state or create_state(StateConfig(), clock)
        self._in_memory = isinstance(self.state, MemoryState)  # never unavailable
        self.prefix = prefix
        self.clock = clock
        # In-flight reservations (leases) expire after this long should a router die.
        self.hold_ttl_s = hold_ttl_s
        self.settings = settings or StateConfig()
        # Per-process budgets while the store is unavailable (fail_open), and the spend
        # waiting for it.
        self.local = MemoryState(clock)
        self.journal = Journal(self.state, self.settings.journal_max)
        # Prices and output limits, for an uncapped request's worst case (see `reserve`).
        self.deployments = deployments
        from router.routing.cost import estimate_cost  # not at the top: config imports this

        self._estimate_cost = estimate_cost  # once here, not on every request

    @classmethod
    def from_config(cls, loaded: LoadedConfig,
                    clock: Callable[[], float] = time.time) -> BudgetManager:
        cfg = loaded.config
        lease_s = cfg.resilience.timeouts.total_s + cfg.state.lease_slack_s
        return cls(cfg.budgets, create_state(cfg.state, clock), prefix=cfg.state.prefix,
                   clock=clock, hold_ttl_s=lease_s, settings=cfg.state,
                   deployments=loaded.deployments)

    # --- keys ---------------------------------------------------------------------------

    def spend_key(self, scope: str, bucket: str) -> str:
        return f"{self.prefix}spend|{scope}|{bucket}"

    def held_key(self, scope: str) -> str:
        # `lease|`, not the former `held|` counters: a Redis holding those keeps working.
        return f"{self.prefix}lease|{scope}"

    def _spent_keys(self, line: Line, now: float) -> tuple[str, ...]:
        return tuple(self.spend_key(line.scope, b) for b in line.budget.window.spent_buckets(now))

    # --- the gate -----------------------------------------------------------------------

    def lines(self, scopes: Mapping[str, str]) -> list[Line]:
        out = []
        for budget in self.budgets:
            value = budget.scope_value(scopes)
            if value is not None:
                out.append(Line(budget, value))
        return out

    async def reserve(self, request: PreparedRequest, estimate_usd: float,
                      cap_usd: float | None) -> Reservation | Refusal:
        scopes = request_scopes(request, self.settings.user_scopes == "per_key")
        lines = self.lines(scopes) if self.budgets else []
        amount = to_nano(cap_usd if cap_usd is not None else estimate_usd)
        if self.journal.full:
            raise StateUnavailable(self.state.name, "spend journal full")
        if not lines:
            if self._closed_while_down():
                raise StateUnavailable(self.state.name, "did not answer moments ago")
            return BudgetReservation(self, scopes, (), 0, cap_usd, None)
        now = self.clock()
        checks = [LimitCheck(self.held_key(ln.scope), self._spent_keys(ln, now), ln.budget.limit)
                  for ln in lines]
        # Without a cap, hold the worst case (twice the most any candidate can bill for the
        # request's input and output limit) as far as the budgets have room for it, and at
        # least the estimate: the stream may spend what it holds and no more, so concurrent
        # requests can never together pass a limit.
        worst = None if cap_usd is not None else self._worst_case(request, estimate_usd)
        up_to = None if worst is None else to_nano(worst)
        local = False
        try:
            adm = await self.state.reserve(checks, amount, self.hold_ttl_s, up_to)
        except StateUnavailable:
            if self.settings.on_unavailable == "fail_closed":
                raise
            local = True  # fail_open: this process's own budgets until the store returns
            adm = await self.local.reserve(checks, amount, self.hold_ttl_s, up_to)
        if adm.failed is not None:
            ln = lines[adm.failed]
            spent, held = adm.spent[adm.failed], adm.held[adm.failed]
            return Refusal(ln.label, (
                f"budget {ln.label}: spent ${to_usd(spent):.6f} of ${to_usd(ln.budget.limit):.6f}"
                f" (${to_usd(held):.6f} more reserved by requests in flight); this request "
                f"needs ${to_usd(amount):.6f}"))
        if cap_usd is not None:
            return BudgetReservation(self, scopes, lines, adm.reserved, cap_usd, None,
                                     adm.lease, local)
        # The budget with the least room is the one that stops the stream, if one does.
        tight = min(range(len(lines)), key=lambda i: lines[i].budget.limit - adm.spent[i]
                    - adm.held[i])
        return BudgetReservation(self, scopes, lines, adm.reserved, to_usd(adm.reserved),
                                 lines[tight].label, adm.lease, local)

    def _closed_while_down(self) -> bool:
        return self.settings.on_unavailable == "fail_closed" and not self.state.available

    def _worst_case(self, request: PreparedRequest, estimate_usd: float) -> float | None:
        if self.deployments is None:
            return None
        estimate_cost = self._estimate_cost
        c = request.constraints
        worst = estimate_usd
        for dep_id in c.candidates:
            dep = self.deployments.get(dep_id)
            if dep is None:
                continue
            out = request.max_tokens or dep.default_max_tokens
            if dep.max_output_tokens is not None:
                out = min(out, dep.max_output_tokens)
            worst = max(worst, estimate_cost(dep.price, c.input_tokens, out))
        # Twice: until usage arrives, output is counted at ~4 characters a token, which
        # overcounts short words; the hold must not stop an answer within its max_tokens.
        return 2 * worst

    def _bookings(self, res: BudgetReservation, parts: Mapping[str, int],
                  now: float) -> tuple[Booking, ...]:
        """Bookings of `parts` (nano-USD per deployment) in every scope's UTC hour (reports
        sum hours into days and months) and the window of each budget of the request."""
        if not any(parts.values()):
            return ()
        hour, hour_ttl = HOUR.booking(now)
        targets = {self.spend_key(scope, hour): hour_ttl for scope in res.scopes.values()}
        for ln in res.lines:
            if ln.budget.window != HOUR:
                bucket, ttl = ln.budget.window.booking(now)
                targets[self.spend_key(ln.scope, bucket)] = ttl
        return tuple([Booking(key, dep, n, ttl) for key, ttl in targets.items()
                      for dep, n in parts.items() if n != 0])

    def _watches(self, res: BudgetReservation, now: float) -> list[Watch]:
        watches = []
        for ln in res.lines:
            flag, ttl = ln.budget.window.flag(now)
            warn = ln.budget.warn_at
            watches.append(Watch(
                self._spent_keys(ln, now),
                None if warn is None else math.ceil(ln.budget.limit * warn),
                f"{self.prefix}warned|{ln.budget.ident}|{ln.scope}|{flag}", ttl))
        return watches

    async def book(self, res: BudgetReservation, cost_usd: float,
                   by_deployment: Mapping[str, float] | None, *, final: bool,
                   watch: bool) -> list[WatchResult]:
        """Book what the request spent since its last booking (`final`: and end its lease).
        Never raises for the store: what cannot reach it now is journaled."""
        now = self.clock()
        parts = {k: to_nano(v) for k, v in by_deployment.items() if v > 0} if by_deployment \
            else {}
        if not parts and cost_usd > 0:
            parts = {UNATTRIBUTED: to_nano(cost_usd)}
        booked = res.booked
        if booked:  # booked before (`progress`): book the difference
            delta = {dep: n - booked.get(dep, 0) for dep, n in parts.items()}
            delta.update({dep: -n for dep, n in booked.items() if dep not in parts})
        else:
            delta = parts  # neither is changed from here on
        if not final and not any(delta.values()):
            return []
        res.booked = parts
        res.bookings_made += 1
        held = tuple(self.held_key(ln.scope) for ln in res.lines) if res.lines else ()
        # Only a settle that may be replayed (journaled when the store did not answer, and
        # perhaps applied all the same) needs its once-only key; in this process's memory
        # it would stay for ONCE_TTL_S per request.
        once = "" if self._in_memory else f"{self.prefix}once|{res.lease}|{res.bookings_made}"
        amount = max(0, sum(delta.values()))
        bookings = self._bookings(res, delta, now)
        watches = self._watches(res, now) if watch and res.lines else []
        lease = res.lease
        if res.local:  # reserved in this process: release it here, book in the store
            await self.local.settle(held, amount, bookings, (), lease=lease, final=final)
            held, amount, lease = (), 0, ""
        if not held and not bookings:
            return []
        try:
            return await self.state.settle(held, amount, bookings, watches, lease=lease,
                                           once=once or None, final=final)
        except StateUnavailable:  # (its `Settlement` built only now: most settles need none)
            self.journal.add(Settlement(held, amount, bookings, lease, once, final))
            return []

    async def settle(self, res: BudgetReservation, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None) -> list[BudgetNotice]:
        results = await self.book(res, cost_usd, by_deployment, final=True, watch=True)
        if not res.lines:
            return []  # no budget to tell of
        notices = []
        for i, ln in enumerate(res.lines):
            limit = to_usd(ln.budget.limit)
            r = results[i] if i < len(results) else None
            if r is not None and r.crossed:
                notices.append(BudgetNotice(ln.label, to_usd(r.spent), limit, "warning"))
            if stopped and ln.label == res.limit_scope:
                spent = to_usd(r.spent) if r is not None else cost_usd
                notices.append(BudgetNotice(ln.label, spent, limit, "exceeded"))
        return notices

    async def aclose(self) -> None:
        await self.journal.aclose()
        await self.state.aclose()


class BudgetReservation:
    """What one request holds against its budgets (one lease) until it settles (once)."""

    __slots__ = ("amount", "booked", "bookings_made", "lease", "limit_scope", "limit_usd",
                 "lines", "local", "manager", "scopes", "settled")

    def __init__(self, manager: BudgetManager, scopes: Mapping[str, str], lines: Sequence[Line],
                 amount: int, limit_usd: float | None, limit_scope: str | None,
                 lease: str = "", local: bool = False) -> None:
        self.manager = manager
        self.scopes = scopes
        self.lines = lines
        self.amount = amount
        self.limit_usd = limit_usd
        self.limit_scope = limit_scope
        self.lease = lease or new_lease()
        self.local = local  # leased in this process's memory (the store was unavailable)
        self.booked: dict[str, int] = {}  # nano-USD per deployment booked so far
        self.bookings_made = 0
        self.settled = False

    @property
    def book_every_s(self) -> float:
        return self.manager.settings.book_every_s

    async def progress(self, cost_usd: float, by_deployment: Mapping[str, float]) -> None:
        """Book the spend so far of a stream still running (a kill -9 then loses at most
        what came after)."""
        if not self.settled:
            await self.manager.book(self, cost_usd, by_deployment, final=False, watch=False)

    async def settle(self, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None = None) -> Sequence[BudgetNotice]:
        if self.settled:
            return ()
        self.settled = True
        return await self.manager.settle(self, cost_usd, stopped, by_deployment)
