"""Running a study: every cell that is not done, trainings first, each evaluation as soon as its
model exists, on local worker processes or on Ray, with a live view of the whole grid.

Trainings and evaluations are separate tasks, so a slow training never holds back the
evaluation of a model that is already trained. Work happens in the cells' folders; the study
folder itself gets the spec (``study.toml``) and, at the end, the report.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from analog_onnx.arguments import expect, spelled, spelled_as
from analog_onnx.errors import AnalogError
from analog_onnx.files import read_small_text, write_text
from analog_onnx.study.cells import MODEL, Task, read_record, run_task
from analog_onnx.study.spec import EvalCell, Spec, TrainCell

BACKENDS = ("local", "ray")
SPEC_COPY = "study.toml"


@dataclass
class StudyRun:
    """What a run did: cells run now and cells found done."""

    trained: int = 0
    evaluated: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run_study(spec: Spec, out: str | Path, *, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, console: Console | None = None) -> StudyRun:
    """Run every cell of ``spec`` that is not done in ``out``; see the module docstring."""
    expect(spec, Spec, "spec (from load_spec)")
    if backend not in BACKENDS:
        raise AnalogError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if expect(workers, int, "workers") < 1:
        raise AnalogError(f"{spelled('workers')} must be >= 1, got {workers}")
    started = time.perf_counter()
    root = study_folder(spec, out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalogError(f"cannot create the study folder {out}: {e.strerror}") from None
    write_text(root / SPEC_COPY, spec.text, force=True)
    run = StudyRun()
    pending_train = [c for c in spec.train_cells if read_record(root / c.folder, c.key, "train") is None]
    waiting = {c.key for c in pending_train}
    pending_eval = [c for c in spec.eval_cells if read_record(root / c.folder, c.key, "evaluate") is None]
    run.skipped = len(spec.train_cells) + len(spec.eval_cells) - len(pending_train) - len(pending_eval)
    board = Board(spec, waiting | {c.key for c in pending_eval}, root)
    if backend == "local" or ray_address is None:  # on this machine: at most one cell per core
        workers = max(1, min(workers, _cores(), len(pending_train) + len(pending_eval)))
        _check_devices(pending_train)
    threads = max(1, _cores() // workers) if backend == "local" else 1
    if not pending_train and not pending_eval:
        run.seconds = time.perf_counter() - started
        return run
    with _executor(backend, workers, ray_address) as submit, board.showing(console or Console()):
        running: dict[Future[dict[str, Any]], TrainCell | EvalCell] = {}

        def start(cell: TrainCell | EvalCell) -> None:
            running[submit(_task(cell, spec, root, threads))] = cell
            board.mark(cell, "running")

        for cell in pending_train:
            start(cell)
        for cell in pending_eval:
            if cell.train.key not in waiting:
                start(cell)
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                error = future.exception()
                if error is not None:
                    run.failures.append(f"{_label(cell)}: {error}")
                    board.mark(cell, "failed")
                    continue
                board.mark(cell, "done")
                if isinstance(cell, TrainCell):
                    run.trained += 1
                    for follower in pending_eval:
                        if follower.train.key == cell.key:
                            start(follower)
                else:
                    run.evaluated += 1
    run.seconds = time.perf_counter() - started
    return run


def study_folder(spec: Spec, out: str | Path) -> Path:
    """``out``, resolved, when it can be the folder of ``spec``: new, empty, or holding this study
    (its ``study.toml`` names the same study; an edited study keeps its folder). A file, another
    study or a folder of other files is refused, before any work: their files would be replaced."""
    root = Path(expect(out, (str, Path), "out")).expanduser()
    if root.exists() and not root.is_dir():
        raise AnalogError(f"{spelled('out')} {out} is a file; a study needs a folder")
    copy = root / SPEC_COPY
    if copy.is_file():
        try:
            found = tomllib.loads(read_small_text(copy, "study file"))["study"]["name"]
        except (AnalogError, tomllib.TOMLDecodeError, KeyError, TypeError):
            found = None
        if found != spec.name:
            held = f"study {found!r}" if isinstance(found, str) else f"a {SPEC_COPY} that names no study"
            raise AnalogError(f"{out} holds {held}; give study {spec.name!r} another {spelled('out')}")
    elif root.is_dir() and any(root.iterdir()):
        raise AnalogError(f"{out} is not empty and holds no {SPEC_COPY}: give the study a new or empty "
                          f"{spelled('out')}")
    return root.resolve()


def _task(cell: TrainCell | EvalCell, spec: Spec, root: Path, threads: int) -> Task:
    folder = str(root / cell.folder)
    if isinstance(cell, TrainCell):
        return Task("train", _label(cell), folder, cell.key, cell.config, threads=threads, code=cell.code)
    model = str(root / cell.train.folder / MODEL)
    return Task("evaluate", _label(cell), folder, cell.key, cell.settings, model=model, data=spec.data,
                threads=threads, code=cell.code)


def _label(cell: TrainCell | EvalCell) -> str:
    if isinstance(cell, TrainCell):
        return f"train {cell.arch} {cell.method.name} seed {cell.seed}"
    return f"evaluate {cell.train.arch} {cell.train.method.name} seed {cell.train.seed} on {cell.hardware}"


def _check_devices(cells: list[TrainCell]) -> None:
    """A CUDA device this machine lacks would fail each training that asks for it: refused before any
    work, naming the study's key (a Ray cluster's machines are not this one: not checked there)."""
    import torch

    count = torch.cuda.device_count()
    for device in map(torch.device, sorted({c.config["device"] for c in cells} - {"auto"})):
        if device.type == "cuda" and (device.index or 0) >= count:
            raise AnalogError(f"[train] device '{device}': this machine has {count} CUDA device(s)")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


Submit = Callable[[Task], "Future[dict[str, Any]]"]


@contextmanager
def _executor(backend: str, workers: int, ray_address: str | None) -> Iterator[Submit]:
    """A function that starts a task and returns its future, for the chosen backend."""
    if backend == "ray":
        with _ray(workers, ray_address) as submit:
            yield submit
        return
    if workers == 1:  # in this process: no start-up cost, and errors keep their stack
        def in_process(task: Task) -> Future[dict[str, Any]]:
            future: Future[dict[str, Any]] = Future()
            try:
                with spelled_as(str):  # a cell's errors name its settings, not the study command's flags
                    future.set_result(run_task(task))
            except Exception as e:  # noqa: BLE001 - reported per cell, like a worker's failure
                future.set_exception(e)
            return future

        yield in_process
        return
    # spawn, not fork: torch's and onnxruntime's thread pools do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda task: pool.submit(run_task, task)


@contextmanager
def _ray(workers: int, address: str | None) -> Iterator[Submit]:
    try:
        import ray
    except ImportError:
        raise AnalogError(f"{spelled('backend')} ray needs Ray: pip install 'analog-onnx[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise AnalogError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    remote = ray.remote(num_cpus=1)(run_task)
    try:
        yield lambda task: remote.remote(task).future()
    finally:
        if started:
            ray.shutdown()


class Board:
    """The live view: one row per (architecture, method), trained and evaluated cells of its seeds,
    and the epoch each running training has reached (read from its ``metrics.jsonl``)."""

    def __init__(self, spec: Spec, pending: set[str], root: Path) -> None:
        self.spec = spec
        self.root = root
        self.state = {c.key: "waiting" if c.key in pending else "done" for c in (*spec.train_cells, *spec.eval_cells)}
        self.live: Live | None = None
        self.console: Console | None = None

    def mark(self, cell: TrainCell | EvalCell, state: str) -> None:
        self.state[cell.key] = state
        if self.live is not None:
            self.live.update(self.render())
        elif state in ("done", "failed") and self.console is not None:
            self.console.print(Text(f"{state}: {_label(cell)}"))

    @contextmanager
    def showing(self, console: Console) -> Iterator[None]:
        self.console = console
        if not console.is_terminal:
            yield
            return
        with Live(console=console, refresh_per_second=2, transient=False, get_renderable=self.render) as live:
            self.live = live
            try:
                yield
            finally:
                self.live = None

    def _count(self, cells: list[TrainCell] | list[EvalCell]) -> Text:
        states = [self.state[c.key] for c in cells]
        text = Text(f"{states.count('done')}/{len(states)}")
        if "running" in states:
            text.append(f" ({states.count('running')} running)", style="cyan")
        if "failed" in states:
            text.append(f" {states.count('failed')} failed", style="red")
        return text

    def render(self) -> Group:
        spec = self.spec
        table = Table(title=Text(f"study {spec.name}"))
        for header in ("arch", "method", "trained", *(f"eval {h}" for h in spec.hardware)):
            table.add_column(Text(header))  # as text: hardware names come from the study file
        for arch in spec.archs:
            for method in spec.methods:
                train = [c for c in spec.train_cells if c.arch == arch and c.method.name == method.name]
                keys = {c.key for c in train}
                evals = [self._count([c for c in spec.eval_cells if c.train.key in keys and c.hardware == h])
                         for h in spec.hardware]
                table.add_row(Text(arch), Text(method.name), self._count(train), *evals)
        states = list(self.state.values())
        summary = Text(f"{states.count('done')}/{len(states)} cells done")
        trainings = [Text(f"{_label(c)}: epoch {_epochs_done(self.root / c.folder)}"
                          + (f"/{c.config['epochs']}" if "epochs" in c.config else ""))
                     for c in spec.train_cells if self.state[c.key] == "running"]
        return Group(table, summary, *trainings)


def _epochs_done(folder: Path) -> int:
    """The epochs a training in ``folder`` has finished: its ``metrics.jsonl`` has a line each
    (written by another process, so a file that is missing or being replaced counts what it can)."""
    try:
        return (folder / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0
