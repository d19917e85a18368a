"""``analog-onnx study``: spec validation, resumable cells, aggregation over seeds, report, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from analog_onnx.study import cells, collect, load_spec, run_study, write_report  # noqa: E402
from analog_onnx.study.spec import SpecError, cell_key, parse_spec  # noqa: E402
from analog_onnx.train import trainer as trainer_module  # noqa: E402

TINY = """
[study]
name = "tiny"
data = "digits"
archs = ["mlp"]
seeds = [0, 1]

[train]
epochs = 2
batch_size = 64
optimizer = "adam"
limit = 256

[[method]]
name = "baseline"
kind = "baseline"

[[method]]
name = "nit"
kind = "nit"
preset = "hardening-additive"
noise_scale = 0.5

[evaluate]
hardware = ["hardening-additive"]
noise_scales = "0,0.1,1,10"
repeats = 2
limit = 100
report_levels = [1.0]
"""


def _spec(tmp_path: Path, text: str = TINY, name: str = "tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_spec(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny study, run once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("study")
    spec = _spec(root)
    run = run_study(spec, root / "out")
    assert (run.trained, run.evaluated, run.failures) == (4, 4, [])
    write_report(spec, root / "out")
    return root / "out"


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def _no_work(monkeypatch) -> None:
    def refuse(task, folder):
        raise AssertionError(f"{task.label} ran again")

    monkeypatch.setattr(cells, "_train", refuse)
    monkeypatch.setattr(cells, "_evaluate", refuse)


# -- spec --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    (("[train]", "[train]\nepochz = 3"), "[train]: unknown key 'epochz'"),
    (('kind = "nit"', 'kind = "hwx"'), "kind 'hwx' is not a training method; use one of baseline, qat, nit, "
                                       "qat+nit, hwa"),
    (('kind = "nit"', 'kind = "hwa"'), "method hwa trains with the devices' programming noise"),
    (('archs = ["mlp"]', 'archs = ["mlp", "transformer"]'), "unknown architecture 'transformer'"),
    (('preset = "hardening-additive"', 'preset = "hardening"'), "method nit: unknown preset 'hardening'"),
    (("noise_scale = 0.5", "noise_scale = 0"), "method nit, arch mlp: method nit trains with noise"),
    (("report_levels = [1.0]", "report_levels = [2.0]"), "report_levels [2.0] are not in noise_scales"),
    (('name = "nit"', 'name = "baseline"'), "method names repeat baseline"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "[study] seeds repeat 0"),
    (('name = "tiny"', 'name = "../up"'), "[study] name must be letters"),
    (("noise_scales = \"0,0.1,1,10\"", "noise_scales = \"0,-1\""), "noise scales must be >= 0"),
    (("[evaluate]", "[evaluat]"), "unknown key 'evaluat'"),
    (("repeats = 2", "repeats = 0"), "[evaluate] repeats must be an integer from 1"),
    (("epochs = 2", "epochs = \"two\""), "[train] epochs must be int, got str 'two'"),
    (("[[method]]", "[[methodz]]"), "unknown key 'methodz'"),
    (('data = "digits"', 'data = "digitz"'), "[study] data: unknown data 'digitz'"),
    (('preset = "hardening-additive"', 'preset = "hardening-additive"\nconfig = "x.toml"'), "not both"),
])
def test_a_bad_spec_is_one_line_and_exit_2(run_cli, tmp_path, change, message) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace(*change, 1))
    code, out, err = run_cli("study", path, "--out", tmp_path / "out")
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written for a bad spec


def test_not_toml_and_no_methods_are_refused(tmp_path) -> None:
    with pytest.raises(SpecError, match="not valid TOML"):
        _spec(tmp_path, "[study\n")
    with pytest.raises(SpecError, match=r"add at least one \[\[method\]\]"):
        parse_spec({"study": {"name": "x", "data": "digits", "archs": ["mlp"], "seeds": [0]},
                    "evaluate": {"hardware": ["ideal"]}})


def test_a_hardware_name_that_cannot_name_a_folder_is_refused(tmp_path) -> None:
    config = tmp_path / "chip.toml"
    config.write_text('name = "[red]../chip"\n[placement]\nwhere = "mvm"\n[forward]\nout_noise = 0.1\n')
    with pytest.raises(SpecError, match="the config's name must be letters"):
        _spec(tmp_path, TINY.replace('hardware = ["hardening-additive"]', f'hardware = ["{config}"]'))


def test_the_grid_and_its_keys(tmp_path) -> None:
    spec = _spec(tmp_path)
    assert len(spec.train_cells) == 1 * 2 * 2 and len(spec.eval_cells) == 4
    assert len({c.key for c in (*spec.train_cells, *spec.eval_cells)}) == 8
    again = _spec(tmp_path, TINY.replace("noise_scale = 0.5", "noise_scale = 0.3"), "other.toml")
    same = [a.key == b.key for a, b in zip(spec.train_cells, again.train_cells, strict=True)]
    assert same == [True, True, False, False]  # only the nit cells change
    assert cell_key({"a": 1, "b": [1, 2]}) == cell_key({"b": [1, 2], "a": 1})  # order does not matter


# -- resumability ------------------------------------------------------------------------------
def test_a_rerun_of_a_finished_study_does_nothing(monkeypatch, finished, tmp_path) -> None:
    out = _copy(finished, tmp_path)
    _no_work(monkeypatch)
    run = run_study(_spec(tmp_path), out)
    assert (run.trained, run.evaluated, run.skipped) == (0, 0, 8)


def test_a_changed_setting_redoes_only_its_cells(monkeypatch, finished, tmp_path) -> None:
    out = _copy(finished, tmp_path)
    ran: list[str] = []
    original = cells.run_task
    monkeypatch.setattr("analog_onnx.study.runner.run_task", lambda task: ran.append(task.label) or original(task))
    spec = _spec(tmp_path, TINY.replace("noise_scale = 0.5", "noise_scale = 0.3"))
    run = run_study(spec, out)
    assert (run.trained, run.evaluated, run.skipped) == (2, 2, 4)
    assert all(" nit " in label for label in ran) and len(ran) == 4
    row = collect(spec, out).row("mlp", "nit", "hardening-additive")
    assert row is not None and row.seeds == (0, 1)  # the report uses the new cells, not the old folders


def test_an_interrupted_training_continues_from_its_last_epoch(monkeypatch, finished, tmp_path) -> None:
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    original = trainer_module._Run._after_epoch

    def killed_after_first_epoch(self, metrics):
        original(self, metrics)
        if metrics["epoch"] == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(trainer_module._Run, "_after_epoch", killed_after_first_epoch)
    first = run_study(spec, out)
    assert first.trained == 0 and len(first.failures) == 4 and "killed" in first.failures[0]
    assert first.evaluated == 0  # nothing evaluated without a model
    monkeypatch.setattr(trainer_module._Run, "_after_epoch", original)
    cell = spec.train_cells[0]
    epoch_one = (out / cell.folder / "metrics.jsonl").read_text().splitlines()
    run = run_study(spec, out)
    assert (run.trained, run.evaluated, run.failures) == (4, 4, [])
    assert json.loads((out / cell.folder / cells.RECORD).read_text())["resumed"] is True
    lines = (out / cell.folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == epoch_one[0]  # epoch 1 kept, epoch 2 added
    uninterrupted = (finished / cell.folder / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["train_loss"] == pytest.approx(json.loads(uninterrupted[1])["train_loss"])


def test_a_damaged_model_is_trained_again(finished, tmp_path) -> None:
    out = _copy(finished, tmp_path)
    spec = _spec(tmp_path)
    cell = spec.eval_cells[0]
    (out / cell.train.folder / cells.MODEL).write_text("garbage\n")
    (out / cell.folder / cells.RECORD).unlink()
    run = run_study(spec, out)
    assert (run.trained, run.evaluated, run.failures) == (1, 1, [])
    onnx = pytest.importorskip("onnx")
    onnx.load(out / cell.train.folder / cells.MODEL)


def test_a_record_from_other_settings_is_not_taken_as_done(finished, tmp_path) -> None:
    spec = _spec(tmp_path)
    cell = spec.eval_cells[0]
    assert cells.read_record(finished / cell.folder, cell.key, "evaluate") is not None
    assert cells.read_record(finished / cell.folder, "0" * 12, "evaluate") is None


# -- results -----------------------------------------------------------------------------------
def _fake_records(spec, out: Path, midpoints: dict[str, list[float]], accuracies: dict[str, list[list[float]]]):
    for cell in spec.eval_cells:
        method, seed = cell.train.method.name, cell.train.seed
        points = [{"noise_scale": s, "accuracies": accuracies[method][seed] if s == 1.0 else [0.5, 0.5]}
                  for s in spec.noise_scales]
        record = {"key": cell.key, "status": "done", "clean_accuracy": 0.9 + 0.02 * seed,
                  "midpoint_noise": midpoints[method][seed], "midpoint_status": "found", "points": points}
        (out / cell.folder).mkdir(parents=True)
        cells.write_json(out / cell.folder / cells.RECORD, record)


def test_means_and_intervals_are_over_seeds_and_methods_compare_per_seed(tmp_path) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    text = TINY.replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
    spec = _spec(tmp_path, text)
    out = tmp_path / "out"
    accuracies = {"baseline": [[0.6, 0.8], [0.5, 0.5], [0.7, 0.9]], "nit": [[0.9, 0.9]] * 3}
    midpoints = {"baseline": [1.0, 2.0, 4.0], "nit": [2.0, 5.0, 8.0]}
    _fake_records(spec, out, midpoints, accuracies)
    results = collect(spec, out)
    assert results.missing == len(spec.train_cells)  # trainings have no records here

    row = results.row("mlp", "baseline", "hardening-additive")
    per_seed = np.array([0.7, 0.5, 0.8])  # each seed's mean over its repeats
    half = scipy_stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    at = row.accuracy_at(1.0)
    assert at.mean == pytest.approx(per_seed.mean())
    assert per_seed.mean() + half > 1 and 0 <= at.low < at.mean < at.high <= 1  # accuracies: Wilson, not t
    # Wilson at the effective samples p(1-p)/se^2 with the t quantile (evaluate.metrics.summarize_accuracy)
    p, z = per_seed.mean(), scipy_stats.t.ppf(0.975, 2)
    n = p * (1 - p) / (half / z) ** 2
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (at.low, at.high) == pytest.approx((center - spread, center + spread), abs=1e-4)
    assert row.clean.mean == pytest.approx(0.92) and row.midpoint.mean == pytest.approx(7 / 3)

    comparison = next(c for c in results.comparisons if (c.method, c.versus) == ("nit", "baseline"))
    logs = np.log10([2.0, 2.5, 2.0])  # per-seed ratios nit / baseline
    assert 10 ** comparison.log10_ratio.mean == pytest.approx(10 ** logs.mean())
    low = logs.mean() - scipy_stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert comparison.log10_ratio.low == pytest.approx(low, abs=1e-4)
    assert comparison.verdict == "more robust"  # every seed doubles its midpoint or more


def test_a_seed_without_midpoint_leaves_the_mean_and_comparison_undecided(tmp_path) -> None:
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    _fake_records(spec, out, {"baseline": [1.0, None], "nit": [2.0, 3.0]},
                  {"baseline": [[0.5, 0.5]] * 2, "nit": [[0.5, 0.5]] * 2})
    results = collect(spec, out)
    assert results.row("mlp", "baseline", "hardening-additive").midpoint is None
    assert results.comparisons[0].verdict == "no midpoint"


def test_the_report_is_written_again_from_a_finished_folder(run_cli, monkeypatch, finished, tmp_path) -> None:
    out = _copy(finished, tmp_path)
    before = (out / "study.json").read_text()
    for name in ("study.json", "study.csv", "summary.md"):
        (out / name).unlink()
    shutil.rmtree(out / "figures")
    _no_work(monkeypatch)
    code, stdout, err = run_cli("study", out, "--report")
    assert code == 0, err
    assert (out / "study.json").read_text() == before
    csv_lines = (out / "study.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2  # a header, one row per (arch, method, hardware)
    assert csv_lines[0].startswith("data,arch,depth,method") and "acc_at_1_mean" in csv_lines[0]
    assert {p.name for p in (out / "figures").iterdir()} == {
        "accuracy_vs_noise-hardening-additive.png", "midpoint_by_depth-hardening-additive.png", "cross_hardware.png"}
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Study tiny\n") and "| baseline |" in summary
    assert json.loads(before)["study"] == "tiny"


# -- CLI ---------------------------------------------------------------------------------------
def test_the_cli_runs_a_study_and_a_rerun_only_reports(run_cli, tmp_path) -> None:
    path = tmp_path / "one.toml"
    path.write_text(TINY.replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 2", "epochs = 1"))
    code, out, err = run_cli("study", path, "--out", tmp_path / "s")
    assert code == 0, err
    assert "2 trained, 2 evaluated, 0 cells already done" in out
    assert (tmp_path / "s" / "study.toml").read_text() == path.read_text()
    code, out, err = run_cli("study", tmp_path / "s")  # the folder alone names the study
    assert code == 0, err
    assert "0 trained, 0 evaluated, 4 cells already done" in out


def test_the_cli_refuses_a_folder_that_is_not_a_study(run_cli, tmp_path) -> None:
    code, _, err = run_cli("study", tmp_path, "--report")
    assert code == 2 and "has no study.toml" in err and err.count("\n") == 1


@pytest.mark.slow
def test_local_workers_and_ray_give_the_same_results(finished, tmp_path) -> None:
    pytest.importorskip("ray")
    spec = _spec(tmp_path)
    expected = collect(spec, finished).to_dict()
    for backend in ("local", "ray"):
        out = tmp_path / backend
        run = run_study(spec, out, workers=2, backend=backend)
        assert (run.trained, run.evaluated, run.failures) == (4, 4, [])
        assert collect(spec, out).to_dict() == expected, backend


def test_figures_a_reader_trusts(finished) -> None:
    """Noise 0 on its own tick, bands named only with seeds, one architecture centred, a colour bar."""
    from analog_onnx.study import figures

    spec = load_spec(finished / "study.toml")
    results = collect(spec, finished)
    def title(figure) -> str:
        return " ".join(figure._suptitle.get_text().split())

    noise = figures._accuracy_vs_noise(results, "hardening-additive")
    assert noise.axes[0].get_xticklabels()[0].get_text() == "0" and "95% interval over seeds" in title(noise)
    depth = figures._midpoint_by_depth(results, "hardening-additive")
    assert depth.axes[0].get_xlim() == (-0.5, 0.5)  # one architecture: methods side by side in the middle
    cross = figures._cross_hardware(results)
    assert len(cross.axes) == len(spec.archs) + 1  # the panels and their colour bar
    one_seed = collect(dataclasses.replace(spec, seeds=spec.seeds[:1]), finished)
    assert "one seed: no interval" in title(figures._accuracy_vs_noise(one_seed, "hardening-additive"))


def test_the_board_shows_the_epoch_each_running_training_has_reached(tmp_path) -> None:
    """A study's trainings run in worker processes without a bar of their own: the live view
    reads each running cell's metrics.jsonl (a line per finished epoch)."""
    from rich.console import Console

    from analog_onnx.study.runner import Board

    spec = _spec(tmp_path)
    first, second = spec.train_cells[:2]
    board = Board(spec, {c.key for c in spec.train_cells}, tmp_path)
    board.mark(first, "running")
    board.mark(second, "running")
    folder = tmp_path / first.folder
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    console = Console(record=True, width=120)
    console.print(board.render())
    shown = console.export_text()
    assert f"{cells_label(first)}: epoch 1/2" in shown and f"{cells_label(second)}: epoch 0/2" in shown


def cells_label(cell) -> str:
    return f"train {cell.arch} {cell.method.name} seed {cell.seed}"
