"""How the torch twins attach to a model: without changing its parameters or their names.

Two mechanisms, both removable:

- output hooks (``TwinHook``): noise or activation quantization on a module's output, or on the
  network input (a pre-hook on the root module);
- layer twins (``LayerTwin``): a Conv/Linear computes through ``twin_forward`` instead of its
  own ``forward`` (an instance attribute, so the class and the state dict keys stay the same):
  QAT weight quantization, then the hardware's ``Periphery``: the weight-side steps the effects
  added, in order, and the one way of computing the layer an effect set (the tile, the MVM
  periphery; see ``effect_twins.py``).

Because the state dict never changes, a checkpoint of a trained model loads into the plain
zoo model, and export works on a copy with every twin removed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional

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

    def __call__(self, weight: torch.Tensor, level: NoiseLevel | None = None) -> torch.Tensor:
        return tw.quantize(weight, bits=self.bits, dynamic=1, axis=self.axis)


class WeightStep(Protocol):
    """What an effect does to a layer's weight: ``weight`` -> the weight the hardware computes with."""

    def __call__(self, weight: torch.Tensor, level: NoiseLevel) -> torch.Tensor: ...


class LayerCompute(Protocol):
    """How an effect computes a layer: from its input, the hardware's weight and the weight before
    the hardware's steps (``original``), its output."""

    def __call__(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor, original: torch.Tensor,
                 level: NoiseLevel) -> torch.Tensor: ...


@dataclass
class Periphery:
    """What the hardware does to one analog layer: the weight-side steps of the enabled effects, in
    the registry's order (the order the transform places them), then how the layer computes."""

    level: NoiseLevel
    weight_steps: list[WeightStep] = field(default_factory=list)
    compute: LayerCompute | None = None  # None: the layer itself, with the hardware's weight


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


def compute_layer(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return functional.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def twin_forward(module: nn.Module, twin: LayerTwin, x: torch.Tensor) -> torch.Tensor:
    """The layer as the deployed analog model computes it, in the order ``transform`` builds it."""
    weight = module.weight
    if twin.qat is not None:
        weight = twin.qat(weight)
    hardware = twin.hardware
    if hardware is None or not hardware.level.active:
        return compute_layer(module, x, weight, module.bias)
    original = weight
    for step in hardware.weight_steps:
        weight = step(weight, hardware.level)
    if hardware.compute is None:
        return compute_layer(module, x, weight, module.bias)
    return hardware.compute(module, x, weight, original, hardware.level)
