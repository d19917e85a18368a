"""train and export check everything before they delete or write anything, and speak in one line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.train.checkpoint import FORMAT  # noqa: E402

RUN_FILES = ("last.pt", "best.pt", "model.onnx", "metrics.jsonl")


@pytest.fixture
def previous_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for name in RUN_FILES:
        (run / name).write_text(f"previous {name}")
    return run


@pytest.mark.parametrize("bad", [("--data", "npz:no-such-file.npz"), ("--arch", "no-such-arch"),
                                 ("--data", "mnist:no-such-dir")])
def test_force_keeps_the_previous_run_when_the_new_one_cannot_start(run_cli, previous_run, bad):
    code, _, err = run_cli("train", *bad, "--out", previous_run, "--force", "--epochs", "1", "--no-progress",
                           "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_text() for p in previous_run.iterdir()} == {n: f"previous {n}" for n in RUN_FILES}


def test_train_out_an_existing_file_is_one_line(run_cli, tmp_path):
    (tmp_path / "file").write_text("mine")
    code, _, err = run_cli("train", "--out", tmp_path / "file", "--epochs", "1", "--no-progress")
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "mine"


def test_export_of_something_else_is_one_line(run_cli, tmp_path):
    (tmp_path / "notes.pt").write_text("these are notes\n" * 20)
    code, _, err = run_cli("export", tmp_path / "notes.pt")
    assert code == 2 and "is not a readable checkpoint" in err and len(err.strip().splitlines()) == 1, err
    torch.save(argparse.Namespace(lr=0.1), tmp_path / "namespace.pt")  # torch explains this over a page
    code, _, err = run_cli("export", tmp_path / "namespace.pt")
    assert code == 2 and "(argparse.Namespace)" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("contents", [
    {},  # the right tag, nothing else
    {"arch": "mlp", "in_shape": [64], "num_classes": 10, "state_dict": {"x": torch.zeros(1)}, "config": {},
     "qat": None, "normalization": {"mean": [0.0], "std": [1.0]}, "record": {}},  # weights of another model
    {"arch": "mlp", "in_shape": "sixty-four", "num_classes": 10, "state_dict": {}, "config": {}, "qat": None,
     "normalization": {}, "record": {}},
])
def test_export_of_a_damaged_checkpoint_is_one_line(run_cli, tmp_path, contents):
    path = tmp_path / "best.pt"
    torch.save({"format": FORMAT, **contents}, path)
    code, _, err = run_cli("export", path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "checkpoint" in err, err
    assert not (tmp_path / "best.onnx").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_train_refuses_a_non_finite_noise_scale_before_touching_out(run_cli, tmp_path, value):
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--method", "nit", "-p", "hardening-additive", "--noise-scale", value,
                           "--epochs", "1", "--out", out, "--no-progress", "--device", "cpu")
    assert code == 2 and "must be finite" in err and not out.exists(), err


@pytest.mark.parametrize(("args", "message"), [
    (("--lr", "-1"), "--lr must be finite and >= 0, got -1.0"),
    (("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    (("--val-fraction", "0"), "--val-fraction must be in [0, 1), and > 0 to select on it (with --select val)"),
])
def test_a_bad_training_value_names_its_flag(run_cli, tmp_path, args, message):
    """One value at fault, named as the user wrote it (the trainer's own check, spelled by the CLI)."""
    code, _, err = run_cli("train", "--arch", "mlp", "--data", "digits", "--epochs", "1", "--out", tmp_path / "r",
                           "--no-progress", "--device", "cpu", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err


# a run of seconds; a later flag overrides one of these (the last of a flag wins)
TINY = ("train", "--arch", "mlp", "--data", "digits", "--epochs", "1", "--limit", "200", "--no-progress",
        "--device", "cpu")


def test_the_largest_seed_trains_and_an_ordinary_seed_keeps_its_batches(run_cli, tmp_path):
    from analog_onnx.train.pipeline import train_batches

    code, _, err = run_cli(*TINY, "--no-export", "--seed", str(2**63 - 1), "--out", tmp_path / "r")
    assert code == 0 and (tmp_path / "r" / "last.pt").is_file(), err
    expected = torch.randperm(300, generator=torch.Generator().manual_seed(7 * 100003 + 2))  # stored results
    assert torch.equal(next(train_batches(300, 300, seed=7, epoch=2, rank=0, world=1)), expected)


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("name", ["--eval-limit", "--limit"])
def test_a_limit_below_one_is_refused(run_cli, tmp_path, name, value):
    """-5 would silently drop the last five samples (a slice), 0 would silently drop them all."""
    code, _, err = run_cli(*TINY, name, value, "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and f"{name} must be >= 1, got {value}" in err, err
    assert not (tmp_path / "r").exists()


def test_an_empty_validation_split_is_refused_unless_the_last_epoch_is_kept(run_cli, tmp_path):
    """One sample per class: nothing to hold out, so "best on validation" would mean nothing."""
    import numpy as np

    np.savez(tmp_path / "one-each.npz", x=np.eye(8, dtype=np.float32), y=np.arange(8))
    args = (*TINY, "--data", f"npz:{tmp_path / 'one-each.npz'}", "--no-export")
    code, _, err = run_cli(*args, "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "the validation split is empty" in err, err
    assert "--select last" in err and not (tmp_path / "r").exists()
    code, _, err = run_cli(*args, "--epochs", "2", "--select", "last", "--out", tmp_path / "last")
    assert code == 0 and (tmp_path / "last" / "best.pt").is_file(), err


def test_a_qat_range_beyond_float32_is_refused_before_training(run_cli, tmp_path):
    code, _, err = run_cli(*TINY, "--method", "qat", "--bits", "24", "--act-scale", "1e38", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "is beyond float32" in err and "--act-scale" in err, err
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_with_one_line_and_valid_metrics(run_cli, tmp_path):
    """Not the export's "disagrees with torch: nan"; metrics.jsonl records the epoch with null, not NaN."""
    import json

    def strict(token: str) -> None:
        raise AssertionError(f"{token} in metrics.jsonl")

    code, _, err = run_cli(*TINY, "--lr", "1e30", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1, err
    assert "training diverged: validation loss is nan at epoch 1; lower the learning rate" in err
    entries = [json.loads(line, parse_constant=strict) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert entries[-1]["epoch"] == 1 and entries[-1]["val_loss"] is None
    assert not (tmp_path / "r" / "model.onnx").exists() and not (tmp_path / "r" / "best.pt").exists()


def test_force_keeps_the_previous_run_when_the_new_one_fails_while_training(run_cli, previous_run):
    code, _, err = run_cli(*TINY, "--lr", "1e30", "--out", previous_run, "--force")
    assert code == 2 and "training diverged" in err, err
    assert {p.name: p.read_text() for p in previous_run.iterdir()} == {n: f"previous {n}" for n in RUN_FILES}


def test_force_replaces_the_previous_run_once_the_new_one_has_succeeded(run_cli, previous_run):
    (previous_run / "notes.txt").write_text("mine")
    code, _, err = run_cli(*TINY, "--no-export", "--out", previous_run, "--force")
    assert code == 0, err
    assert sorted(p.name for p in previous_run.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "notes.txt"]
    assert (previous_run / "notes.txt").read_text() == "mine"  # not the old run's: left alone
    assert torch.load(previous_run / "last.pt", weights_only=True)["epoch"] == 1


def test_a_label_or_vocabulary_too_large_to_allocate_is_refused(run_cli, tmp_path):
    """Labels up to 2**31-1 used to ask for a 2 TB output layer, a vocabulary of 1e11 for 12 TB: the
    readers refuse them, and build_model refuses such a model whatever it is built from."""
    import numpy as np

    from analog_onnx.train.zoo import build_model

    y = np.arange(40) % 2
    y[0] = 2**31 - 1
    np.savez(tmp_path / "labels.npz", x=np.ones((40, 5), np.float32), y=y)
    code, _, err = run_cli(*TINY, "--data", f"npz:{tmp_path / 'labels.npz'}", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "label 2147483647 is too large" in err, err
    np.savez(tmp_path / "tokens.npz", input_ids=np.ones((20, 9), np.int64), vocab_size=np.int64(10**11))
    code, _, err = run_cli(*TINY, "--arch", "gpt-micro", "--data", f"tokens:{tmp_path / 'tokens.npz'}",
                           "--out", tmp_path / "t")
    assert code == 2 and err.count("\n") == 1 and "vocab_size must be one integer from 2 to 1048576" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()
    for arch, what in (("mlp", "the largest label + 1: 1,048,577"), ("gpt-micro", "a vocabulary of 1,048,577")):
        with pytest.raises(AnalogError, match=re.escape(f"{arch} takes at most 1,048,576 outputs, got {what}")):
            build_model(arch, (8,), 2**20 + 1)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory) -> Path:
    """A tiny trained QAT run (so its checkpoints have every entry), made once for the tests below."""
    from analog_onnx.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("qat") / "run"
    train(TrainConfig(arch="mlp", data="digits", out=str(out), method="qat", epochs=1, limit=200, device="cpu",
                      export=False), progress=False, verbose=False)
    return out


def _damaged(run: Path, folder: Path, **entries) -> Path:
    """A copy of the run's last.pt with some entries replaced, as last.pt of ``folder``."""
    state = torch.load(run / "last.pt", weights_only=True)
    state.update(entries)
    folder.mkdir()
    torch.save(state, folder / "last.pt")
    return folder / "last.pt"


@pytest.mark.parametrize(("entries", "message"), [
    ({"qat": {"foo": 1}}, "entry 'qat' must be None or a dict of bits, act_scale and weight_bits"),
    ({"qat": {"bits": "eight", "act_scale": 0.1, "weight_bits": 8}}, "entry 'qat' must be None or a dict"),
    ({"qat": {"bits": 24, "act_scale": 1e38, "weight_bits": 8}}, "entry 'qat' is not a valid QAT setting"),
    ({"normalization": {"mean": [0.0]}}, "entry 'normalization' must hold mean and std lists"),
    ({"normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}},
     "entry 'normalization' must hold mean and std lists of one finite number per input channel (1)"),
    ({"normalization": {"mean": [0.0], "std": [0.0]}}, "entry 'normalization' has a std that is not > 0"),
    ({"record": {"x": b"\x00"}}, "entry 'record' is not plain JSON data"),
    ({"record": {"x": {1, 2}}}, "entry 'record' is not plain JSON data"),
    ({"in_shape": ["x"]}, "entry 'in_shape' must be a list of positive sizes"),
])
def test_export_and_init_refuse_a_damaged_checkpoint_entry(run_cli, qat_run, tmp_path, entries, message):
    """Each used to crash inside export (a traceback) or write a model evaluate cannot use."""
    path = _damaged(qat_run, tmp_path / "damaged", **entries)
    code, _, err = run_cli("export", path)
    assert code == 2 and err.count("\n") == 1 and f"damaged checkpoint {path}: {message}" in err, err
    assert not path.with_suffix(".onnx").exists()
    code, _, err = run_cli(*TINY, "--method", "qat", "--init", path, "--out", tmp_path / "tuned")
    assert code == 2 and err.count("\n") == 1 and message in err and not (tmp_path / "tuned").exists(), err


@pytest.mark.parametrize(("entries", "message"), [
    ({"scheduler": None}, "entry 'scheduler' must be a dict"),
    ({"optimizer": None}, "entry 'optimizer' must be a dict of state and param_groups"),
    ({"epoch": "one"}, "entry 'epoch' must be the number of epochs trained"),
    ({"history": "x"}, "entry 'history' must be a list of one dict of numbers per epoch trained"),
    ({"optimizer": "groups"}, "its training state does not fit this run (loaded state dict has a different number"),
    ({"optimizer": "shapes"}, "its optimizer state does not fit this run's weights"),
])
def test_resume_refuses_a_damaged_training_state(run_cli, qat_run, tmp_path, entries, message):
    state = torch.load(qat_run / "last.pt", weights_only=True)["optimizer"]
    if entries.get("optimizer") == "groups":
        entries = {"optimizer": {**state, "param_groups": state["param_groups"][:1]}}
    elif entries.get("optimizer") == "shapes":
        entries = {"optimizer": {**state, "state": {0: {"momentum_buffer": torch.zeros(3)}}}}
    path = _damaged(qat_run, tmp_path / "run", **entries)
    code, _, err = run_cli(*TINY, "--method", "qat", "--no-export", "--epochs", "2", "--resume", "--out", path.parent)
    assert code == 2 and err.count("\n") == 1 and f"damaged checkpoint {path}: {message}" in err, err
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("folder", [".", "/", ""])
def test_export_of_a_folder_is_one_line(run_cli, folder):
    """A folder has no name to derive the output's from (with_suffix raised a ValueError)."""
    code, _, err = run_cli("export", folder)
    assert code == 2 and err.count("\n") == 1 and "is a folder; give the checkpoint file" in err, err
