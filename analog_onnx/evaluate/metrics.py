"""Statistics over Monte Carlo repeats and the "Walking Noise" midpoint.

The 95% interval of a mean is Student's t interval over the repeats (repeats are few, so the
normal 1.96 would be too narrow). An accuracy is a proportion and its interval must stay in
[0, 1], which a t interval near 1 does not: ``summarize_accuracy`` takes the Wilson score
interval at the effective number of samples that the repeats' spread implies (the design-effect
method for clustered proportions, Korn and Graubard 1998), with the t quantile. Away from 0 and 1
it is the t interval; near them it bends inside. Like the t interval it is about the noise draws
on the given samples (the test set's own sampling error is not in it). A bootstrap over
repeats was not taken: with the two to five chips a run has, it has too few distinct resamples.
The midpoint noise level follows Borras et al., "Walking
Noise": the noise scale at which accuracy has fallen halfway from clean to chance, interpolated
linearly in log noise scale between the two sweep points that bracket it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# t quantiles at 0.975 for 1..30 degrees of freedom; beyond, a Cornish-Fisher series is exact to 1e-4
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95% t interval of repeated accuracies."""

    mean: float
    std: float
    ci95: tuple[float, float] | None  # None with a single repeat: no spread to estimate


def summarize_accuracy(values: Sequence[float]) -> Summary:
    """Mean, std and a 95% interval inside [0, 1] of repeated accuracies (Wilson at the effective
    sample count ``p(1-p) / se^2``, with the t quantile)."""
    plain = summarize(values)
    if plain.ci95 is None:
        return plain
    p, repeats = min(max(plain.mean, 0.0), 1.0), len(values)
    variance = plain.std**2 / repeats
    if variance == 0 or p in (0.0, 1.0):
        return Summary(plain.mean, plain.std, (p, p))  # every repeat agrees: as the t interval, a point
    effective = p * (1 - p) / variance
    z = t_quantile_975(repeats - 1)
    shrink = 1 + z * z / effective
    center = (p + z * z / (2 * effective)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / effective + z * z / (4 * effective * effective))
    return Summary(plain.mean, plain.std, (max(min(center - half, p), 0.0), min(max(center + half, p), 1.0)))


def summarize(values: Sequence[float]) -> Summary:
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2:
        return Summary(mean, 0.0, None)
    std = float(data.std(ddof=1))
    half = t_quantile_975(len(data) - 1) * std / math.sqrt(len(data))
    return Summary(mean, std, (mean - half, mean + half))


@dataclass(frozen=True)
class Midpoint:
    """Where accuracy crosses halfway from clean to chance; ``status`` says why ``noise`` may be None."""

    noise: float | None
    status: str  # "found", "below_range", "above_range" or "undefined"


def midpoint_noise(noise_scales: Sequence[float], accuracies: Sequence[float],
                   clean_accuracy: float, chance: float) -> Midpoint:
    """Interpolate in log noise scale where the mean accuracy first reaches the halfway level.

    Zero noise scales are skipped (no log). ``below_range``: already at or below halfway at the
    smallest positive scale; ``above_range``: never reaches it; ``undefined``: clean is at chance.
    """
    if clean_accuracy <= chance:
        return Midpoint(None, "undefined")
    target = chance + (clean_accuracy - chance) / 2
    curve = sorted((s, a) for s, a in zip(noise_scales, accuracies, strict=True) if s > 0)
    for i, (scale, accuracy) in enumerate(curve):
        if accuracy > target:
            continue
        if i == 0:
            return Midpoint(None, "below_range")
        prev_scale, prev_accuracy = curve[i - 1]
        fraction = (prev_accuracy - target) / (prev_accuracy - accuracy)
        log_noise = math.log(prev_scale) + fraction * (math.log(scale) - math.log(prev_scale))
        return Midpoint(math.exp(log_noise), "found")
    return Midpoint(None, "above_range")
