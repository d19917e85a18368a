"""evaluate with models whose batch size is fixed, and with worker processes that cannot start or
are told to stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from analog_onnx.data import Dataset
from analog_onnx.evaluate import RunSettings, evaluate


def mlp(batch: int | str, rng: np.random.Generator) -> onnx.ModelProto:
    """Gemm, Relu, Gemm on 64 features, 10 classes; ``batch`` is the input's first dimension."""
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
               for name, shape in (("w1", (64, 32)), ("b1", (32,)), ("w2", (32, 10)), ("b2", (10,)))]
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"), h.make_node("Relu", ["h"], ["r"]),
             h.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], weights)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def probe_data() -> tuple[Dataset, float]:
    """100 samples (a multiple of neither 3 nor 256), labels right for about half of them, and
    the clean accuracy they give."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 64)).astype(np.float32)
    logits = ort.InferenceSession(mlp("N", np.random.default_rng(0)).SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    labels = np.where(rng.random(100) < 0.5, logits.argmax(axis=1), rng.integers(0, 10, 100))
    return Dataset(x, labels.astype(np.int64), 10, "probe"), float(np.mean(logits.argmax(axis=1) == labels))


def accuracies(model: onnx.ModelProto, data: Dataset, batch_size: int):
    report = evaluate(model, data, config="hardening-additive", noise_scales="0,0.5",
                      settings=RunSettings(repeats=2, seed=1, batch_size=batch_size, top_k=None))
    result = report.models[0]
    return result.clean_accuracy, [p.accuracies for p in result.points], report.notes


@pytest.mark.parametrize("fixed", [1, 3])
def test_fixed_batch_runs_at_its_size_and_scores_every_sample(fixed, probe_data):
    data, clean_accuracy = probe_data
    _, dynamic_points, _ = accuracies(mlp("N", np.random.default_rng(0)), data, fixed)
    clean, points, notes = accuracies(mlp(fixed, np.random.default_rng(0)), data, 256)
    assert clean == clean_accuracy  # every sample scored once, the remainder too
    assert points == dynamic_points  # padding the last batch leaves the real samples' noise as it was
    assert [n for n in notes if "fixed batch size" in n] == [
        f"model0 has a fixed batch size of {fixed}: it runs in batches of {fixed} instead of 256"]


# -- worker processes ----------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits-mlp-baseline.onnx"
UNGUARDED = f"""
from analog_onnx.evaluate import RunSettings, evaluate
evaluate({str(MODEL)!r}, "digits", config="hardening-additive", noise_scales="0,1",
         settings=RunSettings(repeats=2, seed=0, workers=2))
print("finished")
"""


def spawned_worker(pid: int) -> int | None:
    """The parent of a live process running multiprocessing's spawn_main, else None (from /proc)."""
    with suppress(OSError):
        state, parent = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2])
        if state != "Z" and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(parent)
    return None


def spawned_workers(parent: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if spawned_worker(int(p.name)) == parent]


def test_workers_from_an_unguarded_script_fail_fast(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "finished" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("analog_onnx.errors.AnalogError: an evaluate worker process stopped")
    assert 'if __name__ == "__main__":' in last


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_sigterm_stops_the_workers(tmp_path):
    command = [sys.executable, "-c", "from analog_onnx.cli import main; main()", "evaluate", str(MODEL),
               "-d", "digits", "-p", "hardening-additive", "--repeats", "400", "--workers", "2", "--seed", "0"]
    parent = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(workers := spawned_workers(parent.pid)) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(spawned_worker(pid) is not None for pid in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
