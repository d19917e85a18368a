"""The Monte Carlo engine: clean accuracy, noise, seeds, preparation of models and inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import digits_mlp, ort_accuracy
from onnx import TensorProto, helper

from analog_onnx.config import load_preset
from analog_onnx.data import Dataset, load_dataset
from analog_onnx.errors import AnalogError, ModelError
from analog_onnx.evaluate import RunSettings, engine, evaluate
from analog_onnx.evaluate.engine import (
    Counts,
    Evaluator,
    Payload,
    Unit,
    Variant,
    batch_seeds,
    chip_seed,
    count_correct,
)
from analog_onnx.evaluate.report_files import dumps_json, write_report
from analog_onnx.transform import transform_model

LEVELS = [0.0, 0.1, 1.0, 3.0]


def run(model=None, *, seed=0, repeats=3, levels=LEVELS, **kwargs):
    settings = RunSettings(repeats=repeats, seed=seed, batch_size=kwargs.pop("batch_size", 64))
    kwargs.setdefault("config", "hardening-additive")
    return evaluate(model if model is not None else digits_mlp(), kwargs.pop("data", "digits"),
                    noise_scales=levels, settings=settings, **kwargs)


def test_clean_accuracy_equals_a_direct_ort_computation():
    data = load_dataset("digits", limit=200)
    report = run(limit=200, levels=[0.5], repeats=1)
    assert report.models[0].clean_accuracy == ort_accuracy(digits_mlp(), data.x.reshape(200, 64), data.y)
    assert report.data["samples"] == 200


def test_accuracy_falls_as_noise_grows():
    model = run().models[0]
    means = [p.accuracy.mean for p in model.points]
    assert means[0] == model.clean_accuracy  # additive noise only: level 0 is the clean model
    assert means[1] > means[2] > means[3]
    assert means[3] < model.clean_accuracy - 0.3
    assert model.midpoint.status == "found" and 0.1 < model.midpoint_noise < 3.0


def test_same_seed_gives_the_same_report_and_another_seed_does_not():
    first, again, other = run(seed=7), run(seed=7), run(seed=8)
    assert dumps_json(first.to_dict()) == dumps_json(again.to_dict())
    noisy = [p.accuracies for p in first.models[0].points[1:]]
    assert noisy != [p.accuracies for p in other.models[0].points[1:]]
    repeats = first.models[0].points[2].accuracies
    assert len(set(repeats)) > 1, "repeats must draw different noise"


def test_no_seed_draws_one_and_records_it():
    report = run(seed=None, levels=[1.0], repeats=2)
    seed = report.settings["seed"]
    assert isinstance(seed, int) and seed >= 0
    assert run(seed=seed, levels=[1.0], repeats=2).to_dict() == report.to_dict()


def test_a_transformed_model_is_evaluated_as_it_is():
    config = load_preset("hardening-additive")
    transformed = transform_model(digits_mlp(), config)
    as_is = run(transformed, config=None).models[0]
    in_memory = run(digits_mlp()).models[0]
    assert as_is.config_source == "model metadata" and in_memory.config_source == "given"
    assert [p.accuracies for p in as_is.points] == [p.accuracies for p in in_memory.points]
    assert as_is.clean_accuracy == in_memory.clean_accuracy


def test_a_transformed_model_with_a_config_is_transformed_again():
    transformed = transform_model(digits_mlp(), load_preset("hardening-additive"))
    report = run(transformed, config="ideal", levels=[3.0], repeats=1)
    assert report.models[0].config["name"] == "ideal"
    assert report.models[0].points[0].accuracies[0] == report.models[0].clean_accuracy
    assert any("re-transformed" in note for note in report.notes)


def test_several_models_share_seeds_and_get_one_entry_each():
    report = evaluate([digits_mlp(32), digits_mlp(16)], "digits", config="hardening-additive", noise_scales=[1.0],
                      settings=RunSettings(repeats=2, seed=0), names=["wide", "narrow"])
    data = report.to_dict()
    assert [m["name"] for m in data["models"]] == ["wide", "narrow"]
    assert "points" not in data, "with several models the per-model fields live under models only"
    assert report.model("wide").points[0].accuracies != report.model("narrow").points[0].accuracies
    single = run(levels=[1.0], repeats=2, seed=0).to_dict()
    assert single["points"] == single["models"][0]["points"]


def test_metadata_normalization_is_applied():
    data = load_dataset("digits")
    norm = {"mean": [0.25], "std": [0.5]}
    report = run(digits_mlp(preprocess=norm), levels=[0.0], repeats=1)
    expected = ort_accuracy(digits_mlp(), ((data.x - 0.25) / 0.5).reshape(len(data), 64), data.y)
    assert report.models[0].clean_accuracy == expected
    assert report.models[0].normalization["source"] == "model metadata"
    flagged = run(digits_mlp(preprocess=norm), levels=[0.0], repeats=1, mean=[0.0], std=[1.0])
    assert flagged.models[0].clean_accuracy == ort_accuracy(digits_mlp(), data.x.reshape(len(data), 64), data.y)


def test_image_shaped_inputs_are_fed_unchanged():
    model = digits_mlp()
    reshape = helper.make_node("Reshape", ["image", "flat_shape"], ["x"], name="flatten")
    model.graph.node.insert(0, reshape)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape"))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8]))
    assert run(model, levels=[0.0], repeats=1).models[0].clean_accuracy == run(levels=[0.0], repeats=1).models[
        0].clean_accuracy


@pytest.mark.parametrize("shape, labels, message", [
    ((10, 1, 7, 7), 10, "gives samples of shape 1x7x7 .* expects 64"),
    ((10, 64), 12, "has 12 classes but model0 has 10 outputs"),
])
def test_data_that_does_not_fit_the_model_is_one_clear_error(shape, labels, message):
    data = Dataset(np.zeros(shape, np.float32), np.arange(10) % labels, labels, "tiny")
    with pytest.raises(AnalogError, match=message):
        run(data=data)


def test_models_evaluate_cannot_use_are_one_clear_error():
    with pytest.raises(ModelError, match="has no analog ops; give --preset or --config"):
        run(config=None)
    two_inputs = digits_mlp()
    two_inputs.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 64]))
    two_inputs.graph.node.append(helper.make_node("Identity", ["extra"], ["extra_out"]))
    two_inputs.graph.output.append(helper.make_tensor_value_info("extra_out", TensorProto.FLOAT, ["N", 64]))
    with pytest.raises(ModelError, match="2 data inputs"):
        run(two_inputs)


@pytest.mark.parametrize("settings, message", [
    (RunSettings(repeats=0), "^repeats must be >= 1"),
    (RunSettings(batch_size=0), "^batch_size must be >= 1"),
    (RunSettings(seed=-1), "^seed must be between"),
    (RunSettings(backend="spark"), "unknown backend 'spark'"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(AnalogError, match=message):
        evaluate(digits_mlp(), "digits", config="hardening-additive", noise_scales=[1.0], settings=settings)


def test_t_inference_is_validated_and_noted():
    report = run(levels=[1.0], repeats=1, t_inference=[1, 3600, 86400])
    assert report.settings["t_inference"] == [1.0, 3600.0, 86400.0]
    assert any("has no [device] model, so nothing depends on time" in note for note in report.notes)
    assert "t_inference" not in report.to_dict()["points"][0]
    with pytest.raises(AnalogError, match="strictly increasing"):
        run(levels=[1.0], repeats=1, t_inference=[3600, 1])
    with pytest.raises(AnalogError, match="^drift_compensation needs a hardware config with a \\[device\\] model"):
        run(levels=[1.0], repeats=1, drift_compensation="both")


YEAR = 365 * 86400.0


def test_a_time_sweep_feeds_its_times_to_one_session(monkeypatch):
    """t_inference is a graph input: the times of a sweep share one session, and each time's
    accuracies are those of that time evaluated alone (common random numbers)."""
    made: list[bytes] = []
    original = engine.make_session
    monkeypatch.setattr(engine, "make_session", lambda model, **kw: made.append(model) or original(model, **kw))
    config, settings = load_preset("aihwkit-pcm").with_overrides(["drift_scale=3"]), RunSettings(repeats=2, seed=3)
    sweep = evaluate(digits_mlp(), "digits", config=config, noise_scales=[1.0], settings=settings,
                     t_inference=[1.0, 3600.0, YEAR])
    assert len([model for model in made if b"ai.analog" in model]) == 1
    alone = evaluate(digits_mlp(), "digits", config=config, noise_scales=[1.0], settings=settings, t_inference=[YEAR])
    assert sweep.models[2].points[0].accuracies == alone.models[0].points[0].accuracies
    assert sweep.models[0].points[0].accuracies != sweep.models[2].points[0].accuracies


def test_devices_sweep_time_and_compensation_on_programmed_chips(tmp_path):
    settings = RunSettings(repeats=4, reads=2, seed=3, batch_size=256)
    report = evaluate(digits_mlp(), "digits", config=load_preset("aihwkit-pcm").with_overrides(["drift_scale=3"]),
                      noise_scales=[1.0], settings=settings, t_inference=[1.0, YEAR], drift_compensation="both")
    assert [(m.t_inference, m.drift_compensation) for m in report.models] == \
        [(1.0, True), (YEAR, True), (1.0, False), (YEAR, False)]
    assert report.models[1].name == "model0 (t=3.1536e+07 s, compensation on)"
    points = [m.points[0] for m in report.models]
    assert [p.to_dict()["t_inference"] for p in points] == [1.0, YEAR, 1.0, YEAR]
    uncompensated_year = points[3].accuracy.mean
    assert uncompensated_year < points[2].accuracy.mean - 0.2  # strong drift without compensation
    assert points[1].accuracy.mean > uncompensated_year + 0.2  # compensation takes most of it back
    entry = points[0].to_dict()
    assert entry["chips"] == 2 and entry["reads"] == 2 and entry["between_chip_std"] >= 0
    assert report.settings["chips"] == 2 and report.settings["drift_compensation"] == "both"
    with pytest.raises(AnalogError, match="not a whole number of chips"):
        RunSettings(repeats=5, reads=2).checked()
    written = {p.name for p in write_report(report, tmp_path / "out")}
    assert "accuracy_vs_time.png" in written
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert rows[0].endswith("t_inference,drift_compensation") and rows[-1].endswith("31536000.0,false")


class FeedRecorder:
    """A session stand-in that keeps the chip seed of every run."""

    def __init__(self) -> None:
        self.chips: list[int] = []

    def run(self, outputs, feed):
        self.chips.append(int(feed["chip"]))
        return [np.zeros((len(feed["x"]), 2), np.float32)]


def test_reads_of_one_chip_share_its_chip_seed():
    variant = Variant(b"", "x", "y", 0, None, "seed", "chip", None)
    payload = Payload((variant,), (np.zeros((4, 1), np.float32),), np.zeros(4, np.int64), 4, None, 9, 1, reads=3)
    evaluator = Evaluator(payload)
    evaluator.sessions[variant.model] = recorder = FeedRecorder()
    for repeat in range(6):
        evaluator.run(Unit(0, 0, repeat, 1.0))
    assert recorder.chips[:3] == [recorder.chips[0]] * 3 and recorder.chips[3:] == [recorder.chips[3]] * 3
    assert recorder.chips[0] != recorder.chips[3] and recorder.chips[0] == int(chip_seed(9, 0))


def test_batch_seeds_are_deterministic_non_negative_and_differ_per_repeat():
    first = batch_seeds(0, 0, 5)
    np.testing.assert_array_equal(first, batch_seeds(0, 0, 5))
    assert first.dtype == np.int64 and (first >= 0).all() and len(set(first)) == 5
    assert not set(first) & set(batch_seeds(0, 1, 5))
    assert not set(first) & set(batch_seeds(1, 0, 5))
    np.testing.assert_array_equal(batch_seeds(0, 0, 3), first[:3])


def test_count_correct_top1_and_topk(rng):
    logits = rng.standard_normal((50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    counts = count_correct(logits, labels, 3)
    ranks = (logits > logits[np.arange(50), labels][:, None]).sum(axis=1)
    assert counts.top1 == int((ranks == 0).sum()) and counts.topk == int((ranks < 3).sum())
    assert count_correct(logits, labels, None).topk is None


def test_unit_results_do_not_depend_on_order_or_batch_sharing():
    model = transform_model(digits_mlp(), load_preset("hardening-additive"))
    data = load_dataset("digits")
    payload = Payload((Variant(model.SerializeToString(), "x", "logits", 0, "noise_scale", "seed"),),
                      (data.x.reshape(len(data), 64),), data.y, 100, 5, 3, None)
    units = [Unit(0, i, r, s) for i, s in enumerate([0.5, 1.0]) for r in range(2)]
    forward = {u: Evaluator(payload).run(u) for u in units}
    evaluator = Evaluator(payload)
    backward = {u: evaluator.run(u) for u in reversed(units)}
    assert forward == backward
    assert all(isinstance(c, Counts) and c.topk >= c.top1 for c in forward.values())


def test_report_json_is_plain_json():
    text = dumps_json(run(levels=[0.0, 1.0], repeats=2).to_dict())
    data = json.loads(text)
    assert data["kind"] == "evaluation" and data["settings"]["noise_scales"] == [0.0, 1.0]


def test_a_hand_built_analog_model_runs_by_its_metadata_alone():
    """Only the contract matters: a Noise node, the control inputs and the metadata keys."""
    from analog_onnx.ops import DOMAIN, OPSET_VERSION
    from analog_onnx.ops.functions import function_protos

    model = digits_mlp()
    graph = model.graph
    graph.node[0].input[0] = "x_noisy"
    graph.node.insert(0, helper.make_node("Noise", ["x", "level", "rng_seed"], ["x_noisy"], domain=DOMAIN,
                                          sigma_add=1.0, stream=1, name="input_noise"))
    for name, value in (("level", np.array(1.0, np.float32)), ("rng_seed", np.array(-1, np.int64))):
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        graph.input.append(helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), []))
    model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    model.functions.extend(function_protos(17))
    config = load_preset("hardening-additive")
    helper.set_model_props(model, {"analog_onnx.config": config.to_json(),
                                   "analog_onnx.inputs": json.dumps({"noise_scale": "level", "seed": "rng_seed"})})
    report = run(model, config=None, levels=[0.0, 0.3, 3.0], repeats=2).models[0]
    means = [p.accuracy.mean for p in report.points]
    assert report.config_source == "model metadata"
    assert means[0] == report.clean_accuracy > means[1] > means[2]
    assert run(model, config=None, levels=[0.3], repeats=2).to_dict() == run(
        model, config=None, levels=[0.3], repeats=2).to_dict()


def chip_probe() -> onnx.ModelProto:
    """Scores [chip_seed >= 0 and t_inference > 4, 0.5]: class 0 wins only when both were fed."""
    nodes = [helper.make_node("Constant", [], ["zero"], value_int=0),
             helper.make_node("Constant", [], ["four"], value_float=4.0),
             helper.make_node("Constant", [], ["half"],
                              value=onnx.numpy_helper.from_array(np.full((1, 1), 0.5, np.float32))),
             helper.make_node("GreaterOrEqual", ["chip", "zero"], ["chip_ok"]),
             helper.make_node("Greater", ["t", "four"], ["t_ok"]),
             helper.make_node("And", ["chip_ok", "t_ok"], ["ok"]),
             helper.make_node("Cast", ["ok"], ["okf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "zero_f"], ["x0"]),
             helper.make_node("Add", ["x0", "okf"], ["first"]),
             helper.make_node("Add", ["x0", "half"], ["second"]),
             helper.make_node("Concat", ["first", "second"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1]),
         helper.make_tensor_value_info("chip", TensorProto.INT64, []),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [onnx.numpy_helper.from_array(np.array(-1, np.int64), "chip"),
         onnx.numpy_helper.from_array(np.array(0.0, np.float32), "t"),
         onnx.numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero_f")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("chip_input", "t_inference", "hits"), [("chip", 5.0, 6), (None, 5.0, 0), ("chip", 1.0, 0)])
def test_the_engine_feeds_chip_seed_and_t_inference(chip_input, t_inference, hits):
    variant = Variant(chip_probe().SerializeToString(), "x", "y", 0, None, None, chip_input, "t", t_inference)
    payload = Payload((variant,), (np.ones((6, 1), np.float32),), np.zeros(6, np.int64), 4, None, 3, 1)
    counts = Evaluator(payload).run(Unit(0, 0, 2, 1.0))
    assert (counts.top1, counts.topk, counts.nonfinite) == (hits, None, 0)


def test_chip_seeds_are_one_per_repeat_and_apart_from_batch_seeds():
    chips = [int(chip_seed(7, r)) for r in range(4)]
    assert chips == [int(chip_seed(7, r)) for r in range(4)] and len(set(chips)) == 4 and min(chips) >= 0
    assert not set(chips) & {int(s) for r in range(4) for s in batch_seeds(7, r, 8)}
    assert int(chip_seed(8, 0)) != chips[0]
