"""ONNX function bodies of the analog op set (standard ops only, valid from opset 13).

These make a transformed model portable: any ONNX runtime inlines them when our native
library is not loaded. They follow ``reference.py`` operation by operation, so deterministic
parts agree exactly and the noise is the same counter-based stream (see ``rng.py``).

Every onnxruntime that ``pyproject.toml`` allows must load them, at every opset from 13, so they
use only what all of them implement. The oldest has no uint64 Add, Sub or Mul (only BitShift),
so the generator's arithmetic runs in int64, whose wrapping sum and product have the same 64 bits
as the uint64 ones, and Cast between int64 and uint64 (which keeps the bits) surrounds each
BitShift. No onnxruntime implements the Random* ops at opset 22 or later, so the fresh key of a
negative seed comes from the mask of a Dropout in training mode, which every version runs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnxscript import FLOAT, INT64, script
from onnxscript import opset13 as op
from onnxscript.values import Opset

from analog_onnx.devices.chip import MIN_READOUT
from analog_onnx.devices.conductance import ZERO_WEIGHT
from analog_onnx.devices.streams import DEVICE_STREAM_BASE, Draw
from analog_onnx.ops import DOMAIN, OP_NAMES, OPSET_VERSION
from analog_onnx.ops.device_functions import device_functions
from analog_onnx.ops.reference import TINY
from analog_onnx.ops.rng import GAMMA, KEY_HIGH, KEY_LOW

analog = Opset(DOMAIN, OPSET_VERSION)

U64 = TensorProto.UINT64
I64 = TensorProto.INT64


def _bits64(name: str, value: int, dtype: type = np.int64) -> onnx.TensorProto:
    """A scalar holding the 64 bits of the unsigned ``value`` (as int64 unless asked)."""
    return onnx.numpy_helper.from_array(np.array(value, dtype=np.uint64).view(dtype), name)


_GAMMA = _bits64("gamma", GAMMA)
_KEY_HIGH = _bits64("key_high", KEY_HIGH)
_KEY_LOW = _bits64("key_low", KEY_LOW)
_SHIFTS = {n: _bits64(f"shift{n}", n, np.uint64) for n in (1, 8, 32)}
# a [1] tensor, not value_ints: older onnx infers no shape for value_ints inside a function
# call, and TopK then refuses to load ("K input must be a one-dimensional tensor of size 1")
DEVICE_BLOCK = 1 << 18  # weights per block of DeviceWeights' body (two devices each)
_ONE_K = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "k")
FRESH_BITS = 52
_BIT_VALUES = onnx.numpy_helper.from_array(np.left_shift(1, np.arange(FRESH_BITS, dtype=np.int64)), "bit_values")
_TRAINING = onnx.numpy_helper.from_array(np.array(True), "training")
_BIG = np.iinfo(np.int64).max  # a Slice end past any axis



@script(analog)
def SwapHalves(x):
    """Rotate the 64 bits of an int64 by 32 (the halves do not overlap, so Add is Or)."""
    n32 = op.Constant(value=_SHIFTS[32])
    bits = op.Cast(x, to=U64)
    return op.Add(op.Cast(op.BitShift(bits, n32, direction="RIGHT"), to=I64), op.Cast(op.BitShift(bits, n32, direction="LEFT"), to=I64))


@script(analog)
def SquaresPair(counter, key):
    """Two 32-bit draws (uint64) per int64 counter: the high halves of rounds four and five (see rng.squares_pair)."""
    x0 = op.Mul(counter, key)
    z = op.Add(x0, key)
    x1 = SwapHalves(op.Add(op.Mul(x0, x0), x0))
    x2 = SwapHalves(op.Add(op.Mul(x1, x1), z))
    x3 = SwapHalves(op.Add(op.Mul(x2, x2), x0))
    t = op.Add(op.Mul(x3, x3), z)
    x4 = SwapHalves(t)
    n32 = op.Constant(value=_SHIFTS[32])
    return op.BitShift(op.Cast(t, to=U64), n32, direction="RIGHT"), op.BitShift(op.Cast(op.Add(op.Mul(x4, x4), x0), to=U64), n32, direction="RIGHT")


@script(analog)
def KeyOf(seed: INT64, stream: INT64):
    """StreamKey with the stream number as a tensor."""
    # 52 fresh random bits: a Dropout mask at ratio 1/2 (its input depends on the seed, so it is never constant-folded)
    coins = op.Expand(op.Cast(seed, to=TensorProto.FLOAT), op.Constant(value_ints=[FRESH_BITS]))
    _, mask = op.Dropout(coins, op.Constant(value_float=0.5), op.Constant(value=_TRAINING))
    fresh = op.ReduceSum(op.Mul(op.Cast(mask, to=I64), op.Constant(value=_BIT_VALUES)), keepdims=0)
    # select by arithmetic: negative seeds take the fresh key
    negative = op.Cast(op.Less(seed, op.Constant(value_int=0)), to=I64)
    one = op.Constant(value_int=1)
    base = op.Add(op.Mul(negative, fresh), op.Mul(op.Sub(one, negative), seed))
    counter = op.Add(base, op.Mul(op.Constant(value=_GAMMA), op.Add(stream, one)))
    n1 = op.Constant(value=_SHIFTS[1])
    high, _ = SquaresPair(counter, op.Constant(value=_KEY_HIGH))
    low, _ = SquaresPair(counter, op.Constant(value=_KEY_LOW))
    key = op.Add(op.Cast(op.BitShift(high, op.Constant(value=_SHIFTS[32]), direction="LEFT"), to=I64), op.Cast(low, to=I64))
    even = op.BitShift(op.BitShift(op.Cast(key, to=U64), n1, direction="RIGHT"), n1, direction="LEFT")
    return op.Add(op.Cast(even, to=I64), one)


@script(analog)
def StreamKey(seed: INT64, stream: int):
    """The odd key of one op's stream for one run; a negative seed draws a fresh one (see rng.stream_key)."""
    return KeyOf(seed, op.Constant(value_int=stream))


