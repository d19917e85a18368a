"""ONNX function bodies of the analog op set (standard ops only, valid from opset 13).

These make a transformed model portable: any ONNX runtime inlines them when our native
library is not loaded. They follow ``reference.py`` operation by operation, so deterministic
parts agree exactly and the noise is the same counter-based stream (see ``rng.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnxscript import FLOAT, INT64, script
from onnxscript import opset13 as op
from onnxscript.values import Opset

from analog_onnx.ops import DOMAIN, OP_NAMES, OPSET_VERSION
from analog_onnx.ops.rng import GAMMA, KEY_HIGH, KEY_LOW

analog = Opset(DOMAIN, OPSET_VERSION)

U64 = TensorProto.UINT64


def _u64(name: str, value: int) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array(value, dtype=np.uint64), name)


_GAMMA = _u64("gamma", GAMMA)
_KEY_HIGH = _u64("key_high", KEY_HIGH)
_KEY_LOW = _u64("key_low", KEY_LOW)
_SHIFTS = {n: _u64(f"shift{n}", n) for n in (1, 8, 32)}


@script(analog)
def SwapHalves(x):
    """Rotate a uint64 by 32 bits (the halves do not overlap, so Add is Or)."""
    n32 = op.Constant(value=_SHIFTS[32])
    return op.Add(op.BitShift(x, n32, direction="RIGHT"), op.BitShift(x, n32, direction="LEFT"))


@script(analog)
def SquaresPair(counter, key):
    """Two 32-bit draws per counter: the high halves of rounds four and five (see rng.squares_pair)."""
    x0 = op.Mul(counter, key)
    z = op.Add(x0, key)
    x1 = SwapHalves(op.Add(op.Mul(x0, x0), x0))
    x2 = SwapHalves(op.Add(op.Mul(x1, x1), z))
    x3 = SwapHalves(op.Add(op.Mul(x2, x2), x0))
    t = op.Add(op.Mul(x3, x3), z)
    x4 = SwapHalves(t)
    n32 = op.Constant(value=_SHIFTS[32])
    return op.BitShift(t, n32, direction="RIGHT"), op.BitShift(op.Add(op.Mul(x4, x4), x0), n32, direction="RIGHT")


@script(analog)
def StreamKey(seed: INT64, stream: int):
    """The odd key of one op's stream for one run; a negative seed draws a fresh one (see rng.stream_key)."""
    fresh = op.Cast(op.RandomUniformLike(op.Cast(seed, to=TensorProto.DOUBLE), dtype=TensorProto.DOUBLE, high=4503599627370496.0), to=U64)
    # select without Where (onnxruntime has no uint64 Where): negative seeds take the fresh key
    negative = op.Cast(op.Less(seed, op.Constant(value_int=0)), to=U64)
    one = op.Cast(op.Constant(value_int=1), to=U64)
    base = op.Add(op.Mul(negative, fresh), op.Mul(op.Sub(one, negative), op.Cast(seed, to=U64)))
    stream_u = op.Cast(op.Add(op.Constant(value_int=stream), op.Constant(value_int=1)), to=U64)
    counter = op.Add(base, op.Mul(op.Constant(value=_GAMMA), stream_u))
    n1 = op.Constant(value=_SHIFTS[1])
    high, _ = SquaresPair(counter, op.Constant(value=_KEY_HIGH))
    low, _ = SquaresPair(counter, op.Constant(value=_KEY_LOW))
    key = op.Add(op.BitShift(high, op.Constant(value=_SHIFTS[32]), direction="LEFT"), low)
    return op.Add(op.BitShift(op.BitShift(key, n1, direction="RIGHT"), n1, direction="LEFT"), one)


@script(analog)
def NormalsFrom(start: INT64, count: INT64, key):
    """Normals [start, start + count) of the stream, flat (see rng.normals): pair k gives normals 2k, 2k+1."""
    two = op.Constant(value_int=2)
    first_pair = op.Div(start, two)
    skip = op.Sub(start, op.Mul(first_pair, two))
    pairs = op.Div(op.Add(op.Add(skip, count), op.Constant(value_int=1)), two)
    counters = op.Cast(op.Range(first_pair, op.Add(first_pair, pairs), op.Constant(value_int=1)), to=U64)
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
def RowAbsMax(X, axis: int):
    """Abs-max of each row of Flatten(X, axis), shape [rows, 1]; zero rows give 1."""
    m, _ = op.TopK(op.Flatten(op.Abs(X), axis=axis), op.Constant(value_ints=[1]), axis=1)
    return op.Where(op.Greater(m, op.Constant(value_float=0.0)), m, op.Constant(value_float=1.0))


