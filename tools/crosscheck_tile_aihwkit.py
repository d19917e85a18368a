"""Cross-check the AnalogTile (preset ``aihwkit-default``) against aihwkit's TorchInferenceRPUConfig.

Two tables, each ours (the transformed ONNX model in onnxruntime) beside aihwkit 1.1 with its
default inference forward pass (weights programmed exactly: no device noise):

1. single layers on random inputs: the output error ``y - y_exact`` in units of ``max|y_exact|``,
   its mean and standard deviation, at out_noise 0 and 0.06 (each averaged over repeats with the
   standard error of the average): a Linear(1024, 16) that spans two tiles and a Conv2d(64, 16, 3)
   (576 inputs: two tiles of 288), each with PyTorch's default initialization (no output saturates)
   and with N(0, 1) weights (outputs saturate: bound management at work);
2. accuracy of the shipped digits models (MLP, LeNet-5) on the digits test split over repeats at
   several out_noise levels (the mean over repeats with its standard error).

aihwkit re-runs a whole batch when one output saturates; ours re-runs only the vectors that
saturate. The "aihwkit, per vector" column of the layer table feeds aihwkit one input vector at a
time (a Linear's rows; a Conv2d's im2col patches through an analog Linear holding the reshaped
kernel), so its bound management acts per vector as ours; the accuracy table's "batch of 1"
column feeds one sample (image) at a time.

Run with aihwkit's virtualenv (tools/make_aihwkit_venv.sh) and this checkout on the path:

    PYTHONPATH=. .venv-aihwkit/bin/python tools/crosscheck_tile_aihwkit.py --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import io
import json

import numpy as np
import onnx
import torch
from aihwkit.nn.conversion import convert_to_analog
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from onnx import numpy_helper
from torch import nn

from analog_onnx.config import load_preset
from analog_onnx.data import load_dataset
from analog_onnx.data.preprocess import from_model
from analog_onnx.runtime import make_session
from analog_onnx.train.zoo import build_model
from analog_onnx.transform import transform_model

LEVELS = (0.06, 0.15, 0.3, 0.5, 1.0)  # out_noise for the accuracy table


def aihwkit_layer(module: nn.Module, out_noise: float) -> nn.Module:
    config = TorchInferenceRPUConfig()
    config.forward.out_noise = out_noise
    return convert_to_analog(copy.deepcopy(module), config).eval()


def ours_session(module: nn.Module, example: torch.Tensor, out_noise: float):
    """The module exported to ONNX and transformed with aihwkit-default at ``out_noise``."""
    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    config = load_preset("aihwkit-default").with_overrides([f"out_noise={out_noise}"])
    return make_session(transform_model(onnx.load_from_string(buffer.getvalue()), config), native=False)


def run_ours(session, x: np.ndarray, seed: int) -> np.ndarray:
    feeds = {"x": x, "noise_scale": np.array(1.0, np.float32), "seed": np.array(seed, np.int64)}
    return session.run(None, feeds)[0]


def run_aihwkit(analog: nn.Module, x: np.ndarray, seed: int, batch: int | None = None) -> np.ndarray:
    torch.manual_seed(seed)
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        if batch is None:
            return analog(tensor).numpy()
        return torch.cat([analog(part) for part in tensor.split(batch)]).numpy()


def run_aihwkit_per_vector(layer: nn.Module, out_noise: float, x: np.ndarray, seed: int) -> np.ndarray:
    """aihwkit on one input vector at a time (a Conv2d's patches through an analog Linear)."""
    if isinstance(layer, nn.Linear):
        return run_aihwkit(aihwkit_layer(layer, out_noise), x, seed, batch=1)
    linear = nn.Linear(layer.weight[0].numel(), layer.out_channels)
    linear.weight.data = layer.weight.detach().reshape(layer.out_channels, -1).clone()
    linear.bias.data = layer.bias.detach().clone()
    patches = nn.functional.unfold(torch.from_numpy(x), layer.kernel_size, padding=layer.padding, stride=layer.stride)
    batch, _, count = patches.shape
    y = run_aihwkit(aihwkit_layer(linear, out_noise), patches.transpose(1, 2).reshape(batch * count, -1).numpy(),
                    seed, batch=1)
    side = int(round(count**0.5))  # the layer table's convolutions keep square maps
    return y.reshape(batch, count, -1).transpose(0, 2, 1).reshape(batch, -1, side, side)


def cell(values: list[float], digits: int = 5) -> str:
    values = np.asarray(values)
    if len(values) == 1 or np.ptp(values) == 0:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1) / np.sqrt(len(values)):.{digits}f}"


