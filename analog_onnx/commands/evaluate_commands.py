"""Commands that measure robustness: evaluate (accuracy vs noise) and sensitivity (per site)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from analog_onnx import config as cfg
from analog_onnx import text
from analog_onnx.commands.model_commands import ConfigOption, PresetOption, SetOption
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate.levels import DEFAULT_NOISE_SCALES
from analog_onnx.text import printable

if TYPE_CHECKING:  # the commands import the evaluation itself when they run: `--help` starts fast
    from analog_onnx.config import AnalogConfig
    from analog_onnx.evaluate.report import EvaluationReport, SensitivityReport
    from analog_onnx.evaluate.runner import RunSettings

DataOption = typer.Option(..., "--data", "-d", help="KIND[:PATH]: digits, mnist1d, npz:FILE, cifar10:DIR, "
                          "cifar100:DIR, mnist:DIR (IDX, also Fashion-MNIST), imagefolder:DIR; token data: "
                          "text:PATH[#window=N,tokenizer=DIR], tokens:FILE (.npy/.npz).")
SplitOption = typer.Option("test", "--split", help="train or test (text: and tokens: also validation).")
LimitOption = typer.Option(None, "--limit", help="Use only the first N samples.")
RepeatsOption = typer.Option(5, "--repeats", "-r", help="Monte Carlo repeats per noise level.")
SeedOption = typer.Option(None, "--seed", help="Seed of all noise draws [default: random, recorded in the report].")
BatchOption = typer.Option(256, "--batch-size", help="Samples per session run (part of what a seed reproduces).")
MeanOption = typer.Option(None, "--mean", help="Per-channel mean, e.g. 0.49,0.48,0.45 [default: model metadata].")
StdOption = typer.Option(None, "--std", help="Per-channel std [default: model metadata].")
BackendOption = typer.Option("local", "--backend", help="local (processes) or ray.")
WorkersOption = typer.Option(1, "--workers", "-j", help="Parallel worker processes (or Ray actors).")
RayAddressOption = typer.Option(None, "--ray-address", help="Ray cluster to join [default: start a local one].")
ThreadsOption = typer.Option(None, "--threads", help="onnxruntime threads per session [default: ORT's choice].")
OutOption = typer.Option(None, "--out", "-o", help="Write the report files into this folder.")
ForceOption = typer.Option(False, "--force", help="Write into a non-empty --out folder.")


def _config(preset: str | None, config_file: Path | None, overrides: list[str] | None) -> AnalogConfig | None:
    """The config the flags ask for, or None to use each transformed model's own."""
    if not (preset or config_file):
        if overrides:
            raise AnalogError("--set needs --preset or --config")
        return None
    return cfg.resolve_config(preset, config_file, list(overrides or []))


def _settings(repeats: int, seed: int | None, batch_size: int, top_k: int | None, threads: int | None,
              backend: str, workers: int, ray_address: str | None, reads: int = 1) -> RunSettings:
    """The flags' run settings, checked by the evaluation itself (once, naming the flags)."""
    from analog_onnx.evaluate.runner import RunSettings

    return RunSettings(repeats=repeats, reads=reads, seed=seed, batch_size=batch_size, top_k=top_k or None,
                       threads=threads, backend=backend, workers=workers, ray_address=ray_address)


def _inputs(models: list[Path], config_file: Path | None, data: str) -> list[Path]:
    """The files a run reads, which no report file may replace: the models and their data files,
    the config, and the data's file or the files in its folder (a text corpus's, its tokenizer's)."""
    from analog_onnx.data.text import parse_options
    from analog_onnx.transform import external_data_files

    kind, _, location = data.partition(":")
    options: dict[str, str] = {}
    if kind == "text" and location:
        location, options = parse_options(location, kind)
    named = [Path(p).expanduser() for p in (location, options.get("tokenizer", "")) if p]
    data_files = [file for path in named for file in (path.iterdir() if path.is_dir() else [path])]
    return [*models, *(f for m in models for f in external_data_files(m)), *([config_file] if config_file else []),
            *data_files]


def _write(report: EvaluationReport | SensitivityReport, out: Path | None, force: bool, inputs: list[Path]) -> None:
    """Write the report's files into ``out`` (when given) and say which."""
    if out is not None:
        from analog_onnx.evaluate.report_files import write_report

        written = write_report(report, out, force=force, inputs=inputs)
        typer.echo(printable(f"wrote {', '.join(str(p) for p in written)}"))


