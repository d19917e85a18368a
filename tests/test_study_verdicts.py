"""The paper's experiment, honest by construction: swept methods, the NIT envelope, verdicts by
declared rule (Holm, TOST), cell keys that hold the code, and training that never reads the test split."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

from analog_onnx.study import cells, code, collect, load_spec, run_study  # noqa: E402
from analog_onnx.study.spec import PAPER_RANGE, SpecError  # noqa: E402
from analog_onnx.study.verdicts import Claim, Rules, decide, holm, t_test, tost  # noqa: E402
from analog_onnx.train import trainer as trainer_module  # noqa: E402
from analog_onnx.train.pipeline import validation_split  # noqa: E402

STUDY = """
[study]
name = "paper"
data = "digits"
archs = ["mlp1", "mlp3"]
seeds = [0, 1, 2]

[train]
epochs = 1
limit = 200
select = "last"
val_fraction = 0.0

[[method]]
name = "baseline"
kind = "baseline"

[[method]]
name = "qat"
kind = "qat"
bits = [4, 8]
range_scale = [1, 2]

[[method]]
name = "nit"
kind = "nit"
preset = "hardening-additive"
noise_scale = [0.1, 1.0]

[evaluate]
hardware = ["hardening-additive"]
noise_scales = "0,0.1,0.3,1,3"
report_levels = [1.0]

[verdicts]
margin = 1.1

[[verdicts.claim]]
name = "qat"
method = "qat"
versus = "baseline"
need = "any"

[[verdicts.claim]]
name = "nit"
method = "nit-envelope"
versus = "baseline"

