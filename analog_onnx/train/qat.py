"""Quantization-aware training with constant scaling factors ("On Hardening DNNs against Noisy
Computations"): nothing is learned or calibrated, so the deployed grid is known in advance.

- Activations: unsigned quantization after every ReLU (and ReLU6) with the fixed step
  ``act_scale``: levels ``0, act_scale, ..., (2**bits - 1) * act_scale``; larger values saturate.
- Weights: signed symmetric integer quantization with an abs-max scale, per output channel for
  convolutions and per tensor for linear layers.
- Gradients: straight-through inside the clip range (see ``ops/torch_twins.py``).

The quantizers are part of the model: export keeps them (see ``export.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from analog_onnx.arguments import FLOAT32_MAX, spelled
from analog_onnx.errors import AnalogError
from analog_onnx.ops import torch_twins as tw
from analog_onnx.ops.grid import levels
from analog_onnx.train.attach import LAYER_TYPES, TwinHook, WeightQuant, layer_twin

ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6)


@dataclass(frozen=True)
class QatSpec:
    bits: int = 8  # activation bits (unsigned)
    act_scale: float = 1 / 16  # the fixed activation step
    weight_bits: int = 0  # signed weight bits; 0: same as ``bits``

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 24 or not (self.weight_bits == 0 or 2 <= self.weight_bits <= 24):
            raise AnalogError(f"QAT {spelled('bits')} and {spelled('weight_bits')} must be between 2 and 24")
        if not self.act_scale > 0:
            raise AnalogError(f"{spelled('act_scale')} must be > 0, got {self.act_scale}")
        with np.errstate(over="ignore"):
            finite = math.isfinite(self.act_bound)
        if not finite:  # an infinite bound trains to NaN and fails only at export
            raise AnalogError(f"QAT's largest activation, (2^bits-1)*act_scale = "
                              f"{levels(self.bits, 0) * float(self.act_scale):.3g} ({spelled('bits')} {self.bits}, "
                              f"{spelled('act_scale')} {self.act_scale}), is beyond float32's {FLOAT32_MAX:.3g}")

    @property
    def act_bound(self) -> float:
        """The largest activation: (2**bits - 1) * act_scale, in float32."""
        return tw.f32(np.float32(levels(self.bits, 0)) * np.float32(self.act_scale))

    def weight_quant(self, module: nn.Module) -> WeightQuant:
        """Per output channel for convolutions, per tensor for linear layers."""
        return WeightQuant(self.weight_bits or self.bits, 0 if isinstance(module, nn.Linear) else 1)

    def to_dict(self) -> dict:
        return {"bits": self.bits, "act_scale": self.act_scale, "weight_bits": self.weight_bits or self.bits}


class ActivationQuantizer(TwinHook):
    """Forward hook: unsigned constant-step quantization of a ReLU's output."""

    def __init__(self, spec: QatSpec) -> None:
        self.bits, self.bound = spec.bits, spec.act_bound

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return tw.clip_and_round(output, self.bits, self.bound, 0)


def attach_qat(model: nn.Module, spec: QatSpec, *, weights: bool = True) -> int:
    """Quantize ``model``'s ReLU outputs (and, with ``weights``, its layer weights) in every forward
    pass from now on; returns the number of quantizers."""
    count = 0
    for module in model.modules():
        if isinstance(module, ACTIVATION_TYPES):
            module.register_forward_hook(ActivationQuantizer(spec))
            count += 1
        elif weights and isinstance(module, LAYER_TYPES):
            layer_twin(module).qat = spec.weight_quant(module)
            count += 1
    if count == 0:
        raise AnalogError("QAT found no ReLU and no Conv/Linear layer to quantize in this model")
    return count


def quantize_weights_(model: nn.Module, spec: QatSpec) -> dict[str, WeightQuant]:
    """Replace every layer weight by its quantized value (for export); returns what was done, by name."""
    done = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LAYER_TYPES):
                quant = spec.weight_quant(module)
                module.weight.copy_(quant(module.weight))
                done[f"{name}.weight" if name else "weight"] = quant
    return done
