"""The [device] config section and the device presets waiting to be wired into AnalogConfig."""

from __future__ import annotations

from importlib import resources

import pytest
import tomllib

from analog_onnx.config import AnalogConfig
from analog_onnx.devices import DEVICE_CLASSES, DeviceConfig, PCMDevice, ReRAMDevice, make_device
from analog_onnx.devices.config import DEVICE_MODELS
from analog_onnx.errors import ConfigError

PENDING = resources.files("analog_onnx.presets").joinpath("pending")


@pytest.mark.parametrize("changes,key", [
    ({"model": "flash"}, "device.model"),
    ({"g_max": 0.0}, "device.g_max"),
    ({"prog_noise_scale": -1.0}, "device.prog_noise_scale"),
    ({"t_inference": float("inf")}, "device.t_inference"),
    ({"model": "pcm", "stuck_at_zero": 1.5}, "device.stuck_at_zero"),
    ({"model": "pcm", "stuck_at_zero": 0.6, "stuck_at_gmax": 0.6}, "device.stuck_at_gmax"),
    ({"model": "pcm", "prog_noise_rel": 0.1}, "device.prog_noise_rel"),
    ({"stuck_at_gmax": 0.1}, "device.stuck_at_gmax"),
])
def test_bad_values_and_combinations_name_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"config key {key} "):
        DeviceConfig(**changes).validate()


def test_every_model_name_has_a_device_class() -> None:
    assert set(DEVICE_MODELS) == {"none", *DEVICE_CLASSES}
    for name in DEVICE_CLASSES:
        DeviceConfig(model=name).validate()


def test_model_none_makes_no_device_and_noise_scale_scales_the_sigmas() -> None:
    assert make_device(DeviceConfig()) is None
    device = make_device(DeviceConfig(model="pcm", prog_noise_scale=2.0, read_noise_scale=0.5), noise_scale=3.0)
    assert isinstance(device, PCMDevice)
    assert (device.prog_noise_scale, device.read_noise_scale, device.drift_scale) == (6.0, 1.5, 1.0)


@pytest.mark.parametrize("name,device_class", [("aihwkit-pcm", PCMDevice), ("reram-wan2022", ReRAMDevice)])
def test_pending_presets_load_once_wired(name: str, device_class: type) -> None:
    data = tomllib.loads(PENDING.joinpath(f"{name}.toml").read_text())
    device_section = data.pop("device")
    config = AnalogConfig.from_dict(data)  # everything but [device] is today's AnalogConfig
    assert config.name == name and "docs/semantics.md" in config.source
    device_config = DeviceConfig(**device_section)
    device_config.validate()
    assert isinstance(make_device(device_config), device_class)
    default = AnalogConfig.from_dict(tomllib.loads(
        resources.files("analog_onnx.presets").joinpath("aihwkit-default.toml").read_text()))
    assert config.forward == default.forward  # aihwkit's default periphery