@script(analog)
def NormalsFrom(start: INT64, count: INT64, key):
    """Normals [start, start + count) of the stream, flat (see rng.normals): pair k gives normals 2k, 2k+1."""
    two = op.Constant(value_int=2)
    first_pair = op.Div(start, two)
    skip = op.Sub(start, op.Mul(first_pair, two))
    pairs = op.Div(op.Add(op.Add(skip, count), op.Constant(value_int=1)), two)
    counters = op.Range(first_pair, op.Add(first_pair, pairs), op.Constant(value_int=1))
    bits1, bits2 = SquaresPair(counters, key)
    n8 = op.Constant(value=_SHIFTS[8])
    inv = op.Constant(value_float=1.0 / (1 << 24))
    u1 = op.Mul(op.Add(op.Cast(op.BitShift(bits1, n8, direction="RIGHT"), to=TensorProto.FLOAT), op.Constant(value_float=0.5)), inv)
    u2 = op.Mul(op.Cast(op.BitShift(bits2, n8, direction="RIGHT"), to=TensorProto.FLOAT), inv)
    radius = op.Sqrt(op.Mul(op.Constant(value_float=-2.0), op.Log(u1)))
    angle = op.Mul(op.Constant(value_float=6.283185307179586), u2)
    axis1 = op.Constant(value_ints=[1])
    interleaved = op.Concat(op.Unsqueeze(op.Mul(radius, op.Cos(angle)), axis1), op.Unsqueeze(op.Mul(radius, op.Sin(angle)), axis1), axis=1)
    flat = op.Reshape(interleaved, op.Constant(value_ints=[-1]))
    begin = op.Reshape(skip, op.Constant(value_ints=[1]))
    return op.Slice(flat, begin, op.Add(begin, op.Reshape(count, op.Constant(value_ints=[1]))))


@script(analog)
def StandardNormals(count: INT64, key):
    """The first `count` normals of the stream, flat."""
    return NormalsFrom(op.Constant(value_int=0), count, key)


@script(analog)
def AbsMaxLast(X):
    """max |X| over the last axis, kept with size 1: a NaN wins (TopK, as numpy), an empty axis gives 0."""
    last = op.Slice(op.Shape(X), op.Constant(value_ints=[-1]), op.Constant(value_ints=[_BIG]))
    top, _ = op.TopK(op.Abs(X), op.Min(op.Constant(value=_ONE_K), last), axis=-1)
    zero = op.Expand(op.Constant(value_float=0.0), op.Concat(op.Slice(op.Shape(X), op.Constant(value_ints=[0]), op.Constant(value_ints=[-1])), op.Constant(value_ints=[1]), axis=0))
    return op.Slice(op.Concat(top, zero, axis=-1), op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[-1]))


@script(analog)
def ScaleOf(m):
    """The scale of rows with abs-max m: 1 below the smallest normal float32 (reference.scale_of)."""
    return op.Where(op.GreaterOrEqual(m, op.Constant(value_float=TINY)), m, op.Constant(value_float=1.0))


@script(analog)
def RowAbsMax(X, axis: int):
    """Abs-max of each row of Flatten(X, axis), shape [rows, 1], as a scale (reference.row_absmax)."""
    return ScaleOf(AbsMaxLast(op.Flatten(X, axis=axis)))


