"""How much slower one deployment answers per request already in flight on it, learnt from
its own first tokens instead of assumed.

The model is the one the policy scales by: a first token sent beside `k` other requests
takes `base * (1 + slope * k)`, so TTFT is linear in `k` with intercept `base` and
gradient `base * slope`. `LoadModel` fits that line by weighted least squares on decayed
sums (each observation's weight halves every `half_life_s`, and at most `max_weight`
samples' worth is held, so a change of behaviour is followed; a TTFT's spread grows with it,
so each also weighs 1 / (1 + slope * k)^2 by the slope so far), and reads the slope as
gradient / intercept. `k` is the count of OTHER requests in flight when the request was
SENT, which is what its TTFT was served under: at the first token the count has already
moved (the requests ahead of it have finished, new ones have joined).

The slope is shrunk toward the config prior (`routing.load_penalty`) in proportion to the
evidence: the data's precision about the slope (the spread of `k` seen, the fit's residual
noise, the observations' decayed weight) against a prior of `PRIOR_SD`. A deployment always
served at the same load, or seldom, or long ago keeps the prior; a burst that spread its
load teaches it. The residual noise itself starts from a prior of `_PRIOR_CV` relative
spread over `_PRIOR_DOF` pseudo-samples, so two or three points on a line do not claim
certainty. The slope is bounded to [0, `MAX_SLOPE`] (or the prior, if larger): a deployment
does not get faster with load (a negative fit is noise, or a drift the decay will forget).
Below the prior it reads the posterior's upper bound, `UPPER_Z` standard deviations above
the estimate: a deployment is charged less than the config's `load_penalty` only as far as
its evidence rules the prior out, so one seldom seen, or seen at one load, keeps the prior,
and one seen flat over many loads reads ~0 (its TTFTs taken at 10 in flight are not
"unloaded" as if it slowed 5% per request, which made it read too fast at low load). A TTFT
more than `_CLIP` times the line's prediction is clipped to it (a heavy tail is not load),
and each weighs the inverse of the variance the model expects of it.
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
_CLIP = 3.0  # a TTFT this many times the fitted line's is a tail, not a load effect
_MIN_WEIGHT = 3.0  # below this much decayed weight a line through the points is not a fit


def load_factor(slope: float, inflight: int) -> float:
    """How much longer a first token takes beside `inflight` other requests."""
    return 1.0 + slope * max(0, inflight)


class LoadModel:
    """A decayed, shrunk estimate of one deployment's load sensitivity (see the module)."""

    __slots__ = ("_base", "_bound", "_half_life", "_max_weight", "_precision", "_raw", "_sums",
                 "_t", "prior")

    def __init__(self, prior: float, half_life_s: float, now: float,
                 max_weight: float = math.inf) -> None:
        self.prior = max(prior, 0.0)
        self._bound = max(MAX_SLOPE, self.prior)  # a config beyond the bound is its own
        self._half_life = half_life_s
        self._max_weight = max_weight
        self._t = now
        # Decayed sums of w, w*k, w*y, w*k*k, w*k*y, w*y*y (y the TTFT in ms, w the
        # observation's weight: 1 / (1 + slope * k)^2 when it was made). Not held
        # against the recent speed: load is autocorrelated, so a short-horizon level follows
        # the load too and flattens the slope (0.5 read as 0.45).
        self._sums = [0.0] * 6
        # The fit at `_t`: the data's slope and its precision (1 / variance), so reading the
        # slope later only ages the precision.
        self._raw = 0.0
        self._precision = 0.0
        self._base = 0.0  # the fitted TTFT with nothing else in flight (0: no fit yet)

    def observe(self, ttft_ms: float, others_inflight: int, now: float) -> None:
        """A first token after `ttft_ms`, for a request sent beside `others_inflight`."""
        if not ttft_ms > 0.0 or not math.isfinite(ttft_ms):
            return
        k = float(max(0, others_inflight))
        s = self._sums
        self._age_to(now)
        # Weighted by the inverse variance the model expects: the spread of a TTFT grows
        # with it (multiplicatively), so one taken under load says less about the line.
        loaded = load_factor(self.slope(now), others_inflight)
        w = 1.0 / (loaded * loaded)
        # A heavy tail's outliers (one reply in ten 8x slower) are clipped to `_CLIP` times
        # the line's prediction: they say nothing about load, at any load alike.
        y = min(ttft_ms, _CLIP * self._base * loaded) if self._base > 0.0 else ttft_ms
        for i, v in enumerate((1.0, k, y, k * k, k * y, y * y)):
            s[i] += w * v
        if s[0] > self._max_weight:  # shrinking every weight alike: ageing them
            shrink = self._max_weight / s[0]
            for i in range(6):
                s[i] *= shrink
        self._raw, self._precision, self._base = self._fit()

    def _age_to(self, now: float) -> None:
        if now > self._t:
            factor = 2.0 ** (-(now - self._t) / self._half_life)
            for i in range(6):
                self._sums[i] *= factor
            self._t = now

    def _fit(self) -> tuple[float, float, float]:
        """(slope, its precision, intercept) from the sums alone; zeros when they say
        nothing."""
        w, sk, sy, skk, sky, syy = self._sums
        if w < _MIN_WEIGHT:
            return 0.0, 0.0, 0.0
        mean_k, mean_y = sk / w, sy / w
        sxx = skk - sk * mean_k  # the spread of the loads seen
        if sxx <= 1e-9 * w or mean_y <= 0.0:
            return 0.0, 0.0, 0.0
        gradient = (sky - sk * mean_y) / sxx
        base = mean_y - gradient * mean_k
        if base <= 0.0:  # a line through zero or below at no load: not this model
            return 0.0, 0.0, 0.0
        residual = max(0.0, syy - sy * mean_y - gradient * (sky - sk * mean_y))
        noise = (residual + _PRIOR_DOF * (_PRIOR_CV * mean_y) ** 2) / (w - 2.0 + _PRIOR_DOF)
        slope = gradient / base
        # The delta method on gradient / base with the least-squares (co)variances of both:
        # var(slope) = noise / base^2 * ((1 + slope * mean_k)^2 / sxx + slope^2 / w).
        spread = (1.0 + slope * mean_k) ** 2 / sxx + slope * slope / w
        return slope, base * base / (noise * spread), base

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
        """The decayed sample weight behind the fit (1.0 = one observation with nothing else
        in flight, just now)."""
        return self._sums[0] * math.pow(2.0, -max(0.0, now - self._t) / self._half_life)
