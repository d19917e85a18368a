"""What a study found, from the records of its finished cells, and its text (``study.csv``,
``summary.md``); ``report_files.py`` writes them, ``study.json`` and the figures.

Seeds are the unit of comparison: a seed's accuracy at a noise level is the mean over its Monte
Carlo repeats, and means and 95% intervals are taken over seeds (Student t; for accuracies the
Wilson form of ``evaluate.metrics.summarize_accuracy``, inside [0, 1]). Methods are
compared per seed (the same seed initializes every method and draws the same evaluation noise),
on the log of the midpoint noise level: the ratio of midpoints with its 95% interval, and the
verdict "within interval" when that interval includes 1.

A NIT family swept over ``noise_scale`` also gets its *envelope* (``NAME-envelope``), as the
paper trains one model per test sigma: per seed, at each evaluation level the member trained at
the nearest level (in log; the smallest for level 0, which gives the clean accuracy), and the
midpoint of that curve. When the study file declares ``[verdicts]``, the claims are decided by
``verdicts.py`` from these rows and written with the tables.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analog_onnx.evaluate.metrics import midpoint_noise, summarize, summarize_accuracy
from analog_onnx.study.cells import read_record
from analog_onnx.study.depth import DEPTH
from analog_onnx.study.spec import Method, Spec
from analog_onnx.study.verdicts import ENVELOPE, Decision, decide, is_envelope_family

NOISE_KINDS = ("nit", "qat+nit")


@dataclass(frozen=True)
class Stat:
    """Mean and 95% interval over seeds (no interval from a single seed)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float], *, accuracy: bool = False) -> Stat | None:
        """Over seeds; ``accuracy``: an interval inside [0, 1] (``summarize_accuracy``)."""
        if not values:
            return None
        s = summarize_accuracy(values) if accuracy else summarize(values)
        return cls(s.mean, *(s.ci95 if s.ci95 else (None, None)), len(values))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": [self.low, self.high] if self.low is not None else None, "n": self.n}

    def text(self, digits: int = 3) -> str:
        interval = f" [{self.low:.{digits}g}, {self.high:.{digits}g}]" if self.low is not None else ""
        return f"{self.mean:.{digits}g}{interval}"