[[verdicts.claim]]
name = "deeper"
kind = "depth"
method = "nit-envelope"
versus = "baseline"
"""


def _spec(tmp_path: Path, text: str = STUDY):
    path = tmp_path / "paper.toml"
    path.write_text(text)
    return load_spec(path)


# -- methods ------------------------------------------------------------------------------------
def test_listed_values_expand_into_a_family_with_the_papers_range(tmp_path) -> None:
    spec = _spec(tmp_path)
    names = [m.name for m in spec.methods]
    assert names == ["baseline", "qat-b4-r1", "qat-b4-r2", "qat-b8-r1", "qat-b8-r2", "nit-s0.1", "nit-s1"]
    steps = {m.name: m.settings["act_scale"] for m in spec.methods if m.kind == "qat"}
    assert steps["qat-b4-r2"] == pytest.approx(15 * 2 / 15) and steps["qat-b8-r1"] == pytest.approx(256 / 255)
    assert PAPER_RANGE == {4: 15, 8: 256, 16: 65536}  # UniHD-CEG/VANT's min_max_dict, unsigned
    assert {m.group for m in spec.methods} == {"baseline", "qat", "nit"}
    assert len(spec.train_cells) == 7 * 2 * 3


@pytest.mark.parametrize(("change", "message"), [
    (("range_scale = [1, 2]", "range_scale = [1, 2]\nact_scale = 0.5"), "act_scale or range_scale"),
    (("bits = [4, 8]", "bits = [4, 6]"), "range_scale needs bits of the paper"),
    (("noise_scale = [0.1, 1.0]", "noise_scale = []"), "must be a non-empty list of numbers"),
    (('method = "nit-envelope"', 'method = "nit-hull"'), "claim nit: method 'nit-hull' is not"),
    (("margin = 1.1", "margin = 0.9"), "margin must be a ratio > 1"),
    (('kind = "depth"', 'kind = "depth"\narchs = ["mlp1"]'), "needs two or more architectures"),
    (('method = "qat"\nversus = "baseline"', 'method = "qat"\nversus = "qat-b4-r1"'), "is one of the methods"),
    (('method = "nit-envelope"\nversus = "baseline"', 'method = "baseline"\nversus = "baseline"'),
     "claim nit: versus 'baseline' is one of the methods it is compared with"),
])
def test_a_bad_sweep_or_rule_is_refused(tmp_path, change, message) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, STUDY.replace(*change, 1))


# -- statistics --------------------------------------------------------------------------------
def test_holm_steps_down() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_the_t_test_and_tost_are_scipys() -> None:
    values = [0.1, 0.3, 0.2, 0.25, 0.15]
    assert t_test(values) == pytest.approx(scipy_stats.ttest_1samp(values, 0).pvalue)
    inside = [0.01, -0.01, 0.02, 0.0, -0.02]
    bound = math.log10(1.1)
    expected = max(scipy_stats.ttest_1samp(inside, -bound, alternative="greater").pvalue,
                   scipy_stats.ttest_1samp(inside, bound, alternative="less").pvalue)
    assert tost(inside, bound) == pytest.approx(expected) and expected < 0.01
    assert tost(values, bound) > 0.5  # far outside the margin: not equivalent


def _rules(*claims: Claim, correction: str = "holm") -> Rules:
    return Rules(1.1, 0.05, correction, claims)


def _claim(name: str, methods: tuple[str, ...], archs=("a", "b"), need="all", kind="ratio") -> Claim:
    return Claim(name, "", kind, methods, "base", ("hw",), archs, need)


def test_labels_and_verdicts_follow_the_rule() -> None:
    data = {("a", "up"): [0.30, 0.32, 0.29, 0.31, 0.30], ("b", "up"): [0.2, 0.22, 0.21, 0.19, 0.2],
            ("a", "same"): [0.005, -0.004, 0.002, 0.0, -0.003], ("b", "same"): [0.3, -0.3, 0.2, -0.25, 0.1],
            ("a", "down"): [-0.3, -0.31, -0.29, -0.3, -0.32], ("b", "down"): None}
    decision = decide(_rules(_claim("up", ("up",)), _claim("one", ("same", "up"), need="any"),
                             _claim("all", ("same", "up")), _claim("down", ("down",))),
                      lambda arch, hw, method, versus: data[(arch, method)])
    labels = {(t.claim, t.arch, t.method): t.label for t in decision.tests}
    assert labels[("up", "a", "up")] == labels[("up", "b", "up")] == "more robust"
    assert labels[("one", "a", "same")] == "equivalent within the margin"
    assert labels[("one", "b", "same")] == "undecided"
    assert labels[("down", "a", "down")] == "less robust" and labels[("down", "b", "down")] == "no midpoint"
    verdicts = {v.claim.name: (v.verdict, v.per_arch) for v in decision.verdicts}
    assert verdicts["up"][0] == "reproduced"
    assert verdicts["one"][0] == "reproduced"  # any member more robust, per architecture
    assert verdicts["all"][1] == {"a": "contradicted", "b": "undecided"}
    assert verdicts["all"][0] == "not reproduced for a; undecided for b"
    assert verdicts["down"][1] == {"a": "contradicted", "b": "undecided"}


def test_holm_can_turn_a_single_test_into_undecided() -> None:
    """p about 0.02 alone passes alpha 0.05; among 9 more tests of p 0.5 Holm makes it 0.2."""
    weak = [0.05, 0.12, 0.02, 0.09, 0.06]
    flat = [0.5, -0.5, 0.4, -0.4, 0.1]
    claims = [_claim("weak", ("w",), archs=("a",))] + [_claim(f"n{i}", ("f",), archs=("a",)) for i in range(5)]

    def ratios(arch, hw, method, versus):
        return weak if method == "w" else flat

    assert t_test(weak) < 0.05
    plain = decide(_rules(*claims, correction="none"), ratios)
    assert plain.tests[0].label == "more robust"
    assert decide(_rules(*claims), ratios).tests[0].label == "undecided"


def test_a_depth_claim_regresses_the_ratio_on_depth() -> None:
    grows = {"mlp1": [0.0, 0.02, -0.01], "mlp3": [0.2, 0.22, 0.19], "mlp6": [0.5, 0.52, 0.49]}
    claim = _claim("deeper", ("nit",), archs=("mlp1", "mlp3", "mlp6"), kind="depth")
    decision = decide(_rules(claim), lambda arch, hw, method, versus: grows[arch])
    assert decision.depth_tests[0].label == "grows with depth" and decision.depth_tests[0].slope == pytest.approx(
        0.1, abs=0.01)
    assert decision.verdicts[0].verdict == "reproduced"
    shrinks = decide(_rules(claim), lambda arch, hw, method, versus: [-v for v in grows[arch]])
    assert shrinks.verdicts[0].verdict == "not reproduced"


# -- the envelope and the report ---------------------------------------------------------------
def _fake(spec, out: Path) -> None:
    """Every midpoint 1; nit-s0.1 is good at low noise, nit-s1 at high: the envelope takes each where trained."""
    for cell in spec.eval_cells:
        method = cell.train.method.name
        curve = {"nit-s0.1": [0.9, 0.9, 0.8, 0.3, 0.1], "nit-s1": [0.7, 0.7, 0.7, 0.7, 0.2]}.get(
            method, [0.9, 0.9, 0.7, 0.5, 0.1])
        points = [{"noise_scale": s, "accuracies": [a, a]} for s, a in zip(spec.noise_scales, curve, strict=True)]
        record = {"key": cell.key, "status": "done", "clean_accuracy": curve[0], "chance_accuracy": 0.1,
                  "midpoint_noise": 1.0, "midpoint_status": "found", "points": points}
        (out / cell.folder).mkdir(parents=True)
        cells.write_json(out / cell.folder / cells.RECORD, record)


def test_the_envelope_takes_the_member_trained_nearest_each_level(tmp_path) -> None:
    spec = _spec(tmp_path)
    _fake(spec, tmp_path / "out")
    results = collect(spec, tmp_path / "out")
    row = results.row("mlp1", "nit-envelope", "hardening-additive")
    levels = dict(row.curve)
    assert [round(levels[s].mean, 3) for s in (0.0, 0.1, 0.3, 1.0, 3.0)] == [0.9, 0.9, 0.8, 0.7, 0.2]
    assert row.clean.mean == pytest.approx(0.9)  # the member trained at the lowest level
    # halfway from 0.9 to chance 0.1 is 0.5, crossed between 1 (0.7) and 3 (0.2), in log noise
    assert row.midpoint.mean == pytest.approx(3.0 ** 0.4, rel=1e-6)
    assert results.decision is not None and {v.claim.name for v in results.decision.verdicts} == \
        {"qat", "nit", "deeper"}
    tests = [t for t in results.decision.tests if t.claim == "nit"]
    assert [t.ratio() for t in tests] == pytest.approx([row.midpoint.mean] * 2)


# -- keys hold the code ------------------------------------------------------------------------
def test_the_code_hash_follows_imports_and_nothing_else(tmp_path) -> None:
    root = tmp_path / "analog_onnx"
    shutil.copytree(code.ROOT, root, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    train, evaluate = code.code_hash(code.TRAIN_ENTRY, root), code.code_hash(code.EVALUATE_ENTRY, root)
    assert (train, evaluate) == (code.code_hash(code.TRAIN_ENTRY), code.code_hash(code.EVALUATE_ENTRY))
    files = {p.relative_to(root).as_posix() for p in code.source_files(code.TRAIN_ENTRY, root)}
    assert {"train/trainer.py", "train/qat.py", "passes/sites.py", "ops/native/analog_ops.cc"} <= files
    assert not files & {"study/figures.py", "evaluate/console.py", "cli.py"}

    def changed(relative: str) -> tuple[str, str]:
        with (root / relative).open("a") as f:
            f.write("\n")
        code.code_hash.cache_clear()
        return code.code_hash(code.TRAIN_ENTRY, root), code.code_hash(code.EVALUATE_ENTRY, root)

    after_trainer = changed("train/qat.py")  # read by the trainer only
    assert after_trainer[0] != train and after_trainer[1] == evaluate
    after_kernels = changed("ops/native/analog_tile.h")  # both run the kernels
    assert after_kernels[0] != after_trainer[0] and after_kernels[1] != evaluate
    assert changed("study/figures.py") == after_kernels  # drawing decides no result


TINY = """
[study]
name = "tiny"
data = "digits"
archs = ["mlp1"]
seeds = [0]

