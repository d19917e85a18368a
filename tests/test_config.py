"""The hardware description's tile settings: aihwkit's defaults, its bound-management rounds, and
the combinations validation refuses."""

from __future__ import annotations

import pytest

from analog_onnx.config import AnalogConfig, Forward, load_preset
from analog_onnx.errors import ConfigError


def test_aihwkit_default_takes_aihwkits_tile_defaults():
    config = load_preset("aihwkit-default")
    assert (config.mapping.weight_scaling_omega, config.mapping.weight_scaling_columnwise) == (0.0, False)
    assert (config.mapping.max_input_size, config.mapping.max_output_size) == (512, 512)
    assert config.forward.bound_management == "iterative" and config.forward.noise_management == "abs_max"
    assert AnalogConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("settings", "rounds"), [
    ({"inp_bits": 7, "out_bound": 12.0, "bound_management": "iterative"}, 5),  # reductions 1..16 > 15.75
    ({"inp_bits": 0, "out_bound": 12.0, "bound_management": "iterative"}, 11),  # up to 1024 > max_bm_factor
    ({"inp_bits": 7, "out_bound": 12.0, "bound_management": "iterative", "max_bm_res": 1.0}, 7),  # 64 > 63
    ({"inp_bits": 0, "out_bound": 12.0, "bound_management": "iterative", "max_bm_factor": 3}, 3),
    ({"inp_bits": 7, "out_bound": 12.0, "bound_management": "none"}, 1),
    ({"inp_bits": 7, "out_bound": 0.0, "bound_management": "iterative"}, 1),  # nothing can saturate
])
def test_bound_management_rounds_are_aihwkits(settings, rounds):
    assert Forward(**settings).bm_rounds() == rounds


@pytest.mark.parametrize(("override", "message"), [
    ("weight_scaling_omega=-1", "weight_scaling_omega must be >= 0"),
    ("weight_scaling_columnwise=true", "needs mapping.weight_scaling_omega > 0"),
    ("max_input_size=-5", "max_input_size must be >= 0"),
    ("bound_management=shift", "must be one of iterative, none"),
    ("max_bm_factor=0", "max_bm_factor must be >= 1"),
    ("max_bm_res=0", "max_bm_res must be > 0"),
    ("w_noise=-0.01", "forward.w_noise must be >= 0"),
])
def test_validation_refuses_nonsense_tile_settings(override, message):
    with pytest.raises(ConfigError, match=message):
        load_preset("aihwkit-default").with_overrides([override])


def test_weight_noise_is_a_tile_attribute_only_when_set():
    """forward.w_noise reaches every tile; at 0 the tile has no such attribute (the model of before)."""
    from analog_onnx.passes.insert_analog_tile import tile_attributes

    config = load_preset("aihwkit-default")
    assert "w_noise" not in tile_attributes(config, 0)
    assert tile_attributes(config.with_overrides(["w_noise=0.02"]), 0)["w_noise"] == 0.02
    assert config.with_overrides(["out_noise=0", "w_noise=0.02"]).has_noise


def test_tile_settings_belong_to_the_mvm_placement():
    with pytest.raises(ConfigError, match="mvm"):
        load_preset("hardening-additive").with_overrides(["max_input_size=256"])
    with pytest.raises(ConfigError, match="mvm"):
        load_preset("hardening-additive").with_overrides(["bound_management=iterative"])
    with pytest.raises(ConfigError, match="mvm"):
        load_preset("hardening-additive").with_overrides(["w_noise=0.02"])