@script(analog)
def ClipAndRound(X, bits: int, bound: float, signed: int):
    """Clip to [-bound, bound] ([0, bound] unsigned); round to the grid bound/levels if bits > 0."""
    bound_t = op.Constant(value_float=bound)
    signed_f = op.Cast(op.Constant(value_int=signed), to=TensorProto.FLOAT)
    clipped = op.Clip(X, op.Mul(op.Neg(bound_t), signed_f), bound_t)
    bits_t = op.Constant(value_int=bits)
    one = op.Constant(value_int=1)
    # levels: 2**(bits-1)-1 signed, 2**bits-1 unsigned (integer arithmetic, then exact float)
    exponent = op.Sub(bits_t, op.Cast(op.Constant(value_int=signed), to=TensorProto.INT64))
    n = op.Cast(op.Sub(op.BitShift(op.Cast(one, to=U64), op.Cast(op.Max(exponent, op.Constant(value_int=0)), to=U64), direction="LEFT"), op.Cast(one, to=U64)), to=TensorProto.FLOAT)
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
    flat = op.Flatten(X, axis=1)
    z1 = op.Reshape(op.Gather(z, op.Constant(value_int=0), axis=1), op.Shape(flat))
    z2 = op.Reshape(op.Gather(z, op.Sub(per_element, op.Constant(value_int=1)), axis=1), op.Shape(flat))
    mul = op.Mul(noise_scale, op.Constant(value_float=sigma_mul))
    ref = op.Where(op.Cast(op.Constant(value_int=relative), to=TensorProto.BOOL), RowAbsMax(X, axis=1), op.Constant(value_float=1.0))
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
    one = op.Cast(op.Constant(value_int=1), to=U64)
    exponent = op.Cast(op.Max(op.Sub(bits_t, op.Constant(value_int=1)), op.Constant(value_int=0)), to=U64)
    n = op.Cast(op.Sub(op.BitShift(one, exponent, direction="LEFT"), one), to=TensorProto.FLOAT)
    k = op.Round(op.Div(X, op.Div(bound_t, n)))
    gridded = op.Mul(op.Clip(k, op.Neg(n), n), op.Div(bound_t, n))
    has_grid = op.Greater(bits_t, op.Constant(value_int=0))
    value = op.Where(has_grid, gridded, op.Clip(X, op.Neg(bound_t), bound_t))
    beyond = op.Or(op.And(has_grid, op.Greater(op.Abs(k), n)), op.And(op.Not(has_grid), op.Greater(op.Abs(X), bound_t)))
    return value, beyond


@script(analog)
def SplitIndex(size: INT64, max_size: int):
    """Gather indices [tiles, largest tile] of reference.split_sizes(size, max_size); padding is `size`."""
    one = op.Constant(value_int=1)
    limit_in = op.Constant(value_int=max_size)
    limit = op.Where(op.Greater(limit_in, op.Constant(value_int=0)), op.Min(limit_in, size), size)
    count = op.Div(op.Sub(op.Add(size, limit), one), limit)
    base = op.Div(size, count)
    extra = op.Sub(size, op.Mul(base, count))
    t = op.Range(op.Constant(value_int=0), count, one)
    j = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Add(base, op.Min(extra, one)), one), op.Constant(value_ints=[0]))
    start = op.Unsqueeze(op.Add(op.Mul(t, base), op.Min(t, extra)), op.Constant(value_ints=[1]))
    length = op.Unsqueeze(op.Add(base, op.Cast(op.Less(t, extra), to=TensorProto.INT64)), op.Constant(value_ints=[1]))
    return op.Where(op.Less(j, length), op.Add(start, j), op.Expand(size, op.Constant(value_ints=[1, 1])))


