"""Accuracy of a shipped digits model on PCM chips over time: analog_onnx.devices vs aihwkit.

Loads an example model's weights into the project's torch architecture and, for each chip and
time since programming, evaluates the digits test split with the weights each library programs,
drifts and reads (one read per chip and time), without and with global drift compensation. The
periphery is ideal on both sides (aihwkit ``forward.is_perfect``), so the table compares the
device model alone.

With ``--periphery aihwkit-default`` our side is the real path instead: the ONNX model through
``transform`` with the ``aihwkit-pcm`` preset and ``evaluate`` (one chip per repeat, native
kernels when built), against aihwkit's ``TorchInferenceRPUConfig`` with its default periphery and
the same PCM noise model. Run with aihwkit's virtualenv (tools/make_aihwkit_venv.sh):

    PYTHONPATH=. .venv-aihwkit/bin/python tools/crosscheck_devices_accuracy.py --chips 10
    PYTHONPATH=. .venv-aihwkit/bin/python tools/crosscheck_devices_accuracy.py --chips 10 --periphery aihwkit-default
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import onnx
import torch
from aihwkit.inference.compensation.drift import GlobalDriftCompensation
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from onnx import numpy_helper
from torch import nn

from analog_onnx.config import load_preset
from analog_onnx.data import load_dataset
from analog_onnx.data.preprocess import from_model
from analog_onnx.devices import DeviceConfig, make_device
from analog_onnx.devices.chip import program_layer, read_weights
from analog_onnx.devices.streams import chip_draws, read_normals
from analog_onnx.evaluate import RunSettings, evaluate
from analog_onnx.train.zoo import build_model

TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 365 * 86400.0}


def load_model(path: str) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """The model's torch twin with its weights, and the normalized digits test split."""
    proto = onnx.load(path)
    record = json.loads(next(p.value for p in proto.metadata_props if p.key == "analog_onnx.train"))
    data = load_dataset("digits", "test")
    model = build_model(record["arch"], tuple(data.x.shape[1:]), data.num_classes)
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
    model.load_state_dict(state)
    normalization = from_model(proto)
    x = normalization.apply(data.x) if normalization else data.x
    return model.eval(), x, data.y


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def ours(model: nn.Module, t: float, compensate: bool, chip: int) -> nn.Module:
    """Every Conv/Linear weight programmed on chip ``chip`` (layer i is stream i), one read."""
    config = DeviceConfig(model="pcm", drift_compensation=compensate)
    device = make_device(config)
    chip_model = copy.deepcopy(model)
    layers = [m for m in chip_model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for stream, layer in enumerate(layers):
        weights = layer.weight.detach().numpy()
        programmed = program_layer(weights, device, config, chip_draws(chip, stream, weights.shape), t)
        read = read_weights(programmed, device, config, read_normals(chip, stream, weights.shape))
        layer.weight.data = torch.from_numpy(np.asarray(read))
    return chip_model


def through_evaluate(path: str, chips: int) -> dict[tuple[float, bool], np.ndarray]:
    """Accuracy per chip at every time and compensation: the transformed model run by ``evaluate``."""
    report = evaluate(path, "digits", config=load_preset("aihwkit-pcm"), noise_scales=[1.0],
                      settings=RunSettings(repeats=chips, seed=0, top_k=None), t_inference=list(TIMES.values()),
                      drift_compensation="both")
    return {(m.t_inference, m.drift_compensation): np.array(m.points[0].accuracies) for m in report.models}


def aihwkit(model: nn.Module, t: float, compensate: bool, chip: int, perfect: bool = True) -> nn.Module:
    config = TorchInferenceRPUConfig()
    config.forward.is_perfect = perfect
    # aihwkit's defaults as they are: aihwkit-pcm models the same tile (omega 0, 512x512, bound management)
    config.drift_compensation = GlobalDriftCompensation() if compensate else None
    torch.manual_seed(chip)
    analog = convert_to_analog(copy.deepcopy(model), config).eval()
    analog.program_analog_weights()
    analog.drift_analog_weights(t)
    return analog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/digits-lenet5-baseline.onnx")
    parser.add_argument("--chips", type=int, default=10)
    parser.add_argument("--periphery", choices=("ideal", "aihwkit-default"), default="ideal")
    args = parser.parse_args()
    model, x, y = load_model(args.model)
    real_path = args.periphery == "aihwkit-default"
    evaluated = through_evaluate(args.model, args.chips) if real_path else {}
    print(f"{args.model}: clean accuracy {accuracy(model, x, y):.4f}, {len(y)} test samples, {args.chips} chips, "
          f"{args.periphery} periphery; each cell: mean over chips ± its standard error")
    print("| t | compensation | ours | aihwkit |\n|---|---|---|---|")
    for label, t in TIMES.items():
        for compensate in (False, True):
            if real_path:
                theirs = [aihwkit(model, t, compensate, chip, perfect=False) for chip in range(args.chips)]
                runs = [evaluated[(t, compensate)], [accuracy(chip_model, x, y) for chip_model in theirs]]
            else:
                runs = [[accuracy(run(model, t, compensate, chip), x, y) for chip in range(args.chips)]
                        for run in (ours, aihwkit)]
            cells = [f"{np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)):.4f}" for v in runs]
            print(f"| {label} | {'on' if compensate else 'off'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