@script(analog)
def ClipAndRound(X, bits: int, bound: float, signed: int):
    """Clip to [-bound, bound] ([0, bound] unsigned); round to the grid bound/levels if bits > 0."""
    bound_t = op.Constant(value_float=bound)
    signed_f = op.Cast(op.Constant(value_int=signed), to=TensorProto.FLOAT)
    clipped = op.Clip(X, op.Mul(op.Neg(bound_t), signed_f), bound_t)
    bits_t = op.Constant(value_int=bits)
    one = op.Constant(value_int=1)
    # levels: 2**(bits-1)-1 signed, 2**bits-1 unsigned (integer arithmetic, then exact float)
    exponent = op.Max(op.Sub(bits_t, op.Constant(value_int=signed)), op.Constant(value_int=0))
    n = op.Cast(op.Sub(op.Cast(op.BitShift(op.Cast(one, to=U64), op.Cast(exponent, to=U64), direction="LEFT"), to=I64), one), to=TensorProto.FLOAT)
    step = op.Div(bound_t, n)
    rounded = op.Mul(op.Round(op.Div(clipped, step)), step)
    return op.Where(op.Greater(bits_t, op.Constant(value_int=0)), rounded, clipped)


@script(analog)
def Noise(X: FLOAT, noise_scale: FLOAT, seed: INT64, sigma_add: float = 0.0, sigma_mul: float = 0.0, relative: int = 0, stream: int = 0) -> FLOAT:
    """Y = X * (1 + s*sigma_mul*z1) + (s*sigma_add*R) * z2, R = 1 or the per-sample abs-max."""
    # one normal per element, or one pair when both sigmas are set (see rng.noise_normals)
    zero = op.Constant(value_float=0.0)
    both = op.And(op.Not(op.Equal(op.Constant(value_float=sigma_add), zero)), op.Not(op.Equal(op.Constant(value_float=sigma_mul), zero)))
    per_element = op.Add(op.Cast(both, to=TensorProto.INT64), op.Constant(value_int=1))
    z = op.Reshape(StandardNormals(op.Mul(op.Size(X), per_element), StreamKey(seed, stream=stream)), op.Concat(op.Constant(value_ints=[-1]), op.Reshape(per_element, op.Constant(value_ints=[1])), axis=0))
    samples = op.Unsqueeze(X, op.Constant(value_ints=[-1]))  # the rows of Flatten(X, 1), a scalar's included
    flat = op.Flatten(samples, axis=1)
    # Reshape copies a 0 of its shape from its input: [rows, -1], or the shape itself when there are no rows
    rows_t = op.Slice(op.Shape(flat), op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))
    flat_shape = op.Where(op.Equal(rows_t, op.Constant(value_ints=[0])), op.Shape(flat), op.Concat(rows_t, op.Constant(value_ints=[-1]), axis=0))
    z1 = op.Reshape(op.Gather(z, op.Constant(value_int=0), axis=1), flat_shape)
    z2 = op.Reshape(op.Gather(z, op.Sub(per_element, op.Constant(value_int=1)), axis=1), flat_shape)
    mul = op.Mul(noise_scale, op.Constant(value_float=sigma_mul))
    ref = op.Where(op.Cast(op.Constant(value_int=relative), to=TensorProto.BOOL), RowAbsMax(samples, axis=1), op.Constant(value_float=1.0))
    add = op.Mul(op.Mul(noise_scale, op.Constant(value_float=sigma_add)), ref)
    y = op.Add(op.Mul(flat, op.Add(op.Constant(value_float=1.0), op.Mul(mul, z1))), op.Mul(add, z2))
    return op.Reshape(y, op.Shape(X))


@script(analog)
def Quantize(X: FLOAT, bits: int, bound: float = 1.0, signed: int = 1, dynamic: int = 0, axis: int = 0) -> FLOAT:
    """Fake quantization; dynamic=1 scales each row of Flatten(X, axis) by its abs-max first."""
    scale = op.Where(op.Cast(op.Constant(value_int=dynamic), to=TensorProto.BOOL), RowAbsMax(X, axis=axis), op.Constant(value_float=1.0))
    q = op.Mul(ClipAndRound(op.Div(op.Flatten(X, axis=axis), scale), bits=bits, bound=bound, signed=signed), scale)
    return op.Reshape(q, op.Shape(X))


