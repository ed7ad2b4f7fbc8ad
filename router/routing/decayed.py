"""Decayed statistics: a log-binned histogram and a mean whose observations' weights halve
every `half_life_s` of age (what `router.routing.estimator` learns a deployment from).
Both age for free: weights are stored scaled by the time since a reference, so an
observation is O(1) and ageing rewrites nothing."""

from __future__ import annotations

import math

_LOG_RATIO = math.log(1.1)  # bin width: 10% of the value
_BINS = 160  # 1 ms .. ~4 million ms
_RESCALE_EXPONENT = 40.0  # renormalize stored weights before 2**exponent overflows precision


class DecayedHistogram:
    """Weights in log-spaced bins; each weight halves every `half_life_s` of age.

    Weights are stored scaled by 2**((t - t_ref) / half_life) so that adding is O(1) and
    aging everything costs nothing: the scale cancels out of every quantile and mean.
    """

    __slots__ = ("_half_life", "_hi", "_lo", "_mass", "_max_weight", "_second",
                 "_sum", "_sum_sq", "_t_ref", "_total", "_weight")

    def __init__(self, half_life_s: float, now: float, max_weight: float = math.inf) -> None:
        self._half_life = half_life_s
        self._max_weight = max_weight
        self._t_ref = now
        self._weight = [0.0] * _BINS
        self._total = [0.0] * _BINS  # weighted sum of the values in each bin
        self._sum = 0.0
        self._sum_sq = 0.0  # of each observation's stored weight: the effective sample size
        # Only bins in [_lo, _hi) ever held weight: quantiles, means and spreads read those
        # (a few for a steady deployment) rather than all 160, on every routing decision.
        self._lo, self._hi = _BINS, 0
        # The sums the mean and spread are read from, kept as each observation lands (a
        # pass over the bins after every observation cost ~6 us per routed candidate):
        # the sum of the bins' totals, and of total^2 / weight (each bin at its mean).
        self._mass = 0.0
        self._second = 0.0

    @staticmethod
    def _bin(value: float) -> int:
        if value <= 1.0:
            return 0
        return min(_BINS - 1, int(math.log(value) / _LOG_RATIO))

    def _scale(self, now: float) -> float:
        exponent = (now - self._t_ref) / self._half_life
        if exponent > _RESCALE_EXPONENT:
            factor = 2.0 ** -exponent
            self._weight = [w * factor for w in self._weight]
            self._total = [t * factor for t in self._total]
            self._sum *= factor
            self._sum_sq *= factor * factor
            self._mass *= factor
            self._second *= factor
            self._t_ref, exponent = now, 0.0
        return float(2.0 ** exponent)

    def add(self, value: float, now: float, weight: float = 1.0) -> None:
        w = weight * self._scale(now)
        i = self._bin(value)
        if i < self._lo:
            self._lo = i
        if i >= self._hi:
            self._hi = i + 1
        old_w, old_t = self._weight[i], self._total[i]
        new_w, new_t = old_w + w, old_t + w * value
        self._weight[i], self._total[i] = new_w, new_t
        # total * (total / weight): a long-aged bin's total squared would underflow to 0.
        self._second += new_t * (new_t / new_w) - (old_t * (old_t / old_w) if old_w > 0.0
                                                    else 0.0)
        self._mass += w * value
        self._sum += w
        self._sum_sq += w * w
        self._cap(now)

    def _cap(self, now: float) -> None:
        """Past `max_weight` every weight shrinks: a busy deployment's distribution
        follows a change within about `max_weight` requests, not only a half-life."""
        excess = self.weight(now) / self._max_weight
        if excess > 1.0:
            # Shrinking every weight by `excess` is ageing them by log2(excess) half-lives:
            # move the reference time back instead of rewriting 2 x 160 bins per sample
            # (quantiles and means only read ratios of the stored weights).
            self._t_ref -= self._half_life * math.log2(excess)

    def add_censored(self, lower: float, now: float, weight: float = 1.0) -> None:
        """An outcome known only to be at least `lower`: its weight goes to the longer bins
        in proportion to their mass; to `lower` itself when nothing longer was seen."""
        w = weight * self._scale(now)
        first = self._bin(lower) + 1
        above = sum(self._weight[first:])
        if above <= 0.0:
            self.add(lower, now, weight)
            return
        grow = 1.0 + w / above
        mass_above = second_above = 0.0
        for i in range(first, _BINS):
            weight_i, total_i = self._weight[i], self._total[i]
            if weight_i > 0.0:
                mass_above += total_i
                second_above += total_i * (total_i / weight_i)
            self._weight[i] = weight_i * grow
            self._total[i] = total_i * grow
        # Each bin above keeps its mean and gains weight: its total^2 / weight grows alike.
        self._mass += (grow - 1.0) * mass_above
        self._second += (grow - 1.0) * second_above
        self._sum += w
        self._sum_sq += w * w
        self._cap(now)

    def weight(self, now: float) -> float:
        """The decayed sample weight at `now` (1.0 = one sample observed just now)."""
        return self._sum * math.pow(2.0, -(now - self._t_ref) / self._half_life)

    def effective_samples(self) -> float:
        """How many equally weighted samples the quantiles' noise is that of (Kish's
        (sum w)^2 / sum w^2). Ageing scales every weight alike, so it leaves this
        unchanged: old samples are less relevant, not fewer."""
        return self._sum * self._sum / self._sum_sq if self._sum_sq > 0.0 else 0.0

    def quantile(self, q: float) -> float | None:
        if self._sum <= 0.0:
            return None
        target, cumulative = q * self._sum, 0.0
        weights, totals = self._weight, self._total
        for i in range(self._lo, self._hi):
            w = weights[i]
            if w <= 0.0:
                continue
            cumulative += w
            if cumulative >= target:
                return totals[i] / w
        return None  # unreachable but for rounding: q <= 1

    def mean(self) -> float | None:
        return self._mass / self._sum if self._sum > 0.0 else None

    def std(self) -> float:
        """The spread of the values (each bin at its mean: within-bin spread ignored)."""
        if self._sum <= 0.0:
            return 0.0
        mean = self._mass / self._sum
        return math.sqrt(max(0.0, self._second / self._sum - mean * mean))


