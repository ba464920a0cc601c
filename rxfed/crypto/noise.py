"""Exact discrete noise for differential privacy: integers and fractions only, from the CSPRNG.

Every sampler here draws uniform integers (``randbelow``) and does rational arithmetic
(:class:`fractions.Fraction`), so the distribution it outputs is exactly the one stated,
with no floating-point rounding to leak through (Mironov 2012: the textbook floating-point
Laplace leaves holes that give the true value away). The algorithms:

* :func:`bernoulli_exp`: Bernoulli(exp(-gamma)) for a rational gamma >= 0, Canonne, Kamath
  and Steinke, *The Discrete Gaussian for Differential Privacy* (NeurIPS 2020), Algorithm 1;
* :func:`geometric`: P(k) = (1 - a) a^k for a = exp(-gamma), from the same paper's
  Algorithm 2 (a uniform residue accepted with probability exp(-u/t), plus t times a count
  of Bernoulli(exp(-1)) successes, divided by s);
* :func:`discrete_laplace`: P(x) proportional to exp(-|x| / scale), Algorithm 2 as printed;
* :func:`polya`: the Polya (negative binomial) distribution NB(r, a) for rational
  0 < r <= 1, by rejection from the geometric: NB(r, a)(k) = c * geometric(k) * w(k) with
  w(k) = prod_{j=1..k} (j - 1 + r) / j <= 1, so a geometric draw k accepted with
  probability w(k) (k Bernoulli trials with rational probabilities) is exactly NB(r, a);
* :func:`polya_difference`: NB(1/n, a) - NB(1/n, a); n of these sum to exactly
  geometric - geometric, which is discrete Laplace with a = exp(-1/scale) (spec/privacy.md).

``rng`` is the random source: anything with ``randbelow(n)`` returning a uniform integer in
[0, n). The default is a fresh :class:`CsprngSource` for each call: bytes from the operating
system's CSPRNG (:func:`secrets.token_bytes`), read in blocks. Tests pass a seeded source so
their statistics are reproducible; nothing else may be passed in production.
"""

from __future__ import annotations

import secrets
from fractions import Fraction
from typing import Protocol


class RandomSource(Protocol):
    def randbelow(self, n: int, /) -> int: ...


Rational = int | Fraction | str


class CsprngSource:
    """Uniform integers from the operating system's CSPRNG, read in blocks.

    ``randbelow(n)`` takes the fewest whole bytes that can hold n - 1 and rejects values at
    or above the largest multiple of n they can hold, so what it returns is exactly uniform
    (the rejection method of :meth:`random.SystemRandom.randbelow`, a byte at a time instead
    of a system call per draw: a release draws about a hundred integers per cell). One
    source serves one caller: it is made fresh for each top-level call and never shared
    between threads or across a fork, so no two callers can ever read the same bytes."""

    _MAX_BLOCK = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._block = 64

    def randbelow(self, n: int) -> int:
        if n <= 0:
            raise ValueError("randbelow needs n > 0")
        if n == 1:
            return 0
        width = ((n - 1).bit_length() + 7) >> 3
        span = 1 << (8 * width)
        limit = span - span % n
        while True:
            if self._pos + width > len(self._buf):
                self._buf = secrets.token_bytes(max(self._block, width))
                self._pos = 0
                self._block = min(2 * self._block, self._MAX_BLOCK)
            value = int.from_bytes(self._buf[self._pos:self._pos + width], "big")
            self._pos += width
            if value < limit:
                return value % n

#: Scales above this would make a sampler loop for a very long time (and no release needs one).
MAX_SCALE = Fraction(10**6)


