"""What one deployment's recent behaviour says about its next request: decayed distributions
of time to first token and of decode time per token, a decayed error rate, and how much
evidence stands behind each figure. It only learns; `router.routing.policy` decides.

Every observation's weight halves each `half_life_s` of age, so a deployment that was slow
an hour ago and has not served since counts as unknown, not as slow: below one fresh
sample's worth of weight an estimate slides linearly back to the config prior. The budget
quantile slides back to a long-horizon estimate first (the last ~max_weight samples,
fading 16x slower), so a deployment the fleet has seen slow is not re-admitted by a
possibly wrong prior, and its allowance counts effective samples, which ageing leaves
unchanged. The budget quantile's distribution fades 2x slower than the estimate (a tail
needs samples), shifted with the recent mean when that has moved. Quantiles come from a
decayed log-binned histogram (bins 10% wide; each bin also keeps its weighted mean, so one
sample's quantile is that sample). An attempt given up before its first token (a hedge
loser, a timeout) is right-censored — "at least this long" — and its weight is spread
over the longer bins in proportion to their mass (the Kaplan-Meier redistribution), never
dropped. The clock is injected: a simulation drives it without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from router.records import fast_init
from router.routing.decayed import DecayedHistogram, DecayedMean

Clock = Callable[[], float]


def toward_prior(observed: float | None, prior: float, weight: float) -> float:
    """Trust observations fully from one fresh sample's worth of weight; below it, slide
    linearly back to the prior (a stale estimate reverts instead of freezing)."""
    if observed is None:
        return prior
    trust = weight if weight < 1.0 else 1.0  # min(1.0, weight), without the call
    return trust * observed + (1.0 - trust) * prior


@dataclass(frozen=True, slots=True)
class Prior:
    ttft_ms: float
    ms_per_token: float
    error_rate: float = 0.01


@fast_init
@dataclass(frozen=True, slots=True)
class Snapshot:
    """One deployment's estimates at one instant, priors blended in by staleness."""

    ttft_ms: float  # expected time to first token (mean)
    ttft_q_ms: float  # the budget check's quantile of it (at `level`, see `budget_level`)
    quantile: float
    ms_per_token: float  # expected decode time per output token
    error_rate: float  # decayed share of attempts that failed (Beta prior blended in)
    failure_ms: float  # expected time a failed attempt costs before it fails
    weight: float  # decayed TTFT sample weight: the evidence behind the figures
    samples: int  # TTFT observations ever (censored included)
    age_s: float | None  # since the last observation of any kind; None: never observed
    level: float = 0.0  # the level `ttft_q_ms` was read at (before failure adjustment)

    def latency_ms(self, output_tokens: int) -> float:
        return self.ttft_ms + output_tokens * self.ms_per_token

    def latency_q_ms(self, output_tokens: int) -> float:
        return self.ttft_q_ms + output_tokens * self.ms_per_token


_TOP = 0.999  # the highest quantile read from a histogram
# The long horizon: what a deployment was last seen doing (its last `max_weight` TTFTs or
# so) fades this many half-lives slower than the recent estimate, so a stale budget
# quantile reverts to it first and to the config prior only over many minutes.
_LONG_HORIZON = 16.0
# The budget quantile's horizon: its histogram fades this many times slower than the
# estimate, so a tail is read from ~2x the samples (at 10-20 effective samples one standard
# error of a p90 is 0.07-0.09 of level: a deployment a few points either side of its budget
# flapped in and out). A drift is not lost by it: `_drift` moves the quantile with the
# recent mean, and the staleness blend reads the recent evidence's weight.
_TAIL_HORIZON = 2.0
# Pseudo-attempts of the prior error rate: one fresh failure in few attempts shows at once.
_PRIOR_ATTEMPTS = 2.0