class DecayedMean:
    """A mean whose observations' weights halve every `half_life_s`."""

    __slots__ = ("_half_life", "_max_weight", "_t", "_total", "_weight")

    def __init__(self, half_life_s: float, now: float, max_weight: float = math.inf) -> None:
        self._half_life, self._t, self._weight, self._total = half_life_s, now, 0.0, 0.0
        self._max_weight = max_weight

    def _age_to(self, now: float) -> None:
        if now > self._t:
            factor = 2.0 ** (-(now - self._t) / self._half_life)
            self._weight *= factor
            self._total *= factor
            self._t = now

    def add(self, value: float, now: float, weight: float = 1.0) -> None:
        self._age_to(now)
        self._weight += weight
        self._total += weight * value

    def trim(self, now: float) -> None:
        """Shrink to `max_weight` (as `DecayedHistogram._cap`). Called as requests are
        SENT, not as they answer: after traffic stops, the last answers to arrive (the
        slowest of the last requests sent) join the earlier ones instead of displacing
        them, so a drained deployment's estimate is not biased toward its tail."""
        self._age_to(now)
        if self._weight > self._max_weight:
            self._total *= self._max_weight / self._weight
            self._weight = self._max_weight

    def weight(self, now: float) -> float:
        age = now - self._t
        return self._weight * math.pow(2.0, -(age if age > 0.0 else 0.0) / self._half_life)

    def mean(self) -> float | None:
        return self._total / self._weight if self._weight > 0.0 else None
