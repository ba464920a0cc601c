"""Statistics for the tests of the exact noise samplers: a seeded random source, chi-square
and Kolmogorov-Smirnov checks against an exact pmf."""

from __future__ import annotations

import math
import random
from collections import Counter

Z_999 = 3.0902  # the standard normal's 0.999 quantile


class SeededSource:
    """A reproducible random source, for tests only (production draws from ``secrets``)."""

    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def randbelow(self, n: int) -> int:
        assert type(n) is int and n > 0
        return self._random.randrange(n)


def chi2_critical(df: int, z: float = Z_999) -> float:
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(draws: list[int], pmf, support: range) -> tuple[float, int]:
    """The chi-square statistic of ``draws`` against ``pmf`` over ``support`` (values outside
    pooled into one tail bin with the remaining mass), and its degrees of freedom."""
    n = len(draws)
    seen = Counter(draws)
    bins, inside = [], 0.0
    for x in support:
        p = pmf(x)
        inside += p
        bins.append((n * p, seen.get(x, 0)))
    bins.append((n * (1 - inside), sum(c for x, c in seen.items() if x not in support)))
    # merge bins with fewer than 5 expected into their neighbour
    merged, acc_e, acc_o = [], 0.0, 0
    for e, o in bins:
        acc_e += e
        acc_o += o
        if acc_e >= 5:
            merged.append((acc_e, acc_o))
            acc_e, acc_o = 0.0, 0
    if acc_e:
        e, o = merged.pop()
        merged.append((e + acc_e, o + acc_o))
    stat = sum((o - e) ** 2 / e for e, o in merged)
    return stat, len(merged) - 1


def ks_distance(draws: list[int], cdf) -> float:
    n = len(draws)
    seen = Counter(draws)
    worst, below = 0.0, 0
    for x in sorted(seen):
        worst = max(worst, abs(below / n - cdf(x - 1)))
        below += seen[x]
        worst = max(worst, abs(below / n - cdf(x)))
    return worst


def laplace_pmf(scale: float):
    a = math.exp(-1 / scale)
    return lambda x: (1 - a) / (1 + a) * a ** abs(x)


def laplace_cdf(scale: float):
    a = math.exp(-1 / scale)

    def cdf(x: int) -> float:
        return a ** (-x) / (1 + a) if x < 0 else 1 - a ** (x + 1) / (1 + a)
    return cdf


def assert_fits(draws, pmf, support, cdf=None, *, z=Z_999, ks=1.95):
    stat, df = chi_square(draws, pmf, support)
    assert stat < chi2_critical(df, z), f"chi-square {stat:.1f} over {df} df (critical {chi2_critical(df, z):.1f})"
    if cdf is not None:
        d = ks_distance(draws, cdf)
        assert d < ks / math.sqrt(len(draws)), f"KS distance {d:.4f}"