def budget_level(q: float, samples: float, confidence: float) -> float:
    """The level whose quantile a budget is held against: `q` lowered by `confidence`
    standard errors of an empirical q-quantile on `samples` effective samples (the
    binomial sqrt(q(1-q)/n) of the share of samples below it). A budget is exceeded only on
    evidence: a deployment whose true q-quantile sits near the budget is not excluded by
    the noise of a few samples in its tail, and the allowance shrinks as samples accrue.
    Ageing does not widen it (the samples are as many, only older): a deployment last seen
    over its budget is not re-admitted on age alone, but by a budget probe's news."""
    if confidence <= 0.0 or samples <= 0.0:
        return q  # no evidence: the prior, at the level asked
    return q - confidence * math.sqrt(q * (1.0 - q) / (samples if samples > 1.0 else 1.0))


class Estimator:
    """Decayed estimates of one deployment, learnt from its observations."""

    __slots__ = ("_decode", "_failed", "_failure_ms", "_last", "_ttft", "_ttft_long",
                 "_ttft_mean", "_ttft_tail", "half_life_s", "last_ttft_ms", "prior",
                 "samples")

    def __init__(self, prior: Prior, half_life_s: float, now: float,
                 max_weight: float = math.inf) -> None:
        self.prior = prior
        self.half_life_s = half_life_s
        cap = max_weight
        self._ttft = DecayedHistogram(half_life_s, now)
        self._ttft_tail = DecayedHistogram(half_life_s * _TAIL_HORIZON, now)
        # Capped, so it follows a change within ~max_weight samples; slow, so it outlives
        # the recent evidence by many half-lives once traffic stops.
        self._ttft_long = DecayedHistogram(half_life_s * _LONG_HORIZON, now, cap)
        self._ttft_mean = DecayedMean(half_life_s, now, cap)  # exact mean (bins are 10% wide)
        self._decode = DecayedMean(half_life_s, now, cap)
        self._failed = DecayedMean(half_life_s, now, cap)  # mean of 1 (failed) / 0 (ok)
        self._failure_ms = DecayedMean(half_life_s, now, cap)
        self._last: float | None = None
        self.samples = 0
        self.last_ttft_ms: float | None = None  # the latest TTFT (a censored one's bound)

    def observe_ttft(self, ttft_ms: float, now: float) -> None:
        self._ttft.add(ttft_ms, now)
        self._ttft_tail.add(ttft_ms, now)
        self._ttft_long.add(ttft_ms, now)
        self._ttft_mean.add(ttft_ms, now)
        self.samples += 1
        self._last = now
        self.last_ttft_ms = ttft_ms

    def observe_censored(self, at_least_ms: float, now: float) -> None:
        """An attempt abandoned before its first token after `at_least_ms`."""
        self._ttft.add_censored(at_least_ms, now)
        self._ttft_tail.add_censored(at_least_ms, now)
        self._ttft_long.add_censored(at_least_ms, now)
        # The mean moves to at least the bound's share: a lower bound on the truth.
        self._ttft_mean.add(max(at_least_ms, self._ttft.mean() or at_least_ms), now)
        self.samples += 1
        self._last = now
        self.last_ttft_ms = at_least_ms

    def started(self, now: float) -> None:
        """A request was sent: the recent means make room for its observations."""
        for recent in (self._ttft_mean, self._decode, self._failed, self._failure_ms):
            recent.trim(now)

    def observe_decode(self, ms_per_token: float, now: float) -> None:
        self._decode.add(ms_per_token, now)
        self._last = now

    def observe_outcome(self, failed: bool, now: float, duration_ms: float | None = None) -> None:
        self._failed.add(1.0 if failed else 0.0, now)
        if failed and duration_ms is not None:
            self._failure_ms.add(duration_ms, now)
        self._last = now

    def ttft_quantile(self, q: float, now: float, min_weight: float) -> float | None:
        """The decayed q-quantile of TTFT, or None with less than `min_weight` behind it."""
        if self._ttft.weight(now) < min_weight:
            return None
        return self._ttft.quantile(q)

    @staticmethod
    def _failure_aware_quantile(ttft: DecayedHistogram, q: float,
                                error_rate: float) -> float | None:
        """The q-quantile of time to first token with requests that fail over elsewhere as
        outcomes slower than any success: the successes' q/(1-f) quantile, f = p**2 (a
        retry's wait is inside the observed TTFT; a request leaves after its retry fails
        too). Past 1 no success rate can meet q: the slowest success stretched by the
        failures per success stands for it (finite)."""
        leaves = error_rate * error_rate
        level = q / (1.0 - leaves)
        if level < _TOP:
            return ttft.quantile(level)
        slowest = ttft.quantile(_TOP)
        return None if slowest is None else slowest * (1.0 + leaves / (1.0 - leaves))

    def _drift(self, now: float, confidence: float) -> float:
        """How far the recent TTFTs (the mean capped at `max_weight` samples) have moved
        from the budget distribution's (`_TAIL_HORIZON` half-lives of evidence), as a scale
        factor: the shift beyond `confidence` standard errors of the recent mean (no
        change, 1.0). The distribution keeps its shape from all its evidence (tails need
        many samples) and follows a drift within about `max_weight` requests."""
        long_mean, recent = self._ttft_tail.mean(), self._ttft_mean.mean()
        if not long_mean or recent is None:
            return 1.0
        recent_weight = self._ttft_mean.weight(now)
        error = self._ttft_tail.std() / math.sqrt(recent_weight if recent_weight > 1.0 else 1.0)
        shift = abs(recent - long_mean) - confidence * error
        if shift <= 0.0:
            return 1.0
        return math.copysign(shift, recent - long_mean) / long_mean + 1.0

    def _long_ttft_q(self, now: float, quantile: float, confidence: float,
                     error_rate: float) -> float:
        """What a stale budget quantile reverts to: the long horizon's (the last samples
        seen, however old), itself reverting to the prior once its weight is below one.
        A deployment last seen over its budget stays excluded until a budget probe finds
        it within; a config prior, possibly wrong, does not re-admit it on age alone."""
        weight = self._ttft_long.weight(now)
        level = budget_level(quantile, self._ttft_long.effective_samples(), confidence)
        long_q = self._failure_aware_quantile(self._ttft_long, level, error_rate)
        return toward_prior(long_q, self.prior.ttft_ms, min(1.0, weight))

    def snapshot(self, now: float, quantile: float, confidence: float = 0.0) -> Snapshot:
        p = self.prior
        # min() and max() below as comparisons: the same values, without the calls (this
        # runs for every candidate of every request).
        age = None if self._last is None else (
            since if (since := now - self._last) > 0.0 else 0.0)
        # What was true `age` ago says less about now however much of it there was: the
        # trust in it halves every half-life without news (a mean-reverting drift).
        fresh = 1.0 if age is None else 2.0 ** (-age / self.half_life_s)
        weight = self._ttft.weight(now)
        attempts = self._failed.weight(now) * fresh
        failed = attempts * (self._failed.mean() or 0.0)
        error_rate = (failed + _PRIOR_ATTEMPTS * p.error_rate) / (attempts + _PRIOR_ATTEMPTS)
        trust = (weight if weight < 1.0 else 1.0) * fresh
        ttft = toward_prior(self._ttft_mean.mean(), p.ttft_ms, trust)
        # The quantile budgets are held against keeps bad news until its weight fades (a
        # budget is a hard constraint: re-admitting on age alone would probe with misses).
        level = budget_level(quantile, self._ttft_tail.effective_samples(), confidence)
        observed_q = self._failure_aware_quantile(self._ttft_tail, level, error_rate)
        if observed_q is not None:
            observed_q *= self._drift(now, confidence)
        if observed_q is not None and weight >= 1.0:
            ttft_q = observed_q  # fully trusted: what it would revert to has no say
        else:
            ttft_q = toward_prior(observed_q, self._long_ttft_q(now, quantile, confidence,
                                                                error_rate),
                                  weight if weight < 1.0 else 1.0)
        decode_weight = self._decode.weight(now)
        decode = toward_prior(self._decode.mean(), p.ms_per_token,
                              (decode_weight if decode_weight < 1.0 else 1.0) * fresh)
        failure_weight = self._failure_ms.weight(now)
        failure_ms = toward_prior(self._failure_ms.mean(), p.ttft_ms,
                                  (failure_weight if failure_weight < 1.0 else 1.0) * fresh)
        return Snapshot(ttft, 0.0 if ttft_q < 0.0 else ttft_q, quantile, decode, error_rate,
                        failure_ms, weight * fresh, self.samples, age, level)
