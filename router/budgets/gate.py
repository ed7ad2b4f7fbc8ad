"""The seam between a request and the budgets that may limit it.

At start the stream asks the gate for a reservation of its estimated cost; the reservation
says the most the request may spend (its own cap, or less when a budget is nearly used up)
and is settled to the actual cost at the end, whatever the outcome. `router.budgets.manager`
implements the gate for configured budgets; `Unlimited` serves when there are none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from router.request import PreparedRequest


@dataclass(frozen=True, slots=True)
class Refusal:
    """A budget cannot cover the request: the stream ends with `budget_exceeded`."""

    scope: str
    message: str


@dataclass(frozen=True, slots=True)
class BudgetNotice:
    """A budget crossed its warning threshold or was exhausted by a request."""

    scope: str
    spent_usd: float
    limit_usd: float
    level: Literal["warning", "exceeded"]


class Reservation(Protocol):
    # The most this request may spend in total (None: no limit). The stream stops before
    # a chunk would pass it.
    limit_usd: float | None
    # The budget scope that sets `limit_usd`, or None when it is the request's own cap.
    limit_scope: str | None

    @property
    def book_every_s(self) -> float:
        """How often a running stream books its spend so far (`progress`)."""
        ...

    async def progress(self, cost_usd: float, by_deployment: Mapping[str, float]) -> None:
        """Book the spend so far of a stream still running; the settle books the rest."""
        ...

    async def settle(self, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None = None) -> Sequence[BudgetNotice]:
        """Book the actual cost (`by_deployment`: the same cost split per deployment, for
        reports); `stopped` says the stream was stopped at `limit_usd`. Settling twice books
        once. Returns the notices to emit as `budget` events (warning crossed, or the scope
        that stopped the stream, `exceeded`)."""
        ...


class BudgetGate(Protocol):
    async def reserve(
        self, request: PreparedRequest, estimate_usd: float, cap_usd: float | None
    ) -> Reservation | Refusal: ...


@dataclass(slots=True)
class CapOnly:
    """A reservation limited by the request's own cap alone."""

    limit_usd: float | None
    limit_scope: str | None = None
    book_every_s: float = math.inf

    async def progress(self, cost_usd: float, by_deployment: Mapping[str, float]) -> None:
        return None

    async def settle(self, cost_usd: float, stopped: bool,
                     by_deployment: Mapping[str, float] | None = None) -> Sequence[BudgetNotice]:
        return ()


class Unlimited:
    """The gate when no budgets are configured: only the request's cap applies."""

    async def reserve(
        self, request: PreparedRequest, estimate_usd: float, cap_usd: float | None
    ) -> Reservation | Refusal:
        return CapOnly(cap_usd)