@script(analog)
def MvmInput(X: FLOAT, inp_bits: int = 0, inp_bound: float = 1.0, noise_management: int = 1, axis: int = 1):
    """DAC side of an analog MVM: (normalized quantized X, abs-max scale S [rows, 1])."""
    flat = op.Flatten(X, axis=axis)
    ones = op.Expand(op.Constant(value_float=1.0), op.Concat(op.Slice(op.Shape(flat), op.Constant(value_ints=[0]), op.Constant(value_ints=[1])), op.Constant(value_ints=[1]), axis=0))
    scale = op.Where(op.Cast(op.Constant(value_int=noise_management), to=TensorProto.BOOL), RowAbsMax(X, axis=axis), ones)
    xn = ClipAndRound(op.Div(flat, scale), bits=inp_bits, bound=inp_bound, signed=1)
    return op.Reshape(xn, op.Shape(X)), scale


@script(analog)
def MvmOutput(Y: FLOAT, S: FLOAT, noise_scale: FLOAT, seed: INT64, weight_scale: float = 1.0, out_noise: float = 0.0, out_bits: int = 0, out_bound: float = float("inf"), axis: int = 1, stream: int = 0) -> FLOAT:
    """ADC side: Z = ADC(Y/w + s*out_noise*z) * w * S."""
    w = op.Constant(value_float=weight_scale)
    z = op.Reshape(StandardNormals(op.Size(Y), StreamKey(seed, stream=stream)), op.Shape(Y))
    yn = op.Add(op.Div(Y, w), op.Mul(op.Mul(noise_scale, op.Constant(value_float=out_noise)), z))
    adc = op.Mul(ClipAndRound(yn, bits=out_bits, bound=out_bound, signed=1), w)
    return op.Reshape(op.Mul(op.Flatten(adc, axis=axis), S), op.Shape(Y))


@script(analog)
def Converter(X, bits: int, bound: float):
    """A DAC/ADC: (X rounded to the grid bound/levels and clipped, whether it lay beyond the bound)."""
    bound_t = op.Constant(value_float=bound)
    bits_t = op.Constant(value_int=bits)
    one = op.Constant(value_int=1)
    exponent = op.Cast(op.Max(op.Sub(bits_t, one), op.Constant(value_int=0)), to=U64)
    n = op.Cast(op.Sub(op.Cast(op.BitShift(op.Cast(one, to=U64), exponent, direction="LEFT"), to=I64), one), to=TensorProto.FLOAT)
    k = op.Round(op.Div(X, op.Div(bound_t, n)))
    gridded = op.Mul(op.Clip(k, op.Neg(n), n), op.Div(bound_t, n))
    has_grid = op.Greater(bits_t, op.Constant(value_int=0))
    value = op.Where(has_grid, gridded, op.Clip(X, op.Neg(bound_t), bound_t))
    beyond = op.Or(op.And(has_grid, op.Greater(op.Abs(k), n)), op.And(op.Not(has_grid), op.Greater(op.Abs(X), bound_t)))
    return value, beyond


@script(analog)
def TileSigma(sigma, sigma_w, U):
    """The output noise std of each vector of U [..., inputs], sqrt(sigma^2 + sigma_w^2 sum(U^2)) (reference.tile_sigma)."""
    squares = op.ReduceSum(op.Mul(U, U), op.Constant(value_ints=[-1]), keepdims=1)
    return op.Sqrt(op.Add(op.Mul(sigma, sigma), op.Mul(op.Mul(sigma_w, sigma_w), squares)))


@script(analog)
def SplitBounds(size: INT64, max_size: int):
    """The first index and the length, each [tiles, 1], of the tiles of reference.split_sizes(size, max_size)."""
    one = op.Constant(value_int=1)
    limit_in = op.Constant(value_int=max_size)
    limit = op.Max(op.Where(op.Greater(limit_in, op.Constant(value_int=0)), op.Min(limit_in, size), size), one)
    count = op.Max(op.Div(op.Sub(op.Add(size, limit), one), limit), one)  # size 0: one empty tile
    base = op.Div(size, count)
    extra = op.Sub(size, op.Mul(base, count))
    t = op.Range(op.Constant(value_int=0), count, one)
    start = op.Unsqueeze(op.Add(op.Mul(t, base), op.Min(t, extra)), op.Constant(value_ints=[1]))
    length = op.Unsqueeze(op.Add(base, op.Cast(op.Less(t, extra), to=TensorProto.INT64)), op.Constant(value_ints=[1]))
    return start, length


@script(analog)
def SplitIndex(size: INT64, max_size: int):
    """Gather indices [tiles, largest tile] of reference.split_sizes(size, max_size); padding is `size`."""
    start, length = SplitBounds(size, max_size=max_size)
    j = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.ReduceMax(length, keepdims=0), op.Constant(value_int=1)), op.Constant(value_ints=[0]))
    return op.Where(op.Less(j, length), op.Add(start, j), op.Expand(size, op.Constant(value_ints=[1, 1])))


