"""Train the small example models in ``models/`` on the built-in digits data, and describe them.

Each model is trained by the ``analog-onnx train`` command (run as ``python -m analog_onnx.train``)
with fixed seeds on one CPU thread, exported by it, evaluated under its training noise by
``analog-onnx evaluate``'s Python API, and listed in ``models/README.md`` with its command line.

    python tools/make_example_models.py                # about a minute on 2 cores
    python tools/make_example_models.py --force        # replace existing files
    python tools/make_example_models.py --readme-only  # re-measure the models there, rewrite the README
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--data", "digits", "--epochs", "30", "--batch-size", "32", "--optimizer", "adam", "--lr", "2e-3",
          "--seed", "0", "--device", "cpu", "--no-progress"]


@dataclass(frozen=True)
class Example:
    name: str
    what: str
    noise_scale: float
    args: tuple[str, ...]


EXAMPLES = (
    Example("digits-mlp-baseline", "MLP 64-256-256-10, plain training", 1.0,
            ("--arch", "mlp", "--method", "baseline", "--preset", "hardening-additive", "--noise-scale", "1.0")),
    Example("digits-mlp-nit", "the same MLP trained with hardening-additive noise at noise_scale 1.0", 1.0,
            ("--arch", "mlp", "--method", "nit", "--preset", "hardening-additive", "--noise-scale", "1.0")),
    Example("digits-lenet5-baseline", "LeNet-5 (padded for 8x8 inputs), plain training", 0.5,
            ("--arch", "lenet5", "--method", "baseline", "--preset", "hardening-additive", "--noise-scale", "0.5")),
    Example("digits-lenet5-nit", "the same LeNet-5 trained with hardening-additive noise at noise_scale 0.5", 0.5,
            ("--arch", "lenet5", "--method", "nit", "--preset", "hardening-additive", "--noise-scale", "0.5")),
    Example("digits-lenet5-qat", "LeNet-5 with 8-bit constant-scale QAT (step 1/16): QDQ activations, int8 weights",
            0.5, ("--arch", "lenet5", "--method", "qat", "--bits", "8", "--act-scale", "0.0625",
                  "--preset", "hardening-additive", "--noise-scale", "0.5")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="where the models go")
    parser.add_argument("--force", action="store_true", help="replace existing model files")
    parser.add_argument("--readme-only", action="store_true", help="keep the models, re-measure them for the README")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    targets = [args.out / f"{e.name}.onnx" for e in EXAMPLES]
    if args.readme_only:
        (args.out / "README.md").write_text(_readme([_describe(e, t) for e, t in zip(EXAMPLES, targets, strict=True)]))
        print(f"wrote {args.out / 'README.md'}")
        return
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        sys.exit(f"make_example_models: {', '.join(existing)} exist; pass --force to replace them")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for example, target in zip(EXAMPLES, targets, strict=True):
            run = Path(work) / example.name
            command = [sys.executable, "-m", "analog_onnx.train", *example.args, *COMMON, "--out", str(run)]
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            shutil.copyfile(run / "model.onnx", target)
            rows.append(_describe(example, target))
            print(f"wrote {target}")
    (args.out / "README.md").write_text(_readme(rows))
    print(f"wrote {args.out / 'README.md'}")


def _describe(example: Example, path: Path) -> str:
    from analog_onnx.evaluate import RunSettings, evaluate

    result = evaluate(str(path), "digits", config="hardening-additive", noise_scales=[example.noise_scale],
                      settings=RunSettings(repeats=10, seed=0)).models[0]
    noisy = result.points[0].accuracy
    command = " ".join(["analog-onnx train", *example.args, *COMMON[:-1]])
    return (f"| `{path.name}` | {example.what} | {result.clean_accuracy:.3f} | {example.noise_scale:g} | "
            f"{noisy.mean:.3f} ± {noisy.std:.3f} | {path.stat().st_size // 1024} KB |\n\n"
            f"    {command}\n")


def _readme(rows: list[str]) -> str:
    table = "".join(r.split("\n\n")[0] + "\n" for r in rows)
    commands = "".join(r.split("\n\n")[1] + "\n" for r in rows)
    return f"""# Example models

Small models trained on the built-in `digits` data (8x8 grey images, 10 classes, 1437 training
and 360 test samples) by `tools/make_example_models.py`, which also wrote this file. Each is an
ordinary ONNX file (opset 17, dynamic batch) with the training normalization in
`analog_onnx.preprocess` and the training record in `analog_onnx.train`, so

    analog-onnx evaluate models/digits-mlp-nit.onnx models/digits-mlp-baseline.onnx \\
        --data digits --preset hardening-additive -n 0,0.25,0.5,1,2,4 -r 10 --seed 0

compares a noise-trained model with its baseline directly. The `-nit` models were trained with
the noise that `--preset hardening-additive` inserts (absolute additive Gaussian noise on the
inputs and on every Conv/Gemm/ReLU/pooling output), at the noise scale in the table.

| file | what | clean accuracy | noise scale | accuracy at that noise (10 runs, mean ± std) | size |
|---|---|---|---|---|---|
{table}
Accuracies are on the digits test split, as printed by

    analog-onnx evaluate models/FILE --data digits --preset hardening-additive -n SCALE -r 10 --seed 0

(batch size 256, the default). Every noise level reuses the same random draws, so the longer
sweep above prints the same numbers at these levels; the native kernels and the portable ONNX
function bodies give the same numbers too.

## How each was made

Each trains on 90% of the digits training split; the exported epoch is the best on the other 10%
(the trainer's default validation split), so the test split chooses nothing. Fixed seeds, CPU,
one thread (`OMP_NUM_THREADS=1`); the same torch version reproduces the files bit for bit.
Regenerate all of them with `python tools/make_example_models.py --force`.

{commands}"""


if __name__ == "__main__":
    main()
