"""The paper's studies: run them, keep their results, and write docs/study.md's numbers from them.

    python tools/paper_studies.py run [NAME ...] [--workers N]   # run, store, regenerate the docs
    python tools/paper_studies.py store NAME ...                 # store what a (partial) run has done
    python tools/paper_studies.py docs                           # regenerate the docs only

``run`` runs each ``studies/NAME.toml`` (default: those with a ``[verdicts]`` table) into
``runs/NAME`` (resumable: a rerun redoes only cells whose settings or code changed), then
stores what the docs quote in ``docs/results/NAME/``: ``study.json`` (every row, comparison,
test and verdict), ``study.csv``, ``summary.md``, the study file as run, and ``run.json`` (wall
and CPU seconds of the run). ``docs`` replaces each block of docs/study.md between
``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` with tables made from
``docs/results/NAME/study.json``: no number in those blocks is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "study.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w.+-]+) -->\n).*?(<!-- end generated: (?P=name) -->)", re.S)


def declared_studies() -> list[str]:
    """The study files that declare verdicts: the ones this tool runs by default."""
    return sorted(p.stem for p in STUDIES.glob("*.toml") if "\n[verdicts]" in p.read_text())


def run(names: list[str], workers: int) -> None:
    from analog_onnx.study import load_spec, run_study

    for name in names:
        spec = load_spec(STUDIES / f"{name}.toml")
        started, cpu = time.perf_counter(), _cpu_seconds()
        done = run_study(spec, ROOT / "runs" / name, workers=workers)
        seconds = {"wall_seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu,
                   "trained": done.trained, "evaluated": done.evaluated, "skipped": done.skipped,
                   "failures": done.failures, "workers": workers}
        print(f"{name}: {done.trained} trained, {done.evaluated} evaluated, {done.skipped} done before, "
              f"{len(done.failures)} failed; {seconds['wall_seconds']:.0f} s wall, {seconds['cpu_seconds']:.0f} s CPU")
        store(name, seconds)
    write_docs()


def store(name: str, seconds: dict | None = None) -> None:
    """The report of ``runs/NAME`` (whatever is done) copied to ``docs/results/NAME``."""
    from analog_onnx.study import load_spec, write_report

    out = ROOT / "runs" / name
    write_report(load_spec(STUDIES / f"{name}.toml"), out)
    target = RESULTS / name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("study.json", "study.csv", "summary.md"):
        shutil.copyfile(out / file, target / file)
    shutil.copyfile(STUDIES / f"{name}.toml", target / "study.toml")
    if seconds is not None:
        (target / "run.json").write_text(json.dumps(seconds, indent=2) + "\n")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the study's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_docs() -> None:
    text = DOC.read_text()
    missing = []

    def block(match: re.Match[str]) -> str:
        path = RESULTS / match["name"] / "study.json"
        if not path.is_file():
            missing.append(match["name"])
            return match[0]
        return match[1] + render(json.loads(path.read_text()), RESULTS / match["name"]) + match[3]

    DOC.write_text(BLOCK.sub(block, text))
    if missing:
        print(f"no stored results for {', '.join(missing)}: their blocks are unchanged", file=sys.stderr)


def render(study: dict, folder: Path) -> str:
    """The generated block of one study: its run, verdicts, tests and midpoint table."""
    where = folder.relative_to(DOC.parent).as_posix()
    lines = []
    run_file = folder / "run.json"
    if run_file.is_file():
        r = json.loads(run_file.read_text())
        lines += [f"Last invocation of the run: {r['trained']} trainings and {r['evaluated']} evaluations "
                  f"({r['skipped']} cells done before), {r['wall_seconds'] / 60:.1f} min wall clock and "
                  f"{r['cpu_seconds'] / 60:.1f} min of CPU with {r['workers']} workers; {len(r['failures'])} "
                  f"failures. Stored: `{where}/study.json`.", ""]
    if study.get("cells_missing"):
        lines += [f"**{study['cells_missing']} cells of this study are not done: the tables are partial.**", ""]
    decision = study.get("verdicts")
    if decision:
        rules = decision["rules"]
        lines += [f"Verdicts (rule: per-seed log10 midpoint ratio; t test and TOST within x{rules['margin']:g}; "
                  f"alpha {rules['alpha']:g}, {rules['correction']} correction over all tests of the file):", "",
                  "| claim | statement | verdict | per architecture |", "|---|---|---|---|"]
        for v in decision["verdicts"]:
            per_arch = ", ".join(f"{a}: {o}" for a, o in v["per_arch"].items())
            lines.append(f"| {v['claim']} | {v['statement']} | **{v['verdict']}** | {per_arch} |")
        lines += ["", "<details><summary>The tests behind the verdicts</summary>", "",
                  "| claim | hardware | arch | method | versus | midpoint ratio | p (different) | p (equivalent) "
                  "| label |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in decision["tests"]:
            ratio = f"x{t['midpoint_ratio']:.2f}" if t["midpoint_ratio"] is not None else "-"
            lines.append(f"| {t['claim']} | {t['hardware']} | {t['arch']} | {t['method']} | {t['versus']} | {ratio} | "
                         f"{t['p_different_adjusted']:.2g} | {t['p_equivalent_adjusted']:.2g} | {t['label']} |")
        if decision["depth_tests"]:
            lines += ["", "| claim | hardware | method | slope of log10 ratio per layer | p | label |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {t['claim']} | {t['hardware']} | {t['method']} | {t['slope_per_layer']:+.3f} | "
                      f"{t['p_adjusted']:.2g} | {t['label']} |" for t in decision["depth_tests"]]
        lines += ["", "</details>", ""]
    lines += _midpoints(study)
    return "\n".join(lines) + "\n"


def _midpoints(study: dict) -> list[str]:
    """Midpoint (and clean accuracy) per method and architecture, one table per hardware."""
    lines = []
    rows = {(r["arch"], r["method"], r["hardware"]): r for r in study["rows"]}
    methods = list(dict.fromkeys(r["method"] for r in study["rows"]))
    for hardware in study["hardware"]:
        lines += [f"Midpoint noise level on `{hardware}`, mean [95% interval] over seeds (clean accuracy):", "",
                  "| method | " + " | ".join(study["archs"]) + " |", "|---|" + "---|" * len(study["archs"])]
        for method in methods:
            cells = [_cell(rows.get((arch, method, hardware))) for arch in study["archs"]]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    clean = row["clean_accuracy"]
    clean_text = f" ({clean['mean']:.3f})" if clean else ""
    midpoint = row["midpoint_noise"]
    if midpoint is None:
        return ", ".join(sorted({s for s in row["midpoint_statuses"] if s != "found"})) + clean_text
    interval = f" [{midpoint['ci95'][0]:.3g}, {midpoint['ci95'][1]:.3g}]" if midpoint["ci95"] else ""
    return f"{midpoint['mean']:.3g}{interval}{clean_text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="run studies, store their results, regenerate the docs")
    runner.add_argument("names", nargs="*", help="study files in studies/ (default: those with [verdicts])")
    runner.add_argument("--workers", type=int, default=1)
    storer = sub.add_parser("store", help="store the report of runs/NAME as it is (a partial run too)")
    storer.add_argument("names", nargs="+")
    sub.add_parser("docs", help="regenerate docs/study.md's generated blocks from docs/results/")
    args = parser.parse_args()
    names = getattr(args, "names", None) or (declared_studies() if args.command == "run" else [])
    unknown = [n for n in names if not (STUDIES / f"{n}.toml").is_file()]
    if unknown:
        print(f"error: no study file studies/{unknown[0]}.toml", file=sys.stderr)
        sys.exit(2)
    if args.command == "run":
        run(names, args.workers)
    elif args.command == "store":
        for name in names:
            store(name)
        write_docs()
    else:
        write_docs()


if __name__ == "__main__":
    main()
