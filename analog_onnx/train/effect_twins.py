"""The torch twin of each effect (``analog_onnx/effects.py`` names them): how it attaches to a
model and what it computes, as the effect's pass places it in the graph.

- activation noise: a forward hook puts ``Noise`` on the module's output (before the QAT
  quantizer of the same module, or after it where the transform's site reads the quantized value:
  ``placement.noise_after_quantizer``), and a pre-hook on the root module puts it on a network
  input;
- weight quantization: a weight step of the layer's ``Periphery``;
- the analog tile and the MVM periphery: how the layer computes: for a Linear or group-1 Conv2d
  the ``AnalogTile`` twin and the bias, for other layers ``MvmInput``, the layer without bias,
  ``MvmOutput`` (weight scale max|W| of the weight before the hardware's steps) and the bias;
- device weights: a weight step: one fresh draw of the device's programming noise per forward
  pass (``devices.torch_twins.hwa_weights``; drift and read noise are evaluation-only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from analog_onnx.config import AnalogConfig, Forward
from analog_onnx.config import Noise as NoiseConfig
from analog_onnx.devices import DeviceModel, make_device
from analog_onnx.devices.torch_twins import hwa_weights
from analog_onnx.errors import AnalogError
from analog_onnx.ops import torch_twins as tw
from analog_onnx.passes.insert_analog_tile import tile_attributes
from analog_onnx.passes.insert_mvm_periphery import refuse_weight_noise
from analog_onnx.train.attach import NoiseLevel, TwinHook, WeightQuant, compute_layer
from analog_onnx.train.hardware import Hardware, TwinSite


class NoiseHook(TwinHook):
    """Forward hook: ``Noise`` on a module's output."""

    def __init__(self, site: TwinSite, level: NoiseLevel, noise: NoiseConfig) -> None:
        self.site, self.level, self.noise = site, level, noise

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.level.active:
            return output
        return tw.noise(output, self.level.scale, sigma_add=self.noise.additive,
                        sigma_mul=self.noise.multiplicative, relative=int(self.noise.relative))


class InputNoiseHook(NoiseHook):
    """Forward pre-hook on the root module: ``Noise`` on one network input."""

    def __init__(self, site: TwinSite, level: NoiseLevel, noise: NoiseConfig, index: int) -> None:
        super().__init__(site, level, noise)
        self.index = index

    def __call__(self, module: nn.Module, args: tuple) -> tuple:  # type: ignore[override]
        args = list(args)
        args[self.index] = super().__call__(module, (), args[self.index])
        return tuple(args)


def attach_activation_noise(hardware: Hardware, sites: list[TwinSite]) -> None:
    """Twin of the activation-noise effect: ``Noise`` hooks on module outputs and network inputs."""
    noise, inputs = hardware.config.noise, [s.name for s in sites if s.op_type == "Input"]
    for site in sites:
        if site.op_type == "Input":
            hook = InputNoiseHook(site, hardware.level, noise, inputs.index(site.name))
            hardware.hook(hardware.model.register_forward_pre_hook(hook, prepend=True))
        else:
            module = hardware.model.get_submodule(site.module)
            hook = NoiseHook(site, hardware.level, noise)
            hardware.hook(module.register_forward_hook(hook, prepend=not site.after_quantizer))


def attach_weight_quantization(hardware: Hardware, sites: list[TwinSite]) -> None:
    """Twin of the weight-quantization effect: each analog layer quantizes its weight."""
    w = hardware.config.weights
    for site in sites:
        hardware.periphery(site).weight_steps.append(WeightQuant(w.bits, 1 if w.per_channel else 0))


def attach_analog_tile(hardware: Hardware, sites: list[TwinSite]) -> None:
    """Twin of the analog-tile effect: Linear and Conv2d layers compute through ``AnalogTile``."""
    compute = TileCompute(tile_settings(hardware.config))
    for site in sites:
        if site.op_type != "Input" and is_tile_module(hardware.model.get_submodule(site.module)):
            hardware.periphery(site).compute = compute


def attach_mvm_periphery(hardware: Hardware, sites: list[TwinSite]) -> None:
    """Twin of the MVM-periphery effect: DAC, output noise and ADC around the other analog layers."""
    compute = MvmCompute(hardware.config.forward)
    for site in sites:
        if not is_tile_module(hardware.model.get_submodule(site.module)):
            refuse_weight_noise(hardware.config, site.name, site.op_type)
            hardware.periphery(site).compute = compute


