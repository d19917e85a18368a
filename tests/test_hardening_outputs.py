"""Outputs on a full disk and over earlier outputs: one line and exit 2 with nothing half-written,
and no report that mixes two runs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import one_line_error

from analog_onnx import transform as tf
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import report_files

MODEL = Path(__file__).parents[1] / "models" / "digits-mlp-baseline.onnx"
# evaluations over two noise levels, so that they write a noise plot too
EVALUATE = ("evaluate", MODEL, "-d", "digits", "--limit", "20", "-r", "1", "--seed", "0", "-n", "0.5,1")


def disk_full(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")



def test_a_full_disk_during_transform_is_one_line_and_leaves_nothing(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def half_then_full(model: onnx.ModelProto, path: object, **_kwargs: object) -> None:
        Path(path).write_bytes(b"half a model")
        disk_full()

    monkeypatch.setattr(onnx, "save_model", half_then_full)
    one_line_error(run_cli("transform", MODEL, "-p", "hardening-additive", "-o", out / "a.onnx"),
                   "No space left on device")
    assert list(out.iterdir()) == []


def test_a_full_disk_during_evaluate_out_is_one_line_and_leaves_nothing(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(report_files, "accuracy_vs_noise_png", disk_full)
    one_line_error(run_cli(*EVALUATE, "-p", "hardening-additive", "-o", tmp_path / "new"), "No space left on device")
    assert not (tmp_path / "new").exists()  # the folder it made is gone again
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text("{}")
    one_line_error(run_cli(*EVALUATE, "-p", "hardening-additive", "-o", old, "--force"), "No space left on device")
    assert [p.name for p in old.iterdir()] == ["report.json"] and (old / "report.json").read_text() == "{}"


def test_a_full_disk_while_saving_a_checkpoint_is_one_error(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import torch

    from analog_onnx.train import checkpoint

    real_open = open

    class Full:
        def __init__(self, path: Path, mode: str) -> None:
            self.handle = real_open(path, mode)

        def write(self, data: bytes) -> int:
            disk_full()
            return 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.handle, name)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    monkeypatch.setattr(checkpoint, "open", Full, raising=False)
    with pytest.raises(AnalogError, match="cannot write .*last.pt: No space left on device"):
        checkpoint.save_checkpoint({"weights": torch.zeros(3)}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_any_os_error_of_a_command_is_one_line(run_cli, monkeypatch):
    def lost(path: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(tf, "read_model", lost)
    one_line_error(run_cli("inspect", MODEL), f"Input/output error: {MODEL}")


def test_force_replaces_the_whole_report_and_keeps_other_files(run_cli, tmp_path):
    out = tmp_path / "report"
    code, _, err = run_cli(*EVALUATE, "-p", "aihwkit-pcm", "--t-inference", "1,100", "-o", out)
    assert code == 0, err
    assert (out / "accuracy_vs_time.png").is_file()
    (out / "sensitivity.json").write_text("{}")  # another kind of report, and a file of the user's
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(*EVALUATE, "-p", "aihwkit-pcm", "--t-inference", "100", "-o", out, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_noise.png", "notes.txt", "report.json",
                                                     "results.csv", "sensitivity.json"]
    assert json.loads((out / "report.json").read_text())["settings"]["t_inference"] == [100.0]


def _digits_npz(path: Path) -> None:
    from analog_onnx.data import load_dataset

    data = load_dataset("digits", limit=20)
    np.savez(path, x=data.x.reshape(len(data), -1), y=data.y)


@pytest.mark.parametrize("case", ["model", "hard link to the model", "data", "config"])
def test_a_report_file_that_is_an_input_is_refused_even_with_force(run_cli, tmp_path, case):
    """--out DIR --force replaced the run's own model, data or config when it bore a report file's name."""
    out = tmp_path / "r"
    out.mkdir()
    args = ["evaluate", MODEL, "-d", "digits", "-p", "hardening-additive", "-n", "0.5,1", "-r", "1",
            "--limit", "20", "-o", out, "--force"]
    if case == "model":
        victim = out / "results.csv"
        victim.write_bytes(MODEL.read_bytes())
        args[1] = victim
    elif case == "hard link to the model":
        (tmp_path / "m.onnx").write_bytes(MODEL.read_bytes())
        victim = out / "accuracy_vs_noise.png"
        os.link(tmp_path / "m.onnx", victim)
        args[1] = tmp_path / "m.onnx"
    elif case == "data":
        victim = out / "report.json"
        with open(victim, "wb") as handle:
            _digits_npz(handle)
        args[3] = f"npz:{victim}"
    else:
        victim = out / "sensitivity.json"
        victim.write_text(json.dumps({"name": "mine", "forward": {"out_noise": 0.04}}))
        args = ["sensitivity", MODEL, "-d", "digits", "-c", victim, "-r", "1", "--limit", "20", "-o", out, "--force"]
    before = victim.read_bytes()
    one_line_error(run_cli(*args), f"output {victim} is an input of this command")
    assert victim.read_bytes() == before and [p.name for p in out.iterdir()] == [victim.name]