def rational(value: Rational, name: str = "value") -> Fraction:
    """``value`` as an exact fraction. Floats are refused: a float parameter is how a
    rounding error gets onto the noise path, and ``"0.1"`` says exactly what is meant."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} must be an int, a Fraction or a decimal string, not {type(value).__name__}")
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{name} is not a number: {value!r}") from None
    raise TypeError(f"{name} must be an int, a Fraction or a decimal string, not {type(value).__name__}")


def bernoulli(p: Rational, rng: RandomSource | None = None) -> bool:
    """True with probability ``p`` (0 <= p <= 1), exactly."""
    rng = rng or CsprngSource()
    p = rational(p, "p")
    if not 0 <= p <= 1:
        raise ValueError("p must be in [0, 1]")
    return rng.randbelow(p.denominator) < p.numerator


def bernoulli_exp(gamma: Rational, rng: RandomSource | None = None) -> bool:
    """True with probability exp(-gamma), for a rational gamma >= 0 (CKS20, Algorithm 1).

    For gamma <= 1: draw Bernoulli(gamma/k) for k = 1, 2, ... until one fails; the number
    of the failing draw is odd with probability exactly sum (-gamma)^j / j! = exp(-gamma).
    Larger gamma is split into floor(gamma) factors exp(-1) and one exp(-(gamma mod 1))."""
    rng = rng or CsprngSource()
    gamma = rational(gamma, "gamma")
    if gamma < 0:
        raise ValueError("gamma must be >= 0")
    return _bernoulli_exp(gamma.numerator, gamma.denominator, rng)


def _bernoulli_exp(n: int, d: int, rng: RandomSource) -> bool:
    """Bernoulli(exp(-n/d)) for integers n >= 0, d >= 1 (the hot path: integers, no Fraction)."""
    randbelow = rng.randbelow
    while n > d:  # one factor exp(-1) at a time
        k = 1
        while randbelow(k) < 1:  # Bernoulli(1/k)
            k += 1
        if k % 2 == 0:
            return False
        n -= d
    k = 1
    while randbelow(d * k) < n:  # Bernoulli(n / (d k))
        k += 1
    return k % 2 == 1


def _check_scale(scale: Fraction) -> Fraction:
    if scale <= 0:
        raise ValueError("the scale must be > 0")
    if scale > MAX_SCALE:
        raise ValueError(f"the scale must be at most {MAX_SCALE}")
    return scale


def _geometric_exp_inv(t: int, rng: RandomSource) -> int:
    """X with P(X = x) = (1 - a) a^x, a = exp(-1/t), t a positive integer (CKS20 Alg. 2,
    before the division): a uniform residue u in [0, t) kept with probability exp(-u/t),
    plus t times the number of Bernoulli(exp(-1)) successes before the first failure."""
    while True:
        u = rng.randbelow(t)
        if _bernoulli_exp(u, t, rng):
            break
    v = 0
    while _bernoulli_exp(1, 1, rng):
        v += 1
    return u + t * v


def geometric(gamma: Rational, rng: RandomSource | None = None) -> int:
    """K >= 0 with P(K = k) = (1 - a) a^k for a = exp(-gamma), gamma > 0 rational.

    With gamma = s/t in lowest terms, X ~ geometric(exp(-1/t)) and K = floor(X / s):
    P(K >= k) = P(X >= s k) = a^k."""
    rng = rng or CsprngSource()
    gamma = rational(gamma, "gamma")
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    _check_scale(1 / gamma)
    return _geometric_exp_inv(gamma.denominator, rng) // gamma.numerator


def discrete_laplace(scale: Rational, rng: RandomSource | None = None) -> int:
    """Y with P(Y = y) proportional to exp(-|y| / scale), scale > 0 rational (CKS20,
    Algorithm 2: a geometric magnitude and a fair sign, with the "negative zero" rejected so
    that 0 is not counted twice)."""
    rng = rng or CsprngSource()
    scale = _check_scale(rational(scale, "scale"))
    t, s = scale.numerator, scale.denominator  # scale = t/s: magnitude floor(geometric(1/t) / s)
    while True:
        y = _geometric_exp_inv(t, rng) // s
        negative = rng.randbelow(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def polya(r: Rational, gamma: Rational, rng: RandomSource | None = None) -> int:
    """K >= 0 from the Polya (negative binomial) distribution NB(r, a), a = exp(-gamma):
    P(K = k) = Gamma(k + r) / (Gamma(r) k!) (1 - a)^r a^k, for rational 0 < r <= 1.

    Rejection from :func:`geometric`: the ratio of the two pmfs is (1 - a)^(r - 1) w(k) with
    w(k) = prod_{j=1..k} (j - 1 + r) / j, which is at most 1 and rational, so a geometric
    draw k is accepted when k Bernoulli((j - 1 + r)/j) draws all succeed. The expected number
    of tries is (1 - a)^(r - 1)."""
    rng = rng or CsprngSource()
    r = rational(r, "r")
    if not 0 < r <= 1:
        raise ValueError("r must be in (0, 1]")
    gamma = rational(gamma, "gamma")
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    _check_scale(1 / gamma)
    return _polya(r.numerator, r.denominator, gamma.numerator, gamma.denominator, rng)


def _polya(rn: int, rd: int, gn: int, gd: int, rng: RandomSource) -> int:
    randbelow = rng.randbelow
    while True:
        k = _geometric_exp_inv(gd, rng) // gn
        if rn == rd:
            return k
        # accept with probability prod_{j=1..k} (j - 1 + r)/j = prod ((j - 1) rd + rn) / (j rd)
        j = 1
        while j <= k and randbelow(j * rd) < (j - 1) * rd + rn:
            j += 1
        if j > k:
            return k


def polya_difference(shares: int, gamma: Rational, rng: RandomSource | None = None) -> int:
    """One node's share of distributed discrete Laplace noise: NB(1/shares, a) - NB(1/shares, a)
    with a = exp(-gamma). Any ``shares`` independent draws sum to exactly geometric - geometric,
    i.e. discrete Laplace with scale 1/gamma; more draws add more noise."""
    rng = rng or CsprngSource()
    if isinstance(shares, bool) or not isinstance(shares, int) or shares < 1:
        raise ValueError("shares must be a positive integer")
    gamma = rational(gamma, "gamma")
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    _check_scale(1 / gamma)
    gn, gd = gamma.numerator, gamma.denominator
    return _polya(1, shares, gn, gd, rng) - _polya(1, shares, gn, gd, rng)
