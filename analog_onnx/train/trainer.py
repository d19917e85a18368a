"""The training loop: baseline, QAT, noise-injection training (NIT) and QAT+NIT.

One process or many: under ``torchrun`` (``WORLD_SIZE`` > 1) it runs data-parallel (DDP, gloo
on CPU, nccl on GPU); each process takes its slice of every global batch. Randomness is seeded
per (seed, epoch, rank), so a resumed run continues exactly as an uninterrupted one would.

The test split is never read: a seeded, stratified validation split (``val_fraction`` of the
training data, per class) is held out, and each epoch appends to ``metrics.jsonl`` the training
loss/accuracy and, on the validation split, the loss, the clean accuracy (the model as exported,
hardware off) and, when the hardware config has noise, the accuracy at the training noise level
through the torch twins. ``best.pt`` is the selected epoch: with ``select = "val"`` the best
validation accuracy at the training noise level for NIT methods (clean otherwise), with
``select = "last"`` the last epoch (as the Hardening-DNNs paper keeps it). The run ends by
exporting ``best.pt`` to ``model.onnx``; only evaluation reads the test split.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn import functional

from analog_onnx import __version__
from analog_onnx.arguments import check_fields, expect, float32_problem, spelled
from analog_onnx.config import MAX_INT, AnalogConfig
from analog_onnx.data import VALIDATION_KINDS, Dataset, load_dataset
from analog_onnx.errors import AnalogError
from analog_onnx.files import first_line, replacing_files, write_text
from analog_onnx.text import shown
from analog_onnx.train.checkpoint import CUSTOM_ARCH, load_checkpoint, save_checkpoint
from analog_onnx.train.export import add_metadata, check_export, to_onnx
from analog_onnx.train.hardware import Hardware, attach_hardware
from analog_onnx.train.pipeline import (
    AUGMENTATIONS,
    DeviceData,
    Normalization,
    augment,
    resolve_augmentation,
    shard,
    steps_per_epoch,
    train_batches,
    validation_split,
)
from analog_onnx.train.qat import QatSpec, attach_qat
from analog_onnx.train.zoo import TOKEN_ARCHS, build_model

METHODS = ("baseline", "qat", "nit", "qat+nit", "hwa")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
SELECTIONS = ("val", "last")
EVAL_BATCH = 1024
RUN_FILES = ("last.pt", "best.pt", "model.onnx", "metrics.jsonl")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in checkpoints and in the exported model."""

    arch: str = "lenet5"
    data: str = "digits"
    out: str = "runs/train"
    method: str = "baseline"
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.0  # 0: 0.1 for SGD, 1e-3 for Adam
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    augment: str = "auto"
    hardware: dict[str, Any] | None = None  # AnalogConfig.to_dict(): the noise NIT trains with
    noise_scale: float = 1.0  # the transform's noise_scale NIT trains at (and noisy accuracy uses)
    ramp_epochs: float = 0.0  # NIT: noise grows linearly from 0 over this many epochs
    noise_spread: float = 0.0  # NIT: each batch trains at level * max(0, 1 + spread * z), z ~ N(0, 1)
    bits: int = 8  # QAT activation bits
    act_scale: float = 1 / 16  # QAT activation step
    weight_bits: int = 0  # QAT weight bits; 0 = bits
    eval_repeats: int = 1  # noisy evaluation passes over the validation split per epoch
    limit: int | None = None  # use only the first N training samples
    eval_limit: int | None = None  # score each epoch on only the first N held-out samples
    select: str = "val"  # the exported epoch: "val" (best on the validation split) or "last"
    val_fraction: float = 0.1  # of the training data held out per class for validation (0: none, select last)
    export: bool = True  # write model.onnx at the end
    init: str | None = None  # fine-tuning: start from the weights of this checkpoint (another run's best.pt)

    @property
    def uses_qat(self) -> bool:
        return self.method in ("qat", "qat+nit")

    @property
    def uses_noise(self) -> bool:
        return self.method in ("nit", "qat+nit", "hwa")

    @property
    def learning_rate(self) -> float:
        return self.lr or (0.1 if self.optimizer == "sgd" else 1e-3)

    def hardware_config(self) -> AnalogConfig | None:
        return AnalogConfig.from_dict(self.hardware) if self.hardware else None

    def qat_spec(self) -> QatSpec | None:
        return QatSpec(self.bits, self.act_scale, self.weight_bits) if self.uses_qat else None

    def validate(self) -> None:
        """Every field checked; a problem names the one field at fault as its caller spells it (the
        CLI: its flag; a study file or Python: the field)."""
        check_fields(self, "train config")
        if not 0 <= self.seed < 2**63:
            raise AnalogError(f"{spelled('seed')} must be between 0 and 2**63-1, got {self.seed}")
        for name in ("epochs", "batch_size", "eval_repeats", "bits", "weight_bits", "limit", "eval_limit"):
            if abs(getattr(self, name) or 0) > MAX_INT:
                raise AnalogError(f"{spelled(name)} must be at most {MAX_INT:,}, got {getattr(self, name)}")
        for name, allowed in (("method", METHODS), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("select", SELECTIONS)):
            if getattr(self, name) not in allowed:
                raise AnalogError(f"unknown {spelled(name)} {getattr(self, name)!r}; use one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "eval_repeats", "limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AnalogError(f"{spelled(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("noise_scale", "ramp_epochs", "noise_spread", "lr", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise AnalogError(f"{spelled(name)} must be finite and >= 0, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay", "noise_scale", "ramp_epochs", "noise_spread", "act_scale"):
            problem = float32_problem(getattr(self, name))  # torch trains in float32
            if problem:
                raise AnalogError(f"{spelled(name)} {problem}, got {getattr(self, name)}")
        hardware = self.hardware_config()
        if self.uses_noise and (hardware is None or not hardware.has_noise or self.noise_scale == 0):
            raise AnalogError(f"method {self.method} trains with noise: give a hardware config with noise "
                              f"(e.g. the preset hardening-additive) and a {spelled('noise_scale')} > 0")
        if self.method == "hwa" and not hardware.device.enabled:
            raise AnalogError("method hwa trains with the devices' programming noise: give a hardware config "
                              "with a [device] model (e.g. the preset aihwkit-pcm)")
        if not 0 <= self.val_fraction < 1 or (self.select == "val" and self.val_fraction == 0):
            raise AnalogError(f"{spelled('val_fraction')} must be in [0, 1), and > 0 to select on it (with "
                              f"{spelled('select')} val), got {self.val_fraction}")
        if self.augment not in AUGMENTATIONS:
            raise AnalogError(f"unknown {spelled('augment')} {self.augment!r}; use one of {', '.join(AUGMENTATIONS)}")
        if self.device != "auto":
            spelled_device(self.device)
        if self.init is not None and not Path(self.init).expanduser().is_file():
            raise AnalogError(f"{spelled('init')}: no such checkpoint: {shown(self.init)}")
        self.qat_spec()  # validates the QAT numbers


@dataclass
class TrainResult:
    out: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]
    model_path: Path | None
    model: nn.Module = field(repr=False)  # the trained model (last epoch, twins attached)


def train(config: TrainConfig, *, model: nn.Module | None = None, resume: bool = False, force: bool = False,
          progress: bool = True, verbose: bool = True) -> TrainResult:
    """Train ``config.arch`` (or your own ``model``) on ``config.data``; see the module docstring.

    An ``out`` folder that already holds a run is continued with ``resume`` or restarted with
    ``force``, never silently overwritten; a forced run is written aside and replaces the old
    one only when it has succeeded, so a failed one leaves the old run as it was.
    """
    expect(config, TrainConfig, "config (a TrainConfig)").validate()
    out = Path(config.out).expanduser()
    if out.exists() and not out.is_dir():
        raise AnalogError(f"--out {out} is a file; the run needs a folder")
    if resume and not (out / "last.pt").is_file():
        raise AnalogError(f"nothing to resume: {out / 'last.pt'} does not exist")
    if not resume and not force and any((out / name).exists() for name in RUN_FILES):
        raise AnalogError(f"{out} holds a run; pass --resume to continue it or --force to start over")
    world = Distributed.start(config.device)
    try:
        staged = force and not resume and world.rank == 0 and any((out / name).exists() for name in RUN_FILES)
        with replacing_files(out, RUN_FILES) if staged else nullcontext(out) as folder:
            return _Run(config, world, model, resume, folder, progress and world.rank == 0,
                        verbose and world.rank == 0).run()
    finally:
        world.stop()


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def start(cls, device: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = resolve_device(device, local_rank)
        if world > 1 and not dist.is_initialized():
            if resolved.type == "cuda":
                torch.cuda.set_device(resolved)
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        return cls(dist.get_rank() if world > 1 else 0, world, resolved)

    def total(self, values: list[float]) -> list[float]:
        """Sum over all processes."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def stop(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: the process's GPU when CUDA is present, else the CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    resolved = spelled_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AnalogError(f"{spelled('device')} {device!r} asked for CUDA, but torch sees no CUDA device")
    return resolved


def spelled_device(device: str) -> torch.device:
    """``device`` as torch reads it, refused unless torch reads it as written: torch keeps a
    device's index in 8 bits, so "cuda:999" would quietly be cuda:-25."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or str(resolved) != device:
        raise AnalogError(f"unknown {spelled('device')} {device!r}; use auto, cpu, cuda or cuda:N")
    return resolved


def batch_noise_level(target: float, spread: float, generator: torch.Generator) -> float:
    """The level one training batch sees: ``target``, or with ``spread`` > 0 a draw around it.

    Variance-aware noisy training (Wang et al., arXiv 2503.16183): noise in the field changes
    (temperature, drift), so each batch trains at ``target * max(0, 1 + spread * z)`` with a
    fresh standard normal ``z``, and the model learns a range of levels centred on the target.
    """
    if spread == 0:
        return target
    z = float(torch.randn((), generator=generator))
    return target * max(0.0, 1.0 + spread * z)


def _seed_for(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**63)


class _Run:
    def __init__(self, config: TrainConfig, world: Distributed, model: nn.Module | None, resume: bool,
                 folder: Path, progress: bool, verbose: bool) -> None:
        self.config, self.world, self.progress = config, world, progress
        self.console = Console(quiet=not verbose, soft_wrap=True, emoji=False)
        self.out = Path(config.out).expanduser()  # the run's folder, as the user knows it
        self.folder = folder  # where its files are written: ``out``, or a staging folder (--force)
        train_set, val_set = _load(config)
        self.validation = {"fraction": config.val_fraction, "samples": len(val_set), "seed": config.seed,
                           "stratified": True}
        self.in_shape = tuple(int(d) for d in train_set.x.shape[1:])
        self.num_classes = max(train_set.num_classes, val_set.num_classes)
        self.tokens = train_set.is_tokens  # token ids: no normalization, one target per position
        self.normalization = None if self.tokens else Normalization.of(train_set.x)
        self.augmentation = resolve_augmentation(config.augment, self.in_shape)
        self.train_data = DeviceData.of(train_set, world.device)
        self.val_data = DeviceData.of(val_set, world.device)
        self.batch_size = min(config.batch_size, len(train_set) - len(train_set) % world.world)
        if self.batch_size % world.world:
            raise AnalogError(f"batch size {self.batch_size} is not divisible by the {world.world} processes")

        torch.manual_seed(config.seed)
        self.arch = config.arch if model is None else CUSTOM_ARCH
        _check_token_fit(config, self.tokens, model is None)
        self.model = model if model is not None else build_model(config.arch, self.in_shape, self.num_classes)
        if config.init is not None and not resume:  # a resumed run has its own weights by now
            self._start_from(Path(config.init).expanduser())
        self.qat = config.qat_spec()
        if self.qat is not None:  # first: activation noise may read the quantized output
            attach_qat(self.model, self.qat)
        hardware_config = config.hardware_config()
        self.hardware: Hardware | None = None
        if hardware_config is not None and (hardware_config.has_noise or hardware_config.has_quantization):
            self.hardware = attach_hardware(self.model, hardware_config, self.in_shape, qat=self.qat,
                                            noise_scale=config.noise_scale, tokens=self.tokens)
        self.model.to(world.device)
        self.net: nn.Module = self.model
        if world.world > 1:
            device_ids = [world.device.index] if world.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

        self.steps = steps_per_epoch(len(self.train_data), self.batch_size)
        self.optimizer = _optimizer(config, self.model)
        total = config.epochs * self.steps
        schedule: Callable[[int], float] = (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))) \
            if config.schedule == "cosine" else (lambda step: 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.amp_dtype = _amp_dtype(config, world.device, self.console)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.start_epoch = 0
        if world.rank == 0:  # only now, with data, model and settings checked, touch the folder
            self.folder.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()

    # -- state ----------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "arch": self.arch, "in_shape": self.in_shape, "num_classes": self.num_classes,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": asdict(self.config), "qat": self.qat.to_dict() if self.qat else None,
            "hardware": self.config.hardware,
            "normalization": asdict(self.normalization) if self.normalization else None,
            "tokens": self._token_record(),
            "record": self._record(), "history": self.history, "epoch": epoch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "best": self.best,
        }

    def _token_record(self) -> dict[str, int] | None:
        """What ``evaluate`` needs to know of a token model: its vocabulary and longest window."""
        return {"vocab_size": self.num_classes, "context": self.in_shape[0]} if self.tokens else None

    def _prepared(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as the model reads it: normalized samples, or token ids as they are."""
        return x if self.normalization is None else self.normalization.apply(x)

    def _record(self) -> dict[str, Any]:
        """The training record export writes into the model (``analog_onnx.train``)."""
        c = self.config
        return {"arch": self.arch, "data": c.data, "method": c.method, "epochs": c.epochs, "seed": c.seed,
                "optimizer": c.optimizer, "lr": c.learning_rate, "batch_size": c.batch_size,
                "noise_scale": c.noise_scale if c.uses_noise else 0.0, "ramp_epochs": c.ramp_epochs,
                "noise_spread": c.noise_spread, "select": c.select, "validation": self.validation,
                "qat": self.qat.to_dict() if self.qat else None, "hardware": c.hardware, "init": c.init,
                "best": self.best, "analog_onnx_version": __version__}

    def _start_from(self, path: Path) -> None:
        """Fine-tuning: the weights of another run's checkpoint (not its optimizer or schedule),
        before any twin is attached, so they fit the plain model that run saved."""
        state = load_checkpoint(path)
        theirs = (state["arch"], tuple(int(d) for d in state["in_shape"]), int(state["num_classes"]))
        mine = (self.arch, self.in_shape, self.num_classes)
        if theirs != mine:
            raise AnalogError(f"{spelled('init')} {shown(path)} holds {theirs[0]} for inputs {list(theirs[1])} and "
                              f"{theirs[2]} classes; this run trains {mine[0]} for inputs {list(mine[1])} and "
                              f"{mine[2]} classes")
        try:
            self.model.load_state_dict(state["state_dict"])
        except (TypeError, ValueError, RuntimeError) as e:  # torch reports a mismatch over many lines
            raise AnalogError(f"{spelled('init')} {shown(path)}: its weights do not fit this run's model "
                              f"({first_line(e)})") from None
        self.console.print(f"starting from the weights of {shown(path)}")

    def _resume(self) -> None:
        path = self.out / "last.pt"
        state = load_checkpoint(path, self.world.device, resume=True)
        saved = {k: v for k, v in state["config"].items() if k not in ("out", "device", "epochs")}
        mine = {k: v for k, v in asdict(self.config).items() if k in saved}
        if saved != mine:
            changed = sorted(str(k) for k in saved if saved[k] != mine.get(k))
            raise AnalogError(f"cannot resume {path}: it was trained with other settings ({', '.join(changed)})")
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as e:  # torch's checks, pages long
            raise AnalogError(f"damaged checkpoint {path}: its training state does not fit this run "
                              f"({first_line(e)})") from None
        if any(isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape
               for p, entry in self.optimizer.state.items() for v in entry.values()):  # torch loads these unchecked
            raise AnalogError(f"damaged checkpoint {path}: its optimizer state does not fit this run's weights")
        self.history, self.best, self.start_epoch = state["history"], state["best"], int(state["epoch"])
        self.console.print(f"resuming {shown(path)} after epoch {self.start_epoch}")

    # -- loop -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        c = self.config
        if self.hardware is not None:
            self.console.print(f"hardware {shown(self.hardware.config.name)}: {len(self.hardware.sites)} sites "
                               f"({self.hardware.config.placement.where} placement)")
        for epoch in range(self.start_epoch, c.epochs):
            started = time.perf_counter()
            train_loss, train_acc = self._train_epoch(epoch)
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, **self._evaluate(),
                       "noise_scale": self._noise_level(epoch + 1.0), "lr": self.optimizer.param_groups[0]["lr"],
                       "seconds": time.perf_counter() - started}
            self.history.append(metrics)
            problem = self._divergence(metrics)
            if problem is not None:  # stop here: export would only report a NaN mismatch
                self._write_metrics()
                raise AnalogError(f"training diverged: {problem} at epoch {epoch + 1}; lower the learning rate")
            self._after_epoch(metrics)
        self.world.barrier()
        model_path = self._export() if c.export and self.world.rank == 0 else None
        self.world.barrier()
        return TrainResult(self.out, self.history, self.best, model_path, self.model)

    def _noise_level(self, progress_epochs: float) -> float:
        """The noise scale NIT aims at after ``progress_epochs`` epochs (the linear ramp)."""
        c = self.config
        if not c.uses_noise:
            return 0.0
        return c.noise_scale * (min(1.0, progress_epochs / c.ramp_epochs) if c.ramp_epochs else 1.0)

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        c, w = self.config, self.world
        seed = _seed_for(c.seed, epoch, w.rank)
        torch.manual_seed(seed)  # noise draws
        generator = torch.Generator(w.device).manual_seed(seed)  # augmentation
        spread_draws = torch.Generator().manual_seed(seed)  # per-batch noise levels (variance-aware NIT)
        self.net.train()
        if self.hardware is not None:
            self.hardware.level.active = c.uses_noise
        loss_sum = correct = count = 0.0
        bar = _progress_bar(self.progress, f"epoch {epoch + 1}/{c.epochs}")
        with bar if bar is not None else nullcontext():
            task = bar.add_task("train", total=self.steps) if bar is not None else None
            batches = train_batches(len(self.train_data), self.batch_size, seed=c.seed, epoch=epoch, rank=w.rank,
                                    world=w.world)
            for step, index in enumerate(batches):
                if self.hardware is not None and c.uses_noise:
                    target = self._noise_level(epoch + step / self.steps)
                    self.hardware.level.scale = batch_noise_level(target, c.noise_spread, spread_draws)
                index = index.to(w.device)
                x = self._prepared(augment(self.train_data.x[index], self.augmentation, generator))
                y = self.train_data.y[index]
                with self._autocast():
                    logits = self.net(x)
                    loss = scored_loss(logits.float(), y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                scored = int((y >= 0).sum())
                loss_sum += float(loss.detach()) * scored
                correct += hits(logits, y)
                count += scored
                if bar is not None:
                    bar.update(task, advance=1, description=f"loss {loss_sum / count:.4f}")
        loss_sum, correct, count = w.total([loss_sum, correct, count])
        return loss_sum / count, correct / count

    def _divergence(self, metrics: dict[str, Any]) -> str | None:
        """Why the model is no longer usable (a non-finite loss or weight), or None."""
        for key, what in (("train_loss", "loss"), ("val_loss", "validation loss")):
            if metrics[key] is not None and not math.isfinite(metrics[key]):
                return f"{what} is {metrics[key]}"
        if not all(bool(p.isfinite().all()) for p in self.model.parameters()):
            return "a weight is not finite"
        return None

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.world.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float | None]:
        """On the validation split: clean accuracy and loss (hardware off) and accuracy at the
        training noise level; all None without a validation split."""
        if not len(self.val_data):
            return {"val_loss": None, "clean_acc": None, "noisy_acc": None}
        self.model.eval()
        part = shard(len(self.val_data), self.world.rank, self.world.world)
        x_all, y_all = self.val_data.x[part], self.val_data.y[part]
        hardware = self.hardware

        def accuracy(with_loss: bool) -> list[float]:
            loss = correct = 0.0
            for start in range(0, len(y_all), EVAL_BATCH):
                x = self._prepared(x_all[start:start + EVAL_BATCH])
                y = y_all[start:start + EVAL_BATCH]
                with self._autocast():
                    logits = self.model(x).float()
                correct += hits(logits, y)
                if with_loss:
                    loss += float(scored_loss(logits, y, reduction="sum"))
            return [loss, correct, float((y_all >= 0).sum())]

        off = hardware.setting(active=False) if hardware is not None else nullcontext()
        with off:
            loss, correct, count = self.world.total(accuracy(True))
        result: dict[str, float | None] = {"val_loss": loss / count, "clean_acc": correct / count,
                                           "noisy_acc": None}
        if hardware is not None and hardware.config.has_noise and self.config.noise_scale > 0:
            torch.manual_seed(_seed_for(self.config.seed, 10**6 + len(self.history), self.world.rank))
            with hardware.setting(scale=self.config.noise_scale):
                runs = [self.world.total(accuracy(False)) for _ in range(self.config.eval_repeats)]
            result["noisy_acc"] = sum(r[1] for r in runs) / sum(r[2] for r in runs)
        return result

    def _after_epoch(self, metrics: dict[str, Any]) -> None:
        c = self.config
        key = "noisy_acc" if c.uses_noise else "clean_acc"
        improved = c.select == "last" or not self.best or metrics[key] > self.best["value"]
        if improved:
            self.best = {"epoch": metrics["epoch"], "metric": key, "value": metrics[key],
                         "clean_acc": metrics["clean_acc"], "noisy_acc": metrics["noisy_acc"]}
        noisy = f"  noisy {metrics['noisy_acc']:.4f}" if metrics["noisy_acc"] is not None else ""
        clean = f"  clean {metrics['clean_acc']:.4f}" if metrics["clean_acc"] is not None else ""
        self.console.print(f"epoch {metrics['epoch']:>3}/{c.epochs}  loss {metrics['train_loss']:.4f}  "
                           f"train {metrics['train_acc']:.4f}{clean}{noisy}  "
                           f"noise {metrics['noise_scale']:.3g}  {metrics['seconds']:.1f}s")
        if self.world.rank != 0:
            return
        state = self._state(metrics["epoch"])
        save_checkpoint(state, self.folder / "last.pt")
        if improved:
            save_checkpoint(state, self.folder / "best.pt")
        self._write_metrics()

    def _write_metrics(self) -> None:
        """``metrics.jsonl``, one line per epoch; a non-finite number is null (JSON has no NaN)."""
        if self.world.rank != 0:
            return
        lines = "".join(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                                    for k, v in entry.items()}, sort_keys=True) + "\n" for entry in self.history)
        write_text(self.folder / "metrics.jsonl", lines, force=True)

    def _export(self) -> Path:
        """Export ``best.pt`` to ``model.onnx``, checked against torch on training samples."""
        from analog_onnx.transform import save_model

        best = load_checkpoint(self.folder / "best.pt")
        plain = copy.deepcopy(self.model).cpu()
        plain.load_state_dict(best["state_dict"])
        exported = to_onnx(plain, self.in_shape, qat=self.qat, tokens=self.tokens)
        samples = self._prepared(self.train_data.x[:256].cpu()).numpy()
        difference = check_export(exported, samples if self.tokens else samples.astype(np.float32))
        normalization = self.normalization
        add_metadata(exported.model, mean=normalization.mean if normalization else None,
                     std=normalization.std if normalization else None, train=best["record"],
                     tokens=self._token_record())
        save_model(exported.model, self.folder / "model.onnx", force=True)
        path = self.out / "model.onnx"
        self.console.print(f"exported {shown(path)} (best epoch {self.best['epoch']}, "
                           f"max |ORT - torch| {difference:.2g})")
        return path


def _check_token_fit(config: TrainConfig, tokens: bool, zoo: bool) -> None:
    """Token data needs a model that reads token ids, and samples one that reads floats; QAT's
    activation quantizers sit after ReLUs, which the token models do not have."""
    if zoo and tokens != (config.arch in TOKEN_ARCHS):
        wanted = ", ".join(TOKEN_ARCHS) if tokens else "an arch for samples (mlp, lenet5, resnet20, ...)"
        kind = "token data" if tokens else "float samples"
        raise AnalogError(f"arch {config.arch} does not fit {config.data}: {kind} need {wanted}")
    if tokens and config.uses_qat:
        raise AnalogError(f"method {config.method} is not available for token models; use baseline, nit or hwa")


def scored_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over every scored prediction: one per sample, or one per token position
    with a target >= 0 (logits [N, T, V] against targets [N, T])."""
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-1,
                                    reduction=reduction)