def attach_device_weights(hardware: Hardware, sites: list[TwinSite]) -> None:
    """Twin of the device effect for training: each forward pass sees the weights as a freshly
    programmed chip holds them (programming noise, straight-through), as aihwkit's weight modifiers."""
    step = DeviceProgramming(make_device(hardware.config.device), hardware.config.weights.per_channel)
    for site in sites:
        hardware.periphery(site).weight_steps.append(step)


@dataclass(frozen=True)
class DeviceProgramming:
    """Weight step of the device effect: the weight as a freshly programmed chip holds it."""

    device: DeviceModel
    per_channel: bool  # one conductance scale per output channel (weights.per_channel)

    def __call__(self, weight: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        if level.scale <= 0:
            return weight
        return hwa_weights(weight, self.device.scaled(level.scale), channel_axis=0 if self.per_channel else None)


@dataclass(frozen=True)
class TileCompute:
    """The layer computed by ``AnalogTile``'s twin with these attributes (its stream aside)."""

    settings: dict

    def __call__(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor, original: torch.Tensor,
                 level: NoiseLevel) -> torch.Tensor:
        return _tile_forward(module, x, weight, module.bias, self.settings, level.scale)


@dataclass(frozen=True)
class MvmCompute:
    """The layer between ``MvmInput`` and ``MvmOutput`` (DAC, output noise, ADC) with a digital bias."""

    forward: Forward

    def __call__(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor, original: torch.Tensor,
                 level: NoiseLevel) -> torch.Tensor:
        f, axis = self.forward, rows_axis(module)
        peak = original.detach().abs().amax()
        xn, scale = tw.mvm_input(x, inp_bits=f.inp_bits, inp_bound=f.inp_bound,
                                 noise_management=int(f.noise_management == "abs_max"), axis=axis)
        y = compute_layer(module, xn, weight, None)
        z = tw.mvm_output(y, scale, level.scale, weight_scale=torch.where(peak > 0, peak, 1.0),
                          out_noise=f.out_noise, out_bits=f.out_bits,
                          out_bound=f.out_bound if f.out_bound > 0 else math.inf, axis=axis)
        if module.bias is None:
            return z
        bias = module.bias if isinstance(module, nn.Linear) else module.bias.reshape(-1, *[1] * (z.dim() - 2))
        return z + bias


def is_tile_module(module: nn.Module) -> bool:
    """Whether the transform makes this layer an ``AnalogTile`` (see passes/insert_analog_tile.py)."""
    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1)


def tile_settings(config: AnalogConfig) -> dict:
    """The twin's keyword arguments: the tile's attributes but its stream."""
    return {k: v for k, v in tile_attributes(config, 0).items() if k != "stream"}


def _tile_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  settings: dict, noise_scale: float) -> torch.Tensor:
    """The layer through ``AnalogTile``'s twin: a Conv2d on its unfolded patches (channel-major)."""
    if isinstance(module, nn.Linear):
        y = tw.analog_tile(x, weight, noise_scale, **settings)
        return y if bias is None else y + bias
    n, _, height, width = x.shape
    kh, kw = module.kernel_size
    if isinstance(module.padding, str):
        raise AnalogError(f"the trainer's tile twin needs numeric Conv2d padding, not {module.padding!r}")
    patches = functional.unfold(x, (kh, kw), dilation=module.dilation, padding=module.padding, stride=module.stride)
    out_h = (height + 2 * module.padding[0] - module.dilation[0] * (kh - 1) - 1) // module.stride[0] + 1
    out_w = (width + 2 * module.padding[1] - module.dilation[1] * (kw - 1) - 1) // module.stride[1] + 1
    y = tw.analog_tile(patches.transpose(1, 2), weight.reshape(weight.shape[0], -1), noise_scale, **settings)
    y = y.transpose(1, 2).reshape(n, -1, out_h, out_w)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def rows_axis(module: nn.Module) -> int:
    """Input rows of the MVM: per sample for Conv (axis 1), per vector for Linear (axis -1)."""
    return -1 if isinstance(module, nn.Linear) else 1