@script(analog)
def SplitMembers(size: INT64, max_size: int):
    """[size, tiles]: 1.0 where index i is in tile t of reference.split_sizes(size, max_size), else 0.0;
    each index compared with its tiles' bounds, [size, tiles] work, not with every slot of every tile."""
    start, length = SplitBounds(size, max_size=max_size)
    index = op.Unsqueeze(op.Range(op.Constant(value_int=0), size, op.Constant(value_int=1)), op.Constant(value_ints=[1]))
    after_start = op.GreaterOrEqual(index, op.Transpose(start, perm=[1, 0]))
    before_end = op.Less(index, op.Transpose(op.Add(start, length), perm=[1, 0]))
    return op.Cast(op.And(after_start, before_end), to=TensorProto.FLOAT)


@script(analog)
def AnalogTile(X: FLOAT, W: FLOAT, noise_scale: FLOAT, seed: INT64, inp_bits: int = 0, inp_bound: float = 1.0, noise_management: int = 1, out_noise: float = 0.0, out_bits: int = 0, out_bound: float = float("inf"), bm_rounds: int = 1, max_input_size: int = 0, max_output_size: int = 0, weight_scaling_omega: float = 0.0, weight_scaling_columnwise: int = 0, w_noise: float = 0.0, stream: int = 0) -> FLOAT:
    """Y[..., M] = X[..., K] W^T on tiles, per input vector, all bound-management rounds at once (see reference.analog_tile)."""
    zero_i = op.Constant(value_int=0)
    one_i = op.Constant(value_int=1)
    zero_f = op.Constant(value_float=0.0)
    one_f = op.Constant(value_float=1.0)
    first = op.Constant(value_ints=[0])
    top1 = op.Constant(value_ints=[1])
    m_out = op.Gather(op.Shape(W), zero_i)
    k_in = op.Gather(op.Shape(W), one_i)
    vectors = op.Flatten(X, axis=-1)
    n_vec = op.Gather(op.Shape(vectors), zero_i)
    in_index = SplitIndex(k_in, max_size=max_input_size)
    tiles_in = op.Gather(op.Shape(in_index), zero_i)
    # the tiles' inputs [T, N, k] and weights [M, T, k], zero-padded to the largest tile
    x_pad = op.Concat(vectors, op.Expand(zero_f, op.Concat(op.Unsqueeze(n_vec, first), top1, axis=0)), axis=1)
    xt = op.Transpose(op.Gather(x_pad, in_index, axis=1), perm=[1, 0, 2])
    w_pad = op.Concat(W, op.Expand(zero_f, op.Concat(op.Unsqueeze(m_out, first), top1, axis=0)), axis=1)
    wt = op.Gather(w_pad, in_index, axis=1)
    # mapping scales per (output, input tile): max|W| of the output's row, or of its output tile's block
    col_max = op.Squeeze(AbsMaxLast(wt), op.Constant(value_ints=[2]))
    member = SplitMembers(m_out, max_size=max_output_size)  # [M, output tiles]
    block_max, _ = op.TopK(op.Mul(op.Unsqueeze(col_max, op.Constant(value_ints=[2])), op.Unsqueeze(member, top1)), top1, axis=0)
    block_max = op.ReduceSum(op.Mul(block_max, op.Unsqueeze(member, top1)), op.Constant(value_ints=[2]), keepdims=0)
    peak = op.Where(op.Cast(op.Constant(value_int=weight_scaling_columnwise), to=TensorProto.BOOL), col_max, block_max)
    omega = op.Constant(value_float=weight_scaling_omega)
    alpha = op.Div(peak, omega)
    alpha = op.Where(op.And(op.Greater(omega, zero_f), op.Greater(alpha, zero_f)), alpha, one_f)
    mapped = op.Transpose(op.Div(wt, op.Unsqueeze(alpha, op.Constant(value_ints=[2]))), perm=[1, 2, 0])
    # per-vector noise management; round r scales by s = (1/c) / 2^r
    abs_max = AbsMaxLast(xt)
    c = op.Where(op.Cast(op.Constant(value_int=noise_management), to=TensorProto.BOOL), ScaleOf(abs_max), op.Expand(one_f, op.Shape(abs_max)))
    inverse = op.Div(one_f, c)
    rounds = op.Constant(value_int=bm_rounds)
    per_round = op.Mul(op.Mul(tiles_in, n_vec), m_out)
    key = StreamKey(seed, stream=stream)
    sigma = op.Mul(noise_scale, op.Constant(value_float=out_noise))
    sigma_w = op.Mul(noise_scale, op.Constant(value_float=w_noise))
    weight_noise = op.Not(op.Equal(sigma_w, zero_f))
    out_shape_t = op.Concat(op.Unsqueeze(tiles_in, first), op.Unsqueeze(n_vec, first), op.Unsqueeze(m_out, first), axis=0)
    # [T, -1, M], not [T, N, M]: Reshape copies a 0 in the shape from its input, so N = 0 would fail
    z_shape = op.Concat(op.Unsqueeze(tiles_in, first), op.Constant(value_ints=[-1]), op.Unsqueeze(m_out, first), axis=0)
    chosen = op.Expand(zero_f, out_shape_t)
    accepted = op.Cast(chosen, to=TensorProto.BOOL)
    reduction = one_f
    # a vector's round: the first in which no output of its tile saturates, else the last
    for r in range(rounds):
        scale = op.Div(inverse, reduction)
        xq, _ = Converter(op.Mul(xt, scale), bits=inp_bits, bound=inp_bound)
        y = op.MatMul(xq, mapped)
        z = op.Reshape(NormalsFrom(op.Mul(r, per_round), per_round, key), z_shape)
        spread = op.Where(weight_noise, TileSigma(sigma, sigma_w, xq), sigma)
        q, beyond = Converter(op.Add(y, op.Mul(spread, z)), bits=out_bits, bound=out_bound)
        block_beyond = op.Greater(op.MatMul(op.Cast(beyond, to=TensorProto.FLOAT), member), zero_f)
        saturated = op.Greater(op.MatMul(op.Cast(block_beyond, to=TensorProto.FLOAT), op.Transpose(member, perm=[1, 0])), zero_f)
        take = op.And(op.Not(accepted), op.Or(op.Not(saturated), op.Equal(r, op.Sub(rounds, one_i))))
        chosen = op.Where(take, op.Mul(q, op.Div(one_f, scale)), chosen)
        accepted = op.Or(accepted, take)
        reduction = op.Mul(reduction, op.Constant(value_float=2.0))
    total = op.ReduceSum(op.Mul(chosen, op.Unsqueeze(op.Transpose(alpha, perm=[1, 0]), top1)), first, keepdims=0)
    out_shape = op.Concat(op.Slice(op.Shape(X), first, op.Constant(value_ints=[-1])), op.Unsqueeze(m_out, first), axis=0)
    # Reshape copies a 0 of its shape from its input: a zero dimension (an empty batch) is inferred instead
    out_shape = op.Where(op.Equal(out_shape, zero_i), op.Constant(value_ints=[-1]), out_shape)
    return op.Reshape(total, out_shape)




