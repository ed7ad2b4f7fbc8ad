"""Fleets nobody tuned the router on: a seeded random fleet builder for
`python -m benchmarks.routing --random-fleets N`, the held-out check beside the four
hand-written fleets of `benchmarks.routing_sim`.

Each fleet has 3-6 deployments with random prices (log-uniform over 20x, output 3-5x
input) and TTFT medians (120 ms - 1.1 s, so a 1 s latency budget splits them), and each
deployment may also have a heavy tail, a drift (a step or ramp at a random time, to 0.3x-4x,
recovering or not), a brown-out, an rpm quota, latency rising with its own load, and a
config prior that is wrong (0.3x-3x the truth). Prices and speeds are drawn independently,
so some fleets are inversely ordered and some have a cheap and fast deployment."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from benchmarks.routing_sim import Fleet, Truth


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _drift(rng: random.Random, base: float) -> tuple[Callable[[float], float], str]:
    """A TTFT median over the run's time fraction: steady, or a step / ramp to another
    level at a random time, recovering later or not."""
    if rng.random() < 0.45:
        return (lambda f: base), f"{base:.0f} ms"
    to = base * rng.choice((_log_uniform(rng, 0.3, 0.7), _log_uniform(rng, 1.6, 4.0)))
    f0 = rng.uniform(0.1, 0.75)
    f1 = f0 + rng.choice((0.0, rng.uniform(0.02, 0.15)))  # a step or a ramp
    back = f1 + rng.uniform(0.1, 0.4) if rng.random() < 0.35 else math.inf

    def median(f: float) -> float:
        if f < f0 or f >= back:
            return base
        if f >= f1:
            return to
        return base + (to - base) * (f - f0) / (f1 - f0)

    until = f" until {back:.2f}" if back < 1 else ""
    return median, f"{base:.0f} -> {to:.0f} ms over {f0:.2f}-{f1:.2f}{until}"


def _errors(rng: random.Random) -> tuple[Callable[[float], float], str]:
    if rng.random() >= 0.25:
        return (lambda f: 0.005), ""
    rate, f0 = rng.uniform(0.15, 0.6), rng.uniform(0.05, 0.8)
    f1 = min(1.0, f0 + rng.uniform(0.1, 0.3))
    return (lambda f: rate if f0 <= f < f1 else 0.005), f", {rate:.0%} errors {f0:.2f}-{f1:.2f}"


def random_truth(rng: random.Random, name: str) -> tuple[Truth, str]:
    """One deployment and a line describing it."""
    price_in = _log_uniform(rng, 0.05, 1.0)
    price = (round(price_in, 3), round(price_in * rng.uniform(3.0, 5.0), 3))
    base = _log_uniform(rng, 120.0, 1100.0)
    ttft, drift = _drift(rng, base)
    error, errors = _errors(rng)
    tail_p, tail_x = (rng.uniform(0.02, 0.12), rng.uniform(3.0, 8.0)) if (
        rng.random() < 0.3) else (0.0, 1.0)
    load_slope = rng.uniform(0.05, 0.3) if rng.random() < 0.3 else 0.0
    rpm = rng.randint(120, 400) if rng.random() < 0.2 else None
    wrong = rng.random() < 0.3
    prior = base * (rng.choice((_log_uniform(rng, 0.3, 0.6), _log_uniform(rng, 1.7, 3.0)))
                    if wrong else rng.uniform(0.85, 1.2))
    truth = Truth(name, price, round(prior), round(rng.uniform(1.5, 4.0), 2), ttft,
                  sigma=rng.uniform(0.2, 0.4), tail_p=tail_p, tail_x=tail_x, error=error,
                  load_slope=load_slope, rpm=rpm)
    extras = "".join((
        f", {tail_p:.0%} tail x{tail_x:.1f}" if tail_p else "", errors,
        f", +{load_slope:.0%}/in flight" if load_slope else "",
        f", {rpm} rpm" if rpm else "", " (wrong prior)" if wrong else ""))
    return truth, (f"{name}: ${price[0]:g}/${price[1]:g}, prior {prior:.0f} ms, TTFT {drift}, "
                   f"{truth.ms_per_token:g} ms/token, sigma {truth.sigma:.2f}{extras}")


def random_fleet(seed: int, index: int) -> tuple[Fleet, list[str]]:
    """Fleet `index` of the random fleets of `seed` (the same fleet on every run)."""
    rng = random.Random(f"fleet:{seed}:{index}")
    built = [random_truth(rng, f"d{k}") for k in range(rng.randint(3, 6))]
    return tuple(t for t, _ in built), [line for _, line in built]
