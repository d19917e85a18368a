"""The [device] config section, its place in AnalogConfig and the device presets."""

from __future__ import annotations

import pytest

from analog_onnx.config import AnalogConfig, load_preset
from analog_onnx.devices import DEVICE_CLASSES, DeviceConfig, PCMDevice, ReRAMDevice, make_device
from analog_onnx.devices.config import DEVICE_MODELS
from analog_onnx.errors import ConfigError


@pytest.mark.parametrize("changes,key", [
    ({"model": "flash"}, "device.model"),
    ({"g_max": 0.0}, "device.g_max"),
    ({"prog_noise_scale": -1.0}, "device.prog_noise_scale"),
    ({"read_noise_scale": float("nan")}, "device.read_noise_scale"),
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
def test_device_presets_load_with_their_device_and_the_default_periphery(name: str, device_class: type) -> None:
    config = load_preset(name)
    assert config.name == name and "docs/semantics.md" in config.source
    assert isinstance(make_device(config.device), device_class) and config.has_noise
    default = load_preset("aihwkit-default")  # aihwkit's default tile: periphery, mapping, bound management
    assert (config.forward, config.mapping) == (default.forward, default.mapping)
    assert AnalogConfig.from_dict(config.to_dict()) == config


def test_device_section_is_validated_within_the_config_and_needs_mvm_placement() -> None:
    with pytest.raises(ConfigError, match="config key device.g_max "):
        AnalogConfig.from_dict({"device": {"model": "pcm", "g_max": -1.0}})
    with pytest.raises(ConfigError, match="config key device.model needs placement.where"):
        AnalogConfig.from_dict({"placement": {"where": "activations"}, "device": {"model": "pcm"}})
    with pytest.raises(ConfigError, match="config key t_inference "):
        AnalogConfig.from_dict({"t_inference": float("inf")})
    assert AnalogConfig().with_overrides(["device.model=pcm", "drift_compensation=false"]).device == \
        DeviceConfig(model="pcm", drift_compensation=False)
