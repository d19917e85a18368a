"""A small GPT on Python's standard library: perplexity under analog noise, and what NIT gains.

``run`` does what a user would, with the ``analog-onnx`` command: it trains ``gpt-mini`` twice
on the byte-level text of the top-level ``.py`` modules of this Python's standard library
(files split into train, validation and test by a hash of their name: ``text:`` data), once
plainly and once with noise-injection training (NIT) under the ``aihwkit-lightning`` preset at
noise scale 1, with the same seed, steps and data; ``best.pt`` of each is chosen on the
validation split. Both exports are then evaluated on the test split with ``analog-onnx
evaluate --data text:...``: perplexity and per-token top-1 over noise scales (aihwkit-lightning)
and over programmed PCM chips and time (aihwkit-lightning's tile holding PCM weights). ``run``
stores a compact ``results.json`` beside the docs; ``table`` prints the tables from it, and
``table --write`` puts them into docs/language-models.md between its markers.

Rule, fixed before the run (``VERDICT_RULE``): NIT shows a gain at a noisy setting (noise scale >
0) when its mean test perplexity is lower than the baseline's and the two 95% intervals over
repeats do not overlap. At noise scale 0 nothing is random: the row compares the models only.

Sized for about 30 minutes of one core (torch and onnxruntime run single-threaded):

    .venv/bin/python tools/lm_experiment.py run --out runs/lm-experiment
    .venv/bin/python tools/lm_experiment.py table --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from analog_onnx.config import load_preset
from analog_onnx.data.text import corpus_files

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "language-models" / "results.json"
DOC = ROOT / "docs" / "language-models.md"
BEGIN, END = "<!-- lm_experiment table: begin -->", "<!-- lm_experiment table: end -->"

WINDOW = 64
TRAIN = {"arch": "gpt-mini", "epochs": 2, "limit": 9600, "eval_limit": 256, "batch_size": 32,
         "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.01, "seed": 0}
NIT = {"preset": "aihwkit-lightning", "noise_scale": 1.0}
EVAL = {"limit": 256, "seed": 0, "batch_size": 64}
NOISE_SCALES = "0,0.5,1,2,3"
NOISE_REPEATS = 5
CHIPS = 5
TIMES = "1,3600,86400"  # s since programming: one second, one hour, one day
VERDICT_RULE = ("NIT gains at a noisy setting (noise scale > 0) when its mean test perplexity is lower than "
                "the baseline's and the 95% intervals over repeats do not overlap")


def corpus_spec() -> tuple[str, dict]:
    """The ``text:`` spec of the standard library's top-level modules, and facts to record about it."""
    pattern = f"{sysconfig.get_paths()['stdlib']}/*.py"
    _, files = corpus_files(pattern)
    digest = hashlib.sha256("\n".join(f.name for f in files).encode()).hexdigest()[:16]
    facts = {"files": len(files), "bytes": sum(f.stat().st_size for f in files), "file_list_sha256": digest,
             "python": sys.version.split()[0]}
    return f"text:{pattern}#window={WINDOW}", facts


