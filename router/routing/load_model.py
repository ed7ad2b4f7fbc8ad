"""How much slower one deployment answers per request already in flight on it, learnt from
its own first tokens instead of assumed.

The model is the one the policy scales by: a first token sent beside `k` other requests
takes `base * (1 + slope * k)`. `LoadModel` fits it in logs, log TTFT = level + slope * z
with z = log(1 + s * k) / s at the slope `s` read so far (exact where `s` is the truth; `k`
itself when flat), where a TTFT's multiplicative spread is the same at every load, so each
observation weighs alike. `k` is the count of OTHER requests in flight when the request was
SENT, which is what its TTFT was served under: at the first token the count has already
moved (the requests ahead of it have finished, new ones have joined).

The level is not one constant: a TTFT is compared only with the others of its window of
`window_s` seconds (least squares within windows, their moments pooled in decayed sums:
each weight halves every `half_life_s`, at most `max_weight` observations' worth is held),
so a level that moves, a deployment slowing down or recovering, is not read as load. Held
against one level for all, `benchmarks.routing`'s `shift` riser, measured beside 0-1 others
while still slow and then only idle once it was fast, read a slope of 0.46 it did not have,
which kept it idle, so nothing refuted it. A window too short to hold loads of some spread
teaches nothing, and the prior stands.

The slope is shrunk toward the config prior (`routing.load_penalty`) in proportion to the
evidence: the data's precision about the slope (the spread of `k` seen within windows, the
fit's residual noise, the observations' decayed weight) against a prior of `PRIOR_SD`. A
deployment always served at the same load, or seldom, or long ago keeps the prior; a burst
that spread its load teaches it. The residual noise itself starts from a prior of
`_PRIOR_CV` (in logs) over `_PRIOR_DOF` pseudo-samples, so a few points on a line do not
claim certainty. The slope is bounded to [0, `MAX_SLOPE`] (or the prior, if larger): a
deployment does not get faster with load (a negative fit is noise, or a drift the decay
will forget). Below the prior it reads the posterior's upper bound, `UPPER_Z` standard
deviations above the estimate: a deployment is charged less than the config's
`load_penalty` only as far as its evidence rules the prior out, so one seldom seen, or seen
at one load, keeps the prior, and one seen flat over many loads reads ~0 (its TTFTs taken
at 10 in flight are not "unloaded" as if it slowed 5% per request, which made it read too
fast at low load). A TTFT more than 3x the line's prediction is clipped to it (a heavy tail
is not load).
"""

from __future__ import annotations

import math

PRIOR_SD = 0.5  # how far from the config prior a slope is plausible before evidence
MAX_SLOPE = 2.0  # 3x slower per request in flight: a deployment serving one at a time
_PRIOR_CV = 0.3  # the residual spread assumed before the fit has its own (lognormal-ish)
_PRIOR_DOF = 2.0  # pseudo-samples of that assumption
# Standard deviations of the posterior a slope below the prior is read above its estimate
# (~97.5% one-sided): the prior's margin is given up as the evidence rules it out, not on
# a noisy fit (a fixed floor of half the prior let `benchmarks.routing`'s `edge` admit its
# cheapest, just-over-budget deployment twice as often; 1 or 3 sd did worse than 2).
UPPER_Z = 2.0
_LOG_CLIP = math.log(3.0)  # a TTFT 3x the fitted line's is a tail, not a load effect
_MIN_WEIGHT = 3.0  # below this much decayed weight a line through the points is not a fit


def load_factor(slope: float, inflight: int) -> float:
    """How much longer a first token takes beside `inflight` other requests."""
    return 1.0 + slope * max(0, inflight)


