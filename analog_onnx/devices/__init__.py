"""Device physics: what happens to the weights once they are conductances on a chip.

One class per device model (``pcm.py``, ``hermes.py``, ``reram.py``, ``generic.py``), named in
``registry.py``, with the physics split into named steps (``base.py``); ``chip.py`` runs the steps
for a layer on one chip, ``streams.py`` keys the random draws to (chip_seed, stream) and (seed,
stream), ``torch_twins.py`` serves the trainer. The config section is ``config.DeviceConfig``.
"""

from __future__ import annotations

import numpy as np

from analog_onnx.devices.base import DeviceModel
from analog_onnx.devices.chip import program_layer, read_weights
from analog_onnx.devices.config import CONFIG_KEYS, DEVICE_MODELS, DeviceConfig
from analog_onnx.devices.generic import GenericDevice
from analog_onnx.devices.pcm import PCMDevice
from analog_onnx.devices.registry import DEVICE_CLASSES, parameters
from analog_onnx.devices.reram import ReRAMDevice
from analog_onnx.devices.streams import chip_draws, read_normals


def make_device(config: DeviceConfig, noise_scale: float = 1.0) -> DeviceModel | None:
    """The device a config section describes (None for ``model = "none"``), sigmas times ``noise_scale``."""
    if not config.enabled:
        return None
    cls = DEVICE_CLASSES[config.model]
    return cls(**{key: getattr(config, key) for key in parameters(cls, CONFIG_KEYS)}).scaled(noise_scale)


def chip_weights(weights: np.ndarray, config: DeviceConfig, noise_scale: float, seed: int, chip_seed: int,
                 t_inference: float, *, bits: int = 0, channel_axis: int | None = None, stream: int = 0,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One read of a layer on chip ``chip_seed`` at ``t_inference``: ``(W_read, alpha)`` in float32,
    the draws keyed as ``streams.py`` says (the numpy reference of the DeviceWeights op)."""
    device = make_device(config, noise_scale)
    layer = program_layer(weights, device, config, chip_draws(chip_seed, stream, weights.shape), t_inference,
                          bits=bits, channel_axis=channel_axis)
    w_read = read_weights(layer, device, config, read_normals(seed, stream, weights.shape), compensated=False)
    return w_read.astype(np.float32), np.asarray(layer.alpha, np.float32)


__all__ = ["DEVICE_CLASSES", "DEVICE_MODELS", "DeviceConfig", "DeviceModel", "GenericDevice", "PCMDevice",
           "ReRAMDevice", "chip_weights", "make_device"]
