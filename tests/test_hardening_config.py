"""Every config and noise level is checked before any work: finite numbers, keys the placement
reads, readable files; a changed config carries a name that says so."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import one_line_error

from analog_onnx.config import AnalogConfig, load_preset
from analog_onnx.errors import ConfigError
from analog_onnx.transform import read_analog_metadata

MODEL = Path(__file__).parents[1] / "models" / "digits-mlp-baseline.onnx"



@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_set_refuses_non_finite_numbers(run_cli, tmp_path, value):
    out = tmp_path / "a.onnx"
    one_line_error(run_cli("transform", MODEL, "-o", out, "-p", "aihwkit-default", "--set", f"out_noise={value}"),
                   "forward.out_noise must be a finite number")
    assert not out.exists()


@pytest.mark.parametrize(("suffix", "text"), [
    (".toml", '[placement]\nwhere = "mvm"\n[forward]\nout_noise = 1e400\n'),
    (".json", '{"placement": {"where": "mvm"}, "forward": {"out_noise": Infinity}}'),
    (".json", '{"placement": {"where": "mvm"}, "forward": {"inp_bound": NaN}}'),
])
def test_config_files_with_non_finite_numbers_fail_before_the_sweep(run_cli, tmp_path, suffix, text):
    config = tmp_path / f"c{suffix}"
    config.write_text(text)
    out = tmp_path / "report"
    one_line_error(run_cli("evaluate", MODEL, "-d", "digits", "-c", config, "-o", out), "must be a finite number")
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_sensitivity_refuses_a_non_finite_noise_scale(run_cli, tmp_path, value):
    out = tmp_path / "sens"
    one_line_error(run_cli("sensitivity", MODEL, "-d", "digits", "-p", "hardening-additive", "--noise-scale", value,
                           "-o", out), "--noise-scale must be a finite number > 0")
    assert not out.exists()


@pytest.mark.parametrize("levels", ["1,,2", "0.5,", ",1"])
def test_noise_scale_lists_with_empty_items_are_refused(run_cli, levels):
    one_line_error(run_cli("evaluate", MODEL, "-d", "digits", "-p", "hardening-additive", "-n", levels), "empty item")


@pytest.mark.parametrize(("name", "content"), [
    ("zero", None),  # /dev/zero: a file that never ends
    ("latin1.toml", "name = 'caf\xe9'".encode("latin-1")),
    ("deep.toml", b"a = " + b"[" * 100_000 + b"]" * 100_000),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000),
    ("big.toml", b"# " + b"x" * (2 << 20)),
])
def test_unreadable_configs_are_one_line(run_cli, tmp_path, name, content):
    config = Path("/dev/zero") if content is None else tmp_path / name
    if content is not None:
        config.write_bytes(content)
    code, _, err = run_cli("transform", MODEL, "-o", tmp_path / "a.onnx", "-c", config)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(("preset", "override", "key"), [
    ("hardening-additive", "out_noise=0.1", "forward.out_noise"),
    ("hardening-additive", "weights.bits=4", "weights.bits"),
    ("aihwkit-default", "noise.additive=0.5", "noise.additive"),
    ("aihwkit-default", "op_types=Relu", "placement.op_types"),
])
def test_keys_the_placement_ignores_are_refused(preset, override, key):
    with pytest.raises(ConfigError, match=f"config key {key} has no effect under placement.where"):
        load_preset(preset).with_overrides([override])


def test_a_changed_config_is_reported_under_its_own_name(run_cli, tmp_path):
    code, out, err = run_cli("transform", MODEL, "-o", tmp_path / "a.onnx", "-p", "aihwkit-default",
                             "--set", "out_noise=0.1")
    assert code == 0, err
    assert "aihwkit-default+overrides" in out
    assert read_analog_metadata(onnx.load(tmp_path / "a.onnx")).config.name == "aihwkit-default+overrides"
    code, out, err = run_cli("transform", MODEL, "-o", tmp_path / "b.onnx", "-p", "aihwkit-default",
                             "--exclude", "nothing-matches-this")
    assert code == 0 and "aihwkit-default+overrides" in out, err
    code, out, err = run_cli("transform", MODEL, "-o", tmp_path / "c.onnx", "-p", "aihwkit-default")
    assert code == 0 and "config aihwkit-default," in out, err


def test_config_files_are_named_after_themselves_unless_they_are_a_preset(tmp_path):
    unnamed = tmp_path / "my-chip.toml"
    unnamed.write_text('[placement]\nwhere = "mvm"\n[forward]\nout_noise = 0.1\n')
    assert AnalogConfig.load(unnamed).name == "my-chip"
    copy = tmp_path / "copy.toml"
    copy.write_text(load_preset("aihwkit-default").to_toml())
    assert AnalogConfig.load(copy).name == "aihwkit-default"
    copy.write_text(load_preset("aihwkit-default").with_overrides(["out_noise=0.2"]).to_toml()
                    .replace("+overrides", ""))
    assert AnalogConfig.load(copy).name == "aihwkit-default+overrides"


def test_transform_needs_a_hardware_choice(run_cli, tmp_path):
    one_line_error(run_cli("transform", MODEL, "-o", tmp_path / "a.onnx"), "choose the hardware: --preset NAME")
    assert not (tmp_path / "a.onnx").exists()


def test_an_include_that_matches_nothing_is_an_error(run_cli, tmp_path):
    one_line_error(run_cli("transform", MODEL, "-o", tmp_path / "a.onnx", "-p", "aihwkit-default",
                           "--include", "no-such-layer"), "--include 'no-such-layer' matches none of the sites")
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.parametrize(("preset", "args", "message"), [
    ("aihwkit-default", ["--exclude-op-type", "gemm"],
     "placement.exclude_op_types: 'gemm' is no ONNX operator (did you mean Gemm?)"),
    ("hardening-additive", ["--exclude-op-type", "relu"],
     "placement.exclude_op_types: 'relu' is no ONNX operator (did you mean Relu?)"),
    ("hardening-additive", ["--set", 'op_types=["relu", "Gemm"]'],
     "placement.op_types: 'relu' is no ONNX operator (did you mean Relu?)"),
], ids=["wrong case", "activations", "no operator"])
def test_a_misspelled_op_type_is_an_error(run_cli, tmp_path, preset, args, message):
    """As an --include that matches nothing: a misspelled op type left its layers analog unseen."""
    out = tmp_path / "a.onnx"
    one_line_error(run_cli("transform", MODEL, "-o", out, "-p", preset, *args), message)
    assert not out.exists()


def test_an_operator_the_model_lacks_may_be_excluded(run_cli, tmp_path):
    """One config serves many models (a study's archs): excluding Conv from an MLP is no mistake."""
    assert run_cli("transform", MODEL, "-o", tmp_path / "a.onnx", "-p", "aihwkit-default",
                   "--exclude-op-type", "Conv")[0] == 0