@dataclass(frozen=True)
class Row:
    """One (architecture, method, evaluation hardware) over its seeds."""

    arch: str
    method: Method
    hardware: str
    seeds: tuple[int, ...]  # seeds with a finished evaluation
    clean: Stat | None
    curve: tuple[tuple[float, Stat], ...]  # (noise scale, accuracy over seeds)
    midpoints: tuple[float | None, ...]  # per seed
    statuses: tuple[str, ...]

    @property
    def midpoint(self) -> Stat | None:
        """Only when every seed has one: a mean over the seeds that happen to cross would flatter."""
        found = [m for m in self.midpoints if m is not None]
        return Stat.of(found) if found and len(found) == len(self.midpoints) else None

    def accuracy_at(self, level: float) -> Stat | None:
        return next((stat for scale, stat in self.curve if scale == level), None)

    def to_dict(self) -> dict[str, Any]:
        midpoint = self.midpoint
        return {"arch": self.arch, "depth": DEPTH.get(self.arch), "method": self.method.name,
                "kind": self.method.kind, "train_hardware": self.method.train_hardware, "hardware": self.hardware,
                "seeds": list(self.seeds), "clean_accuracy": self.clean.to_dict() if self.clean else None,
                "midpoint_noise": midpoint.to_dict() if midpoint else None,
                "midpoints_per_seed": list(self.midpoints), "midpoint_statuses": list(self.statuses),
                "accuracy": [{"noise_scale": scale, **stat.to_dict()} for scale, stat in self.curve]}


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``versus`` on one (arch, hardware): ratio of midpoints, paired by seed."""

    arch: str
    hardware: str
    method: str
    versus: str
    log10_ratio: Stat | None  # None when a seed has no midpoint for either method

    @property
    def verdict(self) -> str:
        r = self.log10_ratio
        if r is None:
            return "no midpoint"
        if r.low is None:
            return "one seed: no interval"
        if r.low > 0:
            return "more robust"
        if r.high < 0:
            return "less robust"
        return "within interval"

    def text(self) -> str:
        r = self.log10_ratio
        if r is None:
            return "-"
        interval = f" [{10**r.low:.2f}, {10**r.high:.2f}]" if r.low is not None else ""
        return f"x{10**r.mean:.2f}{interval}"

    def to_dict(self) -> dict[str, Any]:
        r = self.log10_ratio
        return {"arch": self.arch, "hardware": self.hardware, "method": self.method, "versus": self.versus,
                "midpoint_ratio": 10**r.mean if r else None,
                "midpoint_ratio_ci95": [10**r.low, 10**r.high] if r and r.low is not None else None,
                "verdict": self.verdict}


@dataclass(frozen=True)
class Results:
    spec: Spec
    rows: tuple[Row, ...]
    comparisons: tuple[Comparison, ...]
    missing: int  # cells of the spec that are not done
    methods: tuple[Method, ...] = ()  # the spec's methods and the envelopes
    decision: Decision | None = None  # the [verdicts], when the study declares them

    def row(self, arch: str, method: str, hardware: str) -> Row | None:
        return next((r for r in self.rows if (r.arch, r.method.name, r.hardware) == (arch, method, hardware)), None)

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {"study": s.name, "description": s.description, "data": s.data, "archs": list(s.archs),
                "seeds": list(s.seeds), "hardware": list(s.hardware), "noise_scales": list(s.noise_scales),
                "report_levels": list(s.report_levels), "evaluate": s.evaluate,
                "methods": [{"name": m.name, "kind": m.kind, "train_hardware": m.train_hardware,
                             "settings": {k: v for k, v in m.settings.items() if k != "hardware"}}
                            for m in s.methods],
                "cells_missing": self.missing, "rows": [r.to_dict() for r in self.rows],
                "comparisons": [c.to_dict() for c in self.comparisons],
                "verdicts": self.decision.to_dict() if self.decision else None}


def collect(spec: Spec, root: Path) -> Results:
    """Read every finished evaluation of ``spec`` in ``root`` and aggregate over seeds."""
    records = {}
    for cell in spec.eval_cells:
        record = read_record(root / cell.folder, cell.key, "evaluate")
        if record is not None:
            records[(cell.train.arch, cell.train.method.name, cell.hardware, cell.train.seed)] = record
    missing = sum(read_record(root / c.folder, c.key, "train") is None for c in spec.train_cells) + \
        sum(read_record(root / c.folder, c.key, "evaluate") is None for c in spec.eval_cells)
    methods = list(spec.methods)
    for family in dict.fromkeys(m.group for m in spec.methods):
        members = [m for m in spec.methods if m.group == family]
        if is_envelope_family(members):
            methods.append(Method(family + ENVELOPE, members[0].kind, members[0].train_hardware, {}, family))
            _add_envelope(records, members, methods[-1].name, spec)
    rows = []
    for arch in spec.archs:
        for method in methods:
            for hardware in spec.hardware:
                found = {seed: records[(arch, method.name, hardware, seed)] for seed in spec.seeds
                         if (arch, method.name, hardware, seed) in records}
                if found:
                    rows.append(_row(arch, method, hardware, found, spec.noise_scales))
    index = {(r.arch, r.method.name, r.hardware): r for r in rows}

    def log_ratios(arch: str, hardware: str, method: str, versus: str) -> list[float] | None:
        a, b = index.get((arch, method, hardware)), index.get((arch, versus, hardware))
        return _paired_log_ratios(a, b) if a is not None and b is not None else None

    decision = decide(spec.verdicts, log_ratios) if spec.verdicts is not None else None
    return Results(spec, tuple(rows), tuple(_comparisons(spec, methods, rows)), missing, tuple(methods), decision)


def _add_envelope(records: dict[tuple[str, str, str, int], dict[str, Any]], members: list[Method], name: str,
                  spec: Spec) -> None:
    """The envelope's record per (arch, hardware, seed) where every member has one (see the module)."""
    trained = sorted((dict(m.swept)["noise_scale"], m.name) for m in members)
    for arch in spec.archs:
        for hardware in spec.hardware:
            for seed in spec.seeds:
                found = {m: records.get((arch, m, hardware, seed)) for _, m in trained}
                if any(r is None for r in found.values()):
                    continue
                points = []
                for level in spec.noise_scales:
                    nearest = trained[0][1] if level <= 0 else \
                        min(trained, key=lambda t, lv=level: abs(math.log(t[0] / lv)))[1]
                    point = next(p for p in found[nearest]["points"] if p["noise_scale"] == level)
                    points.append({"noise_scale": level, "accuracies": point["accuracies"]})
                first = found[trained[0][1]]
                clean = first["clean_accuracy"]
                midpoint = midpoint_noise([p["noise_scale"] for p in points], [_mean(p["accuracies"]) for p in points],
                                          clean, first["chance_accuracy"])
                records[(arch, name, hardware, seed)] = {"clean_accuracy": clean, "points": points,
                                                         "midpoint_noise": midpoint.noise,
                                                         "midpoint_status": midpoint.status}


