"""The device models by name: the ``device.model`` of a config and the ``device`` attribute of a
DeviceWeights node. Every implementation reads this registry (the numpy reference and the torch
twin call the classes, the function body traces them, the native kernels' header is generated
from them), so a new device model is its class, its line here and its formulas in
``ops/native/device_physics.h``.
"""

from __future__ import annotations

from dataclasses import fields

from analog_onnx.devices.base import DeviceModel
from analog_onnx.devices.generic import GenericDevice
from analog_onnx.devices.hermes import HermesPCMDevice
from analog_onnx.devices.pcm import PCMDevice
from analog_onnx.devices.reram import ReRAMDevice

DEVICE_CLASSES: dict[str, type[DeviceModel]] = {
    cls.name: cls for cls in (PCMDevice, ReRAMDevice, GenericDevice, HermesPCMDevice)
}


def parameters(cls: type[DeviceModel], config_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The fields of ``cls`` that a config sets (of ``config_keys``); its other fields are constants."""
    return tuple(f.name for f in fields(cls) if f.name in config_keys)
