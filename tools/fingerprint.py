"""Behaviour fingerprint: the numbers a refactoring must not change, as one JSON file.

    python tools/fingerprint.py OUT.json [--models DIR]
    python tools/fingerprint.py --compare BEFORE.json AFTER.json

For every model (the shipped ``models/*.onnx`` and the ``.onnx`` files in ``--models``) and every
hardware config (each preset and a few variants), it records

- ``outputs``: sha256 of the transformed model's outputs on fixed inputs at fixed noise scales,
  seeds and chips (``chip_seed``: its default -1 is a fresh chip per run), under the function
  bodies and under the native kernels;
- ``nodes``: sha256 of the transformed graph's nodes and functions (names, ops, attributes), which
  does not look at graph inputs, initializers or metadata;
- ``strip``: whether ``strip`` gives back the original model byte for byte;
- ``twin``: sha256 of a zoo LeNet-5's output with the torch twins attached (fixed torch seed);
- ``demo``: the demo's sweep (both shipped LeNet-5s, hardening-additive, 13 levels, 5 repeats,
  seed 0) and a per-site sensitivity, as their report dicts.

``--compare`` lists every entry that differs between two such files (a path per difference) and
exits 1 when there is one. Run both with the same ``PYTHONHASHSEED`` (say 0): onnxscript orders a
function body's loop-carried values by set iteration, so ``nodes`` otherwise differs between
processes. To fingerprint the code before a change, run this script with
``PYTHONPATH`` pointing at an export of the old commit (``git archive``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx

from analog_onnx.config import load_preset, preset_names
from analog_onnx.errors import AnalogError
from analog_onnx.runtime import make_session
from analog_onnx.transform import strip_model, transform_model

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "aihwkit-default+w4": ["weights.bits=4"],
    "aihwkit-default+w4-tensor": ["weights.bits=4", "weights.per_channel=false"],
    "aihwkit-default+matmul-first-digital": ["activation_matmul=true", "keep_first_digital=true"],
    "hardening-additive+mul-relative": ["multiplicative=0.05", "relative=true", "network_inputs=false"],
}
LEVELS = ((0.0, 3), (0.5, 11), (1.0, 12345))  # (noise_scale, seed); chip_seed is seed + 1


def _configs() -> dict:
    configs = {name: load_preset(name) for name in preset_names()}
    for name, overrides in VARIANTS.items():
        configs[name] = load_preset(name.split("+")[0]).with_overrides(overrides)
    return configs


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:20]


def _node_digest(model: onnx.ModelProto) -> str:
    graph = onnx.GraphProto()
    graph.node.extend(model.graph.node)
    return _sha(graph.SerializeToString(deterministic=True),
                *(f.SerializeToString(deterministic=True) for f in model.functions))


def _feeds(session) -> dict[str, np.ndarray]:
    """Fixed data for every tensor input (rank > 0); scalars are the control inputs."""
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d if isinstance(d, int) else 4 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs() if i.shape}


def _outputs(model: onnx.ModelProto, native: bool) -> str:
    session = make_session(model, native=native)
    feeds = _feeds(session)
    names = {i.name for i in (*session.get_inputs(), *session.get_overridable_initializers())}
    parts = []
    for scale, seed in LEVELS:
        run = dict(feeds)
        if "noise_scale" in names:
            run["noise_scale"] = np.array(scale, np.float32)
        if "seed" in names:
            run["seed"] = np.array(seed, np.int64)
        if "chip_seed" in names:  # its default (-1) is a fresh chip on every run
            run["chip_seed"] = np.array(seed + 1, np.int64)
        parts += [o.tobytes() for o in session.run(None, run)]
    return _sha(*parts)


def model_fingerprints(paths: list[Path]) -> dict:
    result = {}
    for path in paths:
        original = onnx.load(str(path))
        for name, config in _configs().items():
            key = f"{path.name} {name}"
            try:
                transformed = transform_model(original, config)
            except AnalogError as e:
                result[key] = {"error": str(e)}
                continue
            stripped = strip_model(transformed)
            result[key] = {
                "nodes": _node_digest(transformed),
                "outputs_function": _outputs(transformed, native=False),
                "outputs_native": _outputs(transformed, native=True),
                "strip": stripped.SerializeToString() == original.SerializeToString(),
            }
    return result


def twin_fingerprints() -> dict:
    import torch

    from analog_onnx.train.hardware import attach_hardware
    from analog_onnx.train.zoo import build_model

    result = {}
    for name, config in _configs().items():
        torch.manual_seed(0)
        model = build_model("lenet5", (1, 8, 8), 10).eval()
        x = torch.randn(4, 1, 8, 8)
        attach_hardware(model, config, (1, 8, 8))
        torch.manual_seed(1)
        with torch.no_grad():
            result[name] = _sha(model(x).numpy().tobytes())
    return result


def demo_numbers() -> dict:
    from analog_onnx.evaluate import RunSettings, evaluate, sensitivity

    models = [str(ROOT / "models" / f"digits-lenet5-{kind}.onnx") for kind in ("baseline", "nit")]
    report = evaluate(models, "digits", config="hardening-additive", noise_scales="log:0.05:5:13",
                      settings=RunSettings(repeats=5, seed=0))
    fragile = sensitivity(models[0], "digits", config="aihwkit-default", noise_scale=2.0,
                          settings=RunSettings(repeats=2, seed=0))
    return {"evaluate": report.to_dict(), "sensitivity": fragile.to_dict()}


def differences(before: object, after: object, path: str = "") -> list[str]:
    """The paths at which two JSON values differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for key in sorted(set(before) | set(after), key=str)
                for d in differences(before.get(key, "<missing>"), after.get(key, "<missing>"), f"{path}/{key}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in differences(b, a, f"{path}/{i}")]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def compare(before_path: str, after_path: str) -> int:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    found = differences(before, after)
    print("\n".join(found))
    print(f"{len(before['models'])} model/config pairs, {len(before['twins'])} twins, demo sweep and sensitivity: "
          f"{len(found)} differences", file=sys.stderr)
    return 1 if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--models", help="a folder of more .onnx models")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not args.out:
        parser.error("give OUT.json or --compare BEFORE AFTER")
    paths = sorted((ROOT / "models").glob("*.onnx"))
    if args.models:
        paths += sorted(Path(args.models).glob("*.onnx"))
    data = {"models": model_fingerprints(paths), "twins": twin_fingerprints(), "demo": demo_numbers()}
    Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    print(f"{len(data['models'])} model/config pairs, {len(data['twins'])} twins -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
