"""Commands that train and export PyTorch models: train, export.

torch is imported inside the commands, so ``analog-onnx transform`` and friends run without it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from analog_onnx import config as cfg
from analog_onnx.commands.model_commands import ConfigOption, PresetOption, SetOption, output_option
from analog_onnx.errors import AnalogError
from analog_onnx.files import check_output
from analog_onnx.text import printable

ARCH_HELP = "mlp, lenet5, resnet20, resnet18, vgg11, vgg11_bn, mobilenetv2."


def train(
    arch: str = typer.Option("lenet5", "--arch", "-a", help=f"Model zoo architecture: {ARCH_HELP}"),
    data: str = typer.Option("digits", "--data", "-d", help="KIND[:PATH], as for evaluate (digits, cifar10:DIR, ...)."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder: checkpoints, metrics, model.onnx."),
    method: str = typer.Option("baseline", "--method", "-m",
                               help="baseline, qat, nit, qat+nit or hwa (device programming noise)."),
    preset: str = PresetOption,
    config_file: Path = ConfigOption,
    overrides: list[str] = SetOption,
    noise_scale: float = typer.Option(1.0, "--noise-scale", help="NIT noise level: the transform's noise_scale "
                                      "(multiplies every sigma of the config); also the level of the noisy metric."),
    ramp_epochs: float = typer.Option(0.0, "--ramp-epochs", help="NIT: grow the noise linearly from 0 over N epochs."),
    noise_spread: float = typer.Option(0.0, "--noise-spread", help="NIT, variance-aware: each batch trains at "
                                       "level * max(0, 1 + spread * z), z standard normal (0: the level itself)."),
    bits: int = typer.Option(8, "--bits", help="QAT: activation bits (unsigned, after each ReLU)."),
    act_scale: float = typer.Option(1 / 16, "--act-scale", help="QAT: fixed activation step; max is (2^bits-1)*step."),
    weight_bits: int = typer.Option(0, "--weight-bits", help="QAT: signed weight bits (0: same as --bits)."),
    epochs: int = typer.Option(30, "--epochs", "-e"),
    batch_size: int = typer.Option(128, "--batch-size", "-b", help="Global batch (split across torchrun processes)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov momentum) or adam (AdamW)."),
    lr: float = typer.Option(0.0, "--lr", help="Learning rate (0: 0.1 for sgd, 1e-3 for adam)."),
    momentum: float = typer.Option(0.9, "--momentum"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="On weights only (not biases or BatchNorm)."),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine (per step, to 0) or constant."),
    augment: str = typer.Option("auto", "--augment", help="auto, none, crop or crop+flip (images >= 16 px)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision on GPU (bfloat16, or float16 with scaling)."),
    eval_repeats: int = typer.Option(1, "--eval-repeats",
                                     help="Noisy validation passes per epoch (less Monte Carlo error)."),
    limit: int = typer.Option(None, "--limit", help="Train on the first N samples only."),
    eval_limit: int = typer.Option(None, "--eval-limit", help="Score each epoch on the first N held-out samples only."),
    select: str = typer.Option("val", "--select", help="The exported epoch: val (best on validation) or last."),
    val_fraction: float = typer.Option(0.1, "--val-fraction",
                                       help="Training data held out per class for validation (0: none)."),
    init: Path = typer.Option(None, "--init", help="Fine-tune: start from the weights of this checkpoint "
                              "(another run's best.pt; a fresh optimizer and schedule)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out folder that holds a run "
                               "(replaced once the new run has succeeded)."),
    export: bool = typer.Option(True, "--export/--no-export", help="Write model.onnx from best.pt at the end."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a zoo model (baseline, QAT, noise injection); writes best.pt, last.pt, metrics.jsonl, model.onnx.

    Several processes: torchrun --nproc_per_node N -m analog_onnx.train --arch ... (same options).
    """
    from analog_onnx.train.trainer import TrainConfig
    from analog_onnx.train.trainer import train as run_training

    hardware = None
    if preset or config_file:
        hardware = cfg.resolve_config(preset, config_file, list(overrides or [])).to_dict()
    elif overrides:
        raise AnalogError("--set needs --preset or --config")
    config = TrainConfig(arch=arch, data=data, out=str(out), method=method, epochs=epochs, batch_size=batch_size,
                         optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                         seed=seed, device=device, amp=amp, augment=augment, hardware=hardware,
                         noise_scale=noise_scale, ramp_epochs=ramp_epochs, noise_spread=noise_spread, bits=bits,
                         act_scale=act_scale, weight_bits=weight_bits, eval_repeats=eval_repeats, limit=limit,
                         eval_limit=eval_limit, select=select, val_fraction=val_fraction, export=export,
                         init=None if init is None else str(init))
    run_training(config, resume=resume, force=force, progress=progress)


def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by train (best.pt or last.pt)."),
    output: Path = output_option("Output file (default: CHECKPOINT with .onnx)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Export a checkpoint to ONNX: noise left out, QAT quantizers kept, checked against torch."""
    from analog_onnx.train.checkpoint import checkpoint_file
    from analog_onnx.train.export import export_checkpoint

    checkpoint = checkpoint_file(checkpoint)  # first: a folder has no name to derive the output's from
    output = output or checkpoint.with_suffix(".onnx")
    check_output(output, force=force, inputs=[checkpoint])  # before the export's work, not after it
    difference = export_checkpoint(checkpoint, output, force=force)
    typer.echo(printable(f"wrote {output} (max |onnxruntime - torch| {difference:.2g})"))


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(export)
