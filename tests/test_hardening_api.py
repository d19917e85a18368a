"""The Python API and the CLI refuse values of the wrong type or size with one clear error: types
(strings are no lists of values, dicts no settings), float32 ranges, integer keys, repeats and
workers; text is read as the CLI reads it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import one_line_error

from analog_onnx.config import load_preset
from analog_onnx.data import load_dataset
from analog_onnx.errors import AnalogError
from analog_onnx.evaluate import RunSettings, backends, evaluate, sensitivity, write_report
from analog_onnx.evaluate.engine import Counts, Unit
from analog_onnx.transform import transform_model

MODEL = Path(__file__).parents[1] / "models" / "digits-mlp-baseline.onnx"
QUICK = RunSettings(repeats=1, seed=0)



@pytest.mark.parametrize(("call", "message"), [
    (lambda: evaluate(MODEL, "digits", config="hardening-additive", settings={"repeats": 1}),
     "settings must be RunSettings, got dict"),
    (lambda: evaluate(MODEL, 64, config="hardening-additive"), "data (a --data spec"),
    (lambda: evaluate(MODEL, "digits", config={"forward": {}}), "config (an AnalogConfig, a preset name"),
    (lambda: evaluate(64, "digits", config="hardening-additive"), "a model must be str or Path or ModelProto"),
    (lambda: evaluate(MODEL, "digits", config="hardening-additive", noise_scales={"a": 1}), "noise_scales must be"),
    (lambda: evaluate(MODEL, "digits", config="hardening-additive", names=[1]), "names must be a name or a list"),
    (lambda: evaluate(MODEL, "digits", config="hardening-additive", limit="5"), "limit must be int or None"),
    (lambda: evaluate(MODEL, "digits", config="hardening-additive", progress=5), "progress must be"),
    (lambda: RunSettings(repeats="5").checked(), "settings repeats must be int, got str '5'"),
    (lambda: RunSettings(repeats=True).checked(), "settings repeats must be int, got bool"),
    (lambda: sensitivity(MODEL, "digits", config="hardening-additive", noise_scale="0.3"), "noise_scale must be"),
    (lambda: transform_model(onnx.load(MODEL), "hardening-additive"), "config (an AnalogConfig"),
    (lambda: transform_model(str(MODEL), load_preset("hardening-additive")), "model (an onnx.ModelProto"),
    (lambda: write_report({"models": []}, "out"), "report must be"),
    (lambda: load_dataset(64), "data spec must be str"),
], ids=["settings dict", "data int", "config dict", "model int", "levels dict", "names", "limit", "progress",
        "repeats str", "repeats bool", "sensitivity level", "transform config", "transform model", "report",
        "data spec"])
def test_wrong_types_are_one_clear_error(call, message):
    with pytest.raises(AnalogError) as error:
        call()
    assert message in str(error.value)


def test_the_train_config_checks_its_field_types():
    pytest.importorskip("torch")
    from analog_onnx.train.trainer import TrainConfig

    with pytest.raises(AnalogError, match="train config epochs must be int, got str"):
        TrainConfig(epochs="3").validate()
    with pytest.raises(AnalogError, match="seed must be between 0 and 2\\*\\*63-1"):
        TrainConfig(seed=2**64).validate()
    with pytest.raises(AnalogError, match="^noise_scale is beyond the float32 range"):
        TrainConfig(noise_scale=1e39).validate()


def test_text_is_read_as_the_cli_reads_it_and_a_string_is_one_name():
    report = evaluate(MODEL, "digits", config="aihwkit-pcm", noise_scales="1", t_inference="1234", names="ab",
                      mean="0", std="1", settings=QUICK, limit=20)
    assert report.settings["t_inference"] == [1234.0] and report.settings["noise_scales"] == [1.0]
    assert [m.name for m in report.models] == ["ab"]
    assert report.models[0].normalization == {"mean": [0.0], "std": [1.0], "source": "flags"}


EVALUATE = ("evaluate", MODEL, "-d", "digits", "--limit", "20", "-p")


@pytest.mark.parametrize(("args", "message"), [
    ((*EVALUATE, "aihwkit-pcm", "--t-inference", "1e39"), "time 1e+39 s is beyond the float32 range"),
    ((*EVALUATE, "hardening-additive", "-n", "1e39"), "noise scale 1e+39 is beyond the float32 range"),
    ((*EVALUATE, "hardening-additive", "--mean", "1e39"), "normalization mean from flags: a value is beyond"),
    ((*EVALUATE, "hardening-additive", "--std", "1e-50"), "a value is too small for float32"),
    ((*EVALUATE, "hardening-additive", "--mean=-3e38", "--std", "0.1"), "overflows float32"),
    (("transform", MODEL, "-p", "aihwkit-pcm", "--set", "t_inference=1e39"), "t_inference is beyond the float32"),
    (("transform", MODEL, "-p", "aihwkit-default", "--set", "inp_bound=1e-50"), "inp_bound is too small for float32"),
], ids=["t_inference", "noise scale", "mean", "tiny std", "normalized overflow", "config time", "config bound"])
def test_numbers_float32_cannot_hold_are_refused(run_cli, tmp_path, args, message):
    one_line_error(run_cli(*args, "-o", tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


def test_samples_beyond_float32_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([[1e39, 1.0]]), y=np.array([0]))
    with pytest.raises(AnalogError, match="beyond the float32 range"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


@pytest.mark.parametrize("key", ["max_input_size", "max_output_size", "max_bm_factor"])
def test_integer_config_keys_are_bounded(run_cli, tmp_path, key):
    one_line_error(run_cli("transform", MODEL, "-p", "aihwkit-default", "--set", f"{key}={2**70}", "-o",
                           tmp_path / "a.onnx"), f"{key} must be at most 2,147,483,647")


def test_repeats_and_threads_are_bounded():
    with pytest.raises(AnalogError, match="^repeats \\(chips x reads\\) must be at most 100,000"):
        RunSettings(repeats=10**9, seed=0).checked()
    with pytest.raises(AnalogError, match="^threads must be between 1 and 1024"):
        RunSettings(threads=2**40, seed=0).checked()


class FakeEvaluator:
    def __init__(self, payload: object) -> None:
        pass

    def run(self, unit: Unit) -> Counts:
        return Counts(unit.repeat, None)


def test_units_are_made_as_they_are_run(monkeypatch):
    """An endless grid: results come while units are still to be made (nothing builds the list)."""
    monkeypatch.setattr(backends, "Evaluator", FakeEvaluator)
    endless = (Unit(0, 0, r, 1.0) for r in itertools.count())
    first = list(itertools.islice(backends.run_units(None, endless, 10**12), 3))
    assert [counts.top1 for _, counts in first] == [0, 1, 2]


def test_workers_are_capped_at_the_cores(monkeypatch):
    started = []

    class Pool:
        def __init__(self, context: object, payload: object, count: int) -> None:
            started.append(count)

        def __enter__(self) -> Pool:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def run(self, units, done):
            return ((unit, Counts(0, None)) for unit in units)

    monkeypatch.setattr(backends, "_WorkerPool", Pool)
    monkeypatch.setattr(backends, "cores", lambda: 2)
    units = [Unit(0, 0, r, 1.0) for r in range(100)]
    payload = backends.Payload((), (), np.zeros(1, np.int64), 1, None, 0, None)
    assert len(dict(backends.run_units(payload, iter(units), len(units), workers=64))) == 100
    assert started == [2]


def test_a_batch_onnxruntime_fails_on_is_one_error(tmp_path):
    """A model that runs on the probe sample but not on every batch (an index out of range)."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as h

    nodes = [h.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64), h.make_node("Squeeze", ["i", "axes"], ["j"]),
             h.make_node("Gather", ["table", "j"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                         [numpy_helper.from_array(np.eye(3, dtype=np.float32), "table"),
                          numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    np.savez(tmp_path / "d.npz", x=np.array([[0], [1], [2], [9]], np.float32), y=np.array([0, 1, 2, 0]))
    with pytest.raises(AnalogError, match="onnxruntime failed on samples 2 to 3: .*Gather"):
        evaluate(model, f"npz:{tmp_path / 'd.npz'}", config="ideal", settings=RunSettings(repeats=1, seed=0,
                                                                                               batch_size=2))


def test_an_include_that_matches_nothing_is_refused_in_memory_too():
    config = load_preset("hardening-additive").with_placement(include=["no-such-layer"])
    with pytest.raises(AnalogError, match="--include 'no-such-layer' matches none of the sites"):
        evaluate(MODEL, "digits", config=config, settings=QUICK, limit=20)