# -- DeviceWeights: the device physics of analog_onnx/devices, step by step (see chip.py) -------------
# The device-specific steps (DeviceProgrammingSigma, DeviceDrift, DeviceReadSigma, DeviceIndex) are
# traced from the device classes by device_functions.py; the steps every device shares are here.
_DRAWS = len(Draw)


@script(analog)
def DrawKey(seed: INT64, stream: int, draw: int):
    """The key of one device draw of the layer whose op stream is `stream` (devices/streams.draw_stream)."""
    number = op.Add(op.Add(op.Constant(value_int=DEVICE_STREAM_BASE), op.Mul(op.Constant(value_int=stream), op.Constant(value_int=_DRAWS))), op.Constant(value_int=draw))
    return KeyOf(seed, number)


@script(analog)
def UniformsFrom(start: INT64, count: INT64, key):
    """U(0, 1) numbers [start, start + count) of the stream (devices/streams.uniforms)."""
    counters = op.Range(start, op.Add(start, count), op.Constant(value_int=1))
    bits, _ = SquaresPair(counters, key)
    return op.Mul(op.Add(op.Cast(op.BitShift(bits, op.Constant(value=_SHIFTS[8]), direction="RIGHT"), to=TensorProto.FLOAT), op.Constant(value_float=0.5)), op.Constant(value_float=1.0 / (1 << 24)))


@script(analog)
def PairNormals(start: INT64, count: INT64, devices: INT64, key):
    """Normals of devices [start, start + count) of both halves of a pair array of `devices` per
    half: [2, count], element (h, e) drawing number h * devices + start + e."""
    axis0 = op.Constant(value_ints=[0])
    return op.Concat(op.Unsqueeze(NormalsFrom(start, count, key), axis0), op.Unsqueeze(NormalsFrom(op.Add(devices, start), count, key), axis0), axis=0)


@script(analog)
def PairUniforms(start: INT64, count: INT64, devices: INT64, key):
    """PairNormals' uniforms."""
    axis0 = op.Constant(value_ints=[0])
    return op.Concat(op.Unsqueeze(UniformsFrom(start, count, key), axis0), op.Unsqueeze(UniformsFrom(op.Add(devices, start), count, key), axis0), axis=0)


