"""Is one configuration really better than another, or is it noise? A difference of means with its 95% interval.

Two configurations' results over seeds (`{seed: value}`) are compared as the difference of their means, with a
t-interval from scipy: paired by seed when both ran the same seeds (each seed's data order and initial weights are
then shared, and the pairs cancel much of the seed-to-seed spread), Welch's unpaired interval otherwise (unequal
spreads allowed). Why t-intervals, not a bootstrap: with the 3-10 seeds a sweep runs, a percentile bootstrap is too
narrow (a 5-seed bootstrap interval misses the true difference about twice as often as it claims), while the t
interval is exact for normal data and close for accuracies over seeds.

`seeds_needed` answers "how many seeds would tell?": the seeds per configuration that would resolve a true
difference of the size seen, with the spread seen, in 80% of sweeps (the power of the same t-test, from scipy's
noncentral t distribution; unpaired, Student's, which Welch's matches at equal seeds and spreads).
"""

import functools
import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
POWER = 0.80
MOST_SEEDS = 1000  # a difference that needs more is, for any sweep, no difference
SEARCHED = (np.arange(2, 64), np.arange(64, MOST_SEEDS + 1))  # _seeds_needed's counts, in the blocks it tries


@dataclass(frozen=True)
class Difference:
    """`other - best`, the difference of their means, and what the seeds say about it."""

    delta: float
    low: float | None  # the 95% interval; None when the seeds cannot give one (one seed on a side)
    high: float | None
    paired: bool
    seeds: tuple[int, int]  # how many seeds each side had (pairs: the same number twice)
    effect: float | None = None  # the difference in standard deviations of the seeds; None when unknown

    @property
    def seeds_needed(self) -> int | None:
        """Per configuration, for 80% power; None when unknown, for no difference, or beyond MOST_SEEDS."""
        return _seeds_needed(self.effect, self.paired) if self.effect else None

    @property
    def resolved(self) -> bool:
        """The interval excludes zero: the seeds say the difference is real (at 95%)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def scaled(self, factor: float) -> "Difference":
        """The same difference in other units (accuracy as points: 100)."""
        low, high = (None, None) if self.low is None else (self.low * factor, self.high * factor)
        return Difference(self.delta * factor, low, high, self.paired, self.seeds, self.effect)


def difference(other: dict[str, float], best: dict[str, float]) -> Difference | None:
    """`other - best` from their values by seed; None when a side has no values."""
    if not other or not best:
        return None
    if set(other) == set(best) and len(other) > 1:
        return _paired([other[seed] - best[seed] for seed in sorted(other)])
    return _unpaired(list(other.values()), list(best.values()))


def _paired(differences: list[float]) -> Difference:
    n = len(differences)
    delta, spread = statistics.fmean(differences), statistics.stdev(differences)
    if spread == 0:  # every seed moved by the same amount (0: the same runs): nothing left to chance
        return Difference(delta, delta, delta, True, (n, n))
    low, high = stats.ttest_1samp(differences, 0.0).confidence_interval(CONFIDENCE)
    return Difference(delta, float(low), float(high), True, (n, n), abs(delta) / spread)


def _unpaired(other: list[float], best: list[float]) -> Difference:
    delta = statistics.fmean(other) - statistics.fmean(best)
    seeds = (len(other), len(best))
    if min(seeds) < 2:  # one seed has no spread to measure: no interval
        return Difference(delta, None, None, False, seeds)
    spread = math.sqrt((statistics.variance(other) + statistics.variance(best)) / 2)
    if spread == 0:
        return Difference(delta, delta, delta, False, seeds)
    low, high = stats.ttest_ind(other, best, equal_var=False).confidence_interval(CONFIDENCE)
    return Difference(delta, float(low), float(high), False, seeds, abs(delta) / spread)


@functools.cache
def _seeds_needed(effect: float, paired: bool) -> int | None:
    """The fewest seeds per configuration whose two-sided t-test at 5% finds a difference of `effect` standard
    deviations in 80% of sweeps; None above MOST_SEEDS or for no difference. The first count from 2 up whose power
    is enough: a block of counts at a time, in one call to scipy each. Most differences a report shows need under
    64 seeds, and scipy's noncentral t takes 10 ms over all MOST_SEEDS counts: for a sweep of a hundred
    configurations, seconds."""
    for seeds in SEARCHED:
        enough = np.flatnonzero(_power(seeds, effect, paired) >= POWER)  # nan, were scipy to give one, is never enough
        if enough.size:
            return int(seeds[enough[0]])
    return None


def _power(seeds: np.ndarray, effect: float, paired: bool) -> np.ndarray:
    """The chance that the t-test on `seeds` seeds per configuration resolves a true difference of `effect`: its
    statistic, a noncentral t, lands beyond the critical value on either side. Each tail is a survival function:
    `1 - cdf` and the lower tail's cdf lose the far tail to rounding (scipy gives nan or 0 there), which made the
    power curve jump about and a bisection over it answer 18 seeds where 3 resolve."""
    df = seeds - 1 if paired else 2 * seeds - 2
    shift = effect * np.sqrt(seeds if paired else seeds / 2)  # the noncentrality: the difference in standard errors
    critical = stats.t.ppf(1 - (1 - CONFIDENCE) / 2, df)
    return stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift)  # the wrong sign: mirrored
