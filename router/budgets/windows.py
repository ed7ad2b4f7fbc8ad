"""Budget windows: UTC calendar windows (`hour`, `day`, `month`) and rolling ones
(`rolling:24h`, kept in 60 buckets), with the bucket ids spend is booked under."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

WindowKind = Literal["hour", "day", "month", "rolling"]
ROLLING_BUCKETS = 60
# How long finished calendar windows stay readable for `spend` reports.
RETENTION_S = {"hour": 400 * 86400, "day": 40 * 86400, "month": 400 * 86400}

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `24h`, `7d`, `1h30m` -> seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (expected e.g. 30m, 24h, 7d)")
    seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r} (expected more than zero)")
    return seconds


@dataclass(frozen=True, slots=True)
class Window:
    """A budget window: calendar (`hour`, `day`, `month`, UTC) or rolling (`seconds`)."""

    kind: WindowKind
    seconds: int = 0

    @classmethod
    def parse(cls, text: str) -> Window:
        if text in ("hour", "day", "month"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("rolling:"):
            return cls("rolling", parse_duration(text[len("rolling:"):]))
        raise ValueError(
            f"invalid window {text!r} (expected hour, day, month or rolling:<duration>, "
            "e.g. rolling:24h)")

    @property
    def bucket_s(self) -> int:
        return max(1, math.ceil(self.seconds / ROLLING_BUCKETS))

    def spent_buckets(self, now: float) -> tuple[str, ...]:
        """The buckets whose spend counts in the window that contains `now`."""
        if self.kind != "rolling":
            return (calendar_bucket(self.kind, now)[0],)
        return _rolling_buckets(self.seconds, self.bucket_s, math.floor(now / self.bucket_s))

    def booking(self, now: float) -> tuple[str, int]:
        """The bucket that spend made at `now` goes to, and how long to keep it."""
        if self.kind != "rolling":
            bucket, end = calendar_bucket(self.kind, now)
            return bucket, math.ceil(end - now) + RETENTION_S[self.kind]
        b = self.bucket_s
        j = math.floor(now / b)
        return f"r{b}:{j}", math.ceil((j + 2) * b + self.seconds - now)

    def flag(self, now: float) -> tuple[str, int]:
        """The once-only warning flag's window id and lifetime: until the calendar window
        ends, or for one rolling window length."""
        if self.kind != "rolling":
            bucket, end = calendar_bucket(self.kind, now)
            return bucket, max(1, math.ceil(end - now))
        return "rolling", self.seconds


@lru_cache(maxsize=16)
def _rolling_buckets(seconds: int, b: int, last: int) -> tuple[str, ...]:
    # Every bucket that overlaps (now - seconds, now]: a cent is forgotten late, never early.
    # (`now` is somewhere in bucket `last`; this also covers its earliest instant.)
    return tuple(f"r{b}:{j}" for j in range(last - math.ceil(seconds / b), last + 1))


HOUR = Window("hour")


def calendar_bucket(kind: WindowKind, now: float) -> tuple[str, float]:
    """The UTC calendar window containing `now`: its id and its end (epoch seconds)."""
    # Hours, days and months all begin on a UTC hour: the window is the hour's.
    return _calendar_bucket(kind, math.floor(now / 3600))


@lru_cache(maxsize=64)
def _calendar_bucket(kind: WindowKind, hour: int) -> tuple[str, float]:
    dt = datetime.fromtimestamp(hour * 3600, UTC)
    if kind == "hour":
        start = dt.replace(minute=0, second=0, microsecond=0)
        return "h" + start.strftime("%Y-%m-%dT%H"), (start + timedelta(hours=1)).timestamp()
    if kind == "day":
        start = dt.replace(hour=0, minute=0, second=0, microsecond=0)
        return "d" + start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp()
    start = dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
        month=start.month + 1)
    return "m" + start.strftime("%Y-%m"), nxt.timestamp()
