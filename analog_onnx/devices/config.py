"""The ``[device]`` config section: which device holds the weights, and which of its effects are on.

Conductances are in microsiemens (uS), times in seconds. The section holds only device physics;
how weights map to conductances reuses the ``[weights]`` section (``bits``: conductance levels,
``per_channel``: one mapping scale per output channel). Device-specific constants (fit
coefficients) live on the device classes, documented there with their sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from analog_onnx.devices.registry import DEVICE_CLASSES, parameters
from analog_onnx.errors import ConfigError

DEVICE_MODELS = ("none", *DEVICE_CLASSES)


@dataclass
class DeviceConfig:
    """The device model and its switches; every sigma below is also scaled by ``noise_scale``.

    The time since programming is the top-level ``t_inference`` of ``AnalogConfig`` (one default
    time for every effect), fed to a transformed model as its ``t_inference`` input."""

    model: str = "none"  # "none" (weights are exact) or a device of devices/registry.py: "pcm", "reram", ...
    g_max: float = 25.0  # uS: the conductance the largest |weight| maps to (aihwkit's default converter)
    prog_noise_scale: float = 1.0  # multiplies the programming-noise sigma (aihwkit prog_noise_scale)
    drift: bool = True  # conductances drift (pcm, generic) or relax (reram) until t_inference
    drift_scale: float = 1.0  # multiplies each drift exponent nu (aihwkit drift_scale)
    read_noise: bool = True  # fresh read noise on every inference (pcm: 1/f, grows with t_inference)
    read_noise_scale: float = 1.0  # multiplies the read-noise sigma (aihwkit read_noise_scale)
    drift_compensation: bool = True  # one output factor per layer from a reference read (aihwkit global)
    stuck_at_zero: float = 0.0  # fraction of devices stuck at 0 uS, per chip
    stuck_at_gmax: float = 0.0  # fraction of devices stuck at g_max, per chip
    # "generic" only (a device's parameters are its fields that are keys here): plain numbers
    prog_noise_add: float = 0.0  # programming sigma as a fraction of g_max
    prog_noise_rel: float = 0.0  # programming sigma as a fraction of the target conductance
    drift_nu: float = 0.0  # mean drift exponent nu (dimensionless)
    drift_nu_std: float = 0.0  # spread of nu between devices
    read_noise_rel: float = 0.0  # read-noise sigma as a fraction of the conductance

    @property
    def enabled(self) -> bool:
        return self.model != "none"

    def validate(self) -> None:
        """Refuse bad values and combinations, naming the key (``device.<name>``)."""
        _check(self.model in DEVICE_MODELS, "model", f"must be one of {', '.join(DEVICE_MODELS)}")
        _check(math.isfinite(self.g_max) and self.g_max > 0, "g_max", "must be a finite number > 0 (uS)")
        for key in ("prog_noise_scale", "drift_scale", "read_noise_scale", *DEVICE_SPECIFIC):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, key, "must be a finite number >= 0")
        for key in ("stuck_at_zero", "stuck_at_gmax"):
            _check(0 <= getattr(self, key) <= 1, key, "must be a fraction between 0 and 1")
        _check(self.stuck_at_zero + self.stuck_at_gmax <= 1, "stuck_at_gmax", "plus device.stuck_at_zero exceeds 1")
        own = parameters(DEVICE_CLASSES[self.model], CONFIG_KEYS) if self.enabled else ()
        for key in DEVICE_SPECIFIC:
            if key not in own:
                having = " or ".join(f'"{name}"' for name, cls in DEVICE_CLASSES.items()
                                     if key in parameters(cls, CONFIG_KEYS))
                _check(getattr(self, key) == 0, key, f"applies only to device.model = {having}")
        if not self.enabled:
            for key in ("stuck_at_zero", "stuck_at_gmax"):
                _check(getattr(self, key) == 0, key, "needs a device.model other than none")


CONFIG_KEYS = tuple(f.name for f in fields(DeviceConfig) if f.name != "model")  # a DeviceWeights node's attributes
# the keys some device model takes as a parameter (a field of its class), and those only some take (0 for the others)
DEVICE_PARAMETERS = tuple(key for key in CONFIG_KEYS
                          if any(key in parameters(cls, CONFIG_KEYS) for cls in DEVICE_CLASSES.values()))
DEVICE_SPECIFIC = tuple(key for key in DEVICE_PARAMETERS
                        if not all(key in parameters(cls, CONFIG_KEYS) for cls in DEVICE_CLASSES.values()))


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key device.{key} {message}")
