"""``inspect`` of a transformed model: one row per analog layer (ops, weights, tile split, bits,
bounds, noise, device) and the resolved config; the API's site objects print on one line."""

from __future__ import annotations

import json

import onnx
from helpers import digits_mlp

from analog_onnx.config import load_preset
from analog_onnx.transform import analog_sites, transform_model


def test_inspect_shows_each_layers_tiles_bits_and_device(run_cli, tmp_path):
    path = tmp_path / "pcm.onnx"
    config = load_preset("aihwkit-pcm").with_overrides(["max_input_size=40"])
    onnx.save(transform_model(digits_mlp(), config), path)
    layers = {row["name"]: row for row in json.loads(run_cli("inspect", path, "--json")[1])["layers"]}
    assert layers["fc1"] == {"name": "fc1", "ops": "DeviceWeights + AnalogTile", "weights": "32x64",
                             "tiles": "2x1 K=32+32", "bits": "7/9", "bounds": "1/12", "noise": "out_noise 0.06",
                             "device": "pcm"}
    assert layers["fc2"]["tiles"] == "1x1" and layers["fc2"]["weights"] == "10x32"
    code, out, _ = run_cli("inspect", path)
    text = " ".join(out.split())
    assert code == 0 and "2 analog sites" in text and "mapping.max_input_size = 40" in text
    assert "control inputs: noise_scale, seed, chip_seed, t_inference" in text


def test_inspect_shows_activation_noise_sites(run_cli, tmp_path):
    path = tmp_path / "act.onnx"
    onnx.save(transform_model(digits_mlp(), load_preset("hardening-additive")), path)
    layers = json.loads(run_cli("inspect", path, "--json")[1])["layers"]
    assert [(r["name"], r["ops"], r["noise"]) for r in layers] == [
        ("x", "Noise", "sigma_add 1"), ("fc1", "Noise", "sigma_add 1"), ("relu1", "Noise", "sigma_add 1"),
        ("fc2", "Noise", "sigma_add 1")]


def test_site_repr_is_one_line_without_weight_values():
    site = analog_sites(digits_mlp(), load_preset("aihwkit-default"))[0]
    assert repr(site) == "Site(name='fc1', op_type='Gemm', value='h', weight=64x32 float32)"


def test_the_cli_starts_without_onnx_matplotlib_or_the_evaluation():
    """`--help` and `presets` start fast because the heavy parts load only in the commands that
    run them (tools/bench_startup.py measures the time; this pins the cause)."""
    import subprocess
    import sys

    code = ("import sys, analog_onnx.cli; heavy = [m for m in ('onnx', 'onnxscript', 'onnx_ir', 'matplotlib', "
            "'onnxruntime', 'torch', 'analog_onnx.evaluate.runner') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
