"""The torch twins against the numpy reference: deterministic parts bit for bit, noise in distribution,
gradients straight-through as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analog_onnx.ops import reference as ref
from analog_onnx.ops import torch_twins as tw
from analog_onnx.ops.rng import noise_normals, normals, stream_key


def _data(shape: tuple[int, ...], seed: int = 0, spread: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * spread).astype(np.float32)
    x.flat[::7] = 0.0  # exact zeros
    return x


def _ties(bits: int, bound: float, signed: int) -> np.ndarray:
    """Values exactly halfway between grid points, and beyond the bounds: where rounding rules differ."""
    n = ref.levels(bits, signed)
    step = np.float32(bound) / np.float32(n)
    k = np.arange(-n - 3, n + 3, dtype=np.float32)
    return np.concatenate([(k + np.float32(0.5)) * step, k * step]).astype(np.float32)


def _same(torch_value: torch.Tensor, numpy_value: np.ndarray) -> None:
    assert torch_value.dtype == torch.float32
    np.testing.assert_array_equal(torch_value.detach().numpy(), numpy_value)


@pytest.mark.parametrize(("bits", "bound", "signed"), [(0, 1.0, 1), (4, 1.0, 1), (8, 12.75, 0), (3, 0.7, 0),
                                                       (9, 12.0, 1), (0, float("inf"), 1)])
def test_clip_and_round_is_bit_identical(bits: int, bound: float, signed: int) -> None:
    x = _data((4096,), spread=bound if np.isfinite(bound) else 5.0)
    if bits:
        x = np.concatenate([x, _ties(bits, bound, signed)])
    _same(tw.clip_and_round(torch.from_numpy(x), bits, bound, signed), ref.clip_and_round(x, bits, bound, signed))


@pytest.mark.parametrize(("dynamic", "axis"), [(0, 0), (1, 0), (1, 1), (1, -1), (1, 2)])
def test_quantize_is_bit_identical(dynamic: int, axis: int) -> None:
    x = _data((3, 4, 5, 6), seed=1)
    x[1] = 0.0  # an all-zero row: scale 1
    kwargs = {"bits": 5, "bound": 1.0 if dynamic else 2.5, "signed": 1, "dynamic": dynamic, "axis": axis}
    _same(tw.quantize(torch.from_numpy(x), **kwargs), ref.quantize(x, **kwargs))


@pytest.mark.parametrize("kwargs", [{"sigma_add": 0.3}, {"sigma_mul": 0.2}, {"sigma_add": 0.1, "relative": 1},
                                    {"sigma_add": 0.05, "sigma_mul": 0.1, "relative": 1}])
def test_noise_arithmetic_is_bit_identical_given_the_same_normals(kwargs: dict) -> None:
    x = _data((6, 3, 5, 5), seed=2)
    expected = ref.noise(x, 0.7, 3, stream=0, **kwargs)
    # the reference draws from stream_key(seed, stream): give the twin the same normals
    both = bool(kwargs.get("sigma_add")) and bool(kwargs.get("sigma_mul"))
    z1, z2 = noise_normals(stream_key(3, 0), x.size, both)
    got = tw.noise(torch.from_numpy(x), 0.7, normals=(torch.from_numpy(z1.reshape(x.shape)),
                                                      torch.from_numpy(z2.reshape(x.shape))), **kwargs)
    _same(got, expected)


def test_noise_off_returns_the_input_unchanged() -> None:
    x = torch.from_numpy(_data((4, 10)))
    assert torch.equal(tw.noise(x, 0.0, sigma_add=1.0, sigma_mul=1.0), x)
    assert torch.equal(tw.noise(x, 2.0), x)


@pytest.mark.parametrize(("inp_bits", "noise_management", "axis"), [(7, 1, 1), (0, 1, 1), (5, 0, 1), (7, 1, -1)])
def test_mvm_input_is_bit_identical(inp_bits: int, noise_management: int, axis: int) -> None:
    x = _data((5, 3, 4, 4), seed=4)
    x[2] = 0.0
    kwargs = {"inp_bits": inp_bits, "inp_bound": 1.0, "noise_management": noise_management, "axis": axis}
    xn_ref, s_ref = ref.mvm_input(x, **kwargs)
    xn, s = tw.mvm_input(torch.from_numpy(x), **kwargs)
    _same(xn, xn_ref)
    _same(s, s_ref)


@pytest.mark.parametrize(("out_noise", "out_bits", "out_bound", "axis"),
                         [(0.06, 9, 12.0, 1), (0.0, 0, float("inf"), 1), (0.1, 0, 3.0, -1)])
def test_mvm_output_is_bit_identical_given_the_same_normals(out_noise: float, out_bits: int, out_bound: float,
                                                             axis: int) -> None:
    y = _data((4, 6, 3, 3), seed=5)
    scale = ref.row_absmax(_data((4, 6, 3, 3), seed=6), axis)
    kwargs = {"weight_scale": 0.37, "out_noise": out_noise, "out_bits": out_bits, "out_bound": out_bound,
              "axis": axis}
    expected = ref.mvm_output(y, scale, 0.8, 11, stream=2, **kwargs)
    z = normals(stream_key(11, 2), y.size)
    got = tw.mvm_output(torch.from_numpy(y), torch.from_numpy(scale), 0.8, normals=torch.from_numpy(z), **kwargs)
    _same(got, expected)


def test_noise_distribution_matches_the_definition() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 500), 2.0)
    additive = tw.noise(x, 0.5, sigma_add=0.4) - x  # sigma 0.2
    multiplicative = tw.noise(x, 1.0, sigma_mul=0.1) / x - 1  # sigma 0.1
    relative = tw.noise(x, 1.0, sigma_add=0.1, relative=1) - x  # sigma 0.1 * absmax 2
    for sample, sigma in ((additive, 0.2), (multiplicative, 0.1), (relative, 0.2)):
        assert abs(sample.mean().item()) < 4 * sigma / np.sqrt(sample.numel())
        assert sample.std().item() == pytest.approx(sigma, rel=0.01)
    assert not torch.equal(tw.noise(x, 1.0, sigma_add=1.0), tw.noise(x, 1.0, sigma_add=1.0))  # fresh draws


def test_clip_and_round_gradient_is_straight_through_inside_the_range() -> None:
    x = torch.tensor([-2.0, -0.99, -0.3, 0.0, 0.26, 0.99, 1.0, 1.5], requires_grad=True)
    tw.clip_and_round(x, 3, 1.0, 1).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    x.grad = None
    tw.clip_and_round(x, 3, 1.0, 0).sum().backward()  # unsigned: negatives are outside
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_dynamic_quantization_gradient_is_identity() -> None:
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    tw.quantize(w, bits=4, dynamic=1, axis=1).mul(torch.arange(w.numel()).reshape(w.shape)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))


def test_mvm_chain_passes_the_layer_gradient_through() -> None:
    """Without noise and quantization the MVM periphery is the identity, and so is its gradient."""
    torch.manual_seed(1)
    x = torch.randn(5, 7, requires_grad=True)
    w = torch.randn(3, 7)
    xn, s = tw.mvm_input(x, axis=-1)
    z = tw.mvm_output(xn @ w.T, s, 1.0, weight_scale=w.abs().max(), axis=-1)
    torch.testing.assert_close(z, x @ w.T)
    z.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 7))


def test_half_precision_inputs_compute_in_float32() -> None:
    x = torch.randn(4, 6).half()
    assert tw.noise(x, 1.0, sigma_add=0.1).dtype == torch.float32
    assert tw.quantize(x, bits=4, dynamic=1).dtype == torch.float32
