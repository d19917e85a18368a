"""The training loop: run files, checkpoints, exact resume, run-folder rules, CLI, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from analog_onnx.config import load_preset  # noqa: E402
from analog_onnx.data import load_dataset  # noqa: E402
from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.train import trainer as trainer_module  # noqa: E402
from analog_onnx.train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from analog_onnx.train.pipeline import (  # noqa: E402
    Normalization,
    augment,
    resolve_augmentation,
    train_batches,
    validation_split,
)
from analog_onnx.train.trainer import TrainConfig, train  # noqa: E402

HARDENING = load_preset("hardening-additive").to_dict()


def _config(out: Path, **changes) -> TrainConfig:
    settings = {"arch": "mlp", "data": "digits", "out": str(out), "epochs": 2, "batch_size": 64,
                "optimizer": "adam", "limit": 512}
    return TrainConfig(**{**settings, **changes})


def test_a_run_writes_metrics_checkpoints_and_a_model(tmp_path) -> None:
    config = _config(tmp_path, method="qat+nit", hardware=HARDENING, noise_scale=0.3, ramp_epochs=2)
    result = train(config, progress=False, verbose=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all(0 <= m["clean_acc"] <= 1 and 0 <= m["noisy_acc"] <= 1 for m in lines)
    assert [m["noise_scale"] for m in lines] == [0.15, 0.3]  # the linear ramp
    assert lines[-1]["clean_acc"] > 0.5  # it learned something in two epochs

    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["arch"] == "mlp" and best["qat"]["bits"] == 8 and best["hardware"]["name"] == "hardening-additive"
    assert best["history"][-1]["epoch"] == best["best"]["epoch"] == best["epoch"]
    data = load_dataset("digits", "train", 512)
    expected = Normalization.of(data.x[validation_split(data.y, 0.1, 0)[0]])  # the samples trained on
    assert best["normalization"] == {"mean": expected.mean, "std": expected.std}
    model_from_checkpoint(best)  # loads into the plain zoo model

    props = {p.key: json.loads(p.value) for p in onnx.load(str(result.model_path)).metadata_props}
    assert props["analog_onnx.preprocess"] == best["normalization"]
    assert props["analog_onnx.train"]["method"] == "qat+nit"
    assert props["analog_onnx.train"]["noise_scale"] == 0.3


def test_resume_continues_exactly(tmp_path, monkeypatch) -> None:
    straight = train(_config(tmp_path / "a", epochs=3), progress=False, verbose=False)

    original = trainer_module._Run._after_epoch

    def stop_after_two(self, metrics):
        original(self, metrics)
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module._Run, "_after_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "b", epochs=3), progress=False, verbose=False)
    monkeypatch.setattr(trainer_module._Run, "_after_epoch", original)
    resumed = train(_config(tmp_path / "b", epochs=3), resume=True, progress=False, verbose=False)
    assert [m["train_loss"] for m in resumed.history] == [m["train_loss"] for m in straight.history]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_run_folder_rules(tmp_path) -> None:
    train(_config(tmp_path, epochs=1, export=False), progress=False, verbose=False)
    with pytest.raises(AnalogError, match="holds a run"):
        train(_config(tmp_path, epochs=1), progress=False, verbose=False)
    with pytest.raises(AnalogError, match="other settings"):
        train(_config(tmp_path, epochs=2, seed=5), resume=True, progress=False, verbose=False)
    restarted = train(_config(tmp_path, epochs=1, export=False), force=True, progress=False, verbose=False)
    assert len(restarted.history) == 1
    with pytest.raises(AnalogError, match="nothing to resume"):
        train(_config(tmp_path / "empty"), resume=True, progress=False, verbose=False)


@pytest.mark.parametrize(("changes", "message"), [
    ({"method": "nit"}, "trains with noise"),
    ({"method": "nit", "hardware": load_preset("ideal").to_dict()}, "trains with noise"),
    ({"method": "sgd"}, "unknown method"),
    ({"method": "qat", "bits": 1}, "QAT bits"),
    ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
    ({"arch": "lenet5", "data": "mnist1d", "augment": "crop"}, "needs image data"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, changes: dict, message: str) -> None:
    with pytest.raises(AnalogError, match=message):
        train(_config(tmp_path, **changes), progress=False, verbose=False)


def test_augmentation_is_a_shifted_crop_and_a_flip() -> None:
    assert resolve_augmentation("auto", (3, 32, 32)) == "crop+flip"
    assert resolve_augmentation("auto", (1, 28, 28)) == "crop"
    assert resolve_augmentation("auto", (1, 8, 8)) == "none"
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    out = augment(x, "crop+flip", generator)
    assert out.shape == x.shape
    for sample, original in zip(out, x, strict=True):  # every output row is a shifted, maybe mirrored, input row
        inner = sample[:, 2:-2, 2:-2]
        rows = {tuple(r.tolist()) for r in original.reshape(-1, 16)} | {tuple(r.flip(0).tolist())
                                                                        for r in original.reshape(-1, 16)}
        assert all(any(set(r.tolist()) <= set(full) for full in rows) for r in inner.reshape(-1, 12))


def test_batches_split_one_permutation_across_processes() -> None:
    single = list(train_batches(100, 20, seed=1, epoch=0, rank=0, world=1))
    halves = [list(train_batches(100, 20, seed=1, epoch=0, rank=r, world=2)) for r in (0, 1)]
    for whole, a, b in zip(single, *halves, strict=True):
        assert torch.equal(torch.cat([a, b]), whole)
    assert not torch.equal(single[0], next(train_batches(100, 20, seed=1, epoch=1, rank=0, world=1)))


def test_cli_train_then_transform_never_imports_torch(tmp_path) -> None:
    from typer.testing import CliRunner

    from analog_onnx.cli import app

    result = CliRunner().invoke(app, ["train", "--arch", "mlp", "--data", "digits", "--out", str(tmp_path / "r"),
                                      "--epochs", "1", "--limit", "256", "--no-progress", "--preset",
                                      "hardening-additive", "--noise-scale", "0.2"])
    assert result.exit_code == 0, result.output
    assert "noisy" in result.output and (tmp_path / "r" / "model.onnx").is_file()
    code = ("import sys; from analog_onnx.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['transform', {str(tmp_path / 'r' / 'model.onnx')!r}, '--preset', "
            "'hardening-additive']); assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_torchrun_entry_reports_a_mistake_as_the_cli_does(tmp_path) -> None:
    """``python -m analog_onnx.train`` is the CLI's train command: one error line, exit status 2."""
    command = [sys.executable, "-m", "analog_onnx.train", "--arch", "nope", "--data", "digits",
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("analog-onnx: error: unknown arch 'nope'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ddp_with_two_processes_equals_one_process(tmp_path) -> None:
    """Two gloo processes, each with half of every global batch, take the same steps as one process."""
    single = train(_config(tmp_path / "one", export=False), progress=False, verbose=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "analog_onnx.train", "--arch", "mlp", "--data", "digits", "--out", str(tmp_path / "two"),
               "--epochs", "2", "--batch-size", "64", "--optimizer", "adam", "--limit", "512", "--device", "cpu",
               "--no-export", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    assert len(two["history"]) == 2
    for key, value in single.model.state_dict().items():
        np.testing.assert_allclose(two["state_dict"][key].numpy(), value.numpy(), atol=1e-4)
    assert two["history"][-1]["clean_acc"] == pytest.approx(single.history[-1]["clean_acc"], abs=0.02)


def test_your_own_module_trains_and_exports(tmp_path) -> None:
    from analog_onnx.train.export import export_checkpoint

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 10))
    result = train(_config(tmp_path, epochs=1, method="nit", hardware=HARDENING, noise_scale=0.2), model=model,
                   progress=False, verbose=False)
    assert result.model is model and result.model_path.is_file()
    with pytest.raises(AnalogError, match="not a zoo architecture"):
        export_checkpoint(tmp_path / "best.pt", tmp_path / "again.onnx")


def test_init_fine_tunes_from_another_runs_weights(tmp_path, run_cli) -> None:
    """--init starts from a checkpoint's weights (a fresh optimizer): NIT as fine-tuning of a
    trained baseline. Its first epoch starts where the baseline ended, not from chance."""
    base = train(_config(tmp_path / "base", epochs=3, export=False), progress=False, verbose=False)
    tuned = train(_config(tmp_path / "tuned", epochs=1, method="nit", hardware=HARDENING, noise_scale=0.1,
                          init=str(tmp_path / "base" / "best.pt"), export=False), progress=False, verbose=False)
    scratch = train(_config(tmp_path / "scratch", epochs=1, method="nit", hardware=HARDENING, noise_scale=0.1,
                            export=False), progress=False, verbose=False)
    assert tuned.history[0]["clean_acc"] > scratch.history[0]["clean_acc"] + 0.2
    assert tuned.history[0]["clean_acc"] >= base.best["clean_acc"] - 0.1
    record = torch.load(tmp_path / "tuned" / "best.pt", weights_only=True)["config"]
    assert record["init"] == str(tmp_path / "base" / "best.pt")

    code, _, err = run_cli("train", "--arch", "lenet5", "--data", "digits", "--out", tmp_path / "wrong",
                           "--epochs", "1", "--limit", "128", "--init", tmp_path / "base" / "best.pt", "--no-progress")
    assert code == 2 and "--init" in err
    assert "holds mlp for inputs [1, 8, 8] and 10 classes; this run trains lenet5" in err
    code, _, err = run_cli("train", "--arch", "mlp", "--out", tmp_path / "missing", "--epochs", "1",
                           "--init", tmp_path / "nothing.pt", "--no-progress")
    assert code == 2 and "no such checkpoint" in err
