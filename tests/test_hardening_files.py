"""Outputs are written whole or not at all, never over an input, with the user's usual file mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.errors import AnalogError
from analog_onnx.files import atomic_output, write_with

MODELS = Path(__file__).parents[1] / "models"


def if_model() -> onnx.ModelProto:
    """x @ w, then an If whose branches hold their own weights (tensors inside subgraphs)."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def branch(name: str) -> onnx.GraphProto:
        return h.make_graph([h.make_node("MatMul", ["y0", f"{name}_w"], [f"{name}_y"], name=f"{name}_mm")], name, [],
                            [h.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["n", 8])],
                            [weight(f"{name}_w", 32, 8)])

    nodes = [h.make_node("MatMul", ["x", "w"], ["y0"], name="mm"),
             h.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                         [weight("w", 64, 32), numpy_helper.from_array(np.array(True), "cond")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.fixture
def external_model(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save_model(if_model(), folder / "m.onnx", save_as_external_data=True, location="m.weights",
                    size_threshold=0)
    return folder / "m.onnx"


def test_subgraph_weights_of_an_external_data_model_survive_transform(run_cli, external_model, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "out" / "a.onnx"
    out.parent.mkdir()
    code, _, err = run_cli("transform", external_model, "-o", out, "-p", "aihwkit-default")
    assert code == 0, err
    loaded = onnx.load(str(out))  # reads every external tensor, the If branches' included
    branch = next(n for n in loaded.graph.node if n.op_type == "If").attribute[0].g
    expected = next(n for n in if_model().graph.node if n.op_type == "If").attribute[0].g
    np.testing.assert_array_equal(numpy_helper.to_array(branch.initializer[0]),
                                  numpy_helper.to_array(expected.initializer[0]))
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.onnx", "a.onnx.data"]
    monkeypatch.chdir(out.parent)  # onnxruntime resolves subgraph tensors from the working folder
    session = ort.InferenceSession("a.onnx", providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((2, 64), np.float32)})[0].shape == (2, 8)


def test_an_existing_data_file_is_not_overwritten_without_force(run_cli, external_model, tmp_path):
    out = tmp_path / "a.onnx"
    (tmp_path / "a.onnx.data").write_text("someone's data")
    code, _, err = run_cli("transform", external_model, "-o", out, "-p", "aihwkit-default")
    assert code == 2 and "a.onnx.data exists" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "a.onnx.data").read_text() == "someone's data" and not out.exists()
    code, _, err = run_cli("transform", external_model, "-o", out, "-p", "aihwkit-default", "--force")
    assert code == 0, err


def test_the_input_data_file_is_never_an_output_even_with_force(run_cli, tmp_path):
    onnx.save_model(if_model(), tmp_path / "m.onnx", save_as_external_data=True, location="b.onnx.data",
                    size_threshold=0)
    before = (tmp_path / "b.onnx.data").read_bytes()
    code, _, err = run_cli("transform", tmp_path / "m.onnx", "-o", tmp_path / "b.onnx", "-p", "aihwkit-default",
                           "--force")
    assert code == 2 and "is an input" in err
    assert (tmp_path / "b.onnx.data").read_bytes() == before and not (tmp_path / "b.onnx").exists()


def test_output_pointing_at_a_folder_is_one_line(run_cli, external_model, tmp_path):
    code, _, err = run_cli("transform", external_model, "-o", tmp_path, "-p", "ideal", "--force")
    assert code == 2 and "is a folder" in err and "Traceback" not in err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_output_gets_the_users_umask(run_cli, external_model, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "a.onnx"
        assert run_cli("transform", external_model, "-o", out, "-p", "aihwkit-default")[0] == 0
        report = tmp_path / "report"
        code, _, err = run_cli("evaluate", MODELS / "digits-mlp-baseline.onnx", "-d", "digits", "-p",
                               "hardening-additive", "-n", "0.5", "-r", "1", "--limit", "50", "--seed", "0",
                               "-o", report)
        assert code == 0, err
    finally:
        os.umask(old)
    written = [out, tmp_path / "a.onnx.data", *report.iterdir()]  # one noise level: a report and no plot
    assert len(written) == 4 and {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}


def test_a_failed_write_leaves_the_old_file_and_no_scratch(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_with(target, fail, force=True)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(AnalogError, match="exists; pass --force"):
        write_with(target, lambda handle: handle.write(b"new"))


SIGTERM_DURING_SAVE = """
import os, signal, sys, time
import onnx
real_save = onnx.save  # what a save with external data calls; onnx.save_model is the same function

def save_then_get_killed(*args, **kwargs):
    real_save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)

onnx.save = onnx.save_model = save_then_get_killed
sys.argv = ["analog-onnx", "transform", sys.argv[1], "-o", sys.argv[2], "-p", "aihwkit-default"]
from analog_onnx.cli import main
main()
"""


def test_sigterm_while_writing_leaves_no_temporary_file(external_model, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command = [sys.executable, "-c", SIGTERM_DURING_SAVE, str(external_model), str(out_dir / "a.onnx")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode in (143, -15), result.stderr
    assert list(out_dir.iterdir()) == []


def test_atomic_output_refuses_an_input_and_cleans_up_on_interrupt(tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"x")
    with pytest.raises(AnalogError, match="is an input"):
        write_with(source, lambda handle: handle.write(b"y"), force=True, inputs=[source])
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "out.bin") as scratch:
        scratch.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin"]


def test_an_output_that_is_not_a_regular_file_is_refused_even_with_force(run_cli, tmp_path):
    """Replacing a FIFO (or a device) swaps the node itself for a regular file."""
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    code, _, err = run_cli("transform", MODELS / "digits-mlp-baseline.onnx", "-o", fifo, "-p", "ideal", "--force")
    assert code == 2 and "is a FIFO, not a regular file" in err and len(err.strip().splitlines()) == 1, err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    report = tmp_path / "report"
    report.mkdir()
    os.mkfifo(report / "results.csv")
    code, _, err = run_cli("evaluate", MODELS / "digits-mlp-baseline.onnx", "-d", "digits", "-p", "ideal", "-n", "1",
                           "-r", "1", "--limit", "20", "-o", report, "--force")
    assert code == 2 and "results.csv is a FIFO" in err, err
    assert stat.S_ISFIFO((report / "results.csv").stat().st_mode) and sorted(os.listdir(report)) == ["results.csv"]


def test_a_link_as_output_is_replaced_itself_and_the_file_it_names_stays(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_text("mine")
    link = tmp_path / "out.txt"
    link.symlink_to(kept)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(AnalogError, match="exists; pass --force"):
        write_with(dangling, lambda handle: handle.write(b"new"))
    write_with(link, lambda handle: handle.write(b"new"), force=True)
    assert not link.is_symlink() and link.read_text() == "new" and kept.read_text() == "mine"


@pytest.mark.parametrize("name", ["new/", "new/.", "."])
def test_an_output_named_as_a_folder_is_refused_not_written_as_a_file(run_cli, tmp_path, monkeypatch, name):
    """``Path`` drops a trailing separator: ``-o new/`` wrote a file called ``new``."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("transform", MODELS / "digits-mlp-baseline.onnx", "-o", name, "-p", "ideal")
    assert code == 2 and f"output {name} names a folder" in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []
    with pytest.raises(AnalogError, match="names a folder"):
        write_with(name, lambda handle: handle.write(b"x"))


def test_transform_never_writes_over_its_config(run_cli, tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"name": "mine", "forward": {"out_noise": 0.04}}')
    code, _, err = run_cli("transform", MODELS / "digits-mlp-baseline.onnx", "-c", config, "-o", config, "--force")
    assert code == 2 and f"output {config} is an input" in err, err
    assert config.read_text() == '{"name": "mine", "forward": {"out_noise": 0.04}}'