def _row(arch: str, method: Method, hardware: str, records: dict[int, dict[str, Any]],
         levels: Sequence[float]) -> Row:
    curve = []
    for level in levels:
        per_seed = [_mean(p["accuracies"]) for r in records.values() for p in r["points"] if p["noise_scale"] == level]
        stat = Stat.of(per_seed, accuracy=True)
        if stat is not None:
            curve.append((level, stat))
    clean = Stat.of([r["clean_accuracy"] for r in records.values()], accuracy=True)
    return Row(arch, method, hardware, tuple(records), clean, tuple(curve),
               tuple(r["midpoint_noise"] for r in records.values()),
               tuple(r["midpoint_status"] for r in records.values()))


def _comparisons(spec: Spec, methods: list[Method], rows: list[Row]) -> list[Comparison]:
    """Every method against the baseline, and every noise-trained method (a family by its envelope)
    against every QAT method."""
    baselines = [m.name for m in methods if m.kind == "baseline"]
    qat = [m.name for m in methods if m.kind == "qat"]
    pairs = [(m.name, b) for b in baselines[:1] for m in methods if m.name != b]
    pairs += [(m.name, q) for m in methods if m.kind in NOISE_KINDS and not m.swept for q in qat]
    index = {(r.arch, r.method.name, r.hardware): r for r in rows}
    out = []
    for arch in spec.archs:
        for hardware in spec.hardware:
            for method, versus in pairs:
                a, b = index.get((arch, method, hardware)), index.get((arch, versus, hardware))
                if a is not None and b is not None:
                    out.append(Comparison(arch, hardware, method, versus, _paired_log_ratio(a, b)))
    return out


def _paired_log_ratio(a: Row, b: Row) -> Stat | None:
    values = _paired_log_ratios(a, b)
    return Stat.of(values) if values else None


def _paired_log_ratios(a: Row, b: Row) -> list[float] | None:
    """log10 of a's midpoint over b's, per seed both have; None when a seed lacks a midpoint."""
    mine = dict(zip(a.seeds, a.midpoints, strict=True))
    theirs = dict(zip(b.seeds, b.midpoints, strict=True))
    seeds = [s for s in a.seeds if s in theirs]
    if not seeds or any(mine[s] is None or theirs[s] is None for s in seeds):
        return None
    return [math.log10(mine[s]) - math.log10(theirs[s]) for s in seeds]  # type: ignore[arg-type]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# -- text -------------------------------------------------------------------------------------
def csv_text(results: Results) -> str:
    levels = results.spec.report_levels
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    at = [f"acc_at_{level:g}_{part}" for level in levels for part in ("mean", "ci_low", "ci_high")]
    writer.writerow(["data", "arch", "depth", "method", "kind", "train_hardware", "hardware", "seeds",
                     "clean_mean", "clean_ci_low", "clean_ci_high", "midpoint_mean", "midpoint_ci_low",
                     "midpoint_ci_high", "midpoints_found", *at])
    for row in results.rows:
        midpoint = row.midpoint
        found = sum(m is not None for m in row.midpoints)
        writer.writerow([results.spec.data, row.arch, DEPTH.get(row.arch, ""), row.method.name, row.method.kind,
                         row.method.train_hardware, row.hardware, len(row.seeds), *_cells(row.clean),
                         *_cells(midpoint), f"{found}/{len(row.midpoints)}",
                         *[v for level in levels for v in _cells(row.accuracy_at(level))]])
    return buffer.getvalue()


