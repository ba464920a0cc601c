"""The exact discrete noise samplers against their exact probability mass functions.

Statistics with a fixed seed (so each test gives the same verdict every run): chi-square over
bins with at least 5 expected draws, the critical value at p = 0.001 (Wilson-Hilferty), and a
Kolmogorov-Smirnov distance against the exact CDF at the 0.001 level (1.95 / sqrt(n); for a
discrete distribution this is conservative). A test of the tests shows they reject a
sampler whose scale is 10% off. OpenDP's discrete Laplace is the oracle where it is installed.
"""

from __future__ import annotations

import ast
import math
import secrets
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from dp_stats import (
    SeededSource, assert_fits, chi2_critical, chi_square, ks_distance, laplace_cdf, laplace_pmf,
)

from rxfed.crypto import noise

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("gamma", ["0", "1/3", "1", "7/4", "3"])
def test_bernoulli_exp_has_probability_exp_minus_gamma(gamma):
    rng = SeededSource(1)
    n = 40_000
    hits = sum(noise.bernoulli_exp(gamma, rng) for _ in range(n))
    p = math.exp(-float(Fraction(gamma)))
    assert abs(hits - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + (1e-9 if p in (0, 1) else 0)


@pytest.mark.parametrize("p", ["0", "1/7", "1/2", "1"])
def test_bernoulli_has_probability_p(p):
    rng = SeededSource(8)
    n = 20_000
    hits = sum(noise.bernoulli(p, rng) for _ in range(n))
    q = float(Fraction(p))
    assert abs(hits - n * q) <= 4 * math.sqrt(n * q * (1 - q))


@pytest.mark.parametrize("scale", ["1/2", "2", "10/3", "12"])
def test_discrete_laplace_matches_its_pmf(scale):
    rng = SeededSource(2)
    draws = [noise.discrete_laplace(scale, rng) for _ in range(30_000)]
    b = float(Fraction(scale))
    width = int(12 * b) + 2
    assert_fits(draws, laplace_pmf(b), range(-width, width + 1), laplace_cdf(b))


@pytest.mark.parametrize("gamma", ["1/5", "1", "5/2"])
def test_geometric_matches_its_pmf(gamma):
    rng = SeededSource(3)
    a = math.exp(-float(Fraction(gamma)))
    draws = [noise.geometric(gamma, rng) for _ in range(30_000)]
    assert_fits(draws, lambda k: (1 - a) * a ** k if k >= 0 else 0.0, range(0, 200),
                lambda k: 1 - a ** (k + 1) if k >= 0 else 0.0)


def nb_pmf(r: float, a: float):
    return lambda k: math.exp(math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) + r * math.log(1 - a)
                              + k * math.log(a)) if k >= 0 else 0.0


@pytest.mark.parametrize("r, gamma", [("1/2", "1/4"), ("1/3", "1/14"), ("2/3", "1"), ("1", "1/2")])
def test_polya_matches_the_negative_binomial_pmf(r, gamma):
    rng = SeededSource(4)
    a = math.exp(-float(Fraction(gamma)))
    draws = [noise.polya(r, gamma, rng) for _ in range(20_000)]
    pmf = nb_pmf(float(Fraction(r)), a)
    cdf_table, acc = {}, 0.0
    for k in range(0, 2000):
        acc += pmf(k)
        cdf_table[k] = acc
    assert_fits(draws, pmf, range(0, 2000), lambda k: cdf_table.get(k, 0.0 if k < 0 else 1.0))


@pytest.mark.parametrize("shares", [1, 2, 3])
def test_shares_of_polya_differences_sum_to_discrete_laplace(shares):
    """Each of ``shares`` nodes adds NB(1/shares) - NB(1/shares); the sum is exactly
    discrete Laplace with scale 1/gamma."""
    rng = SeededSource(5)
    gamma = Fraction(1, 4)
    draws = [sum(noise.polya_difference(shares, gamma, rng) for _ in range(shares)) for _ in range(20_000)]
    assert_fits(draws, laplace_pmf(4.0), range(-60, 61), laplace_cdf(4.0))


def test_the_statistics_reject_a_wrong_scale():
    """The tests above can fail: draws at scale 2.2 do not pass for scale 2."""
    rng = SeededSource(6)
    draws = [noise.discrete_laplace("11/5", rng) for _ in range(30_000)]
    stat, df = chi_square(draws, laplace_pmf(2.0), range(-30, 31))
    assert stat > chi2_critical(df)
    assert ks_distance(draws, laplace_cdf(2.0)) > 1.95 / math.sqrt(len(draws))
    shares = [noise.polya_difference(2, Fraction(1, 4), rng) for _ in range(20_000)]  # one share, not two
    stat, df = chi_square(shares, laplace_pmf(4.0), range(-60, 61))
    assert stat > chi2_critical(df)