[train]
epochs = 1
limit = 128

[[method]]
name = "baseline"
kind = "baseline"

[evaluate]
hardware = ["hardening-additive"]
noise_scales = "0,1"
repeats = 1
limit = 50
report_levels = [1.0]
"""


def test_a_change_to_a_cells_code_redoes_that_cell(monkeypatch, tmp_path) -> None:
    spec = _spec(tmp_path, TINY)
    assert run_study(spec, tmp_path / "out").trained == 1
    original = code.code_hash

    def changed(entry: str, root: Path = code.ROOT) -> str:
        return "0" * 12 if entry == code.EVALUATE_ENTRY else original(entry, root)

    monkeypatch.setattr(code, "code_hash", changed)
    again = run_study(_spec(tmp_path, TINY), tmp_path / "out")
    assert (again.trained, again.evaluated, again.skipped) == (0, 1, 1)  # the evaluation code changed
    record = cells.read_record(tmp_path / "out" / _spec(tmp_path, TINY).eval_cells[0].folder,
                               _spec(tmp_path, TINY).eval_cells[0].key, "evaluate")
    assert record is not None and record["code"] == "0" * 12


# -- selection never reads the test split -------------------------------------------------------
def test_the_validation_split_is_seeded_stratified_and_disjoint() -> None:
    y = np.repeat(np.arange(4), [50, 30, 10, 2])
    train, val = validation_split(y, 0.1, seed=3)
    assert np.bincount(y[val], minlength=4).tolist() == [5, 3, 1, 1]
    assert not set(train) & set(val) and len(train) + len(val) == len(y)
    assert np.array_equal(val, validation_split(y, 0.1, seed=3)[1])
    assert not np.array_equal(val, validation_split(y, 0.1, seed=4)[1])


@pytest.mark.parametrize("select", ["val", "last"])
def test_training_never_reads_the_test_split(monkeypatch, tmp_path, select) -> None:
    original = trainer_module.load_dataset
    splits: list[str] = []

    def guarded(spec, split, *args, **kwargs):
        splits.append(split)
        if split != "train":
            raise AssertionError(f"training read the {split} split")
        return original(spec, split, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "load_dataset", guarded)
    config = trainer_module.TrainConfig(arch="mlp1", data="digits", epochs=2, limit=300, batch_size=64,
                                        select=select, out=str(tmp_path / "run"))
    result = trainer_module.train(config, progress=False, verbose=False)
    assert splits == ["train"] and result.model_path is not None
    assert result.best["epoch"] == (2 if select == "last" else max(result.history, key=lambda h: h["clean_acc"])[
        "epoch"])
    assert all("test_loss" not in h and h["val_loss"] is not None for h in result.history)


def test_the_docs_blocks_are_written_from_the_stored_results(tmp_path, monkeypatch) -> None:
    """tools/paper_studies.py fills each generated block from its study.json and leaves the rest."""
    import importlib.util
    import json

    spec = _spec(tmp_path)
    _fake(spec, tmp_path / "out")
    stored = tmp_path / "docs" / "results" / "paper"
    stored.mkdir(parents=True)
    (stored / "study.json").write_text(json.dumps(collect(spec, tmp_path / "out").to_dict()))
    doc = tmp_path / "docs" / "study.md"
    doc.write_text("intro\n<!-- generated: paper -->\nold\n<!-- end generated: paper -->\n"
                   "<!-- generated: other -->\nkept\n<!-- end generated: other -->\n")
    loader = importlib.util.spec_from_file_location("paper_studies", Path(__file__).parents[1] / "tools" /
                                                    "paper_studies.py")
    tool = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(tool)
    monkeypatch.setattr(tool, "DOC", doc)
    monkeypatch.setattr(tool, "RESULTS", tmp_path / "docs" / "results")
    tool.write_docs()
    text = doc.read_text()
    assert text.startswith("intro\n") and "old" not in text and "kept" in text
    assert f"x{3.0 ** 0.4:.2f}" in text  # the envelope's midpoint ratio, from the stored file
    assert "| nit |  | **reproduced** |" in text and "| qat |  | **not reproduced** |" in text


def test_each_test_keeps_its_own_adjusted_p_whatever_the_order_of_the_claims() -> None:
    data = {"mlp1": [0.0, 0.01, -0.01], "mlp3": [0.3, 0.31, 0.29]}
    depth = _claim("deeper", ("nit",), archs=("mlp1", "mlp3"), kind="depth")
    ratio = _claim("nit", ("nit",), archs=("mlp1", "mlp3"))

    def ratios(arch, hw, method, versus):
        return data[arch]

    first, last = decide(_rules(depth, ratio), ratios), decide(_rules(ratio, depth), ratios)
    assert [(t.p_different, t.p_equivalent, t.label) for t in first.tests] == \
        [(t.p_different, t.p_equivalent, t.label) for t in last.tests]
    assert [t.label for t in first.tests] == ["equivalent within the margin", "more robust"]
    assert first.depth_tests[0].p == last.depth_tests[0].p
