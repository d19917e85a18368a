"""A config in aihwkit's words, and configs that extend a preset: aihwkit's names are translated
or refused with why, typos and misplaced keys are told where they belong, and a partial file with
a ``base`` keeps the preset's other keys."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from helpers import gemm_relu

from analog_onnx import vocabulary
from analog_onnx.config import AnalogConfig, load_preset, resolve_config
from analog_onnx.errors import ConfigError
from analog_onnx.transform import read_analog_metadata, transform_model

DOCS = Path(__file__).resolve().parents[1] / "docs" / "semantics.md"


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "analog_onnx.config"]


@pytest.mark.parametrize(("assignment", "key", "value"), [
    ("inp_res=0.0079", "inp_bits", 7),
    ("inp_res=1/126", "inp_bits", 7),
    ("forward.out_res=0.00196", "out_bits", 9),
    ("out_res=510", "out_bits", 9),  # aihwkit: above 1 is a number of steps
    ("inp_res=-1", "inp_bits", 0),  # aihwkit: <= 0 is no converter
])
def test_set_translates_aihwkits_resolutions_and_says_so(caplog, assignment, key, value):
    base = load_preset("ideal").with_overrides(["inp_bits=2", "out_bits=2", "out_bound=1"])
    with caplog.at_level(logging.WARNING, logger="analog_onnx.config"):
        config = base.with_overrides([assignment])
    assert getattr(config.forward, key) == value
    assert len(messages(caplog)) == 1 and f"forward.{key} = {value}" in messages(caplog)[0]


def test_toml_translates_inside_its_section(tmp_path, caplog):
    path = tmp_path / "chip.toml"
    path.write_text('base = "aihwkit-default"\n[forward]\ninp_res = 0.0159\nout_res = 0.0079\n'
                    "[mapping]\ntile_size = 256\n")
    with caplog.at_level(logging.WARNING, logger="analog_onnx.config"):
        config = AnalogConfig.load(path)
    assert (config.forward.inp_bits, config.forward.out_bits) == (6, 7)
    assert (config.mapping.max_input_size, config.mapping.max_output_size) == (256, 256)
    assert len(messages(caplog)) == 3


@pytest.mark.parametrize(("assignment", "fragment"), [
    ("w_noise=0.1", "aihwkit's forward.w_noise, which we do not model"),
    ("inp_noise=0.1", "input noise before the DAC"),
    ("is_perfect=true", "use the preset ideal"),
    ("inp_res=0.01", "the nearest is 1/126 (7 bits)"),
    ("inp_res=abc", "must be a number"),
    ("out_noize=0.1", "did you mean out_noise?"),
    ("forward.out_noize=0.1", "did you mean forward.out_noise?"),
    ("inp_ress=0.1", "did you mean inp_res?"),
    ("mapping.inp_res=0.1", "belongs under [forward]"),
])
def test_set_refuses_with_the_reason_or_the_nearest_name(assignment, fragment):
    with pytest.raises(ConfigError) as error:
        load_preset("aihwkit-default").with_overrides([assignment])
    assert fragment in str(error.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("out_noise = 0.1\n", "config key out_noise belongs under [forward]"),
    ("inp_res = 0.0079\n", "config key inp_res belongs under [forward]"),
    ("[mapping]\ninp_res = 0.0079\n", "belongs under [forward]"),
    ("[forward]\ninp_bits = 7\ninp_res = 0.0079\n", "given twice"),
    ("[forward]\nout_noize = 0.1\n", "did you mean out_noise?"),
    ("[forward]\nw_noise_type = 'ADDITIVE_CONSTANT'\n", "not modelled"),
    ('base = "aihwkit-pmc"\n', "did you mean aihwkit-pcm?"),
    ("base = 3\n", "must be a preset name"),
    ('[forward]\nbase = "ideal"\n', "belongs at the top"),
])
def test_toml_refuses_with_the_section_or_the_nearest_name(tmp_path, text, fragment):
    path = tmp_path / "chip.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        AnalogConfig.load(path)
    assert fragment in str(error.value)


def test_a_partial_file_with_base_keeps_the_presets_other_keys(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text('base = "aihwkit-pcm"\n[forward]\nout_noise = 0.1\n')
    config = AnalogConfig.load(path)
    preset = load_preset("aihwkit-pcm")
    assert config.forward == dataclasses.replace(preset.forward, out_noise=0.1)
    assert (config.mapping, config.device, config.source) == (preset.mapping, preset.device, preset.source)
    assert config.name == "partial" and "forward.out_noise" in config.description


def test_preset_and_file_together_extend_the_preset(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("[forward]\nout_noise = 0.1\n")
    config = resolve_config("aihwkit-pcm", path, ["out_bits=8"])
    assert config.forward == dataclasses.replace(load_preset("aihwkit-pcm").forward, out_noise=0.1, out_bits=8)
    assert config.device == load_preset("aihwkit-pcm").device
    path.write_text('base = "aihwkit-default"\n')
    with pytest.raises(ConfigError, match="extends preset 'aihwkit-default', not 'aihwkit-pcm'"):
        resolve_config("aihwkit-pcm", path, [])


def test_a_partial_file_without_base_says_the_rest_are_defaults(tmp_path, caplog):
    path = tmp_path / "partial.toml"
    path.write_text("[forward]\nout_noise = 0.1\n")
    with caplog.at_level(logging.WARNING, logger="analog_onnx.config"):
        config = AnalogConfig.load(path)
    assert config.forward.inp_bits == 0
    assert any('base = "PRESET"' in m for m in messages(caplog))
    caplog.clear()
    full = tmp_path / "full.toml"
    full.write_text(load_preset("aihwkit-pcm").to_toml())  # `presets NAME > file`: every key set
    with caplog.at_level(logging.WARNING, logger="analog_onnx.config"):
        AnalogConfig.load(full)
    assert messages(caplog) == []


def test_the_model_records_the_resolved_config(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text('base = "aihwkit-default"\n[forward]\nout_noise = 0.1\n')
    config = AnalogConfig.load(path)
    recorded = read_analog_metadata(transform_model(gemm_relu(), config)).config
    assert recorded == config and recorded.forward.inp_bits == 7


def test_no_aihwkit_name_shadows_one_of_ours():
    ours = {key.rpartition(".")[2] for key, _ in _flat(AnalogConfig().to_dict())}
    assert not ours & set(vocabulary.BY_NAME)
    for term in vocabulary.TERMS:
        for key in term.ours:
            section, _, name = key.partition(".")
            assert name in AnalogConfig().to_dict()[section]


def test_the_docs_show_the_codes_table():
    text = DOCS.read_text()
    start = text.index("<!-- vocabulary table")
    table = text[text.index("\n", start) + 1:text.index("\n<!-- end of vocabulary table -->")]
    assert table == vocabulary.markdown_table()


def _flat(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