@script(analog)
def Stick(G, u, g_max: float, stuck_at_zero: float, stuck_at_gmax: float):
    """Stuck devices: u < stuck_at_zero reads 0 uS, u < stuck_at_zero + stuck_at_gmax reads g_max (chip.stick)."""
    zero_f = op.Constant(value_float=stuck_at_zero)
    high = op.Where(op.Less(u, op.Add(zero_f, op.Constant(value_float=stuck_at_gmax))), op.Constant(value_float=g_max), G)
    return op.Where(op.Less(u, zero_f), op.Constant(value_float=0.0), high)


@script(analog)
def Readout(G, scale):
    """The weights of a pair array [2, rows, columns]: (g+ - g-) / scale (conductance.to_weights)."""
    return op.Div(op.Sub(op.Gather(G, op.Constant(value_int=0), axis=0), op.Gather(G, op.Constant(value_int=1), axis=0)), scale)


@script(analog)
def DeviceWeights(W: FLOAT, noise_scale: FLOAT, seed: INT64, chip_seed: INT64, t_inference: FLOAT, device: str = "pcm", g_max: float = 25.0, prog_noise_scale: float = 1.0, drift: int = 1, drift_scale: float = 1.0, read_noise: int = 1, read_noise_scale: float = 1.0, drift_compensation: int = 1, stuck_at_zero: float = 0.0, stuck_at_gmax: float = 0.0, prog_noise_add: float = 0.0, prog_noise_rel: float = 0.0, drift_nu: float = 0.0, drift_nu_std: float = 0.0, read_noise_rel: float = 0.0, bits: int = 0, per_channel: int = 0, stream: int = 0):
    """(W_read, alpha): one read of chip `chip_seed` at t_inference, and the compensation factor (devices/chip.py).

    The devices are simulated in blocks of DEVICE_BLOCK weights (a Loop): the counter-based draws
    need several int64 temporaries per device, tens of times the weights' memory if made for a
    whole layer at once (a language model's head: gigabytes). Each device draws the numbers its
    place in the layer gives it, so the blocks change no value."""
    gmax = op.Constant(value_float=g_max)
    zero = op.Constant(value_float=0.0)
    index = analog.DeviceIndex(device=device)
    # 1. map: one scale per row of Flatten(W, per_channel), the weights flat, each with its row's scale
    flat = op.Flatten(W, axis=per_channel)
    peak, _ = op.TopK(op.Abs(flat), op.Constant(value=_ONE_K), axis=1)
    scale = op.Div(gmax, op.Max(peak, op.Constant(value_float=ZERO_WEIGHT)))
    every = op.Constant(value_ints=[-1])
    scaled = op.Reshape(op.Mul(flat, scale), every)
    scales = op.Reshape(op.Expand(scale, op.Shape(flat)), every)
    devices = op.Size(scaled)  # per half of the pairs
    block = op.Constant(value_int=DEVICE_BLOCK)
    blocks = op.Div(op.Add(devices, op.Sub(block, op.Constant(value_int=1))), block)
    key_program = DrawKey(chip_seed, stream=stream, draw=0)
    key_drift = DrawKey(chip_seed, stream=stream, draw=1)
    key_stuck = DrawKey(chip_seed, stream=stream, draw=2)
    key_read = DrawKey(seed, stream=stream, draw=3)
    key_reference = DrawKey(chip_seed, stream=stream, draw=4)
    prog_scale = op.Mul(op.Constant(value_float=prog_noise_scale), noise_scale)
    read_scale = op.Mul(op.Constant(value_float=read_noise_scale), noise_scale)
    drifts = op.Cast(op.Constant(value_int=drift), to=TensorProto.BOOL)
    reads = op.Cast(op.Constant(value_int=read_noise), to=TensorProto.BOOL)
    axis0 = op.Constant(value_ints=[0])
    parts = op.SequenceConstruct(op.Slice(scaled, axis0, axis0))  # an empty start: a layer without weights
    programmed_sum = zero
    reference_sum = zero
    for i in range(blocks):
        start = op.Mul(i, block)
        count = op.Sub(op.Min(op.Add(start, block), devices), start)
        first, last = op.Unsqueeze(start, axis0), op.Unsqueeze(op.Add(start, count), axis0)
        part = op.Slice(scaled, first, last)
        part_scale = op.Slice(scales, first, last)
        # pairs [2, count], levels
        pair = op.Concat(op.Unsqueeze(op.Clip(part, zero, gmax), axis0), op.Unsqueeze(op.Clip(op.Neg(part), zero, gmax), axis0), axis=0)
        target = ClipAndRound(pair, bits=bits, bound=g_max, signed=1)
        # 2. program (per chip), 3. stuck devices
        sigma = analog.DeviceProgrammingSigma(target, noise_scale, index, g_max=g_max, prog_noise_scale=prog_noise_scale, drift_scale=drift_scale, read_noise_scale=read_noise_scale, prog_noise_add=prog_noise_add, prog_noise_rel=prog_noise_rel, drift_nu=drift_nu, drift_nu_std=drift_nu_std, read_noise_rel=read_noise_rel)
        u = PairUniforms(start, count, devices, key_stuck)
        programmed = Stick(op.Relu(op.Add(target, op.Mul(op.Mul(prog_scale, sigma), PairNormals(start, count, devices, key_program)))), u, g_max=g_max, stuck_at_zero=stuck_at_zero, stuck_at_gmax=stuck_at_gmax)
        # 4. drift to t_inference (per chip and time)
        drifted = analog.DeviceDrift(target, programmed, PairNormals(start, count, devices, key_drift), t_inference, noise_scale, index, g_max=g_max, prog_noise_scale=prog_noise_scale, drift_scale=drift_scale, read_noise_scale=read_noise_scale, prog_noise_add=prog_noise_add, prog_noise_rel=prog_noise_rel, drift_nu=drift_nu, drift_nu_std=drift_nu_std, read_noise_rel=read_noise_rel)
        now = op.Where(drifts, Stick(drifted, u, g_max=g_max, stuck_at_zero=stuck_at_zero, stuck_at_gmax=stuck_at_gmax), programmed)
        # 5. compensation (per chip and time): sums over the blocks, 6. read (per read)
        read_sigma = op.Mul(read_scale, analog.DeviceReadSigma(programmed, now, t_inference, noise_scale, index, g_max=g_max, prog_noise_scale=prog_noise_scale, drift_scale=drift_scale, read_noise_scale=read_noise_scale, prog_noise_add=prog_noise_add, prog_noise_rel=prog_noise_rel, drift_nu=drift_nu, drift_nu_std=drift_nu_std, read_noise_rel=read_noise_rel))
        reference = op.Where(reads, op.Relu(op.Add(now, op.Mul(read_sigma, PairNormals(start, count, devices, key_reference)))), now)
        programmed_sum = op.Add(programmed_sum, op.ReduceSum(op.Abs(Readout(programmed, part_scale)), keepdims=0))
        reference_sum = op.Add(reference_sum, op.ReduceSum(op.Abs(Readout(reference, part_scale)), keepdims=0))
        read = op.Where(reads, op.Relu(op.Add(now, op.Mul(read_sigma, PairNormals(start, count, devices, key_read)))), now)
        parts = op.SequenceInsert(parts, Readout(read, part_scale))
    size = op.Cast(devices, to=TensorProto.FLOAT)
    minimum = op.Constant(value_float=MIN_READOUT)
    ratio = op.Div(op.Max(op.Div(programmed_sum, size), minimum), op.Max(op.Div(reference_sum, size), minimum))
    alpha = op.Where(op.Cast(op.Constant(value_int=drift_compensation), to=TensorProto.BOOL), ratio, op.Constant(value_float=1.0))
    return op.Reshape(op.ConcatFromSequence(parts, axis=0), op.Shape(W)), alpha


PUBLIC = tuple(globals()[name] for name in OP_NAMES)  # the schema's ops, in its order
HELPERS = (SwapHalves, SquaresPair, KeyOf, StreamKey, NormalsFrom, StandardNormals, AbsMaxLast, ScaleOf, RowAbsMax,
           ClipAndRound, Converter, TileSigma, SplitBounds, SplitIndex, SplitMembers, DrawKey, UniformsFrom, PairNormals, PairUniforms, Stick,
           Readout)
DEVICE_HELPERS = device_functions(DOMAIN)  # traced from the device models


def function_protos(opset: int) -> list[onnx.FunctionProto]:
    """All function bodies (public ops and their helpers), importing the model's default opset."""
    protos = []
    for fn in (*DEVICE_HELPERS, *HELPERS, *PUBLIC):
        proto = onnx.FunctionProto()
        proto.CopyFrom(fn if isinstance(fn, onnx.FunctionProto) else fn.to_function_proto())
        if not any(imp.domain == DOMAIN for imp in proto.opset_import):  # a call inside a Loop's body needs it too
            proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
        for imp in proto.opset_import:
            if imp.domain == "":
                imp.version = opset
        protos.append(proto)
    return protos