def evaluate(
    models: list[Path] = typer.Argument(..., metavar="MODEL",
                                        help="ONNX models, clean (with --preset/--config) or transformed."),
    data: str = DataOption,
    split: str = SplitOption,
    limit: int = LimitOption,
    preset: str = PresetOption,
    config_file: Path = ConfigOption,
    overrides: list[str] = SetOption,
    noise_scales: str = typer.Option(DEFAULT_NOISE_SCALES, "--noise-scales", "-n",
                                     help="Numbers and ranges, e.g. 0,0.5,1,2 or log:1e-2:1e2:17 or lin:0:1:11."),
    repeats: int = typer.Option(None, "--repeats", "-r",
                                help="Monte Carlo runs per noise level: chips x reads [default: 5, or chips x reads]."),
    chips: int = typer.Option(None, "--chips", help="Programmed chips per point (devices): repeats = chips x reads."),
    reads: int = typer.Option(1, "--reads", help="Reads (passes over the data) of each chip."),
    seed: int = SeedOption,
    batch_size: int = BatchOption,
    top_k: int = typer.Option(5, "--top-k", help="Also report top-k accuracy (0 = off)."),
    mean: str = MeanOption,
    std: str = StdOption,
    t_inference: str = typer.Option(None, "--t-inference",
                                    help="Seconds since programming, e.g. 1,3600,86400,31536000: one point "
                                         "per time (devices drift and read noise grows) [default: the config's]."),
    drift_compensation: str = typer.Option(None, "--drift-compensation",
                                           help="on, off or both: devices' global drift compensation "
                                                "[default: the config's]."),
    backend: str = BackendOption,
    workers: int = WorkersOption,
    ray_address: str = RayAddressOption,
    threads: int = ThreadsOption,
    out: Path = OutOption,
    force: bool = ForceOption,
) -> None:
    """Monte Carlo accuracy of MODELS at each noise level: mean, std, 95% CI, midpoint noise."""
    from analog_onnx.evaluate.console import print_evaluation, progress_bar
    from analog_onnx.evaluate.report_files import EVALUATION_FILES, check_output_dir
    from analog_onnx.evaluate.sweep import evaluate as run_evaluation

    if chips is not None and repeats is not None:
        raise AnalogError("give --repeats or --chips (with --reads), not both")
    if chips is not None and chips < 1:
        raise AnalogError(f"--chips must be >= 1, got {chips}")
    total = chips * reads if chips is not None else (5 * reads if repeats is None else repeats)
    settings = _settings(total, seed, batch_size, top_k, threads, backend, workers, ray_address, reads)
    inputs: list[Path] = []
    if out is not None:
        inputs = _inputs(models, config_file, data)
        check_output_dir(out, force=force, inputs=inputs, names=EVALUATION_FILES)
    with progress_bar(text.console(stderr=True), "evaluating") as progress:
        report = run_evaluation(models, data, config=_config(preset, config_file, overrides),
                                noise_scales=noise_scales, settings=settings, split=split, limit=limit, mean=mean,
                                std=std, t_inference=t_inference, drift_compensation=drift_compensation,
                                progress=progress)
    print_evaluation(report, text.console())
    _write(report, out, force, inputs)


def sensitivity(
    model: Path = typer.Argument(..., help="ONNX model, clean (with --preset/--config) or transformed."),
    data: str = DataOption,
    split: str = SplitOption,
    limit: int = LimitOption,
    preset: str = PresetOption,
    config_file: Path = ConfigOption,
    overrides: list[str] = SetOption,
    noise_scale: float = typer.Option(1.0, "--noise-scale", help="Noise level applied to one site at a time."),
    midpoint: bool = typer.Option(False, "--midpoint", help="Rank by each site's midpoint noise level instead."),
    noise_scales: str = typer.Option("log:1e-2:1e1:13", "--noise-scales", "-n", help="Sweep for --midpoint."),
    repeats: int = typer.Option(3, "--repeats", "-r", help="Monte Carlo repeats per site and level."),
    seed: int = SeedOption,
    batch_size: int = BatchOption,
    mean: str = MeanOption,
    std: str = StdOption,
    backend: str = BackendOption,
    workers: int = WorkersOption,
    ray_address: str = RayAddressOption,
    threads: int = ThreadsOption,
    out: Path = OutOption,
    force: bool = ForceOption,
) -> None:
    """Noise in one analog site at a time: which layers to keep digital or protect."""
    from analog_onnx.evaluate.console import print_sensitivity, progress_bar
    from analog_onnx.evaluate.report_files import SENSITIVITY_FILES, check_output_dir
    from analog_onnx.evaluate.sensitivity import sensitivity as run_sensitivity

    settings = _settings(repeats, seed, batch_size, None, threads, backend, workers, ray_address)
    inputs: list[Path] = []
    if out is not None:
        inputs = _inputs([model], config_file, data)
        check_output_dir(out, force=force, inputs=inputs, names=SENSITIVITY_FILES)
    with progress_bar(text.console(stderr=True), "sites") as progress:
        report = run_sensitivity(model, data, config=_config(preset, config_file, overrides), noise_scale=noise_scale,
                                 midpoint=midpoint, noise_scales=noise_scales, settings=settings, split=split,
                                 limit=limit, mean=mean, std=std, progress=progress)
    print_sensitivity(report, text.console())
    _write(report, out, force, inputs)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command()(sensitivity)
