"""Physical effects: each one a unit, and the registry the transform and the trainer iterate over.

An effect names the config section it reads, whether it acts on a layer's weights, its input or
its output, the graph pass that places it, the ops of ``ai.analog`` it places and the torch twin
the trainer attaches. Adding an effect is one entry here plus its pass, ops and twin; nothing
else changes. The registry's order is the order the passes run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from analog_onnx.config import AnalogConfig
from analog_onnx.passes.insert_activation_noise import InsertActivationNoisePass
from analog_onnx.passes.insert_analog_tile import InsertAnalogTilePass
from analog_onnx.passes.insert_device_weights import InsertDeviceWeightsPass
from analog_onnx.passes.insert_mvm_periphery import InsertMvmPeripheryPass
from analog_onnx.passes.quantize_weights import QuantizeWeightsPass

PassFactory = Callable[[AnalogConfig, Collection[str] | None], ir.passes.PassBase]


@dataclass(frozen=True)
class Effect:
    name: str
    section: str  # the AnalogConfig section it reads
    acts_on: tuple[str, ...]  # of "weights", "input" (a layer's input), "output" (a node's output)
    enabled: Callable[[AnalogConfig], bool]
    make_pass: PassFactory  # (config, site names or None for all) -> the pass that places it
    ops: tuple[str, ...]  # the ai.analog ops it places
    twin: str  # "module:function" attaching the torch twin, called as function(hardware, sites)

    def attach_twin(self, hardware: Any, sites: list) -> None:
        """Attach the torch twin (imported here so that transforming never imports torch)."""
        module, _, function = self.twin.partition(":")
        getattr(importlib.import_module(module), function)(hardware, sites)


def _mvm_periphery(config: AnalogConfig) -> bool:
    f = config.forward
    return config.placement.where == "mvm" and (config.has_noise or bool(f.inp_bits or f.out_bits or f.out_bound))


EFFECTS: tuple[Effect, ...] = (
    Effect("activation_noise", "noise", ("output",),
           lambda c: c.placement.where == "activations" and c.has_noise,
           InsertActivationNoisePass, ("Noise",), "analog_onnx.train.hardware:attach_activation_noise"),
    Effect("weight_quantization", "weights", ("weights",),
           lambda c: c.placement.where == "mvm" and c.weights.bits > 0 and not c.device.enabled,
           QuantizeWeightsPass, ("Quantize",), "analog_onnx.train.hardware:attach_weight_quantization"),
    Effect("analog_tile", "forward", ("input", "output"), _mvm_periphery,
           InsertAnalogTilePass, ("AnalogTile",), "analog_onnx.train.hardware:attach_analog_tile"),
    Effect("mvm_periphery", "forward", ("input", "output"), _mvm_periphery,
           InsertMvmPeripheryPass, ("MvmInput", "MvmOutput"), "analog_onnx.train.hardware:attach_mvm_periphery"),
    # after the periphery: the compensation factor multiplies MvmOutput's result; weights.bits are conductance levels
    Effect("device_weights", "device", ("weights", "output"), lambda c: c.device.enabled,
           InsertDeviceWeightsPass, ("DeviceWeights",), "analog_onnx.train.hardware:attach_device_weights"),
)


def enabled_effects(config: AnalogConfig) -> list[Effect]:
    """The effects ``config`` switches on, in pipeline order."""
    return [effect for effect in EFFECTS if effect.enabled(config)]
