"""A study's folder and files are trusted no further than they can be checked: another study's
folder, a file, damaged records, out-of-range seeds and missing data are one clear line or a cell
run again, never lost results or a traceback; figures of a changed study are not left behind."""

from __future__ import annotations

import datetime
import functools
import operator
import warnings
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import one_line_error

pytest.importorskip("torch")

from analog_onnx.errors import AnalogError  # noqa: E402
from analog_onnx.study import cells, collect, load_spec, run_study, write_report  # noqa: E402
from analog_onnx.study import runner as study_runner  # noqa: E402
from analog_onnx.study.spec import SpecError, parse_spec  # noqa: E402

SPEC = """
[study]
name = "{name}"
data = "{data}"
archs = ["mlp"]
seeds = [{seeds}]

[train]
epochs = 1

[[method]]
name = "baseline"
kind = "baseline"

[evaluate]
hardware = [{hardware}]
noise_scales = "0,0.1,1"
repeats = 2
"""


def spec_file(folder: Path, name: str = "a", *, data: str = "digits", seeds: str = "0, 1",
              hardware: str = '"hardening-additive"') -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SPEC.format(name=name, data=data, seeds=seeds, hardware=hardware))
    return path


def fake_results(spec, out: Path) -> None:
    """Records of every evaluation, without training (what ``collect`` reads)."""
    (out / study_runner.SPEC_COPY).write_text(spec.text)
    for cell in spec.eval_cells:
        record = {"key": cell.key, "status": "done", "clean_accuracy": 0.9, "midpoint_noise": 0.5,
                  "midpoint_status": "found",
                  "points": [{"noise_scale": s, "accuracies": [0.9 - s / 2] * 2} for s in spec.noise_scales]}
        (out / cell.folder).mkdir(parents=True)
        cells.write_json(out / cell.folder / cells.RECORD, record)



