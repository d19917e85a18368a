"""Physical effects: each one a unit, and the registry everything else reads.

An effect names the placement it belongs to, the config keys it reads, when the config enables it,
the graph pass that places it, the torch twin the trainer attaches, the roles of the nodes it puts
between a layer and its weight (``find_sites`` looks through them to the constant weight) and what
``strip`` must undo beyond removing its nodes. The transform runs the passes of the enabled effects
in the registry's order, the trainer attaches their twins in that order, strip calls every
``restore``, and a config key only another placement's effects read is refused. Adding an effect
is its entry here plus its own modules (pass, twin); nothing else changes.

Passes, twins and restores are named ``"module:name"`` and imported when used: the config reads
this registry, so it must not import the passes (which import the config), and transforming never
imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Config = Any  # an AnalogConfig (not imported: the config imports this registry)


@dataclass(frozen=True)
class Effect:
    name: str
    placement: str  # the placement.where it belongs to: "activations" or "mvm"
    reads: tuple[str, ...]  # the config sections ("noise") and keys ("placement.op_types") it reads
    enabled: Callable[[Config], bool]  # whether a config of its placement switches it on
    places: str  # "module:Class" of the pass that places it, made as Class(config, only) (site names or None)
    twin: str  # "module:function" attaching its torch twin, called as function(hardware, sites)
    weight_roles: tuple[str, ...] = ()  # roles of the nodes it puts between a layer and its weight
    restore: str = ""  # "module:function" strip calls as function(graph, inserted nodes) before removing them

    def make_pass(self, config: Config, only: Any = None) -> Any:
        return _resolve(self.places)(config, only)

    def attach_twin(self, hardware: Any, sites: list) -> None:
        _resolve(self.twin)(hardware, sites)

    def undo(self, graph: Any, inserted: list) -> None:
        """What strip must do for this effect beyond removing its nodes (nothing for most)."""
        if self.restore:
            _resolve(self.restore)(graph, inserted)


def _resolve(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _mvm_periphery(config: Config) -> bool:
    f = config.forward
    return config.has_noise or bool(f.inp_bits or f.out_bits or f.out_bound)


_PASSES, _TWINS = "analog_onnx.passes.", "analog_onnx.train.effect_twins:"
EFFECTS: tuple[Effect, ...] = (
    Effect("activation_noise", "activations", ("noise", "placement.op_types", "placement.network_inputs"),
           lambda c: c.has_noise, _PASSES + "insert_activation_noise:InsertActivationNoisePass",
           _TWINS + "attach_activation_noise"),
    Effect("weight_quantization", "mvm", ("weights",), lambda c: c.weights.bits > 0 and not c.device.enabled,
           _PASSES + "quantize_weights:QuantizeWeightsPass", _TWINS + "attach_weight_quantization",
           weight_roles=("weight_quant", "transpose")),
    Effect("analog_tile", "mvm", ("forward", "mapping"), _mvm_periphery,
           _PASSES + "insert_analog_tile:InsertAnalogTilePass", _TWINS + "attach_analog_tile",
           restore=_PASSES + "insert_analog_tile:restore_layers"),
    Effect("mvm_periphery", "mvm", ("forward",), _mvm_periphery,
           _PASSES + "insert_mvm_periphery:InsertMvmPeripheryPass", _TWINS + "attach_mvm_periphery",
           weight_roles=("weight_column",), restore=_PASSES + "insert_mvm_periphery:restore_biases"),
    # after the periphery: the compensation factor multiplies MvmOutput's result; weights.bits are conductance levels
    Effect("device_weights", "mvm", ("device", "weights"), lambda c: c.device.enabled,
           _PASSES + "insert_device_weights:InsertDeviceWeightsPass", _TWINS + "attach_device_weights",
           weight_roles=("device_weights", "transpose")),
)


def enabled_effects(config: Config) -> list[Effect]:
    """The effects ``config`` switches on, in pipeline order."""
    return [e for e in EFFECTS if e.placement == config.placement.where and e.enabled(config)]


def weight_roles() -> frozenset[str]:
    """The roles of every node an effect puts between a layer and its weight."""
    return frozenset(role for effect in EFFECTS for role in effect.weight_roles)


def only_read_elsewhere(key: str, placement: str) -> str | None:
    """The placement whose effects read config ``key`` (``section.name``) when no effect of
    ``placement`` does (it is ignored there), else None."""
    readers = [e.placement for e in EFFECTS if key in e.reads or key.partition(".")[0] in e.reads]
    return None if not readers or placement in readers else readers[0]