def analog_onnx(*args: str) -> None:
    """Run the command as a user would, single-threaded, nice'd; stop on its first failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = ["nice", "-n", "5", sys.executable, "-m", "analog_onnx.cli", *args]
    print("+ analog-onnx", " ".join(args), flush=True)
    subprocess.run(command, check=True, env=env)


def train(out: Path, data: str, method: str) -> Path:
    args = ["train", "--data", data, "--out", str(out / method), "--method", method, "--no-progress", "--force"]
    for key, value in TRAIN.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    if method == "nit":
        args += ["--preset", NIT["preset"], "--noise-scale", str(NIT["noise_scale"])]
    analog_onnx(*args)
    return out / method / "model.onnx"


def evaluate(models: list[Path], data: str, out: Path, *extra: str) -> dict:
    args = ["evaluate", *map(str, models), "--data", data, "--split", "test", "--out", str(out), "--force",
            "--threads", "1"]
    for key, value in EVAL.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    analog_onnx(*args, *extra)
    return json.loads((out / "report.json").read_text())


def lightning_pcm(out: Path) -> Path:
    """aihwkit-lightning's tile holding aihwkit-pcm's PCM weights, as a config file."""
    config = load_preset("aihwkit-lightning")
    config.device = load_preset("aihwkit-pcm").device
    config.name, config.description = "aihwkit-lightning+pcm", "aihwkit-lightning's tile with aihwkit-pcm's PCM device"
    path = out / "aihwkit-lightning-pcm.toml"
    config.validate()
    config.save(path)
    return path


def summary(report: dict) -> list[dict]:
    """What the tables need from a report: per model and point, perplexity and top-1 with intervals."""
    rows = []
    for model in report["models"]:
        for point in model["points"]:
            rows.append({"model": model["model"] if "model" in model else model["name"], "name": model["name"],
                         "clean_perplexity": model["clean_perplexity"], "clean_accuracy": model["clean_accuracy"],
                         "noise_scale": point["noise_scale"], "t_inference": point.get("t_inference"),
                         "perplexity_mean": point["perplexity_mean"], "perplexity_ci95": point["perplexity_ci95"],
                         "accuracy_mean": point["accuracy_mean"], "accuracy_ci95": point["accuracy_ci95"],
                         "repeats": len(point["accuracies"])})
    return rows


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data, facts = corpus_spec()
    started = time.perf_counter()
    models = [train(out, data, method) for method in ("baseline", "nit")]
    trained = time.perf_counter()
    noise = evaluate(models, data, out / "eval-noise", "--preset", NIT["preset"], "--noise-scales", NOISE_SCALES,
                     "--repeats", str(NOISE_REPEATS))
    chips = evaluate(models, data, out / "eval-chips", "--config", str(lightning_pcm(out)), "--noise-scales", "1",
                     "--chips", str(CHIPS), "--reads", "1", "--t-inference", TIMES)
    done = time.perf_counter()
    history = {method: [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]
               for method in ("baseline", "nit")}
    results = {"corpus": facts, "window": WINDOW, "train": TRAIN, "nit": NIT, "evaluate": EVAL,
               "test_windows": noise["data"]["samples"], "scored_tokens": noise["data"]["scored"],
               "chance_accuracy": noise["chance_accuracy"], "verdict_rule": VERDICT_RULE,
               "seconds": {"training": round(trained - started), "evaluation": round(done - trained)},
               "validation": {m: {"best_epoch": max(h, key=lambda e: e["noisy_acc"] if m == "nit" else e["clean_acc"])
                                  ["epoch"], "epochs": len(h)} for m, h in history.items()},
               "noise": summary(noise), "chips": summary(chips)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    print(tables(results))


def verdict(base: dict, nit: dict) -> str:
    if base["noise_scale"] == 0:
        return "(no noise)"
    if base["perplexity_ci95"] is None or nit["perplexity_ci95"] is None:
        return "n/a (one repeat)"
    gain = nit["perplexity_mean"] < base["perplexity_mean"] and nit["perplexity_ci95"][1] < base["perplexity_ci95"][0]
    return "NIT gains" if gain else "no gain shown"


def _interval(row: dict) -> str:
    low, high = row["perplexity_ci95"] or (row["perplexity_mean"],) * 2
    return f"{row['perplexity_mean']:.3f} ({low:.3f}-{high:.3f})"


def tables(results: dict) -> str:
    """The two Markdown tables of docs/language-models.md, from stored results only."""
    lines = [f"Test split: {results['test_windows']} windows of {results['window']} bytes "
             f"({results['scored_tokens']:,} predicted tokens), chance top-1 {results['chance_accuracy']:.4f} "
             f"(1/256); clean perplexity: "
             + ", ".join(f"{r['model']} {r['clean_perplexity']:.3f} (top-1 {r['clean_accuracy']:.4f})"
                         for r in results["noise"] if r["noise_scale"] == 0) + ".", "",
             f"Perplexity (mean and 95% interval over {results['noise'][0]['repeats']} repeats) and per-token "
             f"top-1 under "
             f"`{results['nit']['preset']}`, by noise scale:", "",
             "| noise scale | baseline perplexity | NIT perplexity | baseline top-1 | NIT top-1 | verdict |",
             "|---|---|---|---|---|---|"]
    by = {(r["model"], r["noise_scale"], r["t_inference"]): r
          for section in ("noise", "chips") for r in results[section]}
    for scale in sorted({r["noise_scale"] for r in results["noise"]}):
        base, nit = by[("baseline/model", scale, None)], by[("nit/model", scale, None)]
        lines.append(f"| {scale:g} | {_interval(base)} | {_interval(nit)} | {base['accuracy_mean']:.4f} | "
                     f"{nit['accuracy_mean']:.4f} | {verdict(base, nit)} |")
    lines += ["", f"`aihwkit-lightning` holding PCM weights (`aihwkit-pcm`'s device), noise scale 1, "
              f"{results['chips'][0]['repeats']} programmed chips per time:", "",
              "| time since programming | baseline perplexity | NIT perplexity | baseline top-1 | NIT top-1 "
              "| verdict |",
              "|---|---|---|---|---|---|"]
    for t in sorted({r["t_inference"] for r in results["chips"]}):
        base, nit = by[("baseline/model", 1.0, t)], by[("nit/model", 1.0, t)]
        lines.append(f"| {t:g} s | {_interval(base)} | {_interval(nit)} | {base['accuracy_mean']:.4f} | "
                     f"{nit['accuracy_mean']:.4f} | {verdict(base, nit)} |")
    return "\n".join(lines)


def write_table(results: dict) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC.relative_to(ROOT)} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{tables(results)}\n{END}{tail}")
    print(f"wrote the tables into {DOC.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="train, export, evaluate; store results.json").add_argument(
        "--out", type=Path, default=ROOT / "runs" / "lm-experiment", help="run folder (checkpoints, reports)")
    commands.add_parser("table", help="print the tables from results.json").add_argument(
        "--write", action="store_true", help="put them into docs/language-models.md")
    args = parser.parse_args()
    if args.command == "run":
        run(args.out)
        return
    results = json.loads(RESULTS.read_text())
    if args.write:
        write_table(results)
    else:
        print(tables(results))


if __name__ == "__main__":
    main()
