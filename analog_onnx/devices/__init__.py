"""Device physics: what happens to the weights once they are conductances on a chip.

One class per device technology (``pcm.py``, ``reram.py``, ``generic.py``) with the physics split
into named steps (``base.py``); ``chip.py`` runs the steps for a layer on one chip, ``streams.py``
keys the random draws to (chip_seed, stream) and (seed, stream), ``torch_twins.py`` serves the
trainer. The config section is ``config.DeviceConfig``.
"""

from __future__ import annotations

from analog_onnx.devices.base import DeviceModel
from analog_onnx.devices.config import GENERIC_KEYS, DeviceConfig
from analog_onnx.devices.generic import GenericDevice
from analog_onnx.devices.pcm import PCMDevice
from analog_onnx.devices.reram import ReRAMDevice

DEVICE_CLASSES: dict[str, type[DeviceModel]] = {"pcm": PCMDevice, "reram": ReRAMDevice, "generic": GenericDevice}


def make_device(config: DeviceConfig, noise_scale: float = 1.0) -> DeviceModel | None:
    """The device a config section describes (None for ``model = "none"``), sigmas times ``noise_scale``."""
    if not config.enabled:
        return None
    cls = DEVICE_CLASSES[config.model]
    extra = {}
    if cls is GenericDevice:
        extra = {key: getattr(config, key) for key in GENERIC_KEYS}
    device = cls(g_max=config.g_max, prog_noise_scale=config.prog_noise_scale, drift_scale=config.drift_scale,
                 read_noise_scale=config.read_noise_scale, **extra)
    return device.scaled(noise_scale)


__all__ = ["DEVICE_CLASSES", "DeviceConfig", "DeviceModel", "GenericDevice", "PCMDevice", "ReRAMDevice",
           "make_device"]
