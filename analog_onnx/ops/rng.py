"""The counter-based Gaussian generator shared by the numpy reference and the function bodies.

Each element's noise is a pure function of (key, element index), so results do not depend on
evaluation order or thread count. The key mixes the run's ``seed`` input with the op's ``stream``
attribute, so every op in a graph draws independent noise from one seed. A negative seed means
"fresh randomness each run".

The generator is Widynski's "Squares" counter-based RNG (four rounds of square, add, swap
halves; 32 random bits per counter). It needs only uint64 Mul, Add and BitShift, which wrap
modulo 2**64 in numpy, onnxruntime and C++ alike; ONNX has no XOR before opset 18 and the
function bodies must run in opset 13 models. (An add-shift variant of SplitMix64 is nearly
affine modulo 2**64 and gave correlated streams: squaring is the non-linear step.)

Normals come in pairs: counter k runs the four rounds and one more (Widynski's 64-bit variant,
taking the high halves of rounds four and five instead of XOR-ing them), 24 bits of each make
u1 in (0, 1) and u2 in [0, 1), and Box-Muller turns them into ``r*cos(2*pi*u2)`` (normal 2k) and
``r*sin(2*pi*u2)`` (normal 2k+1). Five squarings and one log/sqrt/sincos give two normals, so an op
that needs one normal per element pays for half a pair.

The native kernels compute a SIMD vector of pairs at a time (``counter_rng.h``): the squarings in
8 lanes of 64-bit products with AVX-512 (4 with AVX2, each square from two 32x32 products), the
transform on 16 (8) floats with its own table-driven log and sincos (``fast_math.h``). The
uniforms are the same bits; the normals agree with these to float tolerance and lie within 4 ulp
of the radius of a float64 Box-Muller of the same uniforms (this float32 numpy code does not meet
that bound: ``tests/test_ops.py``). TestU01's SmallCrush passes on the stream of 32-bit draws of
one key, and on 16 keys interleaved (16 streams of one seed; one stream of 16 seeds);
``tools/check_normals.py`` tests the normals themselves. The rounds take 0.23 of the 0.61 ns a
native normal costs on the AVX-512 machine measured (0.50 of 0.88 ns with AVX2), so a
32-bit-lane generator could save up to a third of a normal's time (more with AVX2), at the price
of every noisy result (docs/performance.md).
"""

from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15  # spreads (seed, stream) pairs over the counter space
KEY_HIGH = 0xC8E4FD154CE32F6D  # fixed keys that derive a stream key from (seed, stream)
KEY_LOW = 0xB5AD4ECEDA1CE2A9
TWO_PI = np.float32(6.283185307179586)
INV_2_24 = np.float32(1.0 / (1 << 24))

_U64 = np.uint64
_32 = _U64(32)


def _swap_halves(x: np.ndarray) -> np.ndarray:
    return (x >> _32) + (x << _32)  # the two halves do not overlap, so + is a rotation


def squares_pair(counter: np.ndarray, key: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Two 32-bit draws (held in uint64) per counter: the high halves of rounds four and five."""
    with np.errstate(over="ignore"):
        x = np.asarray(counter, dtype=_U64) * key
        y, z = x, x + key
        x = _swap_halves(x * x + y)
        x = _swap_halves(x * x + z)
        x = _swap_halves(x * x + y)
        t = x * x + z
        x = _swap_halves(t)
        return t >> _32, (x * x + y) >> _32


def squares32(counter: np.ndarray, key: np.uint64) -> np.ndarray:
    """32 random bits (held in uint64) for each counter under ``key``: the first draw of a pair."""
    return squares_pair(counter, key)[0]


def stream_key(seed: int, stream: int) -> np.uint64:
    """The (odd) key of one op's stream for one run. A negative seed draws a fresh random key."""
    seed_u = _U64(np.random.default_rng().integers(0, 1 << 52)) if seed < 0 else _U64(seed)
    with np.errstate(over="ignore"):
        counter = seed_u + _U64(GAMMA) * _U64(stream + 1)
        key = (squares32(counter, _U64(KEY_HIGH)) << _32) + squares32(counter, _U64(KEY_LOW))
        return ((key >> _U64(1)) << _U64(1)) + _U64(1)


def normal_pairs(key: np.uint64, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The Box-Muller pairs of counters 0..count-1: (normals 0, 2, 4, ...; normals 1, 3, 5, ...)."""
    bits1, bits2 = squares_pair(np.arange(count, dtype=_U64), key)
    u1 = ((bits1 >> _U64(8)).astype(np.float32) + np.float32(0.5)) * INV_2_24
    u2 = (bits2 >> _U64(8)).astype(np.float32) * INV_2_24
    radius = np.sqrt(np.float32(-2.0) * np.log(u1))
    angle = TWO_PI * u2
    return radius * np.cos(angle), radius * np.sin(angle)


def normals(key: np.uint64, count: int) -> np.ndarray:
    """The first ``count`` float32 N(0, 1) normals of the stream: one per element."""
    cos, sin = normal_pairs(key, (count + 1) // 2)
    return np.stack([cos, sin], axis=1).reshape(-1)[:count]


def noise_normals(key: np.uint64, count: int, both: bool) -> tuple[np.ndarray, np.ndarray]:
    """(multiplicative, additive) normals of the Noise op: element i takes pair i when it needs
    both, else normal i for whichever sigma is set (the two are then the same array)."""
    if both:
        return normal_pairs(key, count)
    z = normals(key, count)
    return z, z