def _cells(stat: Stat | None) -> list[str]:
    if stat is None:
        return ["", "", ""]
    return [f"{stat.mean:.6g}", *(f"{v:.6g}" if v is not None else "" for v in (stat.low, stat.high))]


def summary_markdown(results: Results, figures: Sequence[Path]) -> str:
    spec = results.spec
    lines = [f"# Study {spec.name}", "", spec.description, "",
             f"Data `{spec.data}`; seeds {', '.join(map(str, spec.seeds))}; noise scales "
             f"{', '.join(f'{s:g}' for s in spec.noise_scales)}; {spec.evaluate['repeats']} Monte Carlo repeats per "
             f"seed and level. Mean [95% interval] over seeds."
             + (f" **{results.missing} cells are not done yet.**" if results.missing else ""), ""]
    for hardware in spec.hardware:
        lines += [f"## Evaluated on {hardware}", "", "Midpoint noise level (higher is more robust):", ""]
        lines += _table(results, hardware, lambda r: r.midpoint.text() if r.midpoint else _statuses(r))
        lines += ["", "Clean accuracy:", ""]
        lines += _table(results, hardware, lambda r: _text(r.clean))
        for level in spec.report_levels:
            lines += ["", f"Accuracy at noise scale {level:g}:", ""]
            lines += _table(results, hardware, lambda r, lv=level: _text(r.accuracy_at(lv)))
        lines += ["", "Midpoint ratio, paired by seed (method / versus):", "",
                  "| arch | method | versus | ratio [95% interval] | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {c.arch} | {c.method} | {c.versus} | {c.text()} | {c.verdict} |"
                  for c in results.comparisons if c.hardware == hardware]
        lines.append("")
    if results.decision is not None:
        lines += verdict_markdown(results.decision)
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.as_posix()})" for f in figures] + [""]
    return "\n".join(lines)


def verdict_markdown(decision: Decision) -> list[str]:
    """The claims, their verdicts and the tests they rest on, as the rules of the study file decide them."""
    rules = decision.rules
    corrected = f"Holm over all {_test_count(decision)} tests" if rules.correction == "holm" else "no correction"
    lines = ["## Verdicts", "",
             f"Rules declared in the study file before the run: per-seed log10 midpoint ratios; t test "
             f"(different) and TOST (equivalent within x{rules.margin:g}); alpha {rules.alpha:g} after {corrected}.",
             "", "| claim | statement | verdict | per architecture |", "|---|---|---|---|"]
    for v in decision.verdicts:
        per_arch = ", ".join(f"{a}: {o}" for a, o in v.per_arch.items())
        lines.append(f"| {v.claim.name} | {v.claim.statement} | **{v.verdict}** | {per_arch} |")
    lines += ["", "| claim | hardware | arch | method | versus | ratio | p different | p equivalent | label |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in decision.tests:
        ratio = t.ratio()
        versus = next(c.versus for c in rules.claims if c.name == t.claim)
        lines.append(f"| {t.claim} | {t.hardware} | {t.arch} | {t.method} | {versus} | "
                     f"{f'x{ratio:.2f}' if ratio is not None else '-'} | {t.p_different:.2g} | "
                     f"{t.p_equivalent:.2g} | {t.label} |")
    if decision.depth_tests:
        lines += ["", "| claim | hardware | method | slope of log10 ratio per layer | p | label |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t.claim} | {t.hardware} | {t.method} | {t.slope:+.3f} | {t.p:.2g} | {t.label} |"
                  for t in decision.depth_tests]
    return [*lines, ""]


def _test_count(decision: Decision) -> int:
    return 2 * sum(bool(t.log_ratios) for t in decision.tests) + len(decision.depth_tests)


def _text(stat: Stat | None) -> str:
    return stat.text() if stat is not None else "-"


def _statuses(row: Row) -> str:
    return ", ".join(sorted({s for s, m in zip(row.statuses, row.midpoints, strict=True) if m is None})) or "-"


def _table(results: Results, hardware: str, cell: Any) -> list[str]:
    archs = results.spec.archs
    lines = ["| method | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
    for method in results.methods:
        values = [results.row(arch, method.name, hardware) for arch in archs]
        lines.append(f"| {method.name} | " + " | ".join(cell(r) if r else "-" for r in values) + " |")
    return lines