def test_a_second_study_into_the_same_folder_is_refused(run_cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    fake_results(load_spec(spec_file(tmp_path, "a")), out)
    write_report(load_spec(spec_file(tmp_path, "a")), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = spec_file(tmp_path, "b")
    one_line_error(run_cli("study", other, "--out", out), f"{out} holds study 'a'; give study 'b' another --out")
    one_line_error(run_cli("study", other, "--out", out, "--report"), "holds study 'a'")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_folder_of_other_files_or_a_file_is_no_study_folder(run_cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")
    one_line_error(run_cli("study", spec_file(tmp_path), "--out", mine), "is not empty and holds no study.toml")
    assert (mine / "summary.md").read_text() == "my notes"
    (tmp_path / "file").write_text("x")
    one_line_error(run_cli("study", spec_file(tmp_path), "--out", tmp_path / "file"), "is a file")


@pytest.mark.parametrize("damage", [
    lambda record: [record],
    lambda record: {k: v for k, v in record.items() if k != "points"},
    lambda record: {**record, "points": [{"noise_scale": "1", "accuracies": [0.5]}]},
    lambda record: {**record, "clean_accuracy": None},
    lambda record: {**record, "midpoint_noise": "high"},
], ids=["list", "no points", "text level", "no clean accuracy", "text midpoint"])
def test_a_damaged_record_means_the_cell_is_not_done(tmp_path, damage):
    spec = load_spec(spec_file(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    fake_results(spec, out)
    cell = spec.eval_cells[0]
    record = cells.read_record(out / cell.folder, cell.key, "evaluate")
    cells.write_json(out / cell.folder / cells.RECORD, damage(record))
    assert cells.read_record(out / cell.folder, cell.key, "evaluate") is None
    results = write_report(spec, out)
    assert results.missing == len(spec.train_cells) + 1
    assert results.row("mlp", "baseline", "hardening-additive").seeds == (1,)


def test_a_training_without_the_model_it_wrote_is_not_done(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    cell = spec.train_cells[0]
    folder = tmp_path / cell.folder
    folder.mkdir(parents=True)
    (folder / cells.MODEL).write_bytes(b"onnx")
    cells.write_json(folder / cells.RECORD, {"key": cell.key, "status": "done"})
    assert cells.read_record(folder, cell.key, "train") is None  # no checksum: written before the model
    cells.write_json(folder / cells.RECORD, {"key": cell.key, "status": "done",
                                             "model_sha256": cells.model_digest(folder)})
    assert cells.read_record(folder, cell.key, "train") is not None
    (folder / cells.MODEL).write_bytes(b"garbage")
    assert cells.read_record(folder, cell.key, "train") is None
    (folder / cells.MODEL).unlink()
    assert cells.read_record(folder, cell.key, "train") is None


@pytest.mark.parametrize(("change", "message"), [
    ({"seeds": str(2**64)}, "[study] seeds must be an integer from 0 to 9,223,372,036,854,775,807"),
    ({"seeds": "-1"}, "[study] seeds must be an integer from 0"),
    ({"data": "cifar10:no/such/folder"}, "[study] data: cifar10: no/such/folder is not a directory"),
    ({"data": "npz:missing.npz"}, "[study] data: npz: missing.npz is not a file"),
], ids=["seed 2**64", "negative seed", "missing folder", "missing file"])
def test_seeds_and_data_paths_are_checked_when_the_study_is_read(tmp_path, change, message):
    with pytest.raises(SpecError) as error:
        load_spec(spec_file(tmp_path, **change))
    assert message in str(error.value)


def test_an_evaluation_seed_beyond_int64_is_refused(tmp_path):
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace("repeats = 2", f"repeats = 2\nseed = {2**63}"))
    with pytest.raises(SpecError, match="\\[evaluate\\] seed must be an integer from 0"):
        load_spec(path)


def test_a_partial_report_warns_nothing_and_figures_of_removed_hardware_go(tmp_path):
    both = load_spec(spec_file(tmp_path, hardware='"hardening-additive", "aihwkit-default"'))
    out = tmp_path / "run"
    out.mkdir()
    fake_results(both, out)
    write_report(both, out)
    assert (out / "figures" / "accuracy_vs_noise-aihwkit-default.png").is_file()
    one = load_spec(spec_file(tmp_path))  # the same study, edited: one hardware, and a record missing
    (out / one.eval_cells[0].folder / cells.RECORD).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(one, out)
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "accuracy_vs_noise-hardening-additive.png", "cross_hardware.png", "midpoint_by_depth-hardening-additive.png"]


def test_study_workers_are_capped_at_the_cores(tmp_path, monkeypatch):
    seen = []

    @contextmanager
    def executor(backend: str, workers: int, address: str | None):
        seen.append(workers)

        def submit(task: cells.Task) -> Future:
            future: Future = Future()
            future.set_result({})
            return future

        yield submit

    monkeypatch.setattr(study_runner, "_executor", executor)
    monkeypatch.setattr(study_runner, "_cores", lambda: 2)
    run = run_study(load_spec(spec_file(tmp_path)), tmp_path / "run", workers=64)
    assert seen == [2] and run.trained == 2
    assert collect(load_spec(spec_file(tmp_path)), tmp_path / "run").missing == 4  # nothing was written


def test_a_bad_training_value_in_a_study_file_is_named_by_its_key_not_a_flag(run_cli, tmp_path):
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace("epochs = 1", "epochs = 1\nlr = -1"))
    code, _, err = run_cli("study", path, "--out", tmp_path / "out")
    assert code == 2 and "method baseline, arch mlp: lr must be finite and >= 0, got -1" in err and "--lr" not in err


NIT_AND_QAT = """
[[method]]
name = "nit"
kind = "nit"
preset = "hardening-additive"
set = ["noise.additive=0.5"]

[[method]]
name = "qat"
kind = "qat"
range_scale = 1.0

[[verdicts.claim]]
name = "nit"
method = "nit"
versus = "baseline"
"""


@pytest.mark.parametrize(("change", "message"), [
    (('set = ["noise.additive=0.5"]', "set = true"), "method nit set must be list of str, got bool True"),
    (('set = ["noise.additive=0.5"]', 'set = "noise.additive=0.5"'),
     "method nit set must be list of str, got str 'noise.additive=0.5'"),
    (('set = ["noise.additive=0.5"]', 'set = ["noise"]'), "method nit: set expects key=value, got 'noise'"),
    (("range_scale = 1.0", "bits = {}\nrange_scale = 1.0"), "method qat bits must be int or list of int, got dict {}"),
    (('method = "nit"', "method = []"), "[[verdicts.claim]] #1 method must be str, got list []"),
    (('versus = "baseline"', "versus = []"), "[[verdicts.claim]] #1 versus must be str, got list []"),
], ids=["set bool", "set string", "set no =", "bits table", "claim method list", "claim versus list"])
def test_a_value_of_the_wrong_type_is_one_line_naming_its_key(run_cli, tmp_path, change, message):
    path = spec_file(tmp_path)
    path.write_text(path.read_text() + NIT_AND_QAT.replace(*change))
    one_line_error(run_cli("study", path, "--out", tmp_path / "out"), message)
    assert "--set" not in run_cli("study", path, "--out", tmp_path / "out")[2]


def _base_spec() -> dict:
    return {"study": {"name": "s", "data": "digits", "archs": ["mlp"], "seeds": [0], "description": "d"},
            "train": {"epochs": 1, "limit": 64, "per_arch": {"mlp": {"batch_size": 32}}},
            "method": [{"name": "baseline", "kind": "baseline"},
                       {"name": "nit", "kind": "nit", "preset": "hardening-additive", "set": ["noise.additive=0.5"],
                        "noise_scale": 0.5},
                       {"name": "qat", "kind": "qat", "bits": 8, "range_scale": 1.0}],
            "evaluate": {"hardware": ["hardening-additive"], "noise_scales": "0,1", "repeats": 1, "seed": 0,
                         "limit": 10, "batch_size": 10, "report_levels": [1.0]},
            "verdicts": {"margin": 1.1, "alpha": 0.05, "correction": "holm",
                         "claim": [{"name": "c", "statement": "s", "kind": "ratio", "method": "nit",
                                    "versus": "baseline", "hardware": ["hardening-additive"], "archs": ["mlp"],
                                    "need": "any"}]}}


def _key_paths(table: dict | list, path: tuple = ()) -> list[tuple]:
    """Every key and list index of a parsed study file, at any depth."""
    items = table.items() if isinstance(table, dict) else enumerate(table)
    return [p for key, value in items
            for p in [(*path, key), *(_key_paths(value, (*path, key)) if isinstance(value, dict | list) else [])]]


@pytest.mark.parametrize("value", [True, 7, 1.5, "x", [], [1], ["a"], [[1]], {}, {"a": 1},
                                   datetime.datetime(2020, 1, 1), datetime.time(1, 2)], ids=repr)
def test_every_key_takes_any_toml_value_or_names_itself(value):
    """No value of any TOML type, at any key, gets past parsing as a TypeError: it is taken, or
    refused in one line naming the key."""
    parse_spec(_base_spec())
    for path in _key_paths(_base_spec()):
        raw = _base_spec()
        functools.reduce(operator.getitem, path[:-1], raw)[path[-1]] = value
        key = next(k for k in reversed(path) if isinstance(k, str))  # a list item is named by its list's key
        try:
            parse_spec(raw)
        except AnalogError as e:
            renamed = "is not a method" in str(e)  # a method a claim names was renamed
            assert "\n" not in str(e) and (key in str(e) or renamed), (path, str(e))


@pytest.mark.parametrize(("change", "message"), [
    (('name = "a"', 'name = "a\\n"'), "[study] name must be letters"),
    (('name = "baseline"', 'name = "baseline\\n"'), "[[method]] #1 name must be letters"),
    (('hardware = ["hardening-additive"]', 'hardware = ["{config}"]'), "the config's name must be letters"),
], ids=["study", "method", "hardware config"])
def test_a_name_with_a_final_newline_names_no_folder(run_cli, tmp_path, change, message):
    config = tmp_path / "chip.toml"
    config.write_text('name = "chip\\n"\nbase = "hardening-additive"\n')
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace(change[0], change[1].format(config=config)))
    one_line_error(run_cli("study", path, "--out", tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("line", "message"), [
    ("limit = 0", "method baseline, arch mlp: limit must be >= 1, got 0"),
    ("eval_limit = -1", "eval_limit must be >= 1, got -1"),
    ('augment = "flip"', "unknown augment 'flip'"),
    ('device = "gpu"', "unknown device 'gpu'"),
    ('device = "cuda:999"', "unknown device 'cuda:999'"),
    ('init = "no/such.pt"', "init: no such checkpoint: no/such.pt"),
], ids=["limit", "eval_limit", "augment", "device", "device index", "init"])
def test_a_training_value_the_trainer_would_refuse_is_refused_when_the_study_is_read(run_cli, tmp_path, line,
                                                                                      message):
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace("epochs = 1", f"epochs = 1\n{line}"))
    one_line_error(run_cli("study", path, "--out", tmp_path / "out"), message)
    assert not (tmp_path / "out").exists()


def test_a_cuda_device_this_machine_lacks_is_refused_before_any_training(run_cli, tmp_path):
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace("epochs = 1", 'epochs = 1\ndevice = "cuda:99"'))
    result = run_cli("study", path, "--out", tmp_path / "out")
    one_line_error(result, "[train] device 'cuda:99': this machine has")
    assert "--device" not in result[2] and not list((tmp_path / "out").glob("train/*"))