def test_the_default_source_is_the_operating_systems_csprng(monkeypatch):
    calls = []
    real = secrets.token_bytes

    def counting(n):
        calls.append(n)
        return real(n)

    monkeypatch.setattr(secrets, "token_bytes", counting)
    noise.discrete_laplace(3)
    noise.polya_difference(2, "1/3")
    assert len(calls) >= 2  # a fresh source (its own bytes) for each call


def test_two_sources_never_share_bytes(monkeypatch):
    """Each call makes its own source, so two calls (two threads, a parent and a forked
    child) never draw from one buffer."""
    a, b = noise.CsprngSource(), noise.CsprngSource()
    assert [a.randbelow(2**64) for _ in range(4)] != [b.randbelow(2**64) for _ in range(4)]


@pytest.mark.parametrize("n", [2, 3, 200, 256, 257, 1000, 2**31 + 5])
def test_the_csprng_source_is_uniform(n):
    """Values bucketed by n // 10 (or by value when n is small) fit uniform; and the
    rejection keeps the largest values as likely as the smallest."""
    source = noise.CsprngSource()
    draws = [source.randbelow(n) for _ in range(20_000)]
    assert 0 <= min(draws) and max(draws) < n
    buckets = min(n, 10)
    counts = Counter(d * buckets // n for d in draws)
    e = [sum(1 for v in range(n) if v * buckets // n == b) / n * len(draws) for b in range(buckets)] if n < 2000 \
        else [len(draws) / buckets] * buckets
    stat = sum((counts.get(b, 0) - e[b]) ** 2 / e[b] for b in range(buckets))
    assert stat < chi2_critical(buckets - 1, 4.753)  # fresh randomness: the 1e-6 level


@pytest.mark.parametrize("call", [
    lambda: noise.discrete_laplace(2.0),
    lambda: noise.bernoulli_exp(0.5),
    lambda: noise.polya(0.5, "1"),
    lambda: noise.polya_difference(2, 0.25),
    lambda: noise.geometric(True),
])
def test_float_parameters_are_refused(call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("call", [
    lambda: noise.discrete_laplace("0"),
    lambda: noise.discrete_laplace("-1"),
    lambda: noise.discrete_laplace("abc"),
    lambda: noise.discrete_laplace(10**7),
    lambda: noise.bernoulli_exp("-1/2"),
    lambda: noise.bernoulli("3/2"),
    lambda: noise.polya("3/2", "1"),
    lambda: noise.polya("0", "1"),
    lambda: noise.polya_difference(0, "1"),
    lambda: noise.geometric("0"),
])
def test_out_of_range_parameters_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_no_floating_point_in_the_sampler_module():
    """No float literal, no float(), no math or random module anywhere in the samplers."""
    tree = ast.parse((ROOT / "rxfed" / "crypto" / "noise.py").read_text())
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), node.lineno
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "float", node.lineno
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {"math", "random", "numpy"} & set(names), node.lineno


def test_opendp_discrete_laplace_as_oracle():
    """Our draws and OpenDP's at the same scale fit the same pmf, and each other (a two-sample
    chi-square of homogeneity). OpenDP's draws cannot be seeded, so its checks are at the
    1e-6 level (z = 4.753, KS 2.72 / sqrt(n)): a correct sampler fails them once in a million runs."""
    dp = pytest.importorskip("opendp.prelude")
    dp.enable_features("contrib")
    scale = 3
    mechanism = dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=float(scale))
    n = 6_000
    theirs = [mechanism(0) for _ in range(n)]
    rng = SeededSource(7)
    ours = [noise.discrete_laplace(scale, rng) for _ in range(n)]
    assert_fits(theirs, laplace_pmf(scale), range(-40, 41), laplace_cdf(scale), z=4.753, ks=2.72)
    assert_fits(ours, laplace_pmf(scale), range(-40, 41), laplace_cdf(scale))
    a, b = Counter(ours), Counter(theirs)
    bins = [x for x in range(-12, 13)]
    rows = [(a[x], b[x]) for x in bins] + [(sum(c for x, c in a.items() if abs(x) > 12),
                                            sum(c for x, c in b.items() if abs(x) > 12))]
    stat = 0.0
    for oa, ob in rows:
        e = (oa + ob) / 2
        stat += (oa - e) ** 2 / e + (ob - e) ** 2 / e
    assert stat < chi2_critical(len(rows) - 1, 4.753)
