"""A Llama-architecture language model of today's size through analog-onnx, step by step, with
the peak memory and time of each step and their ratios to clean onnxruntime.

The model is built from transformers' ``LlamaConfig`` with random weights (seeded; nothing is
downloaded), exported by torch's dynamo exporter with its weights in an external data file, then
transformed with each preset by the ``analog-onnx`` command and run for one forward pass of one
sequence, natively (our kernels, ``make_session``) and through plain onnxruntime (the function
bodies, no library loaded). Every step runs in its own process under ``/usr/bin/time -v``, one
after the other (never two at once), so each peak RSS is that step's alone (a process's imports
included). The timed forward pass draws the preset's noise; a second one with ``noise_scale`` 0
gives the logits on which native and function bodies are compared (quantization and bound
management are deterministic: they agree to float tolerance). The function bodies run with
onnxruntime's constant folding off: it would fold each layer's weight-side chain (padding, tiles,
scaling) into several copies of the weights at once, more memory than this machine lends a step.

    pip install transformers                                 # not a dependency of analog-onnx
    nice python tools/big_model.py --out DIR                  # 1.1 B parameters: ~10 GB of disk
    nice python tools/big_model.py --out DIR --size tiny      # the same steps in seconds
    python tools/big_model.py --render DIR/results.json       # the markdown table of a stored run
    python tools/big_model.py --render docs/big_model_results.json --write   # into docs/performance.md

``--steps`` runs some steps again on an existing DIR (their results replace the stored ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from doc_block import replace_block

SIZES = {  # TinyLlama-1.1B's architecture (1.10 B parameters), and a small one for a quick check
    "1.1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000},
    "tiny": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512},
}
PRESETS = ("aihwkit-default", "aihwkit-pcm")
FOLDING_OFF = ["ConstantFolding"]
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN, END = "<!-- big_model table: begin -->", "<!-- big_model table: end -->"
STEPS = ("export", "run-clean", *(f"transform-{p}" for p in PRESETS),
         *(f"run-{p}-{path}" for p in PRESETS for path in ("native", "bodies")))


def model_file(out: Path, preset: str | None = None) -> Path:
    return out / ("llama.onnx" if preset is None else f"llama.{preset}.onnx")


def token_ids(tokens: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(1, tokens), dtype=np.int64)


# -- the steps (each runs in a child process) ----------------------------------------------------
def export(out: Path, size: str, tokens: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], max_position_embeddings=max(2048, tokens), tie_word_embeddings=False)
    with torch.no_grad():
        model = LlamaForCausalLM(config).eval()
        parameters = sum(p.numel() for p in model.parameters())
        ids = torch.from_numpy(token_ids(tokens, config.vocab_size))
        program = torch.onnx.export(model, (ids,), dynamo=True, input_names=["input_ids"], output_names=["logits"],
                                    kwargs={"use_cache": False}, optimize=True)
    program.save(str(model_file(out)), external_data=True)
    return {"parameters": parameters}


def transform(out: Path, preset: str) -> dict:
    command = [sys.executable, "-m", "analog_onnx.cli", "transform", str(model_file(out)), "-o",
               str(model_file(out, preset)), "-p", preset, "--force"]
    subprocess.run(command, check=True)
    return {}


def run(out: Path, preset: str | None, native: bool, tokens: int, vocab: int, threads: int) -> dict:
    import onnxruntime as ort

    from analog_onnx.runtime import make_session

    path = model_file(out, preset)
    start = time.perf_counter()
    if native:
        session = make_session(path, threads=threads, native=True)
    else:  # plain onnxruntime as anyone has it: no library of ours registered; constant folding off,
        # else it folds each layer's weight-side chain (padding, tiling, scaling) into copies of W
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = threads, 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=FOLDING_OFF)
    loaded = time.perf_counter()
    feeds = {"input_ids": token_ids(tokens, vocab)}
    logits = session.run(["logits"], feeds)[0]  # the preset's noise, at its default seed
    done = time.perf_counter()
    if preset is not None:  # the deterministic part (DAC, ADC, bound management), for the comparison
        exact = session.run(["logits"], {**feeds, "noise_scale": np.array(0, np.float32)})[0]
        np.save(out / f"logits-{preset}-{'native' if native else 'bodies'}.npy", exact[0, -8:])
    return {"session_s": loaded - start, "forward_s": done - loaded, "finite": bool(np.isfinite(logits).all())}


def run_step(step: str, out: Path, size: str, tokens: int, threads: int) -> dict:
    vocab = SIZES[size]["vocab_size"]
    if step == "export":
        return export(out, size, tokens)
    if step == "run-clean":
        return run(out, None, False, tokens, vocab, threads)
    if step.startswith("transform-"):
        return transform(out, step.removeprefix("transform-"))
    preset, path = step.removeprefix("run-").rsplit("-", 1)
    return run(out, preset, path == "native", tokens, vocab, threads)


def memory_guard(max_gib: float) -> None:
    """End this process (status 3) when its RSS passes ``max_gib``: a shared machine must not swap."""
    while True:
        rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
        if rss_kb > max_gib * 2**20:
            print(f"stopped: RSS passed {max_gib} GiB", file=sys.stderr, flush=True)
            os._exit(3)
        time.sleep(0.2)


# -- the parent: each step under /usr/bin/time -v ------------------------------------------------
def measured(step: str, args: argparse.Namespace) -> dict:
    """Run ``step`` in a child under ``/usr/bin/time -v``: its own results plus peak RSS and wall time."""
    report = args.out / f".{step}.json"
    command = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", step, "--out", str(args.out),
               "--size", args.size, "--tokens", str(args.tokens), "--threads", str(args.threads),
               "--max-gib", str(args.max_gib)]
    load = os.getloadavg()[0]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        print(f"step {step} failed:\n{child.stderr[-3000:]}", file=sys.stderr, flush=True)
        lines = child.stderr.strip().splitlines()[-25:]  # the reason and time's report, not its command (paths)
        return {"failed": [line for line in lines if "Command being timed" not in line]}
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", child.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", child.stderr).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    result = json.loads(report.read_text())
    report.unlink()
    print(f"{step}: {rss_kb / 2**20:.2f} GiB peak, {seconds:.1f} s", file=sys.stderr, flush=True)
    return {**result, "peak_gib": rss_kb / 2**20, "wall_s": seconds, "load_before": load}


def file_sizes(out: Path) -> dict[str, float]:
    return {path.name: path.stat().st_size / 2**30 for path in sorted(out.glob("llama*.onnx*"))}


def agreement(out: Path) -> dict[str, float]:
    """Per preset: the largest |native - function bodies| over the last 8 positions' logits,
    relative to the largest |logit|."""
    found = {}
    for preset in PRESETS:
        files = [out / f"logits-{preset}-{path}.npy" for path in ("native", "bodies")]
        if all(f.exists() for f in files):
            native, bodies = (np.load(f) for f in files)
            found[preset] = float(np.abs(native - bodies).max() / np.abs(bodies).max())
    return found


def render(results: dict) -> str:
    """The markdown table of a stored run: every step's peak memory and time, and the ratios of the
    runs to the clean run."""
    steps, clean = results["steps"], results["steps"].get("run-clean")
    lines = [f"Llama-architecture, {results['parameters'] / 1e9:.2f} B parameters (random weights), one forward "
             f"pass of batch 1 x {results['tokens']} tokens, {results['threads']} threads; {results['machine']}.",
             "",
             "| step | peak RSS GiB | x clean | session s | forward s | session + forward x clean | process wall s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in STEPS:
        step = steps.get(name)
        if step is None:
            continue
        if "failed" in step:
            reason = next((line for line in step["failed"] if line.startswith("stopped:")), step["failed"][0])
            lines.append(f"| {name} | failed: {reason} | | | | | |")
        elif name.startswith("run-"):
            work, clean_work = (s["session_s"] + s["forward_s"] for s in (step, clean or step))
            ratios = ((f"{step['peak_gib'] / clean['peak_gib']:.2f}", f"{work / clean_work:.2f}")
                      if clean is not None else ("", ""))
            lines.append(f"| {name} | {step['peak_gib']:.2f} | {ratios[0]} | {step['session_s']:.1f} | "
                         f"{step['forward_s']:.1f} | {ratios[1]} | {step['wall_s']:.1f} |")
        else:
            lines.append(f"| {name} | {step['peak_gib']:.2f} | | | | | {step['wall_s']:.1f} |")
    lines.append("")
    lines.append("Files (GiB): " + ", ".join(f"`{name}` {gib:.2f}" for name, gib in results["files"].items()))
    if results["agreement"]:
        lines.append("")
        lines.append("Native vs function bodies at noise_scale 0, largest |difference| / largest |logit|: "
                     + ", ".join(f"{preset} {value:.1e}" for preset, value in results["agreement"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the models, logits and results.json")
    parser.add_argument("--size", choices=sorted(SIZES), default="1.1b")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--max-gib", type=float, default=10.0, help="stop a step whose RSS passes this")
    parser.add_argument("--render", type=Path, help="print the markdown table of this results.json and stop")
    parser.add_argument("--write", action="store_true", help="with --render: put the table into docs/performance.md")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        table = render(json.loads(args.render.read_text()))
        replace_block(DOC, BEGIN, END, table) if args.write else print(table)
        return
    if args.out is None:
        parser.error("--out is required")
    if args.child:
        threading.Thread(target=memory_guard, args=(args.max_gib,), daemon=True).start()
        result = run_step(args.child, args.out, args.size, args.tokens, args.threads)
        (args.out / f".{args.child}.json").write_text(json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stored = args.out / "results.json"
    results = json.loads(stored.read_text()) if stored.exists() and set(args.steps) != set(STEPS) else {"steps": {}}
    for step in [s for s in STEPS if s in args.steps]:
        results["steps"][step] = measured(step, args)
        results.update(parameters=results["steps"].get("export", {}).get("parameters", results.get("parameters", 0)),
                       size=args.size, tokens=args.tokens, threads=args.threads,
                       machine=f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort_version()}",
                       files=file_sizes(args.out), agreement=agreement(args.out))
        stored.write_text(json.dumps(results, indent=2))  # after each step: a long run that stops keeps what it did
    print(render(results))


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