def hits(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Correct top-1 predictions among the scored ones."""
    return float(((logits.argmax(-1) == y) & (y >= 0)).sum())


def _load(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """The training split and the held-out split each epoch is scored on (and ``best.pt`` chosen
    by); the test split is never loaded. Token data has its own validation split (held out by
    file); other data holds a seeded, stratified fraction of its training split out."""
    data = load_dataset(config.data, "train", config.limit)
    if len(data) < 2:
        raise AnalogError(f"{config.data} has {len(data)} training samples; need at least 2")
    if config.data.partition(":")[0] in VALIDATION_KINDS:
        held = load_dataset(config.data, "validation", config.eval_limit)
        if data.x.shape[1:] != held.x.shape[1:]:
            raise AnalogError(f"train and validation samples differ in shape: {data.x.shape[1:]} vs "
                              f"{held.x.shape[1:]}")
    else:
        train_index, val_index = validation_split(data.y, config.val_fraction, config.seed)
        val_index = val_index[:config.eval_limit] if config.eval_limit is not None else val_index
        data, held = (Dataset(data.x[i], data.y[i], data.num_classes, data.name) for i in (train_index, val_index))
    if not len(held) and config.select == "val":  # nothing to select on: "best" would be any epoch
        raise AnalogError(f"the validation split is empty: {config.data} holds out no sample (a class needs at least "
                          f"2 training samples to give one); keep the last epoch with {spelled('select')} last, "
                          "or give more data")
    return data, held


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights only: biases and BatchNorm parameters (1-d) are left alone."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _amp_dtype(config: TrainConfig, device: torch.device, console: Console) -> torch.dtype | None:
    if not config.amp:
        return None
    if device.type != "cuda":
        console.print(f"{spelled('amp')} needs a CUDA device; training in float32")
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _progress_bar(enabled: bool, title: str) -> Progress | None:
    if not enabled:
        return None
    return Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                    TimeRemainingColumn(), transient=True)