class LoadModel:
    """A decayed, shrunk estimate of one deployment's load sensitivity (see the module)."""

    __slots__ = ("_bound", "_half_life", "_level", "_max_weight", "_open", "_opened",
                 "_pooled", "_precision", "_raw", "_t", "_window", "prior")

    def __init__(self, prior: float, half_life_s: float, now: float,
                 max_weight: float = math.inf, window_s: float = 7.5) -> None:
        self.prior = max(prior, 0.0)
        self._bound = max(MAX_SLOPE, self.prior)  # a config beyond the bound is its own
        self._half_life = half_life_s
        self._max_weight = max_weight
        self._window = window_s
        self._t = now
        # Decayed sums over the closed windows: observations, degrees of freedom (each
        # window's observations less one) and the within-window moments of z*z, z*v, v*v
        # (z an observation's load on the line's scale, `_load_term`; v its log TTFT).
        self._pooled = [0.0] * 5
        # The open window's raw sums of 1, z, v, z*z, z*v, v*v (at most `window_s` old: not
        # decayed), and when it opened.
        self._open = [0.0] * 6
        self._opened = now
        # The fit at `_t`: the data's slope and its precision (1 / variance), so reading the
        # slope later only ages the precision; `_level` the log TTFT with nothing else in
        # flight in the open window (None: no fit yet).
        self._raw = 0.0
        self._precision = 0.0
        self._level: float | None = None

    def observe(self, ttft_ms: float, others_inflight: int, now: float) -> None:
        """A first token after `ttft_ms`, for a request sent beside `others_inflight`."""
        if not ttft_ms > 0.0 or not math.isfinite(ttft_ms):
            return
        self._age_to(now)
        if now - self._opened >= self._window:
            self._close_window(now)
        z = _load_term(self.slope(now), max(0, others_inflight))
        v = math.log(ttft_ms)
        if self._level is not None:
            # A heavy tail's outliers (one reply in ten 8x slower) are clipped to 3x the
            # line's prediction: they say nothing about load, at any load alike.
            v = min(v, self._level + self._raw * z + _LOG_CLIP)
        o = self._open
        o[0] += 1.0
        o[1] += z
        o[2] += v
        o[3] += z * z
        o[4] += z * v
        o[5] += v * v
        p = self._pooled
        if p[0] + o[0] > self._max_weight and p[0] > 0.0:  # shrinking alike: ageing them
            shrink = max(0.0, self._max_weight - o[0]) / p[0]
            for i in range(5):
                p[i] *= shrink
        self._fit()

    def _age_to(self, now: float) -> None:
        if now > self._t:
            factor = 2.0 ** (-(now - self._t) / self._half_life)
            for i in range(5):
                self._pooled[i] *= factor
            self._t = now

    def _close_window(self, now: float) -> None:
        """Pool the open window's within-window moments and open a new one at `now`."""
        n, _, _, czz, czv, cvv = _within(self._open)
        p = self._pooled
        p[0] += n
        p[1] += max(0.0, n - 1.0)
        p[2] += czz
        p[3] += czv
        p[4] += cvv
        self._open = [0.0] * 6
        self._opened = now

    def _fit(self) -> None:
        """The slope, its precision and the level, from the sums alone (zeros and no level
        when they say nothing): least squares of v on z within each window."""
        n, mz, mv, czz, czv, cvv = _within(self._open)
        p = self._pooled
        w, dof = p[0] + n, p[1] + max(0.0, n - 1.0)
        czz, czv, cvv = p[2] + czz, p[3] + czv, p[4] + cvv
        self._raw, self._precision, self._level = 0.0, 0.0, None
        if w < _MIN_WEIGHT or czz <= 1e-9 * w:  # too few, or the loads seen have no spread
            return
        slope = czv / czz
        residual = max(0.0, cvv - slope * czv)
        noise = (residual + _PRIOR_DOF * _PRIOR_CV * _PRIOR_CV) / (dof - 1.0 + _PRIOR_DOF)
        self._raw, self._precision = slope, czz / noise
        self._level = mv - slope * mz if n > 0.0 else None

    def slope(self, now: float) -> float:
        """The load sensitivity at `now`: the fit's, shrunk toward the prior by the
        evidence behind it, which halves every half-life without news; below the prior,
        the posterior's upper bound (see the module)."""
        age = now - self._t
        precision = self._precision * (2.0 ** (-age / self._half_life) if age > 0 else 1.0)
        prior_precision = 1.0 / (PRIOR_SD * PRIOR_SD)
        blended = ((self._raw * precision + self.prior * prior_precision)
                   / (precision + prior_precision))
        if blended >= self.prior:
            return min(blended, self._bound)
        upper = blended + UPPER_Z / math.sqrt(precision + prior_precision)
        return min(self.prior, max(0.0, upper))

    def weight(self, now: float) -> float:
        """The decayed sample weight behind the fit (1.0 = one observation just now)."""
        pooled = self._pooled[0] * math.pow(2.0, -max(0.0, now - self._t) / self._half_life)
        return pooled + self._open[0]


def _within(sums: list[float]) -> tuple[float, float, float, float, float, float]:
    """(n, mean z, mean v, and the moments of z*z, z*v, v*v about the means) of a window's
    raw sums of 1, z, v, z*z, z*v, v*v."""
    n = sums[0]
    if n <= 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    mz, mv = sums[1] / n, sums[2] / n
    return (n, mz, mv, sums[3] - sums[1] * mz, sums[4] - sums[1] * mv,
            sums[5] - sums[2] * mv)


def _load_term(slope: float, others: int) -> float:
    """`others` on the line's log scale: log(1 + slope * k) / slope, so a TTFT's log is
    linear in it with gradient `slope` exactly where the slope read is the true one (k
    itself when flat)."""
    return math.log1p(slope * others) / slope if slope > 1e-9 else float(others)