def layer_table(repeats: int) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    layers = {
        "Linear(1024, 16)": (nn.Linear(1024, 16), rng.standard_normal((64, 1024)).astype(np.float32)),
        "Conv2d(64, 16, 3)": (nn.Conv2d(64, 16, 3, padding=1), rng.standard_normal((4, 64, 8, 8)).astype(np.float32)),
    }
    print("| layer | weights | out_noise | error mean: ours | aihwkit | aihwkit, per vector "
          "| error std: ours | aihwkit | aihwkit, per vector |\n|---|---|---|---|---|---|---|---|---|")
    for name, (module, x) in layers.items():
        for weights in ("default init", "N(0, 1)"):
            torch.manual_seed(1)
            layer = copy.deepcopy(module)
            if weights != "default init":
                layer.weight.data = torch.randn_like(layer.weight)
            with torch.no_grad():
                exact = layer(torch.from_numpy(x)).numpy()
            for out_noise in (0.0, 0.06):
                n = repeats if out_noise else 1
                session = ours_session(layer, torch.from_numpy(x[:2]), out_noise)
                analog = aihwkit_layer(layer, out_noise)
                runs = {"ours": [run_ours(session, x, seed) for seed in range(n)],
                        "aihwkit": [run_aihwkit(analog, x, seed) for seed in range(n)],
                        "per vector": [run_aihwkit_per_vector(layer, out_noise, x, seed) for seed in range(n)]}
                peak = np.abs(exact).max()
                means = [cell([float(((y - exact) / peak).mean()) for y in ys]) for ys in runs.values()]
                stds = [cell([float(((y - exact) / peak).std()) for y in ys]) for ys in runs.values()]
                print(f"| {name} | {weights} | {out_noise} | " + " | ".join(means + stds) + " |", flush=True)


def load_digits_model(path: str) -> tuple[onnx.ModelProto, nn.Module, np.ndarray, np.ndarray]:
    """The ONNX model, its torch twin with the same weights, and the normalized digits test split."""
    proto = onnx.load(path)
    record = json.loads(next(p.value for p in proto.metadata_props if p.key == "analog_onnx.train"))
    data = load_dataset("digits", "test")
    model = build_model(record["arch"], tuple(data.x.shape[1:]), data.num_classes)
    model.load_state_dict({i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer})
    normalization = from_model(proto)
    x = normalization.apply(data.x) if normalization else data.x
    return proto, model.eval(), x.astype(np.float32), data.y


def accuracy_table(repeats: int, models: list[str]) -> None:
    print("| model | out_noise | ours | aihwkit | aihwkit, batch of 1 |\n|---|---|---|---|---|")
    for path in models:
        proto, model, x, y = load_digits_model(path)
        name = path.rsplit("/", 1)[-1].removesuffix(".onnx")
        session = make_session(transform_model(proto, load_preset("aihwkit-default")), native=False)
        input_name = session.get_inputs()[0].name
        for level in LEVELS:
            feeds = {input_name: x, "noise_scale": np.array(level / 0.06, np.float32)}
            ours = [float((session.run(None, {**feeds, "seed": np.array(seed, np.int64)})[0].argmax(1) == y).mean())
                    for seed in range(repeats)]
            analog = aihwkit_layer(model, level)
            theirs = [float((run_aihwkit(analog, x, seed).argmax(1) == y).mean()) for seed in range(repeats)]
            single = [float((run_aihwkit(analog, x, seed, batch=1).argmax(1) == y).mean())
                      for seed in range(max(1, repeats // 4))]
            print(f"| {name} | {level} | {cell(ours, 4)} | {cell(theirs, 4)} | {cell(single, 4)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="*",
                        default=["models/digits-mlp-baseline.onnx", "models/digits-lenet5-baseline.onnx"])
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_layers:
        layer_table(args.repeats)
        print()
    accuracy_table(args.repeats, args.models)


if __name__ == "__main__":
    main()
