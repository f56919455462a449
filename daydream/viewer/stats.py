"""Statistics the viewer shows, as plain functions: means with a 95 % interval, Spearman's rho with
a bootstrap interval, and ordinal Krippendorff's alpha.

Judges give ordinal scores (a 7 is better than a 6, but 7-6 need not equal 3-2) and not every judge
scores every generation (parse errors, failures), so agreement is ordinal Krippendorff's alpha over
all judges — it allows missing values — and Spearman's rho (rank-based) per judge pair."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from statistics import mean, stdev
from typing import NamedTuple

Z_95 = 1.959963984540054


class Estimate(NamedTuple):
    value: float | None
    low: float | None
    high: float | None
    n: int


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean with a normal-approximation 95 % interval (none for fewer than two values)."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None, 0)
    centre = mean(values)
    if n < 2:
        return Estimate(centre, None, None, n)
    half = Z_95 * stdev(values) / math.sqrt(n)
    return Estimate(centre, centre - half, centre + half, n)


def difference_ci(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(b) - mean(a) with a Welch-style normal 95 % interval."""
    if len(a) < 2 or len(b) < 2:
        value = mean(b) - mean(a) if a and b else None
        return Estimate(value, None, None, min(len(a), len(b)))
    diff = mean(b) - mean(a)
    half = Z_95 * math.sqrt(stdev(a) ** 2 / len(a) + stdev(b) ** 2 / len(b))
    return Estimate(diff, diff - half, diff + half, min(len(a), len(b)))


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    mx, my = mean(x), mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks; none when either side is constant."""
    if len(x) != len(y):
        raise ValueError("spearman needs paired values")
    if len(x) < 2:
        return None
    return pearson(ranks(x), ranks(y))


BOOTSTRAP_MAX_N = 200
"""Above this many pairs the interval is Fieller's Fisher-z one: a bootstrap of 1000 re-rankings of
thousands of pairs took most of the two minutes an experiment of 20,000 evaluations took to open."""


def spearman_ci(x: Sequence[float], y: Sequence[float], resamples: int = 1000, seed: int = 0) -> Estimate:
    """rho with a percentile bootstrap 95 % interval over resampled pairs (seeded: pages are stable);
    for more than BOOTSTRAP_MAX_N pairs, Fisher's z with Fieller et al.'s (1957) variance 1.06/(n-3)."""
    rho = spearman(x, y)
    n = len(x)
    if rho is None or n < 3:
        return Estimate(rho, None, None, n)
    if n > BOOTSTRAP_MAX_N:
        z, half = math.atanh(max(-0.999999, min(0.999999, rho))), Z_95 * math.sqrt(1.06 / (n - 3))
        return Estimate(rho, math.tanh(z - half), math.tanh(z + half), n)
    rng = random.Random(seed)
    boot = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        value = spearman([x[i] for i in picks], [y[i] for i in picks])
        if value is not None:
            boot.append(value)
    if len(boot) < resamples // 2:
        return Estimate(rho, None, None, n)
    boot.sort()
    return Estimate(rho, boot[int(0.025 * len(boot))], boot[min(len(boot) - 1, int(0.975 * len(boot)))], n)


def krippendorff_alpha(units: Sequence[Sequence[float | None]], level: str = "ordinal") -> float | None:
    """Krippendorff's alpha; `units` is one row per unit (a generation), one value per coder (a judge),
    None where that coder gave no value. Units with fewer than two values are not pairable and are
    dropped. `level` is "nominal", "ordinal" or "interval". None when there is no disagreement possible."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [unit for unit in pairable if len(unit) >= 2]
    if not pairable:
        return None
    coincidence: defaultdict[tuple[float, float], float] = defaultdict(float)
    for unit in pairable:
        m = len(unit)
        for i, a in enumerate(unit):
            for j, b in enumerate(unit):
                if i != j:
                    coincidence[(a, b)] += 1 / (m - 1)
    values = sorted({v for unit in pairable for v in unit})
    marginal = {c: sum(coincidence[(c, k)] for k in values) for c in values}
    total = sum(marginal.values())
    if total <= 1:
        return None
    delta = _distance(values, marginal, level)
    observed = sum(coincidence[(c, k)] * delta(c, k) for c in values for k in values)
    expected = sum(marginal[c] * marginal[k] * delta(c, k) for c in values for k in values) / (total - 1)
    if expected == 0:
        return None
    return 1 - observed / expected


def _distance(values: list[float], marginal: dict[float, float], level: str):
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "interval":
        return lambda c, k: (c - k) ** 2
    if level != "ordinal":
        raise ValueError(f"unknown level {level!r}: nominal, ordinal or interval")
    position = {v: i for i, v in enumerate(values)}

    def ordinal(c: float, k: float) -> float:
        lo, hi = sorted((position[c], position[k]))
        between = sum(marginal[values[g]] for g in range(lo, hi + 1))
        return (between - (marginal[values[lo]] + marginal[values[hi]]) / 2) ** 2

    return ordinal
