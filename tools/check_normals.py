"""Are the generator's normals standard normal? A battery on the native kernels' draws (and, beside
them, on the numpy reference's draws of the same counters).

    .venv/bin/python tools/check_normals.py [--count 16777216] [--seed 1] [--streams 4]

For each of ``--streams`` streams of one seed, ``--count`` normals from the native ``Noise`` op
(``sigma_add`` 1 on zeros) and from ``analog_onnx.ops.rng.normals``, each sample tested on its own:

- Kolmogorov-Smirnov against N(0, 1), and chi-square on 1024 bins of equal probability;
- mean, variance, skewness and excess kurtosis, each as a z-score of its standard error;
- the frequency of |z| beyond 3, 4 and 5 against the normal tail, as a z-score (Poisson);
- independence: the correlation of the two normals of a Box-Muller pair, of their squares, and
  of normals two apart (neighbouring counters), each as a z-score.

The rule, fixed before any run: a sample passes when both p-values exceed 1e-3 and every z-score
is within 4; the draws are sound when every sample passes. Exit status 1 otherwise. The bits
themselves (the Squares rounds) are not retested here: this checks what the transform makes of
them.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from bench_kernels import op_model
from scipy import stats

from analog_onnx.ops.rng import normals, stream_key
from analog_onnx.ops.schema import SCHEMAS
from analog_onnx.runtime import make_session

P_MIN, Z_MAX, BINS = 1e-3, 4.0, 1024


def native_normals(count: int, seed: int, stream: int) -> np.ndarray:
    """The first ``count`` normals of the stream, as the native Noise op adds them to zeros."""
    feeds = {"X": np.zeros((1, count), np.float32), "noise_scale": np.array(1.0, np.float32),
             "seed": np.array(seed, np.int64)}
    model = op_model(SCHEMAS["Noise"], {"sigma_add": 1.0, "stream": stream}, feeds)
    return make_session(model, native=True).run(None, feeds)[0].ravel()


def battery(z: np.ndarray) -> dict[str, float]:
    """The p-values ("p ...") and z-scores ("z ...") of one sample."""
    n = z.size
    z64 = z.astype(np.float64)
    edges = stats.norm.ppf(np.linspace(0.0, 1.0, BINS + 1))
    counts = np.histogram(z64, bins=edges)[0]
    centred = z64 - z64.mean()
    variance = np.mean(centred**2)
    results = {
        "p KS": stats.kstest(z64, "norm").pvalue,
        "p chi-square": stats.chisquare(counts).pvalue,
        "z mean": z64.mean() * np.sqrt(n),
        "z variance": (z64.var() - 1.0) / np.sqrt(2.0 / n),
        "z skewness": np.mean(centred**3) / variance**1.5 / np.sqrt(6.0 / n),
        "z excess kurtosis": (np.mean(centred**4) / variance**2 - 3.0) / np.sqrt(24.0 / n),
    }
    for k in (3, 4, 5):
        expected = n * 2 * stats.norm.sf(k)
        results[f"z |z| > {k}"] = (np.count_nonzero(np.abs(z64) > k) - expected) / np.sqrt(expected)
    even, odd = z64[0::2], z64[1::2]
    pairs = min(even.size, odd.size)
    results["z pair correlation"] = np.corrcoef(even[:pairs], odd[:pairs])[0, 1] * np.sqrt(pairs)
    results["z pair correlation of squares"] = np.corrcoef(even[:pairs] ** 2, odd[:pairs] ** 2)[0, 1] * np.sqrt(pairs)
    results["z correlation two apart"] = np.corrcoef(z64[:-2], z64[2:])[0, 1] * np.sqrt(n - 2)
    return results


def passes(name: str, value: float) -> bool:
    return value > P_MIN if name.startswith("p ") else abs(value) <= Z_MAX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1 << 24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    samples = {}
    for stream in range(args.streams):
        samples[f"native, stream {stream}"] = native_normals(args.count, args.seed, stream)
        samples[f"numpy, stream {stream}"] = normals(stream_key(args.seed, stream), args.count)
    results = {label: battery(z) for label, z in samples.items()}
    names = list(next(iter(results.values())))
    print(f"{args.count} normals per sample, seed {args.seed}; pass: p > {P_MIN:g}, |z| <= {Z_MAX:g}")
    print(f"  {'':32s}" + "".join(f"{label:>18s}" for label in results))
    for name in names:
        cells = "".join(f"{values[name]:>17.3g}{' ' if passes(name, values[name]) else '!'}"
                        for values in results.values())
        print(f"  {name:32s}{cells}")
    failed = [label for label, values in results.items() if not all(passes(n, v) for n, v in values.items())]
    print("sound: every sample passes" if not failed else f"NOT SOUND: {', '.join(failed)} fail")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
