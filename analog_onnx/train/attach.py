"""How the torch twins attach to a model: without changing its parameters or their names.

Two mechanisms, both removable:

- output hooks (``TwinHook``): noise or activation quantization on a module's output, or on the
  network input (a pre-hook on the root module);
- layer twins (``LayerTwin``): a Conv/Linear computes through ``twin_forward`` instead of its
  own ``forward`` (an instance attribute, so the class and the state dict keys stay the same):
  QAT weight quantization, the hardware's weight quantization and the MVM periphery.

Because the state dict never changes, a checkpoint of a trained model loads into the plain
zoo model, and export works on a copy with every twin removed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from analog_onnx.config import AnalogConfig, Forward
from analog_onnx.devices import DeviceModel
from analog_onnx.devices.torch_twins import hwa_weights
from analog_onnx.errors import AnalogError
from analog_onnx.ops import torch_twins as tw

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
TWIN_ATTRIBUTE = "analog_twin"


@dataclass
class NoiseLevel:
    """Shared by every twin of one hardware: ``scale`` is the transform's ``noise_scale`` input
    (it multiplies every sigma); ``active=False`` turns the hardware off (the plain model)."""

    scale: float = 1.0
    active: bool = True


@dataclass(frozen=True)
class WeightQuant:
    """Signed symmetric abs-max weight quantization; ``axis=1``: per output channel, 0: per tensor."""

    bits: int
    axis: int


@dataclass
class Periphery:
    """What the hardware does around one analog layer (the transform's "mvm" placement)."""

    level: NoiseLevel
    weights: WeightQuant | None  # the hardware's weight quantization (config.weights)
    forward: Forward | None  # DAC, output noise, ADC; None: weights only
    device: DeviceModel | None = None  # programming noise on the weights, one fresh draw per forward pass
    device_per_channel: bool = False  # one conductance scale per output channel (weights.per_channel)
    tile: dict | None = None  # the AnalogTile attributes when the layer is a tile (then ``forward`` is unused)


@dataclass
class LayerTwin:
    qat: WeightQuant | None = None
    hardware: Periphery | None = None


class TwinHook:
    """Base of every hook a twin registers, so ``strip_twins`` can find them."""


def layer_twin(module: nn.Module) -> LayerTwin:
    """The twin of a Conv/Linear layer, installed on first use."""
    twin = module.__dict__.get(TWIN_ATTRIBUTE)
    if twin is None:
        if type(module) not in LAYER_TYPES:
            raise AnalogError(f"the trainer cannot simulate a {type(module).__name__} as an analog layer "
                              f"(supported: {', '.join(t.__name__ for t in LAYER_TYPES)})")
        twin = LayerTwin()
        module.__dict__[TWIN_ATTRIBUTE] = twin
        module.forward = functools.partial(twin_forward, module, twin)
    return twin


def drop_layer_twin(module: nn.Module) -> None:
    module.__dict__.pop(TWIN_ATTRIBUTE, None)
    module.__dict__.pop("forward", None)


def strip_twins(model: nn.Module) -> None:
    """Remove every twin hook and layer twin from ``model`` (in place)."""
    for module in model.modules():
        drop_layer_twin(module)
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, hook in hooks.items() if isinstance(hook, TwinHook)]:
                del hooks[key]


def has_twins(model: nn.Module) -> bool:
    return any(TWIN_ATTRIBUTE in m.__dict__ or any(isinstance(h, TwinHook) for h in
                                                   (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))
               for m in model.modules())


def is_tile_module(module: nn.Module) -> bool:
    """Whether the transform makes this layer an ``AnalogTile`` (see passes/insert_analog_tile.py)."""
    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1)


def tile_settings(config: AnalogConfig) -> dict:
    """The twin's keyword arguments: the tile's attributes but its stream."""
    from analog_onnx.passes.insert_analog_tile import tile_attributes

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


def _compute(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return functional.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def twin_forward(module: nn.Module, twin: LayerTwin, x: torch.Tensor) -> torch.Tensor:
    """The layer as the deployed analog model computes it, in the order ``transform`` builds it."""
    weight = module.weight
    if twin.qat is not None:
        weight = tw.quantize(weight, bits=twin.qat.bits, dynamic=1, axis=twin.qat.axis)
    hardware = twin.hardware
    if hardware is None or not hardware.level.active:
        return _compute(module, x, weight, module.bias)
    peak = weight.detach().abs().amax()
    if hardware.weights is not None:
        weight = tw.quantize(weight, bits=hardware.weights.bits, dynamic=1, axis=hardware.weights.axis)
    if hardware.device is not None and hardware.level.scale > 0:
        weight = hwa_weights(weight, hardware.device.scaled(hardware.level.scale),
                             channel_axis=0 if hardware.device_per_channel else None)
    if hardware.tile is not None:
        return _tile_forward(module, x, weight, module.bias, hardware.tile, hardware.level.scale)
    f = hardware.forward
    if f is None:
        return _compute(module, x, weight, module.bias)
    axis = rows_axis(module)
    xn, scale = tw.mvm_input(x, inp_bits=f.inp_bits, inp_bound=f.inp_bound,
                             noise_management=int(f.noise_management == "abs_max"), axis=axis)
    y = _compute(module, xn, weight, None)
    z = tw.mvm_output(y, scale, hardware.level.scale, weight_scale=torch.where(peak > 0, peak, 1.0),
                      out_noise=f.out_noise, out_bits=f.out_bits,
                      out_bound=f.out_bound if f.out_bound > 0 else math.inf, axis=axis)
    if module.bias is None:
        return z
    bias = module.bias if isinstance(module, nn.Linear) else module.bias.reshape(-1, *[1] * (z.dim() - 2))
    return z + bias