@script(analog)
def AnalogTile(X: FLOAT, W: FLOAT, noise_scale: FLOAT, seed: INT64, inp_bits: int = 0, inp_bound: float = 1.0, noise_management: int = 1, out_noise: float = 0.0, out_bits: int = 0, out_bound: float = float("inf"), bm_rounds: int = 1, max_input_size: int = 0, max_output_size: int = 0, weight_scaling_omega: float = 0.0, weight_scaling_columnwise: int = 0, stream: int = 0) -> FLOAT:
    """Y[..., M] = X[..., K] W^T on tiles, per input vector, all bound-management rounds at once (see reference.analog_tile)."""
    zero_i = op.Constant(value_int=0)
    one_i = op.Constant(value_int=1)
    zero_f = op.Constant(value_float=0.0)
    one_f = op.Constant(value_float=1.0)
    first = op.Constant(value_ints=[0])
    top1 = op.Constant(value_ints=[1])
    m_out = op.Gather(op.Shape(W), zero_i)
    k_in = op.Gather(op.Shape(W), one_i)
    vectors = op.Reshape(X, op.Concat(op.Constant(value_ints=[-1]), op.Unsqueeze(k_in, first), axis=0))
    n_vec = op.Gather(op.Shape(vectors), zero_i)
    in_index = SplitIndex(k_in, max_size=max_input_size)
    out_index = SplitIndex(m_out, max_size=max_output_size)
    tiles_in = op.Gather(op.Shape(in_index), zero_i)
    # the tiles' inputs [T, N, k] and weights [M, T, k], zero-padded to the largest tile
    x_pad = op.Concat(vectors, op.Expand(zero_f, op.Concat(op.Unsqueeze(n_vec, first), top1, axis=0)), axis=1)
    xt = op.Transpose(op.Gather(x_pad, in_index, axis=1), perm=[1, 0, 2])
    w_pad = op.Concat(W, op.Expand(zero_f, op.Concat(op.Unsqueeze(m_out, first), top1, axis=0)), axis=1)
    wt = op.Gather(w_pad, in_index, axis=1)
    # mapping scales per (output, input tile): max|W| of the output's row, or of its output tile's block
    col_max, _ = op.TopK(op.Abs(wt), top1, axis=2)
    col_max = op.Squeeze(col_max, op.Constant(value_ints=[2]))
    outputs = op.Unsqueeze(op.Range(zero_i, m_out, one_i), op.Constant(value_ints=[1, 2]))
    member = op.ReduceSum(op.Cast(op.Equal(outputs, op.Unsqueeze(out_index, first)), to=TensorProto.FLOAT), op.Constant(value_ints=[2]), keepdims=0)
    block_max, _ = op.TopK(op.Mul(op.Unsqueeze(col_max, op.Constant(value_ints=[2])), op.Unsqueeze(member, top1)), top1, axis=0)
    block_max = op.ReduceSum(op.Mul(block_max, op.Unsqueeze(member, top1)), op.Constant(value_ints=[2]), keepdims=0)
    peak = op.Where(op.Cast(op.Constant(value_int=weight_scaling_columnwise), to=TensorProto.BOOL), col_max, block_max)
    omega = op.Constant(value_float=weight_scaling_omega)
    alpha = op.Div(peak, omega)
    alpha = op.Where(op.And(op.Greater(omega, zero_f), op.Greater(alpha, zero_f)), alpha, one_f)
    mapped = op.Transpose(op.Div(wt, op.Unsqueeze(alpha, op.Constant(value_ints=[2]))), perm=[1, 2, 0])
    # per-vector noise management; round r scales by s = (1/c) / 2^r
    abs_max, _ = op.TopK(op.Abs(xt), top1, axis=2)
    managed = op.Where(op.Greater(abs_max, zero_f), abs_max, one_f)
    c = op.Where(op.Cast(op.Constant(value_int=noise_management), to=TensorProto.BOOL), managed, op.Expand(one_f, op.Shape(abs_max)))
    inverse = op.Div(one_f, c)
    rounds = op.Constant(value_int=bm_rounds)
    per_round = op.Mul(op.Mul(tiles_in, n_vec), m_out)
    key = StreamKey(seed, stream=stream)
    sigma = op.Mul(noise_scale, op.Constant(value_float=out_noise))
    out_shape_t = op.Concat(op.Unsqueeze(tiles_in, first), op.Unsqueeze(n_vec, first), op.Unsqueeze(m_out, first), axis=0)
    chosen = op.Expand(zero_f, out_shape_t)
    accepted = op.Cast(chosen, to=TensorProto.BOOL)
    reduction = one_f
    # a vector's round: the first in which no output of its tile saturates, else the last
    for r in range(rounds):
        scale = op.Div(inverse, reduction)
        xq, _ = Converter(op.Mul(xt, scale), bits=inp_bits, bound=inp_bound)
        y = op.MatMul(xq, mapped)
        z = op.Reshape(NormalsFrom(op.Mul(r, per_round), per_round, key), op.Shape(y))
        q, beyond = Converter(op.Add(y, op.Mul(sigma, z)), bits=out_bits, bound=out_bound)
        block_beyond = op.Greater(op.MatMul(op.Cast(beyond, to=TensorProto.FLOAT), member), zero_f)
        saturated = op.Greater(op.MatMul(op.Cast(block_beyond, to=TensorProto.FLOAT), op.Transpose(member, perm=[1, 0])), zero_f)
        take = op.And(op.Not(accepted), op.Or(op.Not(saturated), op.Equal(r, op.Sub(rounds, one_i))))
        chosen = op.Where(take, op.Mul(q, op.Div(one_f, scale)), chosen)
        accepted = op.Or(accepted, take)
        reduction = op.Mul(reduction, op.Constant(value_float=2.0))
    total = op.ReduceSum(op.Mul(chosen, op.Unsqueeze(op.Transpose(alpha, perm=[1, 0]), top1)), first, keepdims=0)
    out_shape = op.Concat(op.Slice(op.Shape(X), first, op.Constant(value_ints=[-1])), op.Unsqueeze(m_out, first), axis=0)
    return op.Reshape(total, out_shape)


PUBLIC = tuple(globals()[name] for name in OP_NAMES)  # the schema's ops, in its order
HELPERS = (SwapHalves, SquaresPair, StreamKey, NormalsFrom, StandardNormals, RowAbsMax, ClipAndRound, Converter, SplitIndex)


def function_protos(opset: int) -> list[onnx.FunctionProto]:
    """All function bodies (public ops and their helpers), importing the model's default opset."""
    protos = []
    for fn in HELPERS + PUBLIC:
        proto = fn.to_function_proto()
        for imp in proto.opset_import:
            if imp.domain == "":
                imp.version = opset
        protos.append(proto)
    return protos
